"""Tasks: the questions a model answers, their answer types, ranges and wording.

A task is either a **score** (one integer digit and ``decimals`` decimals, in a range) or a
**categorical** answer (one of a list of words). The overall quality and aesthetics are score
tasks; each fine-grained attribute (clarity, exposure, composition, ...) is a task too, built
from the dataset's own attribute schema (:func:`attribute_task`), so attributes can be trained,
scored and evaluated wherever a task can.

Every prompt lives here. A model card may override any field (see ``Task.from_dict``), so that a
scorer asks exactly the questions its model was trained on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace

from .numeric import PARSE_NO_SCORE, PARSE_OK, ParsedScore, ScoreFormat, parse_score

SCORE, CATEGORICAL = "score", "categorical"
PARSE_INVALID_VALUE = "invalid_value"  # a categorical answer that is not one of the task's values

DEFAULT_COT_INSTRUCTION = " Describe the image's {attributes} first, then give the score in angle brackets."

# RealQA's three attribute levels (low: pixels; middle: subject and scene; high: composition).
# The names the paper mentions get their level here; any other attribute keeps an empty level.
ATTRIBUTE_LEVELS = {
    "clarity": "low", "exposure": "low", "saturation": "low", "noise": "low", "color": "low",
    "subject_integrity": "middle", "subject_clutter": "middle", "background_clutter": "middle",
    "level_shot": "middle", "composition": "high",
}


@dataclass(frozen=True)
class Task:
    """One question the model answers.

    ``question`` may use ``{low}``, ``{high}`` (score tasks: the question always states the range),
    ``{values}`` (categorical tasks: the allowed answers) and ``{label}``. The answer is
    ``answer_prefix`` + the value + ``answer_suffix``; at scoring time the prefix is fed to the
    model so that only the value is generated. ``cot_question`` is asked instead when the answer
    should reason over the attributes first and end with the score in angle brackets. A question
    holding LLaMA-Factory's ``<image>`` tag puts the image there (see :mod:`realqa.chat`).
    """

    name: str
    low: float | None = None
    high: float | None = None
    question: str = ""
    answer_prefix: str = ""
    answer_suffix: str = "."
    decimals: int = 2
    kind: str = SCORE
    values: tuple[str, ...] = ()
    level: str = ""
    cot_question: str = ""
    system: str = ""  # a system turn before the question; empty: the chat template's default

    def __post_init__(self) -> None:
        if self.kind not in (SCORE, CATEGORICAL):
            raise ValueError(f"task {self.name!r}: kind must be {SCORE!r} or {CATEGORICAL!r}, got {self.kind!r}")
        if not self.question or not self.answer_prefix:
            raise ValueError(f"task {self.name!r}: question and answer_prefix are required")
        if self.kind == SCORE:
            if self.low is None or self.high is None:
                raise ValueError(f"task {self.name!r}: a score task needs low and high")
            self.score_format  # validates range and decimals early
        elif not self.values:
            raise ValueError(f"task {self.name!r}: a categorical task needs its values")
        object.__setattr__(self, "values", tuple(self.values))

    @property
    def is_score(self) -> bool:
        return self.kind == SCORE

    @property
    def label(self) -> str:
        """The name as words: ``level_shot`` -> ``level shot``."""
        return self.name.replace("_", " ")

    @property
    def score_format(self) -> ScoreFormat:
        if not self.is_score:
            raise ValueError(f"task {self.name!r} is categorical; it has no score format")
        return ScoreFormat(self.low, self.high, self.decimals)

    def question_text(self, cot: bool = False, attributes: "list[Task] | tuple[Task, ...]" = ()) -> str:
        """The question; with ``cot`` the chain-of-thought question naming ``attributes``."""
        template = self.question
        if cot:
            template = self.cot_question or self.question + DEFAULT_COT_INSTRUCTION
        names = ", ".join(a.label for a in attributes) or "fine-grained attributes"
        return template.format(
            low=_plain(self.low), high=_plain(self.high), label=self.label, attributes=names,
            values=_spoken_list(self.values),
        )

    def value_text(self, value) -> str:
        """A value as the answer writes it; a categorical value must be one of ``values``."""
        if self.is_score:
            return self.score_format.format(float(value))
        if str(value) not in self.values:
            raise ValueError(f"{value!r} is not a value of {self.name!r} ({', '.join(self.values)})")
        return str(value)

    def answer_text(self, value) -> str:
        return f"{self.answer_prefix}{self.value_text(value)}{self.answer_suffix}"

    def parse(self, text: str) -> ParsedScore:
        """Read this task's value from an answer; never coerces: a bad value is flagged, not fixed."""
        if self.is_score:
            return parse_score(text, self.score_format)
        return parse_choice(text, self.values, self.answer_prefix)

    def with_decimals(self, decimals: int) -> "Task":
        return replace(self, decimals=decimals) if self.is_score else self

    def to_dict(self) -> dict:
        data = asdict(self)
        data["values"] = list(self.values)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"task {data.get('name', '?')!r}: unknown field(s) {', '.join(unknown)}")
        return cls(**{**data, "values": tuple(data.get("values", ()))})


def parse_choice(text: str, values: tuple[str, ...], prefix: str = "") -> ParsedScore:
    """The categorical value an answer states (case-insensitive, trailing period ignored).

    The answer may be the bare value or carry the task's answer prefix. A stated value that is not
    in ``values`` is ``invalid_value`` (kept as written); an empty answer is ``no_score``.
    """
    answer = text.strip()
    if prefix and answer.lower().startswith(prefix.strip().lower()):
        answer = answer[len(prefix.strip()):].strip()
    answer = answer.rstrip(" .").strip()
    if not answer:
        return ParsedScore(None, PARSE_NO_SCORE, text)
    for value in values:
        if answer.lower() == value.lower():
            return ParsedScore(value, PARSE_OK, text)
    return ParsedScore(answer, PARSE_INVALID_VALUE, text)


def _plain(number: float | None) -> str:
    """1.0 -> "1", 2.5 -> "2.5": ranges read naturally in the question."""
    return "" if number is None else f"{number:g}"


def _spoken_list(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1] if values else ""


def attribute_task(name: str, *, values=(), low: float | None = None, high: float | None = None,
                   decimals: int = 0, level: str | None = None) -> Task:
    """The task that asks for one fine-grained attribute, with the default wording.

    Categorical attributes list their values in the question; numeric ones state their range and
    are answered like scores (one integer digit, ``decimals`` decimals).
    """
    slug = re.sub(r"\W+", "_", name.strip().lower()).strip("_")
    level = ATTRIBUTE_LEVELS.get(slug, "") if level is None else level
    prefix = f"The {name.replace('_', ' ')} of this image is "
    if values:
        return Task(name=name, kind=CATEGORICAL, values=tuple(str(v) for v in values), level=level,
                    question="How is the {label} of this image? Answer with {values}.", answer_prefix=prefix)
    if low is None or high is None:
        raise ValueError(f"attribute {name!r}: give its values (categorical) or its range (numeric)")
    return Task(name=name, low=low, high=high, decimals=decimals, level=level,
                question="How is the {label} of this image? Give a score from {low} to {high}.", answer_prefix=prefix)


QUALITY = Task(
    name="quality",
    low=1,
    high=5,
    question="How would you rate the quality of this image? Give a score from {low} to {high}.",
    answer_prefix="The quality score of this image is ",
)

AESTHETICS = Task(
    name="aesthetics",
    low=1,
    high=10,
    question="How would you rate the aesthetics of this image? Give a score from {low} to {high}.",
    answer_prefix="The aesthetic score of this image is ",
)

DEFAULT_TASKS: dict[str, Task] = {task.name: task for task in (QUALITY, AESTHETICS)}
