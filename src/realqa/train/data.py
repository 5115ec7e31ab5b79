"""Training data: samples read from manifests and conversation files, encoded as supervised answers
(question and image masked, answer supervised, the score's digit positions recorded), and batched."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..batching import IGNORE_INDEX, Example, ExampleBuilder, collate
from ..chat import cot_answer, render_prompt
from ..conversations import BRACKETED_SCORE
from ..data.attributes import AttributeSpec
from ..media import MediaError
from ..tasks import Task, attribute_task
from .config import DataSource


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
    from ..conversations import read_conversations

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
    from ..data.manifest import read_manifest

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
                raise ValueError(
                    f"{source.manifest}: sample {row} ({sample.id}): score {value!r} is not a finite number"
                )
            value = float(value)
        attributes = (
            tuple(sorted((k, v) for k, v in sample.attributes.items() if k in schema)) if source.form == "cot" else ()
        )
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
        whole, fraction = divmod(source.weight, 1)
        mixed += items * int(whole)
        mixed += rng.sample(items, round(fraction * len(items)))
    rng.shuffle(mixed)
    return mixed


def check_images(items: Sequence[TrainItem], builder: ExampleBuilder) -> list[str]:
    """Decode every distinct image once, before training: problems are found now, not at step 9000."""
    from concurrent.futures import ThreadPoolExecutor

    from ..media import load_image

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
        match = (
            _WRITTEN_NUMBER.match(answer, len(task.answer_prefix)) if answer.startswith(task.answer_prefix) else None
        )
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
