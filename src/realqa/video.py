"""Video quality, zero-shot: score sampled frames (:func:`realqa.media.sample_frames`) with an image scorer.

Two ways to score a clip (``mode``):

- ``"frames"``: every sampled frame is scored as an image; the clip's score is the mean of the frame
  scores, which are kept (:attr:`VideoScore.frames`, or a side file via :class:`FrameWriter`).
- ``"video"``: the sampled frames go to Qwen2-VL as one video input (frame pairs share a temporal
  patch, ``<|video_pad|>`` placeholders, ``pixel_values_videos``); the model answers once per clip.

"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image

from .compat import accepts_token_types, base_model, forward_parameters
from .media import FrameSampling, MediaError, SampledFrame, is_video, sample_frames
from .numeric import PARSE_NO_SCORE, PARSE_OK, PARSE_OUT_OF_RANGE
from .results import STATUS_ERROR, ScoreResult, spreadsheet_safe

__all__ = [
    "MODES",
    "FrameScore",
    "VideoScore",
    "FrameWriter",
    "score_video",
    "score_videos",
    "iter_with_videos",
    "video_inputs",
]

MODES = ("frames", "video")


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class FrameScore:
    index: int
    time: float
    score: float | None
    ncm: float | None
    status: str
    text: str
    ncm_std: float | None = None

    def to_row(self) -> dict:
        return {"index": self.index, "time": round(self.time, 3), "score": self.score, "ncm": self.ncm,
                "ncm_std": self.ncm_std, "status": self.status, "text": self.text}


@dataclass(frozen=True)
class VideoScore:
    """A clip's row (``result``: same fields as an image's, ``path`` = the video) and its frames.

    In ``"frames"`` mode each frame carries its score; in ``"video"`` mode only its time.
    """

    result: ScoreResult
    mode: str
    duration: float | None = None
    frames: tuple[FrameScore, ...] = ()


def score_video(
    scorer,
    path: str | os.PathLike,
    task: str = "quality",
    *,
    mode: str = "frames",
    sampling: FrameSampling = FrameSampling(),
    decimals: int | None = None,
    batch_size: int | None = None,
) -> VideoScore:
    """Score one video file with an image :class:`~realqa.engine.Scorer`; bad files give an error row."""
    if mode not in MODES:
        raise ValueError(f"unknown video mode {mode!r}; use one of {', '.join(MODES)}")
    spec = scorer.task(task, decimals)  # unknown task or decimals: raise before decoding anything
    if not getattr(spec, "is_score", True):
        raise ValueError(f"task {spec.name!r} answers words, not scores; a video's frames cannot be averaged")
    label = os.fsdecode(path)
    try:
        frames, duration = sample_frames(path, sampling, max_pixels=scorer.examples.max_image_pixels)
    except MediaError as err:
        return VideoScore(ScoreResult.failed(label, spec.name, str(err)), mode)
    if mode == "video":
        result = _score_as_video(scorer, frames, duration, spec, label)
        kept = tuple(FrameScore(f.index, f.time, None, None, "", "") for f in frames)
        return VideoScore(result, mode, duration, kept)
    results = scorer.score([f.image for f in frames], spec.name, decimals=decimals, batch_size=batch_size)
    scored = tuple(FrameScore(f.index, f.time, r.score, r.ncm, r.status, r.text or r.error or "", r.ncm_std)
                   for f, r in zip(frames, results))
    return VideoScore(_mean_of_frames(label, spec.name, scored), mode, duration, scored)


def score_videos(scorer, paths: Iterable[str | os.PathLike], task: str = "quality", **options) -> Iterator[VideoScore]:
    """:func:`score_video` for each path, in order (options as there)."""
    for path in paths:
        yield score_video(scorer, path, task, **options)


def iter_with_videos(
    scorer,
    inputs: Iterable[str | os.PathLike],
    task: str = "quality",
    *,
    decimals: int | None = None,
    batch_size: int | None = None,
    video: dict | None = None,
    on_video: Callable[[VideoScore], None] | None = None,
    **image_options,
) -> Iterator[ScoreResult]:
    """One row per input (a path or a PIL image), in input order: images batched by ``scorer.iter_scores`` (with
    ``image_options``, e.g. ``attributes``), video files (:func:`is_video`) by :func:`score_video`
    with the ``video`` options; ``on_video`` sees each :class:`VideoScore` (e.g.
    ``FrameWriter.write``) before its row is yielded."""
    inputs = list(inputs)
    asked = sorted(name for name, value in image_options.items() if value)
    if asked and any(_is_video_file(item) for item in inputs):
        raise ValueError(f"{', '.join(asked)}: not available for videos; score the videos separately")
    images: list = []
    for item in inputs:
        if not _is_video_file(item):
            images.append(item)
            continue
        if images:
            yield from scorer.iter_scores(images, task, decimals=decimals, batch_size=batch_size, **image_options)
            images = []
        scored = score_video(scorer, item, task, decimals=decimals, batch_size=batch_size, **(video or {}))
        if on_video is not None:
            on_video(scored)
        yield scored.result
    if images:
        yield from scorer.iter_scores(images, task, decimals=decimals, batch_size=batch_size, **image_options)


def _is_video_file(item) -> bool:
    """A path naming a video file; in-memory images (PIL) are never videos."""
    return isinstance(item, (str, bytes, os.PathLike)) and is_video(item)


def _mean_of_frames(label: str, task: str, frames: Sequence[FrameScore]) -> ScoreResult:
    """The clip's row: the mean frame score, only when every frame has one (none is dropped).

    Its ``ncm_std`` is the mean of the frames' spreads: the standard deviation of the mean frame NCM when
    the frames' errors move together (the frames of one clip show one scene), and an upper bound on it for
    any correlation between frames (the spread of a sum is at most the sum of the spreads)."""
    missing = [f for f in frames if f.score is None]
    listing = " ".join(f"{f.score:g}" if f.score is not None else f.status for f in frames)
    if missing:
        statuses = {f.status for f in missing}
        status = STATUS_ERROR if statuses == {STATUS_ERROR} else PARSE_NO_SCORE
        return ScoreResult(label, task, None, None, status, f"frames: {listing}",
                           f"{len(missing)} of {len(frames)} frames have no score (first: frame {missing[0].index} "
                           f"at {missing[0].time:.2f}s: {missing[0].text or missing[0].status})")
    score = sum(f.score for f in frames) / len(frames)
    ncm = _mean([f.ncm for f in frames])
    status = PARSE_OUT_OF_RANGE if any(f.status == PARSE_OUT_OF_RANGE for f in frames) else PARSE_OK
    return ScoreResult(label, task, score, ncm, status, f"mean of {len(frames)} frames: {listing}",
                       ncm_std=_mean([f.ncm_std for f in frames]))


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, only when every value is there."""
    return sum(values) / len(values) if values and all(v is not None for v in values) else None


# ---------------------------------------------------------------- mode "video": one Qwen2-VL video input


def video_inputs(scorer, frames: Sequence[Image.Image], task, *, duration: float | None = None) -> dict[str, torch.Tensor]:
    """Model inputs asking ``task`` about ``frames`` as one video (batch of one, on the model's device).

    Each frame goes through the checkpoint's image processor (same resizing and normalisation as
    images). An image's patch repeats its frame over the ``temporal_patch_size`` (2) temporal slots;
    a video patch holds consecutive frames there instead, pairs in order, the last frame repeated to
    fill the final pair, exactly as transformers' Qwen2-VL video processor lays them out.
    """
    loaded = scorer.loaded
    processor = loaded.image_processor
    step, patch, merge = processor.temporal_patch_size, processor.patch_size, processor.merge_size
    images = list(frames) + [frames[-1]] * (-len(frames) % step)
    features = processor(images=images, size=scorer.examples.size, return_tensors="pt")
    grids = features["image_grid_thw"]
    if not bool((grids == grids[0]).all()):
        raise ValueError("all frames of a video must have the same size")
    per_frame = int(grids[0].prod())
    channels = features["pixel_values"].shape[1] // (step * patch * patch)
    pixels = features["pixel_values"].view(len(images), per_frame, channels, step, patch, patch)[:, :, :, 0]
    groups = len(images) // step
    pixels = pixels.view(groups, step, per_frame, channels, patch, patch).permute(0, 2, 3, 1, 4, 5)
    grid = torch.tensor([[groups, int(grids[0, 1]), int(grids[0, 2])]])

    config = loaded.model.config
    prompt = scorer.prompt_ids(task)
    at = prompt.index(config.image_token_id)
    tokens = groups * per_frame // merge**2
    input_ids = torch.tensor([prompt[:at] + [config.video_token_id] * tokens + prompt[at + 1:]])
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": pixels.reshape(groups * per_frame, -1),
        "video_grid_thw": grid,
    }
    if accepts_token_types(loaded.model):
        batch["mm_token_type_ids"] = (input_ids == config.video_token_id).long() * 2  # 2 = video
    if duration and "second_per_grid_ts" in forward_parameters(loaded.model):
        # Qwen2.5-VL spaces temporal positions by real time: seconds covered by one temporal patch.
        batch["second_per_grid_ts"] = torch.tensor([step * duration / len(frames)])
    batch = {key: value.to(loaded.device) for key, value in batch.items()}
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(loaded.dtype)
    return batch


def mrope_positions(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's M-RoPE ``position_ids`` (3, 1, length), by the model's own ``get_rope_index`` (a video's
    temporal spacing differs between Qwen2-VL and Qwen2.5-VL), and the ``next_position`` of the first
    answer token."""
    video_id = model.config.video_token_id
    token_types = (batch["input_ids"] == video_id).long() * 2  # 2 = video
    wanted = ("video_grid_thw", "second_per_grid_ts", "attention_mask")  # Qwen2-VL takes (and ignores) the seconds
    positions, _ = base_model(model).model.get_rope_index(batch["input_ids"], mm_token_type_ids=token_types,
                                                          **{key: batch[key] for key in wanted if key in batch})
    return {"position_ids": positions, "next_position": positions.amax(dim=(0, 2)) + 1}


def _score_as_video(scorer, frames: Sequence[SampledFrame], duration: float, task, label: str) -> ScoreResult:
    """One greedy answer to the frames as one video input, from the engine's own prefill and decode loop,
    read exactly as an image's answer is read (parsing, NCM at the digit positions)."""
    from .engine import Question

    try:
        batch = video_inputs(scorer, [f.image for f in frames], task, duration=duration)
    except ValueError as err:  # e.g. an aspect ratio the processor refuses
        return ScoreResult.failed(label, task.name, f"{label}: video cannot be preprocessed ({err})")
    with torch.inference_mode():
        positions = mrope_positions(scorer.loaded.model, batch)
    return scorer.answer_prepared({**batch, **positions}, Question(task), label)


# ---------------------------------------------------------------- per-frame side file


class FrameWriter:
    """Writes every clip's frames to a CSV side file (``video, index, time, score, ncm, ncm_std, status, text``)."""

    FIELDS = ("video", "index", "time", "score", "ncm", "ncm_std", "status", "text")

    def __init__(self, path: str | os.PathLike, *, keep: Sequence[str] | None = None):
        """``keep`` resumes a killed run's file: the videos it finished (one entry per finished
        occurrence, in input order) keep their frame rows; rows of a clip whose result row was
        never written are dropped, since that clip is scored again."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep is not None and self.path.is_file():
            self._keep_finished(keep)
        self._file: IO[str] = open(self.path, "a" if keep is not None else "w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=self.FIELDS)
        if self._file.tell() == 0:
            self._csv.writeheader()

    def _keep_finished(self, keep: Sequence[str]) -> None:
        from collections import Counter

        from .results import read_complete_rows

        left = Counter(keep)
        kept: list[dict] = []
        block: list[dict] = []  # one clip's rows, written together

        def close_block() -> None:
            if block and left[block[0]["video"]] > 0:
                left[block[0]["video"]] -= 1
                kept.extend(block)
            block.clear()

        for row in read_complete_rows(self.path):
            if block and (row["video"] != block[0]["video"] or row["index"] == "0"):  # a new clip's first sample
                close_block()
            block.append(row)
        close_block()
        partial = self.path.with_name(self.path.name + ".tmp")
        with open(partial, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(spreadsheet_safe(row) for row in kept)
        os.replace(partial, self.path)  # never a half-rewritten side file

    @staticmethod
    def beside(out: str | os.PathLike) -> Path:
        """The side file for a results file: ``scores.csv`` -> ``scores.frames.csv``."""
        out = Path(out)
        return out.with_name(out.stem + ".frames.csv")

    def write(self, video: VideoScore) -> None:
        for frame in video.frames:
            row = {"video": video.result.path, **frame.to_row()}
            self._csv.writerow(spreadsheet_safe(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
