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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

from .conversations import read_conversations
from .data.manifest import read_manifest
from .data.records import ALL, TEST, Dataset
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

    ``datasets``: (name, Dataset or manifest path). ``split``: the split to score (default
    ``test``, else ``all``). ``limit``: score only the first N samples (smoke runs).
    Every input goes through the runner's loop (:func:`realqa.job.iter_rows`): video datasets as
    ``video`` says (default: 8 frames, averaged); their frames are listed in ``<dataset>.frames.csv``.
    """
    out_dir = Path(out_dir)
    chosen = [(name, _evaluated_split(name, _as_dataset(source), split)) for name, source in datasets]
    for name, dataset in chosen:  # refuse before spending time on the others
        if dataset.media not in ("image", "video"):
            raise ValueError(f"{name} holds {dataset.media}s; the scorer scores images and videos only")
    rows = []
    for name, dataset in chosen:
        if limit is not None:
            dataset = replace(dataset, samples=dataset.samples[:limit])
        for task in dataset.tasks:
            rows.append(_score_dataset(scorer, name, dataset, task, out_dir, decimals, progress, video))
    table = BenchTable(rows, model)
    table.write(out_dir)
    return table


def _as_dataset(source: Dataset | str | os.PathLike) -> Dataset:
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if path.is_dir():
        for split in (TEST, ALL):
            if (path / f"{split}.jsonl").is_file():
                return read_manifest(path / f"{split}.jsonl")
        raise ValueError(f"{path}: no test.jsonl or all.jsonl manifest in this folder")
    return read_manifest(path)


def _evaluated_split(name: str, dataset: Dataset, split: str | None) -> Dataset:
    available = dataset.split_counts()
    if split is None:
        split = next((s for s in (TEST, ALL) if s in available), None)
        if split is None:
            raise ValueError(f"{name}: no 'test' or 'all' split to evaluate (splits: {', '.join(available)}); "
                             "choose one with split=")
    return dataset.subset(split)


def _score_dataset(scorer, name, dataset: Dataset, task, out_dir: Path, decimals, progress,
                   video: VideoOptions | None) -> BenchRow:
    """One dataset and task through the runner's loop (images and videos alike), then its table row."""
    samples = [s for s in dataset.samples if task in s.scores]
    paths = [str(dataset.image_path(s)) for s in samples]
    stem = name if len(dataset.tasks) == 1 else f"{name}.{task}"
    out_dir.mkdir(parents=True, exist_ok=True)
    job = ScoreJob(tuple(paths), ask=TaskOptions(task, decimals), video=video or VideoOptions(), progress=progress)
    labelled = [_Labelled(s.id, s.scores[task], s.native[task]) for s in samples]
    with contextlib.ExitStack() as files:
        frames = files.enter_context(FrameWriter(out_dir / f"{stem}.frames.csv")) if dataset.media == "video" else None
        results = iter_rows(scorer, job, paths, on_video=frames.write if frames else None)
        return _bench_row(name, task, samples[0].split if samples else "", labelled, results,
                          out_dir / f"{stem}.predictions.csv", lambda value: dataset.to_native(value, task))


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
    ``<file stem>[.<task>].predictions.csv``, one row per example in file order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for file in files:
        conversations = read_conversations([file], media_dir)[:limit]
        name = Path(file).stem
        tasks = list(dict.fromkeys(c.task.name for c in conversations if c.task.is_score))
        for task in tasks:
            chosen = [c for c in conversations if c.task.name == task]
            results = scorer.score_conversations(chosen, batch_size=batch_size)
            labelled = [_Labelled(str(c.index), c.label, c.label) for c in chosen]
            stem = name if len(tasks) == 1 else f"{name}.{task}"
            rows.append(_bench_row(name, task, "test", labelled, results, out_dir / f"{stem}.predictions.csv",
                                   lambda value: value))
    table = BenchTable(rows, model)
    table.write(out_dir)
    return table


def _number(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"
