"""Fine-grained attributes: their schema is read from the data, never assumed.

An attribute is ``numeric`` when every present value is a number, else ``categorical``; the schema
lists the observed range or values, so a user (or a prompt template) can see what the files hold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

NUMERIC, CATEGORICAL = "numeric", "categorical"
MAX_LISTED_NUMBERS = 20  # a numeric attribute with this few distinct values also lists them (e.g. ratings 1..5)


@dataclass(frozen=True)
class AttributeSpec:
    """What one attribute holds across a dataset."""

    name: str
    kind: str
    present: int
    missing: int
    low: float | None = None
    high: float | None = None
    values: tuple = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AttributeSpec":
        return cls(**{**data, "values": tuple(data.get("values", ()))})


def coerce_value(value: Any) -> Any:
    """A value from a text table as the type it spells: '3' -> 3, '0.5' -> 0.5, 'true' -> True, '' -> None."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if text.lower() in ("true", "false"):  # how CSV writers spell the booleans JSON keeps as such
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def infer_schema(attribute_maps: Iterable[dict]) -> list[AttributeSpec]:
    """One spec per attribute name, in first-seen order."""
    observed: dict[str, list] = {}
    total = 0
    for attributes in attribute_maps:
        total += 1
        for name, value in attributes.items():
            observed.setdefault(name, [])
            if value is not None and value != "":
                observed[name].append(value)
    specs = []
    for name, values in observed.items():
        missing = total - len(values)
        if values and all(_is_number(v) for v in values):
            distinct = sorted(set(values))
            listed = tuple(distinct) if len(distinct) <= MAX_LISTED_NUMBERS else ()
            specs.append(AttributeSpec(name, NUMERIC, len(values), missing, min(values), max(values), listed))
        else:
            distinct = sorted({_hashable(v) for v in values}, key=str)
            specs.append(AttributeSpec(name, CATEGORICAL, len(values), missing, values=tuple(distinct)))
    return specs


def _hashable(value: Any) -> Any:
    """Lists and dicts (nested annotations) are compared by their JSON-like text."""
    return value if isinstance(value, (str, int, float, bool)) else repr(value)
