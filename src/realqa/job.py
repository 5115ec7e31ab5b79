"""A score job, typed: what to score, with which model, asking what, into which file, on what engine.

The command line builds a :class:`ScoreJob` from its flags and nothing below it sees ``argparse``.
The runner (:mod:`realqa.runner`) turns a job into ordered, resumable rows; a Ray actor receives
the job itself; ``bench`` and ``serve`` build their scorer from the same :class:`ModelOptions`.
:func:`iter_rows` is the one loop that scores a list of inputs, images and videos alike.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .numeric import MAX_DECIMALS
from .results import ScoreResult

__all__ = ["ModelOptions", "RayOptions", "ScoreJob", "TaskOptions", "VideoOptions", "iter_rows"]

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class ModelOptions:
    """Which model scores, and how it runs. Only the first group decides a row's content (see
    :meth:`identity`); the rest changes the speed."""

    model: str | None = None  # folder or hub id (owner/name[/subfolder]); None: the bundled demo model
    adapter: str | None = None
    card: str | None = None  # a realqa_card.json (or its folder) replacing the checkpoint's own
    dtype: str | None = None
    quantize: str | None = None
    preprocessing: str | None = None  # None: the card's profile
    min_pixels: int | None = None  # None: the card's bounds
    max_pixels: int | None = None
    device: str | None = None
    batch_size: int = 8
    workers: int | None = None  # None: up to 8 on a GPU, 0 on a CPU
    group_batches: int = 4
    attention: str = "auto"
    compile: bool = False  # torch.compile the language model
    compile_vision: bool = False  # torch.compile the vision tower's rotary embedding and MLPs

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number of pixels, got {value}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"--min-pixels {self.min_pixels} is above --max-pixels {self.max_pixels}")
        if self.batch_size < 1 or self.group_batches < 1 or (self.workers is not None and self.workers < 0):
            given = {"--batch-size": self.batch_size, "--group-batches": self.group_batches, "--workers": self.workers}
            raise ValueError("need --batch-size >= 1, --group-batches >= 1 and --workers >= 0, got "
                             + ", ".join(f"{flag} {value}" for flag, value in given.items() if value is not None))

    @property
    def model_path(self) -> str:
        """The model to load: the one named, else the bundled demo model (said on stderr)."""
        return self.model if self.model is not None else default_model()

    def load(self, *, own_questions: bool = False):
        """The :class:`~realqa.engine.Scorer` these options describe."""
        from .engine import load_scorer
        from .prefetch import default_workers

        options = {"batch_size": self.batch_size, "group_batches": self.group_batches}
        for name in ("min_pixels", "max_pixels", "preprocessing", "workers"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        scorer = load_scorer(self.model_path, self.adapter, device=self.device, dtype=self.dtype, quantize=self.quantize,
                             attention=self.attention, compile=self.compile, compile_vision=self.compile_vision, card=self.card,
                             own_questions=own_questions, **options)
        if self.workers is None:
            scorer.workers = default_workers(scorer.loaded.device)
        return scorer

    def identity(self) -> dict:
        """What decides a result row's content: recorded beside ``--out`` so a resume cannot mix two."""
        from .checkpoints import fingerprint
        from .model import _resolve_dtype, default_device, find_card
        from .models import demo_model_path

        model = self.model or str(demo_model_path())
        card, _ = find_card(model, self.adapter, self.card)
        return {
            "model": _identity(self.model) if self.model else "(the default model)",
            # The files themselves: a folder retrained in place, or a replaced bundled model, is another model.
            "model_files": fingerprint(model),
            "adapter_files": fingerprint(self.adapter),
            "card_files": fingerprint(self.card),
            "adapter": _identity(self.adapter) if self.adapter else None,
            "card": _identity(self.card) if self.card else None,
            "dtype": str(_resolve_dtype(self.dtype, self.device or default_device())).removeprefix("torch."),
            "quantize": self.quantize,
            "preprocessing": self.preprocessing or card.preprocessing,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }


@dataclass(frozen=True)
class TaskOptions:
    """What is asked of each input."""

    task: str = "quality"
    decimals: int | None = None  # None: the card's
    attributes: bool = False  # also every fine-grained attribute the model knows
    cot: bool = False  # reason over the attributes, then the score in <...>

    def __post_init__(self) -> None:
        if self.decimals is not None and not 0 <= self.decimals <= MAX_DECIMALS:
            raise ValueError(f"--decimals must be 0..{MAX_DECIMALS}, got {self.decimals}")


@dataclass(frozen=True)
class VideoOptions:
    """How video files are sampled and scored."""

    mode: str = "frames"  # frames: score sampled frames, the mean is the clip's; video: one video input
    frames: int = 8
    fps: float | None = None

    def __post_init__(self) -> None:
        from .media import FrameSampling
        from .video import MODES

        if self.mode not in MODES:
            raise ValueError(f"unknown video mode {self.mode!r}; use one of {', '.join(MODES)}")
        FrameSampling(frames=self.frames, fps=self.fps)  # raises on a bad count or rate

    def as_options(self) -> dict:
        """The ``video`` options of :func:`realqa.video.iter_with_videos`."""
        from .media import FrameSampling

        return {"mode": self.mode, "sampling": FrameSampling(frames=self.frames, fps=self.fps)}


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # default: $RAY_ADDRESS, else a local instance
    actors: int | None = None  # default: one per GPU in the cluster, else 1
    gpus_per_actor: float | None = None  # default: 1 where the cluster has GPUs, else 0
    batch_size: int | None = None  # inputs per actor call


@dataclass(frozen=True)
class ScoreJob:
    """One ``realqa score`` run."""

    inputs: tuple[str, ...]
    model: ModelOptions = field(default_factory=ModelOptions)
    ask: TaskOptions = field(default_factory=TaskOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    out: str | None = None  # None: rows are only returned (and printed by the CLI)
    overwrite: bool = False
    backend: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)
    progress: bool = True
    # How containers were read (--image-column, --split): another column is other images under the same row names.
    image_column: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")

    def check(self) -> list[str]:
        """Refuse, before anything is loaded or written, a task the model's card does not know, decimals
        it cannot write or was not trained at, chain of thought it was not trained for, or attributes it has
        none of; return the attribute columns the rows will have."""
        from .model import check_asked, find_card
        from .models import demo_model_path

        card, source = find_card(self.model.model or demo_model_path(), self.model.adapter, self.model.card)
        if self.ask.task not in card.tasks:
            raise ValueError(f"unknown task {self.ask.task!r}; this model answers: {', '.join(card.tasks)}")
        if self.ask.decimals is not None:
            card.tasks[self.ask.task].with_decimals(self.ask.decimals)  # a Task checks its format when made
        check_asked(card, source, self.ask.task, decimals=self.ask.decimals, cot=self.ask.cot)
        attributes = [name for name in card.attributes if name in card.tasks]
        if self.ask.attributes and not attributes:
            raise ValueError("this model's card lists no attribute tasks; it cannot answer --attributes")
        return attributes if (self.ask.attributes or self.ask.cot) else []

    def settings(self) -> dict:
        """What decides a row's content (batch size, workers, device and backend change only the speed)."""
        from .model import find_card
        from .models import demo_model_path

        sources = {name: getattr(self, name) for name in ("image_column", "split") if getattr(self, name) is not None}
        card, source = find_card(self.model.model or demo_model_path(), self.model.adapter, self.model.card)
        decimals = self.ask.decimals
        if source is not None and self.ask.task in card.tasks and decimals == card.tasks[self.ask.task].decimals:
            decimals = None  # the card's own precision, named or not: the same rows, so one resumable run
        return {**self.model.identity(), "task": self.ask.task, "decimals": decimals,
                "attributes": self.ask.attributes, "cot": self.ask.cot, "video_mode": self.video.mode,
                "frames": self.video.frames, "fps": self.video.fps, **sources}


def iter_rows(scorer, job: ScoreJob, inputs: Sequence[str], *, on_video: Callable | None = None,
              shown: bool = True, done: int = 0) -> Iterator[ScoreResult]:
    """The rows of ``inputs`` (images and videos, as the job asks) in input order, with a progress bar
    on stderr when ``shown`` and the job wants one."""
    from tqdm import tqdm

    from .video import iter_with_videos

    progress = tqdm(total=done + len(inputs), initial=done, unit="input", disable=not (job.progress and shown) or None,
                    file=sys.stderr)
    try:
        for result in iter_with_videos(scorer, inputs, job.ask.task, decimals=job.ask.decimals,
                                       video=job.video.as_options(), on_video=on_video, cot=job.ask.cot,
                                       attributes=job.ask.attributes):
            progress.update()
            yield result
    finally:
        progress.close()


def default_model() -> str:
    """The demo model bundled with the package (see ``realqa.models``); says which model scores."""
    from .models import demo_model_path

    folder = demo_model_path()
    print(f"note: no --model given; using the bundled demo model ({folder.name}): a small model trained on synthetic "
          "technical distortions that ranks blur, noise, JPEG damage and underexposure fairly well and other damage "
          "roughly (see its card); pass --model for a RealQA checkpoint", file=sys.stderr)
    return str(folder)


def _identity(path: str) -> str:
    """A local folder or file by its absolute path (the same one named two ways is one model); a hub id as given."""
    import os
    from pathlib import Path

    return str(Path(path).resolve()) if os.path.exists(path) else path
