"""A metric-registry API in the shape pyiqa users know: ``create_metric(name)`` -> a callable metric.

    >>> import realqa
    >>> realqa.list_models()                                        # doctest: +SKIP
    ['realqa-demo', 'realqa-ava', 'realqa-koniq', 'realqa-realqa']
    >>> metric = realqa.create_metric("realqa-demo", device="cpu")  # doctest: +SKIP
    >>> metric(["a.jpg", "b.jpg"])                                  # doctest: +SKIP
    tensor([3.1242, 2.8710], dtype=torch.float64)

A metric scores paths (images, or video files as ``realqa score`` does), PIL images, NumPy arrays
(HWC uint8) and float tensors ``(3, H, W)`` or ``(N, 3, H, W)`` (N images, alone or in a list) in [0, 1],
one value per image in order, through the same scorer and row loop as
``realqa score`` (:class:`realqa.job.ModelOptions` loads it, :func:`realqa.job.iter_rows` scores),
so it gives the same numbers. An input that cannot be used is NaN in the returned tensor; the full
rows (:class:`realqa.results.ScoreResult`: text, status, error, ``ncm_std``) come from
:meth:`Metric.score_rows` or ``metric(inputs, return_rows=True)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from .checkpoints import is_hub_id
from .media import MediaError
from .prefetch import input_label
from .results import ScoreResult

__all__ = ["Metric", "ModelEntry", "create_metric", "list_models", "register_model"]

VALUES = ("ncm", "score")

# The official RealQA LoRA adapters (one repository, one adapter per subfolder) on their base model.
# The subfolder names below could not be checked from here (no network): if the repository names
# them otherwise, pass ``adapter="MingxingLi/RealQA-models/NAME"`` to :func:`create_metric`.
OFFICIAL_BASE = "Qwen/Qwen2-VL-7B-Instruct"
OFFICIAL_ADAPTERS = "MingxingLi/RealQA-models"


@dataclass(frozen=True)
class ModelEntry:
    """What a name in the registry loads: a model folder or hub id, an optional adapter and card, and the
    task the metric asks by default."""

    name: str
    model: str
    adapter: str | None = None
    card: str | None = None
    task: str = "quality"
    description: str = ""


def _demo_entry() -> ModelEntry | None:
    """The bundled demo model, or None in a build without it (the other names stay usable)."""
    from .models import demo_model_path

    try:
        folder = demo_model_path()
    except FileNotFoundError:
        return None
    return ModelEntry("realqa-demo", str(folder), description=(
        "the demo model bundled with realqa: small, trained on synthetic technical distortions only (see its card)"))


_OFFICIAL = (
    ModelEntry("realqa-koniq", OFFICIAL_BASE, f"{OFFICIAL_ADAPTERS}/koniq", task="quality",
               description="the official RealQA KonIQ-10k LoRA adapter on Qwen2-VL-7B-Instruct (quality, 1-5)"),
    ModelEntry("realqa-ava", OFFICIAL_BASE, f"{OFFICIAL_ADAPTERS}/ava", task="aesthetics",
               description="the official RealQA AVA LoRA adapter on Qwen2-VL-7B-Instruct (aesthetics, 1-10)"),
    ModelEntry("realqa-realqa", OFFICIAL_BASE, f"{OFFICIAL_ADAPTERS}/realqa", task="quality",
               description="the official RealQA (UGC) LoRA adapter on Qwen2-VL-7B-Instruct"),
)
_registered: dict[str, ModelEntry] = {}  # register_model's names, in the order they came


def _entries() -> dict[str, ModelEntry]:
    """Every known name: the bundled demo model, the official presets, then the registered folders
    (a registered name may replace a preset)."""
    known = {entry.name: entry for entry in (_demo_entry(), *_OFFICIAL) if entry is not None}
    known.update(_registered)
    return known


def list_models() -> list[str]:
    """The names :func:`create_metric` knows: the bundled demo model, the official checkpoints (by hub
    id), and the folders registered with :func:`register_model`."""
    return list(_entries())


def register_model(name: str, path: str | os.PathLike, *, adapter: str | os.PathLike | None = None,
                   card: str | os.PathLike | None = None, task: str = "quality", description: str = "",
                   overwrite: bool = False) -> ModelEntry:
    """Make ``name`` load ``path`` (a model folder, e.g. a ``realqa train`` output, or a hub id), with an
    optional ``adapter`` and ``card``; ``task`` is the metric's default question. The name lasts for this
    process. A name already known is refused unless ``overwrite``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")
    if name in _entries() and not overwrite:
        raise ValueError(f"{name!r} is already a known model; pass overwrite=True to replace it")
    for what, spec in (("path", path), ("adapter", adapter), ("card", card)):
        if spec is not None and not Path(spec).exists() and (what == "card" or not is_hub_id(spec)):
            raise ValueError(f"register_model({name!r}): {what} {os.fsdecode(spec)!r} is neither an existing "
                             f"{'file or folder' if what == 'card' else 'folder nor a hub id (owner/name)'}")
    entry = ModelEntry(name, os.fsdecode(path), None if adapter is None else os.fsdecode(adapter),
                       None if card is None else os.fsdecode(card), task, description)
    _registered[name] = entry
    return entry


def _resolve(name_or_path: str | os.PathLike) -> ModelEntry:
    text = os.fsdecode(name_or_path)
    known = _entries()
    if text in known:
        return known[text]
    if Path(text).exists() or is_hub_id(text):
        return ModelEntry(text, text)
    raise ValueError(f"unknown model {text!r}: not a known name, an existing folder or a hub id (owner/name). "
                     f"Known names: {', '.join(known)}")


def create_metric(name_or_path: str | os.PathLike, *, task: str | None = None, decimals: int | None = None,
                  value: str = "ncm", adapter: str | None = None, card: str | None = None, device: str | None = None,
                  dtype: str | None = None, batch_size: int = 8, **options: Any) -> "Metric":
    """A metric for a known name (:func:`list_models`), a model folder or a hub id.

    ``task``: the question asked (default: the entry's, ``quality`` for a folder); ``decimals``: digits
    after the point in the answer (default: the model card's); ``value``: what the metric returns,
    ``"ncm"`` (default: the expected score from the digit probabilities, continuous) or ``"score"``
    (the number the model wrote, greedy). ``adapter`` and ``card`` replace the entry's. ``device``,
    ``dtype``, ``batch_size`` and the other ``options`` (``min_pixels``, ``max_pixels``, ``preprocessing``,
    ``quantize``, ``workers``, ``group_batches``, ``attention``, ``compile``) are
    :class:`realqa.job.ModelOptions`, the ones ``realqa score`` takes as flags.
    """
    from .job import ModelOptions, TaskOptions

    if value not in VALUES:
        raise ValueError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
    allowed = {f.name for f in fields(ModelOptions)} - {"model", "adapter", "card", "device", "dtype", "batch_size"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"create_metric: unknown option(s) {', '.join(unknown)}; known: "
                        f"task, decimals, value, adapter, card, device, dtype, batch_size, {', '.join(sorted(allowed))}")
    entry = _resolve(name_or_path)
    model = ModelOptions(model=entry.model, adapter=adapter if adapter is not None else entry.adapter,
                         card=card if card is not None else entry.card, device=device, dtype=dtype,
                         batch_size=batch_size, **options)
    ask = TaskOptions(task if task is not None else entry.task, decimals)
    return Metric(model.load(), ask, value=value, entry=replace(entry, adapter=model.adapter, card=model.card))


class Metric:
    """Scores images with one model and question; call it on inputs for a 1-D tensor of scores.

    Made by :func:`create_metric`. ``score_range`` is the task's (low, high); ``lower_better`` is False
    (a higher score is a better image). A returned value is NaN where the row's status is not ``ok`` (the
    input failed, the answer held no number, or the number was outside the range) or, for ``value="ncm"``,
    where the digits of the answer could not be read one token each; the row says which.
    """

    lower_better = False

    def __init__(self, scorer, ask, *, value: str = "ncm", entry: ModelEntry | None = None):
        """``scorer``: a :class:`~realqa.engine.Scorer`; ``ask``: a :class:`~realqa.job.TaskOptions`; ``entry``:
        what was loaded (:attr:`entry`, for the record)."""
        from .job import ScoreJob

        if value not in VALUES:
            raise ValueError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
        self.scorer = scorer
        self.entry = entry or ModelEntry("model", scorer.loaded.name)
        self.name = self.entry.name
        self.value = value
        self.task = scorer.task(ask.task, ask.decimals)  # an unknown task or bad decimals fail here
        if not self.task.is_score:
            raise ValueError(f"task {self.task.name!r} answers words, not scores; a metric needs a score task")
        self._job = ScoreJob((), ask=ask, progress=False)

    @property
    def score_range(self) -> tuple[float, float]:
        return (self.task.low, self.task.high)

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, task={self.task.name!r}, value={self.value!r}, range={self.score_range})"

    def __call__(self, inputs, *, return_rows: bool = False):
        """The scores of ``inputs`` as a float64 tensor, one per input in order (NaN: no usable score);
        with ``return_rows``, ``(scores, rows)``."""
        rows = self.score_rows(inputs)
        scores = torch.tensor([self.value_of(row) for row in rows], dtype=torch.float64)
        return (scores, rows) if return_rows else scores

    def value_of(self, row: ScoreResult) -> float:
        """A row's value as the metric returns it: its NCM or written score when its status is ``ok``, else NaN."""
        number = row.ncm if self.value == "ncm" else row.score
        return float(number) if row.status == "ok" and isinstance(number, (int, float)) else math.nan

    def score_rows(self, inputs) -> list[ScoreResult]:
        """One :class:`~realqa.results.ScoreResult` per input, in order (``ncm_std`` included). In-memory
        inputs are named ``<image N>`` by their position; an input that cannot be made an image is an error row."""
        from .job import iter_rows

        items = as_inputs(inputs)
        labels = [input_label(i, item) for i, item in enumerate(items)]
        rows: list[ScoreResult | None] = [None] * len(items)
        usable: list[tuple[int, Any]] = []
        for i, item in enumerate(items):
            try:
                usable.append((i, to_scorable(item, labels[i])))
            except MediaError as err:
                rows[i] = ScoreResult.failed(labels[i], self.task.name, str(err))
        scored = iter_rows(self.scorer, self._job, [item for _, item in usable], shown=False)
        for (i, _), row in zip(usable, scored):
            rows[i] = _named(row, labels[i])
        return rows


def as_inputs(inputs) -> list:
    """``inputs`` as a list of single inputs, one per output in order: a tensor ``(N, 3, H, W)`` is its N
    images, alone or in a list (in its place there); ``(3, H, W)``, a path, a PIL image or an array is one;
    a list or tuple holds any of them. An in-memory image is then named by its index here, its output's."""
    single = (str, bytes, os.PathLike, Image.Image, np.ndarray, torch.Tensor)
    items = list(inputs) if isinstance(inputs, Iterable) and not isinstance(inputs, single) else [inputs]
    return [image for item in items
            for image in (item.unbind(0) if isinstance(item, torch.Tensor) and item.ndim == 4 else (item,))]


def to_scorable(item, label: str):
    """A path or PIL image the scorer takes; arrays and tensors are converted exactly. Raises
    :class:`~realqa.media.MediaError` naming ``label`` for anything else."""
    if isinstance(item, (str, bytes, os.PathLike)):
        return os.fsdecode(item)
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return array_to_image(item, label)
    if isinstance(item, torch.Tensor):
        return tensor_to_image(item, label)
    raise MediaError(label, f"cannot score a {type(item).__name__}; pass a path, a PIL image, a NumPy array (HWC uint8) "
                            "or a float tensor (3, H, W) in [0, 1]")


_ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def array_to_image(array: np.ndarray, label: str = "<image>") -> Image.Image:
    """An HWC (or HW) uint8 array as a PIL image: 1 channel grey, 3 RGB, 4 RGBA."""
    if array.dtype != np.uint8:
        raise MediaError(label, f"a NumPy image must be uint8 (HWC, 0-255), got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _ARRAY_MODES:
        raise MediaError(label, f"a NumPy image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                                f"got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MediaError(label, f"a NumPy image has no pixels (shape {array.shape})")
    channels = array.shape[2]
    data = np.ascontiguousarray(array[:, :, 0] if channels == 1 else array)
    return Image.fromarray(data, _ARRAY_MODES[channels])


def tensor_to_image(tensor: torch.Tensor, label: str = "<image>") -> Image.Image:
    """A float tensor (3, H, W) in [0, 1] as an RGB image: each value times 255, **rounded** to the nearest
    level (x = k / 255 comes back as k exactly; truncating would turn a value a hair under k / 255 into k - 1).
    Values outside [0, 1] or not finite are refused, not clipped."""
    if not tensor.is_floating_point():
        raise MediaError(label, f"a tensor image must hold floats in [0, 1], got dtype {tensor.dtype}")
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise MediaError(label, f"a tensor image must have shape (3, H, W) (a batch: (N, 3, H, W)), "
                                f"got {tuple(tensor.shape)}")
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise MediaError(label, f"a tensor image has no pixels (shape {tuple(tensor.shape)})")
    values = tensor.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise MediaError(label, "a tensor image holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise MediaError(label, f"a tensor image must hold values in [0, 1], got min {low:g}, max {high:g}")
    levels = (values * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(levels, "RGB")


def _named(row: ScoreResult, label: str) -> ScoreResult:
    """A row under the caller's name for its input (the row loop numbers in-memory images among its own)."""
    if row.path == label:
        return row
    error = row.error
    if error is not None and error.startswith(row.path):
        error = label + error[len(row.path):]
    return replace(row, path=label, error=error)
