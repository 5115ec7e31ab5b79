"""Training configuration: a YAML file plus ``key=value`` overrides, read into :class:`TrainConfig`.

The defaults follow RealQA's official LLaMA-Factory configs (see :mod:`realqa.train`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from ..chat import cot_form
from ..model import MAX_PIXELS, MIN_PIXELS
from ..numeric import MAX_DECIMALS
from ..preprocessing import DEFAULT_PROFILE, profile

DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}


def _require(key: str, value: Any, allowed: str, ok: Callable[[Any], bool], *,
             integer: bool = False, none: bool = False) -> None:
    """Fail naming ``key``, what it allows and what it got, unless ``value`` is a finite number (an int
    where ``integer``) that ``ok`` accepts, or None where ``none`` allows it. Checked when the config is
    read, so a nonsense setting stops the run before the model and images load."""
    if value is None and none:
        return
    number = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not number or not ok(value):
        raise ValueError(f"{key} must be {allowed}, got {value!r}")


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
        _require(f"{self.name}: weight", self.weight, "a number >= 0 (times each sample is seen per epoch)",
                 lambda v: v >= 0)
        if self.conversations is not None:
            given = [key for key in ("task", "form", "split") if getattr(self, key) is not None]
            if given:
                raise ValueError(
                    f"{self.conversations}: {', '.join(given)} {'does' if len(given) == 1 else 'do'} "
                    "not apply to a conversation source (its questions and answers are read from the file)"
                )
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

    def __post_init__(self) -> None:
        _require("rank", self.rank, "an integer >= 1", lambda v: v >= 1, integer=True)
        _require("alpha", self.alpha, "an integer >= 1 (or unset: 2 x rank)", lambda v: v >= 1, integer=True, none=True)
        _require("dropout", self.dropout, "in [0, 1)", lambda v: 0 <= v < 1)

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
    license: str | None = None  # the output's licence, for its README.md model card (default: unknown)

    def __post_init__(self) -> None:
        if self.finetuning not in DEFAULT_LR:
            raise ValueError(f"finetuning must be 'lora' or 'full', got {self.finetuning!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not self.train:
            raise ValueError("the config lists no training data (train: [...])")
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise ValueError(f"decimals must be 0..{MAX_DECIMALS}, got {self.decimals}")
        profile(self.preprocessing)  # an unknown profile fails at start, naming the known ones
        try:
            cot_form(self.cot_form)
        except ValueError as err:
            raise ValueError(f"cot_form: {err}") from None
        from transformers import SchedulerType

        schedulers = [kind.value for kind in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise ValueError(f"lr_scheduler must be one of {', '.join(schedulers)}; got {self.lr_scheduler!r}")
        positive, at_least_0 = (lambda v: v > 0), (lambda v: v >= 0)
        count = "an integer >= 1"
        _require("learning_rate", self.learning_rate, "a number > 0 (or unset: 1e-4 for LoRA, 1e-5 for full)",
                 positive, none=True)
        _require("epochs", self.epochs, "a number > 0", positive)
        # -1 is Hugging Face's "no step limit": the run lasts `epochs`. 0 would still run one step.
        _require("max_steps", self.max_steps, "an integer >= 1, or -1 (the default: train for `epochs`)",
                 lambda v: v == -1 or v >= 1, integer=True)
        _require("per_device_batch_size", self.per_device_batch_size, count, positive, integer=True)
        _require("gradient_accumulation_steps", self.gradient_accumulation_steps, count, positive, integer=True)
        # Passed to the Trainer as warmup_steps, which reads a float below 1 as a fraction of the steps.
        _require("warmup_ratio", self.warmup_ratio, "in [0, 1) (a fraction of the training steps)",
                 lambda v: 0 <= v < 1)
        _require("weight_decay", self.weight_decay, "a number >= 0", at_least_0)
        _require("max_grad_norm", self.max_grad_norm, "a number >= 0 (0: no clipping)", at_least_0)
        _require("ncm_loss_weight", self.ncm_loss_weight, "a number >= 0 (0: off)", at_least_0)
        _require("eval_steps", self.eval_steps, f"{count} (or unset: at the end only)", positive,
                 integer=True, none=True)
        _require("eval_max_samples", self.eval_max_samples, f"{count} (or unset: all)", positive,
                 integer=True, none=True)
        _require("logging_steps", self.logging_steps, count, positive, integer=True)
        _require("save_steps", self.save_steps, count, positive, integer=True)
        _require("save_total_limit", self.save_total_limit, f"{count} (or unset: keep every checkpoint)",
                 positive, integer=True, none=True)
        _require("seed", self.seed, "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32, integer=True)
        _require("min_pixels", self.min_pixels, count, positive, integer=True)
        _require("max_pixels", self.max_pixels, f"an integer >= min_pixels ({self.min_pixels})",
                 lambda v: v >= self.min_pixels, integer=True)
        _require("dataloader_num_workers", self.dataloader_num_workers, "an integer >= 0", at_least_0, integer=True)

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
                raise ValueError(
                    f"config: {where + '.' if where else ''}{key} must be a number, got {value!r}"
                ) from None
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
