"""The RealQA dataset (14,715 UGC images, quality and aesthetic scores, 10 fine-grained attributes).

Written against the published forms of the release, since no copy can be fetched here:

* a Hugging Face dataset layout: images plus per-image annotation files (JSON, JSONL, CSV or
  parquet; e.g. ``train/metadata.jsonl`` with ``file_name``, the ImageFolder convention, where
  paths are relative to the annotation file's folder);
* LLaMA-Factory sharegpt conversation files (the RealQA-conversation release): scores are parsed
  from the answers; attributes stated only in free text are not extracted.

Column roles are recognised by name (image, id, split, quality, aesthetics; all overridable);
every other column is an attribute, whose name and value type are read from the data and
summarised in ``Dataset.attribute_schema``. A nested ``attributes`` object is flattened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from ..tasks import DEFAULT_TASKS
from .adapter import OFFICIAL, Adapter, LabelData, LabelRow, Option, describe_file, path_id, record_problem
from .attributes import coerce_value
from .generic import parse_list, parse_range
from .llamafactory import conversation_mappings, conversation_rows, is_conversation_table
from .problems import MALFORMED_ROW, DataError, RowProblem, ValidationReport
from .records import ALL, ScoreMapping
from .splits import canonical_split, split_from_file_name
from .tables import Row, Table, read_any

ANNOTATION_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
NOT_ANNOTATIONS = ("dataset_info.json", "report.json")  # LLaMA-Factory's registry; our own report
NESTED_ATTRIBUTES = "attributes"
# Column roles, recognised by name with case, spaces, '-' and '_' ignored.
IMAGE_NAMES = ("file_name", "image", "image_path", "img_path", "image_name", "img_name", "filename", "path", "img")
ID_NAMES = ("id", "image_id", "img_id")
SPLIT_NAMES = ("split", "set", "subset")
SCORE_NAMES = {
    "quality": ("quality", "quality_score", "quality_mos", "mos_quality", "iqa_score", "qa_score"),
    "aesthetics": ("aesthetics", "aesthetic", "aesthetic_score", "aesthetics_score", "aesthetic_mos",
                   "mos_aesthetic", "iaa_score"),
}
ANNOTATIONS, CONVERSATIONS, AUTO = "annotations", "conversations", "auto"


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).lower())


def find_column(columns, candidates) -> str | None:
    """The first of ``columns`` whose name matches one of ``candidates`` (case, spaces, '_', '-' ignored)."""
    wanted = [_key(c) for c in candidates]
    ranked = sorted((wanted.index(_key(c)), c) for c in columns if _key(c) in wanted)
    return ranked[0][1] if ranked else None


class RealQA(Adapter):
    name = "realqa"
    title = "RealQA"
    description = "RealQA: quality + aesthetics + attributes, from HF annotation files or LLaMA-Factory conversations"
    folder_names = ("realqa", "RealQA")
    options = (
        Option("source", AUTO, "annotations, conversations, or auto (annotations when there are any)"),
        Option("image_column", None, "column naming the image (default: recognised by name, e.g. file_name)"),
        Option("quality_column", None, "column of the quality score (default: recognised by name)"),
        Option("aesthetics_column", None, "column of the aesthetic score (default: recognised by name)"),
        Option("quality_range", (DEFAULT_TASKS["quality"].low, DEFAULT_TASKS["quality"].high),
               "native lo,hi of the quality scores", parse_range),
        Option("aesthetics_range", (DEFAULT_TASKS["aesthetics"].low, DEFAULT_TASKS["aesthetics"].high),
               "native lo,hi of the aesthetic scores", parse_range),
        Option("attribute_columns", None, "only these columns are attributes (default: every other column)",
               parse_list),
        Option("ignore_columns", (), "columns that are neither scores nor attributes", parse_list),
    )

    def find_label_files(self, root: Path) -> list[Path]:
        """Every annotation-like file under the root; :meth:`read` tells annotations from conversations."""
        files = sorted(
            path for path in root.rglob("*")
            if path.suffix.lower() in ANNOTATION_SUFFIXES and path.is_file()
            and path.name.lower() not in NOT_ANNOTATIONS and not path.name.endswith(".meta.json")
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        if not files:
            raise DataError(f"{root}: no annotation or conversation files ({', '.join(ANNOTATION_SUFFIXES)}) found")
        return files

    def split_default(self, data: LabelData) -> str:
        return OFFICIAL if data.split_source else ALL

    def read(self, files: list[Path], report: ValidationReport, opts: dict) -> LabelData:
        if opts["source"] not in (ANNOTATIONS, CONVERSATIONS, AUTO):
            raise ValueError(f"realqa: source must be annotations, conversations or auto, got {opts['source']!r}")
        annotations, conversations = [], []
        for path in files:
            scratch = ValidationReport(self.name)
            table = read_any(path, scratch)
            if is_conversation_table(table.columns):
                conversations.append(path)
            elif self._roles(table, opts, strict=False) is not None:
                annotations.append((path, table, scratch))
            else:
                report.note(f"{path}: not used (no image and score columns; columns: {', '.join(table.columns[:12])})")
        use_annotations = opts["source"] == ANNOTATIONS or (opts["source"] == AUTO and annotations)
        if use_annotations:
            if not annotations:
                raise DataError(f"no RealQA annotation file among {', '.join(map(str, files))}")
            if conversations:
                report.note(f"conversation files not used (the annotations carry the attributes): "
                            f"{', '.join(p.name for p in conversations)}")
            return self._read_annotations(annotations, report, opts)
        if not conversations:
            raise DataError(f"no LLaMA-Factory conversation file among {', '.join(map(str, files))}")
        return self._read_conversations(conversations, report)

    # ------------------------------------------------------------ annotation tables

    def _roles(self, table: Table, opts: dict, strict: bool = True) -> dict | None:
        """Which column plays which role; None (or, when ``strict``, an error) if image or scores are missing."""
        columns = table.columns
        image = opts["image_column"] or find_column(columns, IMAGE_NAMES)
        scores = {
            task: opts[f"{task}_column"] or find_column(columns, SCORE_NAMES[task]) for task in SCORE_NAMES
        }
        scores = {task: column for task, column in scores.items() if column and column in columns}
        if image not in columns or not scores:
            if strict:
                raise DataError(f"{table.path}: needs an image column and a quality or aesthetic score column; "
                                f"columns found: {', '.join(columns)}; name them with image_column=, quality_column=, "
                                "aesthetics_column=")
            return None
        return {"image": image, "scores": scores, "id": find_column(columns, ID_NAMES),
                "split": find_column(columns, SPLIT_NAMES)}

    def _read_annotations(self, annotations, report: ValidationReport, opts: dict) -> LabelData:
        rows, sources, tasks, split_columns = [], [], {}, set()
        # Image paths become relative to the annotation files' common folder: HF ImageFolder's
        # file_name is relative to its metadata file, and train/ and test/ may reuse file names.
        common = Path(os.path.commonpath([path.parent.resolve() for path, _, _ in annotations]))
        for path, table, scratch in annotations:
            report.rows_read += scratch.rows_read
            report.problems.extend(scratch.problems)
            report.notes.extend(scratch.notes)
            roles = self._roles(table, opts)
            tasks.update(dict.fromkeys(roles["scores"]))
            if roles["split"]:
                split_columns.add(roles["split"])
            reserved = {roles["image"], roles["id"], roles["split"], *roles["scores"].values(), *opts["ignore_columns"]}
            base = PurePosixPath(path.parent.resolve().relative_to(common).as_posix())
            for row in table.rows:
                try:
                    rows.append(self._annotation_row(row, roles, reserved, base, opts))
                except RowProblem as problem:
                    record_problem(report, row, problem)
            sources.append(describe_file(path, "realqa annotations", len(table.rows)))
        ranges = {"quality": opts["quality_range"], "aesthetics": opts["aesthetics_range"]}
        ordered = [task for task in SCORE_NAMES if task in tasks]
        mappings = {task: ScoreMapping.onto_task(task, ranges[task], f"RealQA {task} score") for task in ordered}
        split_source = ""
        if rows and all(label.split for label in rows):
            split_source = (
                f"column {', '.join(sorted(split_columns))}" if split_columns else "the annotation file names"
            )
        elif any(label.split for label in rows):
            report.note("only some annotation rows name a split (by column or file name); that split is not used")
        return LabelData(rows, mappings, sources, split_source)

    def _annotation_row(self, row: Row, roles: dict, reserved: set, base: PurePosixPath, opts: dict) -> LabelRow:
        image_value = row.get(roles["image"])
        if isinstance(image_value, dict):  # HF Image feature: {"bytes": ..., "path": ...}
            image_value = image_value.get("path")
            if not image_value:
                raise RowProblem("the image is embedded bytes without a path; export the images to files first",
                                 MALFORMED_ROW)
        image = str(image_value or "").strip()
        if not image:
            raise RowProblem(f"column {roles['image']!r} is empty", MALFORMED_ROW)
        if not PurePosixPath(image).is_absolute() and str(base) != ".":
            image = str(base / image)
        native = {task: row.number(column) for task, column in roles["scores"].items()
                  if row.get(column) not in (None, "")}
        if not native:
            raise RowProblem(f"no score in {', '.join(map(repr, roles['scores'].values()))}")
        split = None
        if roles["split"]:
            split = canonical_split(row.text(roles["split"]))
            if split is None:
                raise RowProblem(f"column {roles['split']!r}: unknown split {row.get(roles['split'])!r}", MALFORMED_ROW)
        else:
            split = split_from_file_name(row.file)
        return LabelRow(row, image, native, id=str(row.get(roles["id"])) if roles["id"] else path_id(image),
                        split=split, attributes=self._attributes(row, reserved, opts["attribute_columns"]))

    @staticmethod
    def _attributes(row: Row, reserved: set, only) -> dict:
        attributes = {}
        for column, value in row.values.items():
            if column in reserved:
                continue
            if column == NESTED_ATTRIBUTES and isinstance(value, dict):
                attributes.update({k: coerce_value(v) for k, v in value.items()})
            else:
                attributes[column] = coerce_value(value)
        if only is not None:
            attributes = {name: attributes.get(name) for name in only}
        return attributes

    # ------------------------------------------------------------ conversations

    def _read_conversations(self, files: list[Path], report: ValidationReport) -> LabelData:
        by_split: dict[str, list[Path]] = {}
        for path in files:
            by_split.setdefault(split_from_file_name(path) or "", []).append(path)
        rows, sources, tasks = [], [], []
        for split, paths in by_split.items():
            split_rows, split_sources, split_tasks = conversation_rows(paths, report, DEFAULT_TASKS, split or None)
            rows += split_rows
            sources += split_sources
            tasks += split_tasks
        report.note("scores read from the conversation answers; attributes in free text are not extracted")
        has_split = "" not in by_split
        return LabelData(rows, conversation_mappings(list(dict.fromkeys(tasks))), sources,
                         "the conversation file names" if has_split else "")
