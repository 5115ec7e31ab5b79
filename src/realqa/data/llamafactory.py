"""LLaMA-Factory interoperability: samples <-> sharegpt conversation files and ``dataset_info.json``.

Export writes one conversation per sample and task::

    {"messages": [{"role": "user", "content": "<image>QUESTION"},
                  {"role": "assistant", "content": "ANSWER"}], "images": ["path"]}

with the question and answer of :mod:`realqa.tasks`, so training sees exactly what scoring asks.
Import reads such files back (also the ``conversations``/``from``/``value`` convention); the score
is parsed from each answer with :func:`realqa.numeric.parse_score`, and an answer without one is
reported by file and record, never dropped silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..numeric import PARSE_NO_SCORE, parse_score
from ..tasks import DEFAULT_TASKS, Task
from .adapter import OFFICIAL, Adapter, LabelData, LabelRow, Option, describe_file, path_id, record_problem
from .problems import DUPLICATE, MALFORMED_ROW, DataError, RowProblem, ValidationReport
from .records import TRAIN, Dataset, ScoreMapping
from .tables import Row, read_records

IMAGE_TAG = "<image>"
# (messages key, role key, content key): LLaMA-Factory's OpenAI-style and its classic sharegpt style.
_CONVENTIONS = (("messages", "role", "content"), ("conversations", "from", "value"))
_USER_ROLES = ("user", "human")
_ASSISTANT_ROLES = ("assistant", "gpt")


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
    """
    tasks = tasks or DEFAULT_TASKS
    out_file = Path(out_file)
    records = []
    for sample in dataset.samples:
        image = _exported_path(dataset.image_path(sample), dataset.root, media_dir)
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
    out_file.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    entry = dataset_info_entry(out_file.name)
    _register(out_file.parent / "dataset_info.json", name or out_file.stem, entry)
    return entry


def _exported_path(path: Path, root: str | None, media_dir) -> str:
    if media_dir is not None:
        return Path(os.path.relpath(path.resolve(), Path(media_dir).resolve())).as_posix()
    # Without a root, a relative path is the label file's own spelling: kept, it cannot be resolved.
    return str(path.resolve()) if root is not None or path.is_absolute() else path.as_posix()


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


class LlamaFactory(Adapter):
    """Import of sharegpt files as a dataset; ``root`` is LLaMA-Factory's ``media_dir`` (images are then checked)."""

    name = "llamafactory"
    title = "LLaMA-Factory sharegpt"
    description = "conversation files (JSON/JSONL) with a score in each answer"
    options = (
        Option("split_name", TRAIN, "split given to the imported samples"),
        Option("dataset_name", None, "dataset name (default: the first file's name)"),
    )

    def find_label_files(self, root: Path) -> list[Path]:
        raise DataError("give the conversation file(s) to import (labels=FILES)")

    def dataset_name(self, opts: dict, files: list[Path]) -> str:
        return opts["dataset_name"] or files[0].stem

    def split_default(self, data: LabelData) -> str:
        return OFFICIAL

    def read(self, files: list[Path], report: ValidationReport, opts: dict) -> LabelData:
        rows, sources, tasks = conversation_rows(files, report, DEFAULT_TASKS, opts["split_name"])
        if not tasks:
            raise DataError(f"{', '.join(map(str, files))}: no conversation holds a score; {report.summary()}")
        return LabelData(rows, conversation_mappings(tasks), sources, f"the import option split_name={opts['split_name']!r}")


def conversation_mappings(tasks: list[str]) -> dict[str, ScoreMapping]:
    """Scores in answers are already on the task range: the identity mapping."""
    return {
        task: ScoreMapping.onto_task(task, (DEFAULT_TASKS[task].low, DEFAULT_TASKS[task].high), "score in the answer")
        for task in tasks
    }
