"""``realqa score --backend ray``: score on a Ray cluster, many machines and GPUs, one output file.

A Ray Data pipeline maps :class:`ScoreActor` (each actor holds one model, on one GPU where the
cluster has GPUs) over the inputs not yet in ``--out``. The inputs are read in runs of one kind:

- files (images, videos, and samples already listed, e.g. of a Hugging Face dataset): a dataset of
  their names; each actor opens its own;
- WebDataset tar shards and Parquet tables of image bytes, left unlisted by the command line
  (:class:`realqa.sources.Unlisted`): ``ray.data.read_webdataset`` / ``ray.data.read_parquet``
  read them on the cluster, so the driver never lists their samples (a table's footer gives its
  row count). Ray Data keeps their order (``preserve_order``), and the driver names each row as a
  one-process run would (``shard.tar#key``, ``table.parquet#12``).

Rows come back to the driver in input order and are appended to ``--out`` as they come, so a killed
driver resumes like a one-process run: the rows already in the file are matched against the inputs
in order (a shard's samples by key, a table's by row), and only the rest is read and scored.
Input paths must be readable on every node (a shared file system, or object-store mounts). Needs
the optional extra: ``pip install 'realqa[ray]'``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

from .compat import require
from .job import ScoreJob, iter_rows
from .media import Unscanned
from .results import ResumableOutput, ScoreResult, read_complete_rows
from .sources import PARQUET, TAR, SampleRef, Unlisted, collect, parse, tar_ends_whole

__all__ = ["ScoreActor", "score_with_ray"]

FILES = "files"  # a run of inputs named one by one
_RAY_COLUMNS = ("__key__", "__url__", "path")  # read_webdataset's own columns beside the members


@dataclass(frozen=True)
class _Run:
    """Consecutive inputs read the same way: ``kind`` FILES, TAR or PARQUET (one image column per run)."""

    kind: str
    inputs: tuple[str, ...]
    column: str | None = None
    skip: frozenset[str] = frozenset()  # TAR: keys of the first shard already in --out

    @property
    def rows(self) -> int | None:
        """How many rows the run gives, where known before reading (a tar shard's samples are not)."""
        if self.kind == FILES:
            return len(self.inputs)
        if self.kind == PARQUET:
            return sum(file.rows for file in self.inputs)
        return None


class ScoreActor:
    """Holds one scorer. A FILES run maps ``{"index", "path", "unscanned"}`` to ``{"index", "row"}``; a TAR or PARQUET
    run maps Ray's rows (a shard's samples as :func:`_members` gives them, or the table's image column, with ``path``) to
    ``{"file", "key", "row"}``, rows as JSON."""

    def __init__(self, job: ScoreJob, kind: str = FILES, column: str | None = None):
        self.job, self.kind, self.column = job, kind, column
        self.scorer = job.model.load()

    def __call__(self, batch):
        import numpy as np

        if self.kind == FILES:
            # Names arrive as plain strings: a sample's identity, or a folder the scan did not enter (with why),
            # is turned back into its reference here.
            paths = [Unscanned(p, problem) if problem else parse(p, self.job.image_column) or p
                     for p, problem in zip(map(str, batch["path"]), map(str, batch["unscanned"]))]
            return {"index": np.asarray(batch["index"]), "row": np.array(self._rows(paths), dtype=object)}
        samples = list(self._samples(batch))
        return {"file": np.array([s.container for s in samples], dtype=object),
                "key": np.array([s.key for s in samples], dtype=object),
                "row": np.array(self._rows(samples), dtype=object)}

    def _rows(self, inputs: Sequence[str]) -> list[str]:
        return [json.dumps(r.to_row(), ensure_ascii=False) for r in iter_rows(self.scorer, self.job, inputs, shown=False)]

    def _samples(self, table) -> Iterator[SampleRef]:
        """Ray's rows as samples holding what was read; decoded (and refused) as a one-process run does."""
        files = table["path"].to_pylist()
        if self.kind == PARQUET:
            # A row does not carry its index: "#?" until the driver, counting in order, names it.
            for file, value in zip(files, table[self.column].to_pylist()):
                yield SampleRef(PARQUET, file, "?", column=self.column, held=(value,))
            return
        rows = zip(files, table["__key__"].to_pylist(), table["members"].to_pylist(), table["data"].to_pylist())
        for file, key, members, data in rows:
            yield SampleRef(TAR, file, key, column=self.column, held=(dict(zip(members, data)),))


def _members(block):
    """read_webdataset's rows (a column per member extension) -> one fixed schema: key, file, the member
    extensions and their bytes. Shards whose samples hold other members give other columns (a member a
    sample lacks reads as null or NaN), which Ray cannot join into one batch; this runs on each block alone."""
    import pyarrow as pa

    members = [name for name in block.column_names if name not in _RAY_COLUMNS]
    values = {name: block[name].to_pylist() for name in members}
    names, data = [], []
    for i in range(block.num_rows):
        held = [(name.lower(), values[name][i]) for name in members if isinstance(values[name][i], bytes)]
        names.append([name for name, _ in held])
        data.append([value for _, value in held])
    return pa.table({"__key__": block["__key__"], "path": block["path"], "members": pa.array(names, pa.list_(pa.string())),
                     "data": pa.array(data, pa.list_(pa.binary()))})


def score_with_ray(job: ScoreJob, output: ResumableOutput | None, *, log: Callable[[str], None]) -> list[ScoreResult]:
    """Every input's rows, in input order: those already in ``output`` (matched here), then the others scored
    on Ray and appended to ``output`` as they come."""
    ray = require("ray", "ray", "--backend ray")
    from .media import is_video

    runs = _runs(job.inputs)
    done: list[ScoreResult] = []
    if output is not None and output.exists():  # (a Parquet output: its journal, while there is one)
        counts = [r.rows for r in runs]
        done, runs = _resume(output.path, runs)
        if done:  # the total is unknown while a shard's samples are not listed
            total = "" if None in counts else f" of {sum(counts)}"
            log(f"resuming {job.out}: {len(done)}{total} inputs were already scored")
    if not runs:
        if output is not None:
            output.finish()
        return done
    names = job.check()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=job.ray.address, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # a shard's or table's rows come back in their order
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = job.ray.gpus_per_actor if job.ray.gpus_per_actor is not None else (1 if gpus else 0)
        actors = job.ray.actors or (max(1, int(gpus // per_actor)) if per_actor else 1)
        if any(is_video(p) for run in runs if run.kind == FILES for p in run.inputs):
            log("note: a Ray run writes no per-frame side file for videos; each clip's row has its mean")
        log(f"ray: {actors} scorer actor(s), {per_actor} GPU each; cluster {ray.cluster_resources()}")
        actor_job = replace(job, inputs=())  # each actor gets its inputs from Ray Data, not a copy of them all
        options = {"batch_size": job.ray.batch_size or job.model.batch_size * job.model.group_batches * 8,  # several windows a call
                   "num_gpus": per_actor, "compute": ray.data.ActorPoolStrategy(size=actors)}
        writer = output.writer(names) if output else None
        results: list[ScoreResult] = []
        known = [r.rows for r in runs]
        progress = _progress(job, len(done), None if None in known else len(done) + sum(known))
        try:
            for run in runs:
                for result in _score_run(ray, run, actor_job, options, log):
                    results.append(result)
                    if writer:
                        writer.write(result)
                    progress.update()
        finally:
            progress.close()
            if writer:
                writer.close()
        return done + results
    finally:
        context.execution_options.preserve_order = preserve_order
        if started_here:
            ray.shutdown()


def _progress(job: ScoreJob, initial: int, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="input", disable=not job.progress or None, file=sys.stderr)


def _runs(inputs: Sequence[str]) -> list[_Run]:
    """Consecutive inputs of one kind (and, for tables, one image column) make one run."""
    def how(item) -> tuple[str, str | None]:
        return (item.kind, item.column) if isinstance(item, Unlisted) else (FILES, None)

    return [_Run(kind, tuple(items), column) for (kind, column), items in itertools.groupby(inputs, key=how)]


def _score_run(ray, run: _Run, job: ScoreJob, options: dict, log: Callable[[str], None]) -> Iterator[ScoreResult]:
    """One run's rows, in input order."""
    if run.kind == FILES:
        dataset = ray.data.from_items([{"index": i, "path": str(p), "unscanned": getattr(p, "problem", "")}
                                       for i, p in enumerate(run.inputs)])
        scored = dataset.map_batches(ScoreActor, fn_constructor_kwargs={"job": job}, batch_format="numpy", **options)
        waiting: dict[int, ScoreResult] = {}  # rows that came before an earlier input's: the reorder buffer
        given = 0
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for index, row in zip(batch["index"], batch["row"]):
                waiting[int(index)] = ScoreResult.from_row(json.loads(row))
            while given in waiting:
                yield waiting.pop(given)
                given += 1
        if given != len(run.inputs):
            raise RuntimeError(f"Ray returned {given} of {len(run.inputs)} rows")
        return
    if run.kind == PARQUET:
        yield from _read_run(ray, run, job, options)
        return
    shards = [str(f) for f in run.inputs]
    shard, keys = shards[0], set(run.skip)  # the shard being read, and its keys done (in --out or just now)
    try:
        for result in _read_run(ray, run, job, options):
            if not result.path.startswith(shard + "#"):  # rows come in shard order: the next shard with rows
                following = next(s for s in shards if result.path.startswith(s + "#"))
                yield from _cut_rows(ray, shards[shards.index(shard):shards.index(following)], keys, job, options, log)
                shard, keys = following, set()
            keys.add(result.path[len(shard) + 1:])
            yield result
    except Exception as err:  # Ray Data's reader stops at a damaged shard (a truncated tar): its error types vary
        rest = shards[shards.index(shard):]
        log(f"note: Ray Data could not read the tar shards ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}); "
            f"the {len(rest)} shard(s) from {shard} on are listed here and their samples read one by one, so a damaged "
            "shard's samples become error rows")
        begun = [ref for ref in collect(rest[0], column=run.column) if ref.key not in keys]
        listed = begun + [ref for file in rest[1:] for ref in collect(file, column=run.column)]
        yield from _score_run(ray, _Run(FILES, tuple(listed)), job, options, log)
        return
    yield from _cut_rows(ray, shards[shards.index(shard):], keys, job, options, log)


def _cut_rows(ray, finished: list[str], keys: set[str], job: ScoreJob, options: dict,
              log: Callable[[str], None]) -> Iterator[ScoreResult]:
    """The ``shard.tar#`` error rows of the shards just read (the first one's keys done: ``keys``) that lack
    the end-of-archive marker. Ray Data reads a shard cut at a member's header as a shorter whole one; a
    one-process run adds a row for the cut after the shard's samples, and so does this (the shard is
    listed to find it, which only a shard without the marker costs)."""
    for n, shard in enumerate(finished):
        if (n == 0 and "" in keys) or tar_ends_whole(shard):
            continue
        cut = [ref for ref in collect(shard) if ref.key == ""]
        if cut:
            if n == 0:
                keys.add("")
            yield from _score_run(ray, _Run(FILES, tuple(cut)), job, options, log)


def _read_run(ray, run: _Run, job: ScoreJob, options: dict) -> Iterator[ScoreResult]:
    """A TAR or PARQUET run's rows through Ray Data's readers, in input order, named as a one-process run names them."""
    files = [str(f) for f in run.inputs]
    if run.kind == TAR:
        dataset = ray.data.read_webdataset(files, decoder=None, include_paths=True)
        if run.skip:
            first, skip = os.path.abspath(files[0]), run.skip
            dataset = dataset.filter(lambda row: not (row["__key__"] in skip and os.path.abspath(row["path"]) == first))
        dataset = dataset.map_batches(_members, batch_size=None, batch_format="pyarrow")
    else:
        # Only the image column (and the file name) is read: Ray pushes the projection down into the reader.
        dataset = ray.data.read_parquet(files, include_paths=True).select_columns([run.column, "path"])
    scored = dataset.map_batches(ScoreActor, fn_constructor_kwargs={"job": job, "kind": run.kind, "column": run.column},
                                 batch_format="pyarrow", **options)
    named = {os.path.abspath(f): f for f in files}  # Ray's name of a file -> the input's
    counts = dict.fromkeys(files, 0)
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for file, key, text in zip(batch["file"], batch["key"], batch["row"]):
            row = json.loads(text)
            given = named[os.path.abspath(file)]
            identity = f"{given}#{key if run.kind == TAR else counts[given]}"
            counts[given] += 1
            label = row["path"]
            row["path"] = identity  # the actor's label -> the row's identity, in the error text too
            if row.get("error") and row["error"].startswith(label):
                row["error"] = identity + row["error"][len(label):]
            yield ScoreResult.from_row(row)
    if run.kind == PARQUET:
        short = [f"{f} ({counts[f]} of {f.rows})" for f in run.inputs if counts[str(f)] != f.rows]
        if short:
            raise RuntimeError(f"Ray returned another number of rows than the tables hold: {', '.join(short)}")


# ---------------------------------------------------------------- resume


def _resume(path, runs: list[_Run]) -> tuple[list[ScoreResult], list[_Run]]:
    """The rows already in ``path`` (checked to be the first inputs, in order) and the runs left to score.

    A shard's samples are not listed before Ray reads them: its rows are recognised by the shard's
    name; when the file ends inside a run of shards, the last shard begun is read again, skipping the
    keys already there, and when a later input's row follows, the run was finished.
    """
    rows = read_complete_rows(path, repair=True)
    at = 0  # rows matched so far
    left: list[_Run] = []
    for run in runs:
        if at == len(rows):
            left.append(run)
            continue
        if run.kind == TAR:
            shard, keys = 0, set()
            while at < len(rows):
                found = next((s for s in range(shard, len(run.inputs)) if rows[at]["path"].startswith(run.inputs[s] + "#")), None)
                if found is None:
                    break
                if found != shard:
                    shard, keys = found, set()
                keys.add(rows[at]["path"][len(run.inputs[shard]) + 1:])
                at += 1
            if at == len(rows):  # the file ends in this run: its last shard may be unfinished
                left.append(replace(run, inputs=run.inputs[shard:], skip=frozenset(keys)))
            # else a later input's row follows: rows are written in input order, so these shards were finished
            continue
        # Files and tables: every row's name is known in advance.
        matched = 0
        for name in _names(run):
            if at == len(rows):
                break
            if rows[at]["path"] != name:
                _not_next(path, at, rows)
            at, matched = at + 1, matched + 1
        left.extend(_rest(run, matched))
    if at < len(rows):
        _not_next(path, at, rows)
    return [ScoreResult.from_row(row) for row in rows], left


def _not_next(path, at: int, rows: list[dict]):
    raise ValueError(f"{path}: row {at + 1} is {rows[at]['path']!r}, which is not the next input of this run: the "
                     "inputs changed since the file was written; pass --overwrite to start again, or write to another file")


def _names(run: _Run) -> Iterator[str]:
    if run.kind == FILES:
        yield from run.inputs
        return
    for file in run.inputs:
        for row in range(file.rows):
            yield f"{file}#{row}"


def _rest(run: _Run, matched: int) -> list[_Run]:
    """What is left of a FILES or PARQUET run after its first ``matched`` rows: a table begun goes on by
    its samples' names (read by the actors), the tables after it whole."""
    if run.kind == FILES:
        return [replace(run, inputs=run.inputs[matched:])] if matched < len(run.inputs) else []
    for position, file in enumerate(run.inputs):
        if matched >= file.rows:
            matched -= file.rows
            continue
        if matched == 0:
            return [replace(run, inputs=run.inputs[position:])]
        begun = _Run(FILES, tuple(SampleRef(PARQUET, str(file), row, column=file.column) for row in range(matched, file.rows)))
        rest = run.inputs[position + 1:]
        return [begun] + ([replace(run, inputs=rest)] if rest else [])
    return []
