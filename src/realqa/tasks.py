"""Scoring tasks: their ranges and the question/answer wording the model is trained and asked with.

Every prompt lives here. A model card may override any field (see ``Task.from_dict``), so that a
scorer asks exactly the questions its model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .numeric import ScoreFormat


@dataclass(frozen=True)
class Task:
    """One question the model answers with a score.

    ``question`` may use ``{low}`` and ``{high}``: the question always states the range.
    The answer is ``answer_prefix`` + the score at ``decimals`` places + ``answer_suffix``; at
    scoring time the prefix is fed to the model so that only the number is generated.
    """

    name: str
    low: float
    high: float
    question: str
    answer_prefix: str
    answer_suffix: str = "."
    decimals: int = 2

    def __post_init__(self) -> None:
        self.score_format  # validates range and decimals early

    @property
    def score_format(self) -> ScoreFormat:
        return ScoreFormat(self.low, self.high, self.decimals)

    def question_text(self) -> str:
        return self.question.format(low=_plain(self.low), high=_plain(self.high))

    def answer_text(self, value: float) -> str:
        return f"{self.answer_prefix}{self.score_format.format(value)}{self.answer_suffix}"

    def with_decimals(self, decimals: int) -> "Task":
        return replace(self, decimals=decimals)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Task":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"task {data.get('name', '?')!r}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


def _plain(number: float) -> str:
    """1.0 -> "1", 2.5 -> "2.5": ranges read naturally in the question."""
    return f"{number:g}"


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
