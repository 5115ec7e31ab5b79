"""Benchmark runner: score prepared test splits, save every prediction, report one table.

For each dataset and each of its tasks: the evaluated split (``test``, else ``all``) is scored
in manifest order, predictions are saved one row per image (failures included), and SRCC / PLCC
are computed on the task scale (correlations do not change under the linear mapping; RMSE is
given on both scales). The table, in the paper's form, is printed and written as CSV and Markdown.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

from .conversations import read_conversations
from .data.manifest import read_manifest
from .data.records import ALL, TEST, TRAIN, VALIDATION, Dataset
from .job import ScoreJob, TaskOptions, VideoOptions, iter_rows
from .metrics import evaluate, rmse
from .numeric import PARSE_NO_SCORE, PARSE_OK, PARSE_OUT_OF_RANGE
from .results import STATUS_ERROR, spreadsheet_safe
from .video import FrameWriter

PREDICTION_FIELDS = ("id", "image", "label", "label_native", "score", "score_native", "ncm", "ncm_std", "status", "text",
                     "error")


@dataclass(frozen=True)
class BenchRow:
    """One dataset and task: counts, then metrics over the rows with a score."""

    dataset: str
    task: str
    split: str
    rows: int
    evaluated: int
    parse_failures: int  # answers without a score
    errors: int  # inputs that could not be scored (e.g. unreadable files)
    out_of_range: int  # scores written outside the task range: counted here, never evaluated
    srcc: float
    plcc: float
    krcc: float
    plcc_logistic: float
    rmse: float  # task scale
    rmse_native: float  # the dataset's own scale
    predictions: str
    # The authors' evaluation script's reading of the same answers (first <...>, unreadable rows
    # skipped, raw correlations): beside ours, so the figures can be set next to the paper's.
    official_rows: int = 0
    official_srcc: float = math.nan
    official_plcc: float = math.nan
    # Does the model's uncertainty mean something: Spearman between ncm_std and |score - label| over the
    # evaluated rows (positive: larger spread, larger error); see realqa.evaluation.spread_error_srcc.
    std_error_srcc: float = math.nan


@dataclass
class BenchTable:
    rows: list[BenchRow]
    model: str = "model"

    def to_text(self) -> str:
        width = max([12] + [len(r.dataset) for r in self.rows])
        header = f"{'dataset':<{width}} {'task':<10} {'split':<6} {'rows':>6} {'scored':>6} {'no-score':>8} " \
                 f"{'range':>6} {'errors':>6} {'SRCC':>7} {'PLCC':>7} {'std~err':>7}   official: {'rows':>6} " \
                 f"{'SRCC':>7} {'PLCC':>7}"
        lines = [header]
        for r in self.rows:
            lines.append(f"{r.dataset:<{width}} {r.task:<10} {r.split:<6} {r.rows:>6} {r.evaluated:>6} "
                         f"{r.parse_failures:>8} {r.out_of_range:>6} {r.errors:>6} {_number(r.srcc):>7} "
                         f"{_number(r.plcc):>7} {_number(r.std_error_srcc):>7}   {'':9} {r.official_rows:>6} "
                         f"{_number(r.official_srcc):>7} "
                         f"{_number(r.official_plcc):>7}")
        lines.append("range: answers outside the task's range (never evaluated); std~err: Spearman between ncm_std "
                     "(the spread of the score under the digit probabilities) and |score - label| over the scored rows "
                     "(positive: a less sure answer is further off); official: the authors' script's reading of the "
                     "same answers (first <...>, unreadable rows skipped)")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The paper's layout (one row for the model, SRCC/PLCC per dataset), then the counts per dataset."""
        repeated = {r.dataset for r in self.rows if sum(o.dataset == r.dataset for o in self.rows) > 1}
        names = [f"{r.dataset} {r.task}" if r.dataset in repeated else r.dataset for r in self.rows]
        wide = [
            "| Model | " + " | ".join(f"{n} SRCC | {n} PLCC" for n in names) + " |",
            "|---|" + "---|---|" * len(names),
            f"| {self.model} | " + " | ".join(f"{_number(r.srcc)} | {_number(r.plcc)}" for r in self.rows) + " |",
        ]
        long = [
            "| Dataset | Task | Split | Rows | Evaluated | Parse failures | Errors | Out of range | SRCC | PLCC | KRCC "
            "| PLCC (logistic) | RMSE | RMSE (native) | SRCC(ncm_std, abs. error) | Official reading: rows | SRCC "
            "| PLCC |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ] + [
            f"| {r.dataset} | {r.task} | {r.split} | {r.rows} | {r.evaluated} | {r.parse_failures} | {r.errors} | "
            f"{r.out_of_range} | {_number(r.srcc)} | {_number(r.plcc)} | {_number(r.krcc)} | "
            f"{_number(r.plcc_logistic)} | {_number(r.rmse)} | {_number(r.rmse_native)} | "
            f"{_number(r.std_error_srcc)} | {r.official_rows} | "
            f"{_number(r.official_srcc)} | {_number(r.official_plcc)} |"
            for r in self.rows
        ]
        return "\n".join(wide + [""] + long) + "\n"

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, md_path = out_dir / "bench.csv", out_dir / "bench.md"
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(BenchRow)])
            writer.writeheader()
            writer.writerows(asdict(row) for row in self.rows)
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return csv_path, md_path


def run_bench(
    scorer,
    datasets: Sequence[tuple[str, Dataset | str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    split: str | None = None,
    decimals: int | None = None,
    limit: int | None = None,
    model: str = "model",
    progress: bool = False,
    video: VideoOptions | None = None,
) -> BenchTable:
    """Score each dataset's evaluated split with ``scorer`` and return (and write) the table.

    ``datasets``: (name, Dataset, manifest path or folder of manifests). ``split``: the split to
    score (default ``test``, else ``all``). ``limit``: score only the first N samples (smoke runs).
    Every input goes through the runner's loop (:func:`realqa.job.iter_rows`): video datasets as
    ``video`` says (default: 8 frames, averaged). Each dataset's predictions go to
    ``out_dir/<stem>[.<task>].predictions.csv`` (the stem: :func:`output_stems`), a video dataset's
    frames to ``<stem>.frames.csv``.
    """
    out_dir = Path(out_dir)
    chosen = [(name, _evaluated_split(name, load_dataset(source, split), split)) for name, source in datasets]
    for name, dataset in chosen:  # refuse before spending time on the others
        if dataset.media not in ("image", "video"):
            raise ValueError(f"{name} holds {dataset.media}s; the scorer scores images and videos only")
    runs, written = [], {}
    for (name, dataset), stem in zip(chosen, output_stems([name for name, _ in chosen])):
        if limit is not None:
            dataset = replace(dataset, samples=dataset.samples[:limit])
        for task in dataset.tasks:
            task_stem = stem if len(dataset.tasks) == 1 else f"{stem}.{_safe(task)}"
            if task_stem.lower() in written:  # e.g. a dataset named "x.quality" beside x's quality task
                raise ValueError(f"{name} ({task}) and {written[task_stem.lower()]} would write the same "
                                 f"{task_stem}.predictions.csv; rename one")
            written[task_stem.lower()] = f"{name} ({task})"
            runs.append((name, dataset, task, out_dir / task_stem))
    rows = [_score_dataset(scorer, name, dataset, task, out, decimals, progress, video)
            for name, dataset, task, out in runs]
    table = BenchTable(rows, model)
    table.write(out_dir)
    return table


def load_dataset(source: Dataset | str | os.PathLike, split: str | None = None) -> Dataset:
    """A dataset to bench: itself, a manifest, or a folder of manifests (``<split>.jsonl``, else
    ``test.jsonl``, else ``all.jsonl``: the layout ``realqa data prepare`` writes)."""
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if path.is_dir():
        names = [f"{name}.jsonl" for name in dict.fromkeys(filter(None, (split, TEST, ALL)))]
        for name in names:
            if (path / name).is_file():
                return read_manifest(path / name)
        raise ValueError(f"{path}: no {' or '.join(names)} manifest in this folder")
    return read_manifest(path)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def _safe(text: str) -> str:
    """``text`` as one plain file name part (no folders, no leading dot)."""
    return _UNSAFE.sub("_", text).lstrip("._") or "_"


def output_stems(names: Sequence[str]) -> list[str]:
    """One file name stem per dataset for its outputs in the bench folder, unique within the run.

    A dataset named by a path (a manifest, a folder) writes into the bench folder, never beside the
    manifest: the stem is the path's last part without ``.jsonl``/``.json`` (with its folder when that
    part is only a split name: ``prepared/koniq10k/test.jsonl`` gives ``koniq10k_test``), and more of
    its folders where two datasets would otherwise share one (``a/x.jsonl``, ``b/x.jsonl``: ``a_x``,
    ``b_x``). Characters other than letters, digits and ``_.+-`` become ``_``; a name given twice gets
    ``-2``. Compared without case, so no two collide on a case-insensitive disk either.
    """
    parts = []
    for name in names:
        path = Path(name)
        path = path.with_suffix("") if path.suffix in (".jsonl", ".json") else path
        pieces = [_safe(piece) for piece in path.parts if piece not in (path.anchor, ".", "..")]
        parts.append(pieces or ["_"])
    stems, used = [], set()
    for index, pieces in enumerate(parts):
        others = [[p.lower() for p in other] for i, other in enumerate(parts) if i != index]
        lowered = [p.lower() for p in pieces]
        first = 2 if len(pieces) > 1 and pieces[-1] in (TRAIN, VALIDATION, TEST, ALL) else 1
        depth = next((k for k in range(first, len(pieces)) if all(o[-k:] != lowered[-k:] for o in others)), len(pieces))
        stem = unique = "_".join(pieces[-depth:])
        count = 1
        while unique.lower() in used:
            count += 1
            unique = f"{stem}-{count}"
        used.add(unique.lower())
        stems.append(unique)
    return stems


def _evaluated_split(name: str, dataset: Dataset, split: str | None) -> Dataset:
    available = dataset.split_counts()
    if split is None:
        split = next((s for s in (TEST, ALL) if s in available), None)
        if split is None:
            raise ValueError(f"{name}: no 'test' or 'all' split to evaluate (splits: {', '.join(available)}); "
                             "choose one with split=")
    return dataset.subset(split)


def _score_dataset(scorer, name, dataset: Dataset, task, out: Path, decimals, progress,
                   video: VideoOptions | None) -> BenchRow:
    """One dataset and task through the runner's loop (images and videos alike), then its table row;
    its files are ``out`` + ``.predictions.csv`` (and ``.frames.csv`` for videos)."""
    samples = [s for s in dataset.samples if task in s.scores]
    paths = [str(dataset.image_path(s)) for s in samples]
    out.parent.mkdir(parents=True, exist_ok=True)
    job = ScoreJob(tuple(paths), ask=TaskOptions(task, decimals), video=video or VideoOptions(), progress=progress)
    labelled = [_Labelled(s.id, s.scores[task], s.native[task]) for s in samples]
    with contextlib.ExitStack() as files:
        frames = files.enter_context(FrameWriter(f"{out}.frames.csv")) if dataset.media == "video" else None
        results = iter_rows(scorer, job, paths, on_video=frames.write if frames else None)
        return _bench_row(name, task, samples[0].split if samples else "", labelled, results,
                          Path(f"{out}.predictions.csv"), lambda value: dataset.to_native(value, task))


@dataclass(frozen=True)
class _Labelled:
    id: str
    label: float
    native: float


def _bench_row(name: str, task: str, split: str, labelled: Sequence[_Labelled], results, predictions_path: Path,
               to_native) -> BenchRow:
    """Write one row per input to ``predictions_path`` as results come, then the metrics.

    Only answers inside the task's range are evaluated; the others are counted by status.
    """
    from .evaluation import official_reading, spread_error_srcc

    preds, labels, texts, spreads = [], [], [], []
    counts = {STATUS_ERROR: 0, PARSE_NO_SCORE: 0, PARSE_OUT_OF_RANGE: 0}
    with open(predictions_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_FIELDS)
        writer.writeheader()
        for entry, result in zip(labelled, results):
            counts[result.status] = counts.get(result.status, 0) + 1
            preds.append(result.score if result.status == PARSE_OK else None)
            labels.append(entry.label)
            texts.append(result.text)
            spreads.append(result.ncm_std)
            row = {
                "id": entry.id, "image": result.path, "label": entry.label, "label_native": entry.native,
                "score": result.score, "score_native": _native(result.score, to_native), "ncm": result.ncm,
                "ncm_std": result.ncm_std, "status": result.status, "text": result.text, "error": result.error,
            }
            writer.writerow(spreadsheet_safe(row))
    result = evaluate(preds, labels)
    scored = [(p, e.native) for p, e in zip(preds, labelled) if p is not None and math.isfinite(p)]
    native_rmse = rmse([to_native(p) for p, _ in scored], [n for _, n in scored]) if scored else math.nan
    official = official_reading(texts, labels)
    return BenchRow(
        dataset=name, task=task, split=split, rows=result.n_total,
        evaluated=result.n_evaluated, parse_failures=counts[PARSE_NO_SCORE], errors=counts[STATUS_ERROR],
        out_of_range=counts[PARSE_OUT_OF_RANGE], srcc=result.srcc, plcc=result.plcc, krcc=result.krcc,
        plcc_logistic=result.plcc_logistic, rmse=result.rmse, rmse_native=native_rmse,
        predictions=str(predictions_path), official_rows=official.n_kept, official_srcc=official.srcc,
        official_plcc=official.plcc, std_error_srcc=spread_error_srcc(spreads, preds, labels)[0],
    )


def _native(score, to_native):
    return to_native(score) if isinstance(score, (int, float)) else None


# ---------------------------------------------------------------- LLaMA-Factory conversation files


def run_conversation_bench(
    scorer,
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    media_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    model: str = "model",
) -> BenchTable:
    """Score LLaMA-Factory test files (the official ``koniq10k_test`` and the like) as they are written.

    Every example is asked its own question and labelled by its own answer; one table row per file
    and score task in it (categorical attributes are left to ``realqa eval``). Predictions go to
    ``<stem>[.<task>].predictions.csv`` (the stem: :func:`output_stems`, the file's name without
    ``.json``), one row per example in file order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for file, stem in zip(files, output_stems([str(file) for file in files])):
        conversations = read_conversations([file], media_dir)[:limit]
        name = Path(file).stem
        tasks = list(dict.fromkeys(c.task.name for c in conversations if c.task.is_score))
        for task in tasks:
            chosen = [c for c in conversations if c.task.name == task]
            results = scorer.score_conversations(chosen, batch_size=batch_size)
            labelled = [_Labelled(str(c.index), c.label, c.label) for c in chosen]
            task_stem = stem if len(tasks) == 1 else f"{stem}.{_safe(task)}"
            rows.append(_bench_row(name, task, "test", labelled, results, out_dir / f"{task_stem}.predictions.csv",
                                   lambda value: value))
    table = BenchTable(rows, model)
    table.write(out_dir)
    return table


def _number(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"
