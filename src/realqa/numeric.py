"""Score text <-> value, range mapping, and the digit expectation (NCM, NCM*) and its spread.

A score on the wire has one integer digit and ``k`` decimals (k = 0..3), e.g. ``3.47``.
This module is the only place that knows how a score is written and read back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

MAX_DECIMALS = 3


@dataclass(frozen=True)
class ScoreFormat:
    """A task's score range and the number of decimals written after the integer digit."""

    low: float
    high: float
    decimals: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise ValueError(f"decimals must be 0..{MAX_DECIMALS}, got {self.decimals}")
        if not 0 <= self.low < self.high:
            raise ValueError(f"score range must satisfy 0 <= low < high, got [{self.low}, {self.high}]")
        if self.low >= 10:
            raise ValueError(f"score range must start below 10 (one integer digit), got low={self.low}")

    @property
    def max_writable(self) -> float:
        """Largest value with one integer digit at this precision: 10 on a 1-10 scale is written 9.99."""
        return min(self.high, 10 - 10.0**-self.decimals)

    @property
    def num_digits(self) -> int:
        """Digits in a written score: the integer digit plus the decimals."""
        return 1 + self.decimals

    def clamp(self, value: float) -> float:
        return min(max(value, self.low), self.max_writable)

    def format(self, value: float) -> str:
        """Write ``value`` clamped into the range, rounded half-up to ``decimals`` places."""
        if not math.isfinite(value):
            raise ValueError(f"cannot format a non-finite score: {value!r}")
        clamped = self.clamp(value)
        scale = 10**self.decimals
        # Half-up on the decimal value, not banker's rounding on the binary float (2.675 -> 2.68).
        units = math.floor(clamped * scale + 0.5 + 1e-9)
        units = min(units, math.floor(self.max_writable * scale + 1e-9))
        integer, fraction = divmod(units, scale)
        if self.decimals == 0:
            return str(integer)
        return f"{integer}.{fraction:0{self.decimals}d}"

    def digits(self, value: float) -> list[int]:
        """The digits of the written score, integer digit first (the NCM label digits)."""
        return [int(ch) for ch in self.format(value) if ch.isdigit()]

    def in_range(self, value: float) -> bool:
        return self.low <= value <= self.high


# ---------------------------------------------------------------- parsing free text

_NUMBER = r"([+-]?\d+(?:\.\d+)?)"
# The official RealQA answer forms: "... score of this image is 3.47." and the CoT form "... <3.47>".
_ANSWER_PATTERNS = (
    re.compile(r"score of (?:this|the) image is\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"<\s*" + _NUMBER + r"\s*>"),
)
_BARE_NUMBER = re.compile(r"^\s*" + _NUMBER + r"\s*\.?\s*$")

PARSE_OK = "ok"
PARSE_OUT_OF_RANGE = "out_of_range"
PARSE_NO_SCORE = "no_score"


@dataclass(frozen=True)
class ParsedScore:
    """What a free-text answer says. ``value`` is None exactly when ``status`` is ``no_score``."""

    value: float | None
    status: str
    text: str

    @property
    def ok(self) -> bool:
        return self.status == PARSE_OK


def parse_score(text: str, fmt: ScoreFormat | None = None) -> ParsedScore:
    """Read the score from a model answer; the last score in the text wins.

    A value outside ``fmt``'s range is returned as read, with status ``out_of_range``; it is
    never clamped or replaced. Text with no score gives status ``no_score`` and no value.
    """
    matches = [m for pattern in _ANSWER_PATTERNS for m in pattern.finditer(text)]
    if matches:
        number = max(matches, key=lambda m: m.start(1)).group(1)
    else:
        bare = _BARE_NUMBER.match(text)
        if bare is None:
            return ParsedScore(None, PARSE_NO_SCORE, text)
        number = bare.group(1)
    value = float(number)
    if fmt is not None and not fmt.in_range(value):
        return ParsedScore(value, PARSE_OUT_OF_RANGE, text)
    return ParsedScore(value, PARSE_OK, text)


# ---------------------------------------------------------------- range mapping


def map_range(value, src: Sequence[float], dst: Sequence[float]):
    """Map linearly from ``src=(a, b)`` onto ``dst=(c, d)``: a -> c, b -> d.

    Works on floats, numpy arrays and tensors. A reversed source such as (100, 0) maps a
    "lower is better" scale onto an ascending one.
    """
    (a, b), (c, d) = src, dst
    if a == b:
        raise ValueError(f"source range is empty: {tuple(src)}")
    return c + (value - a) * (d - c) / (b - a)


# ---------------------------------------------------------------- digit expectation (NCM)


def digit_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens "0".."9", looked up from the tokenizer.

    Raises when a digit is not a single token: the digit expectation needs one token per digit.
    """
    ids = []
    for digit in "0123456789":
        pieces = tokenizer.encode(digit, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"tokenizer splits the digit {digit!r} into {len(pieces)} tokens; one is required")
        ids.append(pieces[0])
    return ids


def _place_values(num_positions: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([10.0**-i for i in range(num_positions)], dtype=like.dtype, device=like.device)


def _place_sum(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """sum_i 10^-i x_i over the last dimension, counting only the positions ``mask`` keeps."""
    weight = _place_values(per_position.shape[-1], per_position)
    if mask is not None:
        weight = weight * mask.to(per_position.dtype)
    return (per_position * weight).sum(-1)


def digit_probs(logits: torch.Tensor, digit_ids: Sequence[int]) -> torch.Tensor:
    """Softmax over the ten digit tokens only: (..., P, V) -> (..., P, 10)."""
    index = torch.as_tensor(list(digit_ids), device=logits.device)
    return torch.softmax(logits.index_select(-1, index).float(), dim=-1)


def digit_expectation(logits: torch.Tensor, digit_ids: Sequence[int], mask: torch.Tensor | None = None) -> torch.Tensor:
    """NCM: the expected score sum_i 10^-i E[d_i] from the logits at the P digit positions.

    ``logits`` has shape (..., P, V) with position 0 the integer digit. ``mask`` (..., P), optional,
    marks the positions that hold a digit (1) and those that pad a shorter score (0, after its
    digits): a batch of scores with different numbers of decimals. Padded positions add nothing,
    and a row with no digit at all gives 0. Differentiable.
    """
    probs = digit_probs(logits, digit_ids)
    values = torch.arange(10, dtype=probs.dtype, device=probs.device)
    return _place_sum((probs * values).sum(-1), mask)


def digit_expectation_star(logits: torch.Tensor, digit_ids: Sequence[int], label_digits: torch.Tensor,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """NCM*: like :func:`digit_expectation` with the labelled digit's weight set to zero.

    ``label_digits`` (..., P) holds the labelled digit at each position; the result measures the
    probability mass spent on wrong digits (0 when the model is certain of the label). ``mask`` as
    in :func:`digit_expectation` (the labels at padded positions are ignored).
    """
    probs = digit_probs(logits, digit_ids)
    values = torch.arange(10, dtype=probs.dtype, device=probs.device)
    keep = 1.0 - torch.nn.functional.one_hot(label_digits.long(), 10).to(probs.dtype)
    return _place_sum((probs * values * keep).sum(-1), mask)


def digit_std(logits: torch.Tensor, digit_ids: Sequence[int], mask: torch.Tensor | None = None) -> torch.Tensor:
    """The standard deviation of the score under the same digit distributions as :func:`digit_expectation`.

    The rule: the written score is S = sum_i 10^-i d_i, each digit d_i drawn from the softmax over the
    ten digit tokens at its position, the positions taken as **independent** (the model's distribution
    at a position is read with the greedy digits before it, not summed over alternatives), so
    Var(S) = sum_i 10^-2i Var(d_i), with Var(d_i) = sum_d p_i(d) (d - E[d_i])^2, and the result is
    sqrt(Var(S)). 0 when the model is certain of every digit; a uniform integer digit alone gives
    sqrt(8.25) = 2.87. ``logits`` and ``mask`` as in :func:`digit_expectation` (padded positions add
    nothing; a row with no digit gives 0).
    """
    probs = digit_probs(logits, digit_ids)
    values = torch.arange(10, dtype=probs.dtype, device=probs.device)
    mean = (probs * values).sum(-1, keepdim=True)
    variance = (probs * (values - mean) ** 2).sum(-1)
    weight = _place_values(variance.shape[-1], variance) ** 2
    if mask is not None:
        weight = weight * mask.to(variance.dtype)
    return (variance * weight).sum(-1).sqrt()
