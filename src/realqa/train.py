"""Fine-tuning a Qwen2-VL model to answer with scores as text, on Hugging Face ``Trainer`` + PEFT.

The recipe defaults follow RealQA's official LLaMA-Factory configs: LoRA rank 128 on every linear
layer of the language model, vision tower trainable, dropout 0.15, lr 1e-4 (1e-5 for full
fine-tuning), cosine schedule with 10% warmup, batch 2 x accumulation 8, bf16, 2 epochs.

The same entry point runs on one CPU, one GPU, or many processes under ``torchrun`` /
``accelerate launch`` (DDP, FSDP, DeepSpeed ZeRO-2/3 through the config files in ``configs/``).

Training data is realqa manifests (answers written by realqa from the labels) or LLaMA-Factory
conversation files (the official RealQA training files: each question and answer trained verbatim;
``configs/official/`` reproduces the official recipes on them).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from .batching import IGNORE_INDEX, Example, ExampleBuilder, accepts_token_types, collate
from .chat import cot_answer, render_prompt
from .conversations import BRACKETED_SCORE
from .data.attributes import AttributeSpec
from .media import MediaError
from .model import MAX_PIXELS, MIN_PIXELS, ModelCard, ScoringModel, load_model
from .numeric import digit_probs
from .preprocessing import DEFAULT_PROFILE, profile
from .tasks import DEFAULT_TASKS, Task, attribute_task

DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}


# ---------------------------------------------------------------- configuration


@dataclass
class DataSource:
    """One manifest or one LLaMA-Factory conversation file in the training (or held-out) mix.

    A **manifest** source (``manifest``) asks one question of every sample and realqa writes the
    answers from the labels. ``task`` (default ``quality``) is a score task (quality, aesthetics) or
    one of the dataset's attributes. ``form`` is ``plain`` (default; the answer states the value)
    or ``cot`` (the answer reasons over the sample's attributes, then gives the score in angle
    brackets). ``split`` picks a split of the manifest (None: every sample in it).

    A **conversation** source (``conversations``: a LLaMA-Factory sharegpt .json/.jsonl file, e.g.
    the official ``koniq10k_training_decimal2_cot.json``) trains each record's question and answer
    verbatim (:mod:`realqa.conversations`); relative image paths start from ``media_dir`` (default:
    the file's folder). Its questions come from the file, so ``task``, ``form`` and ``split`` do
    not apply, and ``decimals`` does not rewrite its answers.

    ``weight`` (either kind) is how many times each sample is seen per epoch: 2 repeats the source,
    0.5 takes a seeded half of it.
    """

    manifest: str | None = None
    task: str | None = None  # manifests: default "quality"
    split: str | None = None
    weight: float = 1.0
    form: str | None = None  # manifests: default "plain"
    conversations: str | None = None
    media_dir: str | None = None

    def __post_init__(self) -> None:
        if (self.manifest is None) == (self.conversations is None):
            raise ValueError("a data source needs exactly one of 'manifest' or 'conversations'")
        if self.conversations is not None:
            given = [key for key in ("task", "form", "split") if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{self.conversations}: {', '.join(given)} {'does' if len(given) == 1 else 'do'} "
                                 "not apply to a conversation source (its questions and answers are read from the file)")
            return
        if self.media_dir is not None:
            raise ValueError(f"{self.manifest}: media_dir applies to conversation sources only")
        self.task = self.task if self.task is not None else "quality"
        self.form = self.form if self.form is not None else "plain"
        if self.form not in ("plain", "cot"):
            raise ValueError(f"{self.manifest}: form must be 'plain' or 'cot', got {self.form!r}")

    @property
    def name(self) -> str:
        """The file the source reads (for messages, logs and the card)."""
        return self.manifest if self.manifest is not None else self.conversations


@dataclass
class LoraSettings:
    rank: int = 128
    # LLaMA-Factory's default when a config sets no alpha (the official RealQA configs set none): 2 x rank.
    alpha: int | None = None
    dropout: float = 0.15

    @property
    def effective_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.rank


@dataclass
class TrainConfig:
    model: str
    output_dir: str
    train: list[DataSource]
    eval: list[DataSource] = field(default_factory=list)
    finetuning: str = "lora"  # lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_vision_tower: bool = True
    decimals: int = 2
    learning_rate: float | None = None  # None: 1e-4 for LoRA, 1e-5 for full fine-tuning
    epochs: float = 2.0
    max_steps: int = -1
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    gradient_checkpointing: bool = True
    ncm_loss_weight: float = 0.0
    cot_form: str = "list"  # how chain-of-thought answers state the attributes (see realqa.chat.COT_FORMS)
    eval_steps: int | None = None  # also score the held-out sources every N steps (always at the end)
    eval_max_samples: int | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    seed: int = 42
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    dataloader_num_workers: int = 0
    # How a decoded image is prepared for the image processor (realqa.preprocessing); recorded in
    # the card. The official recipes use "llamafactory", the pipeline the official models trained with.
    preprocessing: str = DEFAULT_PROFILE
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest" for the newest in output_dir
    deepspeed: str | None = None
    report_to: str = "none"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.finetuning not in DEFAULT_LR:
            raise ValueError(f"finetuning must be 'lora' or 'full', got {self.finetuning!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not self.train:
            raise ValueError("the config lists no training data (train: [...])")
        if not 0 <= self.decimals <= 3:
            raise ValueError(f"decimals must be 0..3, got {self.decimals}")
        profile(self.preprocessing)  # an unknown profile fails at start, naming the known ones

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.finetuning]

    def to_dict(self) -> dict:
        return asdict(self)


_NESTED = {"lora": LoraSettings, "train": DataSource, "eval": DataSource}


def _build(cls, data: Any, where: str):
    """Instantiate a config dataclass, naming any unknown key with its full path."""
    if not isinstance(data, dict):
        raise ValueError(f"config: {where or 'the top level'} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(f"{where}.{key}" if where else key for key in unknown)
        raise ValueError(f"config: unknown key(s) {names}; known: {', '.join(sorted(known))}")
    types = {f.name: str(f.type) for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if isinstance(value, str) and "float" in types[key]:
            try:  # YAML reads 3e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                raise ValueError(f"config: {where + '.' if where else ''}{key} must be a number, got {value!r}") from None
        nested = _NESTED.get(key) if cls is TrainConfig else None
        if nested is LoraSettings:
            value = _build(LoraSettings, value or {}, key)
        elif nested is DataSource:
            items = value if isinstance(value, list) else [value]
            value = [_build(DataSource, {"manifest": v} if isinstance(v, str) else v, f"{key}[{i}]")
                     for i, v in enumerate(items)]
        values[key] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"config: {where or 'top level'}: {err}") from None
    except ValueError as err:
        if not where:
            raise
        raise ValueError(f"config: {where}: {err}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A YAML config plus ``key=value`` overrides (dotted keys reach nested fields: ``lora.rank=64``).

    Override values are read as YAML, so ``epochs=3``, ``gradient_checkpointing=false`` and
    ``train=[a.jsonl, b.jsonl]`` mean what they say.
    """
    import yaml

    data: dict = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        data = loaded or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {parent} is not a mapping")
        target[leaf] = yaml.safe_load(raw)
    return _build(TrainConfig, data, "")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainItem:
    """One supervised answer: an image file, a task, its target value (a score on the task range or
    an attribute's value), and for chain-of-thought answers the sample's attributes.

    An item from a conversation file also carries the question asked (``question``: a task whose
    templates render it verbatim) and the answer written there (``answer``), trained as they are.
    """

    image: str
    task: str
    value: float | str
    source: str
    cot: bool = False
    attributes: tuple = ()  # (name, value) pairs, for CoT answers
    question: Task | None = None  # the task asked, when it is not the encoder's task named ``task``
    answer: str | None = None  # the answer verbatim; None: written from ``value``


def read_conversation_source(source: DataSource) -> tuple[list[TrainItem], list]:
    """A conversation source's items (question and answer verbatim) and its
    :class:`~realqa.conversations.Conversation` records (for the model card)."""
    from .conversations import read_conversations

    if not Path(source.conversations).is_file():
        raise ValueError(f"{source.conversations}: conversation file not found")
    conversations = read_conversations([source.conversations], source.media_dir)
    if not conversations:
        raise ValueError(f"{source.conversations}: the file holds no conversations")
    items = [TrainItem(c.image_path, c.task.name, c.label, source.conversations, c.cot, question=c.task,
                       answer=c.answer) for c in conversations]
    return items, conversations


def read_source(source: DataSource, log=print) -> tuple[list[TrainItem], list[AttributeSpec]]:
    """The source's samples with a value for its task, and the dataset's attribute schema.

    A score task needs a finite score on every sample (else an error naming the row). An attribute
    task uses the samples that annotate it; how many lack it is logged, never silently dropped.
    """
    from .data.manifest import read_manifest

    dataset = read_manifest(source.manifest)
    if source.split is not None:
        dataset = dataset.subset(source.split)
    schema = {spec.name: spec for spec in dataset.attribute_schema}
    is_attribute = source.task in schema and source.task not in dataset.tasks
    items, unannotated = [], 0
    for row, sample in enumerate(dataset.samples, 1):
        if is_attribute:
            value = sample.attributes.get(source.task)
            if value is None:
                unannotated += 1
                continue
        else:
            if source.task not in sample.scores:
                raise ValueError(f"{source.manifest}: sample {row} ({sample.id}) has no {source.task!r} score")
            value = sample.scores[source.task]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{source.manifest}: sample {row} ({sample.id}): score {value!r} is not a finite number")
            value = float(value)
        attributes = tuple(sorted((k, v) for k, v in sample.attributes.items() if k in schema)) if source.form == "cot" else ()
        items.append(TrainItem(str(dataset.image_path(sample)), source.task, value, source.manifest,
                               source.form == "cot", attributes))
    if unannotated:
        log(f"{source.manifest}: {unannotated} of {len(dataset.samples)} samples have no {source.task!r} value; "
            "they are not used for that task")
    return items, list(schema.values())


def attribute_tasks(schema: Sequence[AttributeSpec], decimals: int) -> dict[str, Task]:
    """One task per attribute: categorical values as listed, numeric ones as scores in their range."""
    tasks = {}
    for spec in schema:
        if spec.kind == "categorical":
            tasks[spec.name] = attribute_task(spec.name, values=[str(v) for v in spec.values])
            continue
        if spec.low is None or not (0 <= spec.low and spec.high < 10):
            raise ValueError(f"attribute {spec.name!r}: numeric range [{spec.low}, {spec.high}] does not fit one "
                             "integer digit; map it into 0..9.99 when preparing the data")
        whole = bool(spec.values) and all(float(v).is_integer() for v in spec.values)
        high = spec.high if spec.high > spec.low else spec.low + 1
        tasks[spec.name] = attribute_task(spec.name, low=spec.low, high=high, decimals=0 if whole else decimals)
    return tasks


def mix_sources(per_source: Sequence[tuple[DataSource, list[TrainItem]]], seed: int) -> list[TrainItem]:
    """Weighted mixture: each source repeated ``int(weight)`` times plus a seeded fraction of it."""
    rng = random.Random(seed)
    mixed: list[TrainItem] = []
    for source, items in per_source:
        if source.weight < 0:
            raise ValueError(f"{source.name}: weight must be >= 0, got {source.weight}")
        whole, fraction = divmod(source.weight, 1)
        mixed += items * int(whole)
        mixed += rng.sample(items, round(fraction * len(items)))
    rng.shuffle(mixed)
    return mixed


def check_images(items: Sequence[TrainItem], builder: ExampleBuilder) -> list[str]:
    """Decode every distinct image once, before training: problems are found now, not at step 9000."""
    from concurrent.futures import ThreadPoolExecutor

    from .media import load_image

    def problem(path: str) -> str | None:
        try:
            load_image(path, max_pixels=builder.max_image_pixels)
        except MediaError as err:
            return str(err)
        return None

    paths = sorted({item.image for item in items})
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [p for p in pool.map(problem, paths) if p is not None]


class AnswerEncoder:
    """Turns a :class:`TrainItem` into token ids and labels: question and image masked, answer supervised.

    Also records where the score's digits sit (for a CoT answer: the final score's), for the NCM
    loss and metrics.
    """

    def __init__(self, tokenizer, tasks: dict[str, Task], digit_ids: Sequence[int], attributes: Sequence[str] = (),
                 cot_form: str = "list"):
        self.tokenizer = tokenizer
        self.tasks = dict(tasks)
        self.attributes = [self.tasks[name] for name in attributes]
        self.cot_form = cot_form
        self.digit_ids = set(digit_ids)
        self._prompts: dict[tuple[str, bool], str] = {}

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(self.tasks)}")
        return self.tasks[name]

    def task_of(self, item: TrainItem) -> Task:
        """The task the item is asked: its own (a conversation's verbatim question), else the named one."""
        return item.question if item.question is not None else self.task(item.task)

    def answer(self, item: TrainItem) -> str:
        if item.answer is not None:
            return item.answer
        task = self.task(item.task)
        if item.cot:
            if not task.is_score:
                raise ValueError(f"chain-of-thought answers need a score task, not {task.name!r}")
            return cot_answer(task, item.value, self.attributes, dict(item.attributes), self.cot_form)
        return task.answer_text(item.value)

    def encode(self, item: TrainItem) -> tuple[list[int], list[int], list[int]]:
        """(input ids, labels, positions of the score digits; empty for a categorical answer)."""
        task = self.task_of(item)
        if task.is_score and not task.low <= item.value <= task.high:
            raise ValueError(f"score {item.value} is outside the {task.name} range [{task.low:g}, {task.high:g}]")
        key = (task, item.cot)
        if key not in self._prompts:
            self._prompts[key] = render_prompt(self.tokenizer, task, cot=item.cot, attributes=self.attributes)
        prompt = self._prompts[key]
        answer = self.answer(item)
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        prompt_ids = encode(prompt)
        full = encode(prompt + answer) + [self.tokenizer.eos_token_id]
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError(f"task {task.name!r}: the answer does not start on a token boundary")
        digits = []
        if task.is_score:
            number = task.value_text(item.value)
            end = score_span(task, answer, number, item.cot)[1]
            through_number = encode(prompt + answer[:end])
            digits = [i for i in range(len(prompt_ids), len(through_number)) if full[i] in self.digit_ids]
            digits = digits[-task.score_format.num_digits:]
            if [self.tokenizer.decode([full[i]]) for i in digits] != [ch for ch in number if ch.isdigit()]:
                raise ValueError(f"task {task.name!r}: the score {number!r} is not one token per digit")
        labels = [IGNORE_INDEX] * len(prompt_ids) + full[len(prompt_ids) :]
        return full, labels, digits


_WRITTEN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def score_span(task: Task, answer: str, number: str, cot: bool) -> tuple[int, int]:
    """Where ``answer`` writes its score (``number``, as the task writes the label): the first
    number in angle brackets of a chain-of-thought answer (where RealQA's evaluation reads it), the
    number right after the answer prefix of a plain one."""
    if cot:
        match = BRACKETED_SCORE.search(answer)
        span = match.span(1) if match else None
    else:
        match = _WRITTEN_NUMBER.match(answer, len(task.answer_prefix)) if answer.startswith(task.answer_prefix) else None
        span = match.span() if match else None
    if span is None:
        where = "in angle brackets" if cot else f"after {task.answer_prefix!r}"
        raise ValueError(f"task {task.name!r}: the answer has no score {where}: {answer[:80]!r}")
    if answer[span[0]:span[1]] != number:
        raise ValueError(f"task {task.name!r}: the answer writes the score {answer[span[0]:span[1]]!r}, "
                         f"not {number!r} (one integer digit, {task.decimals} decimal(s))")
    return span


class ScoreConversations(torch.utils.data.Dataset):
    """Training examples, built lazily so image decoding runs in the DataLoader workers."""

    def __init__(self, items: Sequence[TrainItem], encoder: AnswerEncoder, builder: ExampleBuilder):
        self.items = list(items)
        self.encoder = encoder
        self.builder = builder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        item = self.items[index]
        ids, labels, digits = self.encoder.encode(item)
        example = self.builder.build(item.image, item.image, ids, labels)
        shift = len(example.input_ids) - len(ids)  # the image placeholder became `shift + 1` tokens
        task = self.encoder.task_of(item)
        example.extra = {"digit_positions": [p + shift for p in digits]}
        if digits:
            fmt = task.score_format
            example.extra.update(target_value=float(fmt.format(item.value)), target_digits=fmt.digits(item.value))
        return example


class Collator:
    """Right-padded training batches plus the score-digit positions and targets."""

    def __init__(self, pad_id: int, image_token_id: int, token_types: bool):
        self.pad_id, self.image_token_id, self.token_types = pad_id, image_token_id, token_types

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        batch = collate(examples, pad_id=self.pad_id, image_token_id=self.image_token_id,
                        padding_side="right", token_types=self.token_types)
        width = max(len(e.extra["digit_positions"]) for e in examples)
        if width:  # rows without a score (categorical answers) are masked out of the NCM terms
            pad = lambda values: list(values) + [0] * (width - len(values))  # noqa: E731
            batch["digit_positions"] = torch.tensor([pad(e.extra["digit_positions"]) for e in examples])
            batch["digit_mask"] = torch.tensor([pad([1] * len(e.extra["digit_positions"])) for e in examples])
            batch["target_digits"] = torch.tensor([pad(e.extra.get("target_digits", [])) for e in examples])
            batch["target_value"] = torch.tensor([e.extra.get("target_value", 0.0) for e in examples])
        return batch


# ---------------------------------------------------------------- the trainer

_SCORE_KEYS = ("digit_positions", "digit_mask", "target_digits", "target_value")


def masked_ncm(logits: torch.Tensor, digit_ids: Sequence[int], mask: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NCM and NCM* per row over the positions ``mask`` keeps (scores of different lengths)."""
    probs = digit_probs(logits, digit_ids)  # (B, P, 10)
    values = torch.arange(10, dtype=probs.dtype, device=probs.device)
    place = torch.tensor([10.0**-i for i in range(probs.shape[1])], dtype=probs.dtype, device=probs.device)
    weight = place * mask.to(probs.dtype)
    expected = ((probs * values).sum(-1) * weight).sum(-1)
    wrong = 1.0 - torch.nn.functional.one_hot(labels.long(), 10).to(probs.dtype)
    expected_wrong = ((probs * values * wrong).sum(-1) * weight).sum(-1)
    return expected, expected_wrong


def digit_logits(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits that predict the tokens at ``positions`` (B, P): those of the position before each."""
    index = (positions - 1).clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def _trainer_class():
    from transformers import Trainer

    class ScoreTrainer(Trainer):
        """Cross-entropy on the answer, an optional NCM loss, and NCM metrics on evaluation batches."""

        def __init__(self, *args, digit_ids: Sequence[int], ncm_loss_weight: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.digit_ids = list(digit_ids)
            self.ncm_loss_weight = ncm_loss_weight
            self._ncm_totals: dict[str, float] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            score = {key: inputs.pop(key) for key in _SCORE_KEYS if key in inputs}
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            rows = score["digit_mask"].any(-1) if score else None
            if self.ncm_loss_weight and score and bool(rows.any()):
                expected, _ = masked_ncm(digit_logits(outputs.logits, score["digit_positions"]), self.digit_ids,
                                         score["digit_mask"], score["target_digits"])
                error = torch.nn.functional.mse_loss(expected[rows], score["target_value"][rows].float())
                loss = loss + self.ncm_loss_weight * error
            if not model.training and score:
                self._record_ncm(outputs.logits.detach(), score)
            return (loss, outputs) if return_outputs else loss

        def _record_ncm(self, logits: torch.Tensor, score: dict) -> None:
            rows = score["digit_mask"].any(-1)
            expected, wrong = masked_ncm(digit_logits(logits, score["digit_positions"]), self.digit_ids,
                                         score["digit_mask"], score["target_digits"])
            totals = self._ncm_totals
            totals["n"] = totals.get("n", 0) + int(rows.sum())
            totals["abs"] = totals.get("abs", 0.0) + float((expected - score["target_value"])[rows].abs().sum())
            totals["star"] = totals.get("star", 0.0) + float(wrong[rows].sum())

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, dict(inputs))
            return loss.detach(), None, None

        def evaluation_loop(self, *args, **kwargs):
            self._ncm_totals = {}
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", "eval")
            totals = self._gather_totals()
            if totals.get("n"):
                output.metrics[f"{prefix}_ncm_mae"] = totals["abs"] / totals["n"]
                output.metrics[f"{prefix}_ncm_star"] = totals["star"] / totals["n"]
            return output

        def _gather_totals(self) -> dict[str, float]:
            keys = ("n", "abs", "star")
            local = torch.tensor([float(self._ncm_totals.get(k, 0.0)) for k in keys], device=self.args.device)
            summed = self.accelerator.reduce(local, reduction="sum") if self.accelerator.num_processes > 1 else local
            return dict(zip(keys, summed.tolist()))

    return ScoreTrainer


def _held_out_callback(scorer_factory, sources: list[tuple[DataSource, list[TrainItem]]], every: int | None,
                       max_samples: int | None):
    """Scores the held-out images with the scorer (generation, as at inference) and logs SRCC/PLCC."""
    from transformers import TrainerCallback

    from .metrics import classification, evaluate

    class ScoreHeldOut(TrainerCallback):
        def __init__(self):
            self.trainer = None
            self.history: list[dict] = []

        def run(self, state) -> None:
            trainer = self.trainer
            if not trainer.is_world_process_zero() or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
                return  # sharded weights cannot score on one rank; run `realqa eval` on the output instead
            scorer = scorer_factory(trainer.model)
            was_training = trainer.model.training
            trainer.model.eval()
            logs = {}
            for source, all_items in sources:
                all_items = all_items[:max_samples] if max_samples else all_items
                groups: dict[tuple[str, bool], list[TrainItem]] = {}  # a conversation file may ask several tasks
                for item in all_items:
                    groups.setdefault((item.task, item.cot), []).append(item)
                for (task_name, cot), items in groups.items():
                    name = f"{Path(source.name).stem}_{task_name}" + ("_cot" if cot else "")
                    score_items(scorer, items, name, logs)
            if was_training:
                trainer.model.train()
            self.history.append({"step": state.global_step, **logs})
            trainer.log(logs)

        def on_step_end(self, args, state, control, **kwargs):
            if every and state.global_step % every == 0:
                self.run(state)

        def on_train_end(self, args, state, control, **kwargs):
            if not self.history or self.history[-1]["step"] != state.global_step:
                self.run(state)

    def score_items(scorer, items: list[TrainItem], name: str, logs: dict) -> None:
        """Each item asked its own question (items asked alike batch together); metrics into ``logs``."""
        from .engine import Question

        asked: dict = {}
        for position, item in enumerate(items):
            question = Question(item.question if item.question is not None else scorer.task(item.task), cot=item.cot)
            asked.setdefault(question, []).append(position)
        results = [None] * len(items)
        for question, positions in asked.items():
            answers = scorer.iter_questions([items[p].image for p in positions], [question])
            for position, answer in zip(positions, answers):
                results[position] = answer[0]
        labels = [item.value for item in items]
        if next(iter(asked)).task.is_score:
            for field_name in ("score", "ncm"):
                evaluation = evaluate([getattr(r, field_name) for r in results], labels)
                tag = f"heldout_{name}" + ("" if field_name == "score" else "_ncm")
                logs[f"{tag}_srcc"] = evaluation.srcc
                logs[f"{tag}_plcc"] = evaluation.plcc
                logs[f"{tag}_failed"] = evaluation.n_failed
        else:
            evaluation = classification([r.score if r.status == "ok" else None for r in results], labels)
            logs[f"heldout_{name}_accuracy"] = evaluation.accuracy
            logs[f"heldout_{name}_macro_f1"] = evaluation.macro_f1
            logs[f"heldout_{name}_failed"] = evaluation.n_failed
        logs[f"heldout_{name}_rows"] = len(items)

    return ScoreHeldOut()


# ---------------------------------------------------------------- entry point


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    train_loss: float
    wall_seconds: float
    log_history: list[dict]
    held_out: list[dict]
    model: Any = field(repr=False, default=None)


def lora_targets(model, train_vision_tower: bool) -> list[str]:
    """Every linear layer of the language model (and of the vision blocks when the tower trains).

    The multimodal projector (``merger``) and ``lm_head`` stay frozen, as in LLaMA-Factory.
    """
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lm_head" in name or "merger" in name:
            continue
        if "visual" in name and not train_vision_tower:
            continue
        names.append(name)
    return names


def _prepare_model(loaded: ScoringModel, config: TrainConfig):
    model = loaded.model
    model.train()
    if config.finetuning == "full":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = config.train_vision_tower or "visual" not in name
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.effective_alpha,
        lora_dropout=config.lora.dropout,
        target_modules=lora_targets(model, config.train_vision_tower),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input under frozen embeddings
    return model


def _load_dtype(config: TrainConfig) -> torch.dtype:
    """LoRA keeps the frozen base in the training precision (PEFT keeps adapters in fp32); full
    fine-tuning keeps fp32 master weights and lets autocast (or DeepSpeed) run in bf16/fp16."""
    amp = _precision(config)
    if config.finetuning == "lora" and amp.get("bf16"):
        return torch.bfloat16
    if config.finetuning == "lora" and amp.get("fp16"):
        return torch.float16
    return torch.float32


def _precision(config: TrainConfig) -> dict:
    if config.precision == "auto":
        if torch.cuda.is_available():
            return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}
        return {}
    return {"bf16": config.precision == "bf16", "fp16": config.precision == "fp16"}


def train(config: TrainConfig, *, log=print) -> TrainResult:
    """Run one fine-tuning job and write the adapter (or full model), processor files and card."""
    from transformers import TrainingArguments, set_seed

    from .engine import Scorer

    set_seed(config.seed)
    started = time.time()
    loaded = load_model(config.model, device="cpu", dtype=_load_dtype(config))
    builder = ExampleBuilder(loaded.image_processor, loaded.model.config.image_token_id,
                             min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                             preprocessing=config.preprocessing)

    read, conversations = {}, {}
    for source in config.train + config.eval:
        if source.conversations is not None:
            items, conversations[id(source)] = read_conversation_source(source)
            read[id(source)] = (items, [])
        else:
            read[id(source)] = read_source(source, log)
    train_sources = [(source, read[id(source)][0]) for source in config.train]
    eval_sources = [(source, read[id(source)][0]) for source in config.eval]
    written = sorted({c.task.decimals for records in conversations.values() for c in records if c.task.is_score})
    if written and written != [config.decimals]:
        log(f"conversation answers are trained as written ({'/'.join(map(str, written))} decimals); "
            f"decimals={config.decimals} applies to manifest sources only")
    schema = {spec.name: spec for _, specs in read.values() for spec in specs}
    tasks = {name: task.with_decimals(config.decimals) for name, task in loaded.card.tasks.items()}
    tasks.update(attribute_tasks(list(schema.values()), config.decimals))
    uses_cot = any(source.form == "cot" for source in config.train)
    asked = {source.task for source in config.train}
    attributes = [name for name in schema if uses_cot or name in asked]
    encoder = AnswerEncoder(loaded.tokenizer, tasks, loaded.digit_ids, attributes, config.cot_form)
    for source, items in train_sources + eval_sources:
        if source.task is not None:
            encoder.task(source.task)  # unknown task names fail now
        row_name = "record" if source.conversations is not None else "sample"
        for row, item in enumerate(items, 1):
            try:
                encoder.encode(item)
            except ValueError as err:
                raise ValueError(f"{source.name}: {row_name} {row}: {err}") from None
    card = _card(config, encoder, [c for source in config.train for c in conversations.get(id(source), [])], log)
    problems = check_images([item for _, items in train_sources + eval_sources for item in items], builder)
    if problems:
        listing = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise ValueError(f"{len(problems)} image(s) cannot be used; fix or drop them before training:\n  {listing}")
    train_items = mix_sources(train_sources, config.seed)
    eval_items = [item for _, items in eval_sources for item in items]
    log(f"training on {len(train_items)} examples from {len(train_sources)} source(s); "
        f"{len(eval_items)} held-out; {config.finetuning}, lr {config.lr:g}, decimals {config.decimals}")

    model = _prepare_model(loaded, config)
    token_types = accepts_token_types(model)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id
    do_eval = bool(eval_items)
    args = TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if do_eval and config.eval_steps else "no",
        eval_steps=config.eval_steps,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the collator's extra keys must reach compute_loss
        report_to=config.report_to,
        disable_tqdm=not config.progress_bar,
        deepspeed=config.deepspeed,
        ddp_find_unused_parameters=False,
        **_precision(config),
    )
    trainer_class = _trainer_class()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=ScoreConversations(train_items, encoder, builder),
        eval_dataset=ScoreConversations(eval_items, encoder, builder) if do_eval else None,
        data_collator=Collator(pad_id, loaded.model.config.image_token_id, token_types),
        digit_ids=loaded.digit_ids,
        ncm_loss_weight=config.ncm_loss_weight,
    )

    def scorer_for(current_model) -> Scorer:
        view = ScoringModel(current_model, loaded.tokenizer, loaded.image_processor, card, loaded.digit_ids,
                            "in-training")
        return Scorer(view, batch_size=max(1, config.per_device_batch_size * 2),
                      min_pixels=config.min_pixels, max_pixels=config.max_pixels)

    held_out = None
    if eval_sources:
        held_out = _held_out_callback(scorer_for, eval_sources, config.eval_steps, config.eval_max_samples)
        held_out.trainer = trainer
        trainer.add_callback(held_out)

    resume = config.resume_from_checkpoint
    outcome = trainer.train(resume_from_checkpoint=True if resume == "latest" else resume)
    if do_eval:
        trainer.evaluate()
    _save(trainer, loaded, config, card)
    wall = time.time() - started
    return TrainResult(
        output_dir=Path(config.output_dir),
        steps=outcome.global_step,
        train_loss=outcome.training_loss,
        wall_seconds=wall,
        log_history=list(trainer.state.log_history),
        held_out=held_out.history if held_out else [],
        model=trainer.model,
    )


def _card(config: TrainConfig, encoder: AnswerEncoder, conversations: Sequence = (), log=print) -> ModelCard:
    """What the output answers: the tasks trained, the attributes (asked or reasoned over), the CoT form,
    the image preprocessing.

    The conversation files' questions join the tasks verbatim (:func:`realqa.conversations.card_tasks`),
    so that scoring a plain folder asks what the model was trained on; where a conversation task has
    the name of a manifest-trained one, the conversation wording is kept (and logged). Their tasks other
    than quality and aesthetics are attributes (RealQA's composition, exposure, ...).
    """
    attribute_names = [task.name for task in encoder.attributes]
    manifest_tasks = [source.task for source in config.train if source.task is not None]
    used = [name for name in dict.fromkeys(manifest_tasks) if name not in attribute_names]
    tasks = {name: encoder.task(name) for name in used + attribute_names}
    if conversations:
        from .conversations import card_tasks

        asked, notes = card_tasks(list(conversations))
        for note in notes:
            log(f"model card: {note}")
        for name, task in asked.items():
            if name in tasks and tasks[name] != task:
                log(f"model card: {name!r} is asked as in the conversation files, not with realqa's wording")
            tasks[name] = task
        attribute_names += [name for name in asked if name not in DEFAULT_TASKS and name not in attribute_names]
    return ModelCard(
        tasks=tasks,
        description=f"{config.finetuning} fine-tune of {config.model} with realqa",
        trained_on=[source.name for source in config.train],
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        attributes=attribute_names,
        cot_form=config.cot_form if any(source.form == "cot" for source in config.train) else None,
        preprocessing=config.preprocessing,
        extra={"base_model": config.model, "finetuning": config.finetuning, "train_config": config.to_dict()},
    )


def _save(trainer, loaded: ScoringModel, config: TrainConfig, card: ModelCard) -> None:
    """The adapter (LoRA) or full weights, plus tokenizer, image processor and the card the scorer reads."""
    out = Path(config.output_dir)
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return
    loaded.tokenizer.save_pretrained(out)
    loaded.image_processor.save_pretrained(out)
    card.save(out)
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
