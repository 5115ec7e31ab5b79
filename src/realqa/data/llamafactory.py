"""LLaMA-Factory interoperability: samples <-> sharegpt conversation files and ``dataset_info.json``.

Export writes one conversation per sample and task::

    {"messages": [{"role": "user", "content": "<image>QUESTION"},
                  {"role": "assistant", "content": "ANSWER"}], "images": ["path"]}

with the question and answer of :mod:`realqa.tasks`, so training sees exactly what scoring asks.
Import reads such files back (also the ``conversations``/``from``/``value`` convention); the score
is parsed from each answer with :func:`realqa.numeric.parse_score`, and an answer without one is
reported by file and record, never dropped silently.

An answer carries a score on the task range at the written precision, nothing else. Export also
writes ``<file>.realqa.json`` beside the file (LLaMA-Factory reads only the files
``dataset_info.json`` names): each task's native-scale mapping, the split rule, and each image's
id, dataset, split and native scores. Import reads it back when the file is unchanged since
(same SHA-256), so importing an export gives the manifest's native values, mappings and splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..numeric import PARSE_NO_SCORE, parse_score
from ..tasks import DEFAULT_TASKS, Task
from .adapter import OFFICIAL, Adapter, LabelData, LabelRow, Option, describe_file, parse_bool, path_id, record_problem
from .problems import DUPLICATE, MALFORMED_ROW, DataError, RowProblem, ValidationReport
from .records import TRAIN, Dataset, ScoreMapping, SplitInfo
from .tables import Row, read_records

IMAGE_TAG = "<image>"
# (messages key, role key, content key): LLaMA-Factory's OpenAI-style and its classic sharegpt style.
_CONVENTIONS = (("messages", "role", "content"), ("conversations", "from", "value"))
_USER_ROLES = ("user", "human")
_ASSISTANT_ROLES = ("assistant", "gpt")
RECORD_SUFFIX = ".realqa.json"  # beside an exported file: what its answers cannot carry
RECORD_FORMAT, RECORD_VERSION = "realqa-llamafactory-export", 1


def dataset_info_entry(file_name: str) -> dict:
    """The ``dataset_info.json`` entry LLaMA-Factory needs to read an exported file."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def export_sharegpt(
    dataset: Dataset,
    out_file: str | os.PathLike,
    *,
    decimals: int = 2,
    tasks: dict[str, Task] | None = None,
    media_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> dict:
    """Write ``dataset`` as a sharegpt JSON file and register it in ``dataset_info.json`` beside it.

    Image paths are absolute, or relative to ``media_dir`` (LLaMA-Factory's ``media_dir``) when
    given. ``tasks`` overrides the question/answer wording (e.g. a model card's tasks). Returns
    the ``dataset_info.json`` entry, registered under ``name`` (default: the file's stem).
    ``<file>.realqa.json`` (:func:`record_path`) records what the answers cannot carry.
    """
    tasks = tasks or DEFAULT_TASKS
    out_file = Path(out_file)
    records, images = [], []
    for sample in dataset.samples:
        image = _exported_path(dataset.image_path(sample), dataset.root, media_dir)
        images.append(image)
        for task_name, value in sample.scores.items():
            if task_name not in tasks:
                raise ValueError(f"no question is defined for task {task_name!r}; tasks: {', '.join(tasks)}")
            task = tasks[task_name].with_decimals(decimals)
            records.append({
                "messages": [
                    {"role": "user", "content": IMAGE_TAG + task.question_text()},
                    {"role": "assistant", "content": task.answer_text(value)},
                ],
                "images": [image],
            })
    out_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    out_file.write_text(text, encoding="utf-8")
    _write_record(dataset, out_file, text, images, decimals)
    entry = dataset_info_entry(out_file.name)
    _register(out_file.parent / "dataset_info.json", name or out_file.stem, entry)
    return entry


def _exported_path(path: Path, root: str | None, media_dir) -> str:
    if media_dir is not None:
        return Path(os.path.relpath(path.resolve(), Path(media_dir).resolve())).as_posix()
    # Without a root, a relative path is the label file's own spelling: kept, it cannot be resolved.
    return str(path.resolve()) if root is not None or path.is_absolute() else path.as_posix()


def record_path(exported: str | os.PathLike) -> Path:
    """``lf/koniq_test.json`` -> ``lf/koniq_test.json.realqa.json``."""
    exported = Path(exported)
    return exported.with_name(exported.name + RECORD_SUFFIX)


def _write_record(dataset: Dataset, out_file: Path, text: str, images: list[str], decimals: int) -> None:
    """The export's sidecar: mappings, split rule, and per exported image its sample's own fields.

    Keyed by the image as the file writes it, since that is all an imported record has; the file's
    SHA-256 tells an import whether the conversations are still the ones described.
    """
    tasks = list(dict.fromkeys(task for sample in dataset.samples for task in sample.scores))
    samples = [{"image": image, "id": sample.id, "dataset": sample.dataset, "split": sample.split,
                "native": dict(sample.native), "attributes": sample.attributes, "info": sample.info}
               for image, sample in zip(images, dataset.samples) if sample.scores]
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "file": out_file.name,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "decimals": decimals,
        "dataset": dataset.name,
        "mappings": {task: dataset.mapping(task).to_dict() for task in tasks},
        "split": dataset.split.to_dict(),
        "samples": samples,
    }
    record_path(out_file).write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _register(info_file: Path, name: str, entry: dict) -> None:
    """Add or replace ``name`` in ``dataset_info.json``, keeping the other entries."""
    info = {}
    if info_file.exists():
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{info_file}: invalid JSON at line {err.lineno} ({err.msg}); not overwritten") from None
        if not isinstance(info, dict):
            raise DataError(f"{info_file}: expected a JSON object of dataset entries")
    info[name] = entry
    info_file.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- import


def is_conversation_table(columns) -> bool:
    return any(key in columns for key, _, _ in _CONVENTIONS)


def conversation_rows(files: list[Path], report: ValidationReport, tasks: dict[str, Task], split: str | None,
                      ) -> tuple[list[LabelRow], list[dict], list[str]]:
    """Score rows from sharegpt files, one per image (its tasks merged); plus file descriptions and tasks seen."""
    by_image: dict[str, LabelRow] = {}
    sources, seen_tasks = [], []
    for path in files:
        table = read_records(path, report)
        for row in table.rows:
            try:
                image, scores = _read_conversation(row, tasks)
            except RowProblem as problem:
                record_problem(report, row, problem)
                continue
            label = by_image.setdefault(image, LabelRow(row, image, {}, id=path_id(image), split=split))
            for task, value in scores.items():
                if task in label.native:
                    report.exclude(DUPLICATE, row.file, row.position,
                                   f"{image}: a second {task} score; the first, at {label.row.where()}, is kept", image)
                    continue
                label.native[task] = value
                seen_tasks.append(task)
        sources.append(describe_file(path, "llamafactory sharegpt", len(table.rows)))
    ordered_tasks = list(dict.fromkeys(seen_tasks))
    return [label for label in by_image.values() if label.native], sources, ordered_tasks


def _read_conversation(row: Row, tasks: dict[str, Task]) -> tuple[str, dict[str, float]]:
    images = row.get("images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        found = len(images) if isinstance(images, list) else "no"
        raise RowProblem(f"expected one image path in 'images', found {found}", MALFORMED_ROW)
    scores: dict[str, float] = {}
    for question, answer in _turn_pairs(row):
        task = detect_task(question, answer, tasks)
        if task is None:
            asked = question.replace(IMAGE_TAG, "").strip()
            raise RowProblem(f"cannot tell the task of the question {asked[:80]!r}", MALFORMED_ROW)
        parsed = parse_score(answer, task.score_format)
        if parsed.status == PARSE_NO_SCORE:
            raise RowProblem(f"the answer holds no score: {answer[:80]!r}")
        scores.setdefault(task.name, parsed.value)  # out-of-range values are excluded later, with the range named
    if not scores:
        raise RowProblem("no user question followed by an assistant answer", MALFORMED_ROW)
    return images[0], scores


def _turn_pairs(row: Row) -> list[tuple[str, str]]:
    for messages_key, role_key, content_key in _CONVENTIONS:
        messages = row.get(messages_key)
        if messages is None:
            continue
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise RowProblem(f"{messages_key!r} must be a list of turns", MALFORMED_ROW)
        turns = [(str(m.get(role_key, "")).lower(), str(m.get(content_key, ""))) for m in messages]
        return [
            (question, answer)
            for (role, question), (next_role, answer) in zip(turns, turns[1:])
            if role in _USER_ROLES and next_role in _ASSISTANT_ROLES
        ]
    raise RowProblem("no 'messages' or 'conversations' list", MALFORMED_ROW)


def detect_task(question: str, answer: str, tasks: dict[str, Task]) -> Task | None:
    """The task a conversation asks: its exact question, else its answer prefix, else one task word."""
    text = question.replace(IMAGE_TAG, "").strip()
    for task in tasks.values():
        if text == task.question_text():
            return task
    for task in tasks.values():
        if task.answer_prefix.strip() and answer.strip().lower().startswith(task.answer_prefix.strip().lower()):
            return task
    words = [task for task in tasks.values() if task.name.rstrip("s").lower() in text.lower()]
    return words[0] if len(words) == 1 else None


@dataclass
class _RestoredLabels(LabelData):
    """Label data restored from an export's sidecar: its rows already carry their recorded splits."""

    split_info: SplitInfo | None = None


class LlamaFactory(Adapter):
    """Import of sharegpt files as a dataset; ``root`` is LLaMA-Factory's ``media_dir`` (images are then checked).

    Files a realqa export wrote, unchanged since, get back what the export recorded beside them
    (native scores and mappings, splits and the split rule, ids, dataset name, attributes);
    ``split_name`` then applies only to files without such a record.
    """

    name = "llamafactory"
    title = "LLaMA-Factory sharegpt"
    description = "conversation files (JSON/JSONL) with a score in each answer"
    options = (
        Option("split_name", TRAIN, "split given to the imported samples (a file an export recorded keeps its splits)"),
        Option("dataset_name", None, "dataset name (default: the recorded one, else the first file's name)"),
        Option("export_record", True, f"read the <file>{RECORD_SUFFIX} an export wrote beside the file", parse_bool),
    )

    def find_label_files(self, root: Path) -> list[Path]:
        raise DataError("give the conversation file(s) to import (labels=FILES)")

    def dataset_name(self, opts: dict, files: list[Path]) -> str:
        if opts["dataset_name"]:
            return opts["dataset_name"]
        records = _export_records(files) if opts["export_record"] else None
        return records[0]["dataset"] if records else files[0].stem

    def split_default(self, data: LabelData) -> str:
        return OFFICIAL

    def read(self, files: list[Path], report: ValidationReport, opts: dict) -> LabelData:
        rows, sources, tasks = conversation_rows(files, report, DEFAULT_TASKS, opts["split_name"])
        if not tasks:
            raise DataError(f"{', '.join(map(str, files))}: no conversation holds a score; {report.summary()}")
        records = _export_records(files, report) if opts["export_record"] else None
        if records is not None:
            restored = _restore(rows, tasks, sources, records, files, report)
            if restored is not None:
                return restored
        return LabelData(
            rows, conversation_mappings(tasks), sources, f"the import option split_name={opts['split_name']!r}"
        )

    def _assign_splits(self, rows, data, strategy, seed, ratios):
        if isinstance(data, _RestoredLabels) and strategy == OFFICIAL:
            return data.split_info  # the rows carry the splits recorded at export
        return super()._assign_splits(rows, data, strategy, seed, ratios)


def _export_records(files: list[Path], report: ValidationReport | None = None) -> list[dict] | None:
    """Each file's export record, when every file has one that still describes it; else None.

    A file changed since export (or lacking a record while another has one) is imported as any
    conversation file, with a note saying why its record was not used.
    """
    records, problems, absent = [], [], []
    for path in files:
        sidecar = record_path(path)
        if not sidecar.is_file():
            absent.append(f"{path.name} has no {sidecar.name}")
            continue
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            problems.append(f"{sidecar.name} is unreadable ({err})")
            continue
        if (not isinstance(record, dict) or record.get("format") != RECORD_FORMAT
                or record.get("version") != RECORD_VERSION):
            problems.append(f"{sidecar.name} is not a {RECORD_FORMAT} version {RECORD_VERSION} record")
        elif record.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
            problems.append(f"{path.name} changed since the export that wrote {sidecar.name}")
        else:
            records.append(record)
    if len(absent) == len(files):
        return None  # plain conversation files: nothing to say
    if problems or absent:
        if report is not None:
            report.note("export records not used (native scores, splits and ids come from the answers and options): "
                        + "; ".join(problems + absent))
        return None
    return records


def _restore(rows: list[LabelRow], tasks: list[str], sources: list[dict], records: list[dict], files: list[Path],
             report: ValidationReport) -> "_RestoredLabels | None":
    """Rows with the native scores, splits and ids the export recorded; None (noted) where the records
    disagree with each other or miss an image or task, so nothing is half restored."""
    samples: dict[str, dict] = {}
    for record in records:
        for entry in record["samples"]:
            samples.setdefault(entry["image"], entry)
    mappings, splits = {}, []
    problem = None
    for record in records:
        for task, mapping in record["mappings"].items():
            if mappings.setdefault(task, mapping) != mapping:
                problem = f"the records map {task} differently"
        splits.append(record["split"])
    missing = [label.image for label in rows if label.image not in samples
               or not set(label.native) <= set(samples[label.image]["native"])]
    if problem is None and missing:
        problem = f"{len(missing)} image(s) are not recorded with their tasks, e.g. {missing[0]!r}"
    if problem is None and not set(tasks) <= set(mappings):
        problem = f"no recorded mapping for {', '.join(sorted(set(tasks) - set(mappings)))}"
    if problem is not None:
        report.note(f"export records not used: {problem}")
        return None
    for label in rows:
        entry = samples[label.image]
        label.native = {task: float(entry["native"][task]) for task in label.native}
        label.split, label.id = entry["split"], entry["id"]
        label.attributes, label.info = dict(entry.get("attributes") or {}), dict(entry.get("info") or {})
    names = ", ".join(record_path(path).name for path in files)
    split_info = SplitInfo.from_dict(splits[0]) if all(s == splits[0] for s in splits) else None
    if split_info is None:
        split_info = SplitInfo(OFFICIAL, f"the splits recorded at export in {names} (split rules differ between files)")
    return _RestoredLabels(rows, {task: ScoreMapping.from_dict(mappings[task]) for task in tasks}, sources,
                           f"the splits recorded at export in {names}", split_info)


def conversation_mappings(tasks: list[str]) -> dict[str, ScoreMapping]:
    """Scores in answers are already on the task range: the identity mapping."""
    return {
        task: ScoreMapping.onto_task(task, (DEFAULT_TASKS[task].low, DEFAULT_TASKS[task].high), "score in the answer")
        for task in tasks
    }
