"""LLaMA-Factory conversation files as the questions a model was trained on.

The official RealQA test sets (``koniq10k_test``, ``ava_test``, ``realqa_test``, ...) are
LLaMA-Factory sharegpt files; the question wording the official models were trained with exists
only there. This module reads such files into :class:`Conversation` records, each holding its
own question **verbatim** (as a :class:`~realqa.tasks.Task` whose template renders the text
unchanged, ``<image>`` tag included), the label read from the assistant turn, and whether that
answer reasons first (chain of thought: the score in ``<...>``).

A file may be a JSON list or JSON lines; each record has ``messages`` (``role``/``content``) or
``conversations`` (``from``/``value``), an ``images`` list with one path, and optionally ``system``.
Relative image paths start from ``media_dir`` (LLaMA-Factory's ``--media_dir``, by default the
dataset folder), else from the file's own folder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from .numeric import MAX_DECIMALS
from .tasks import CATEGORICAL, DEFAULT_TASKS, SCORE, Task

IMAGE_TAG = "<image>"
# (messages key, role key, content key): the OpenAI-style and the classic sharegpt convention.
CONVENTIONS = (("messages", "role", "content"), ("conversations", "from", "value"))
USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt")
SYSTEM_ROLES = ("system",)

_NUMBER = r"(\d+(?:\.\d+)?)"
# A chain-of-thought answer gives its score in angle brackets (the official reading takes the first).
BRACKETED_SCORE = re.compile(r"<\s*" + _NUMBER + r"\s*>")
# "The quality score of this image is 3.47." / "The exposure of this image is 2.5."
_NAMED = re.compile(r"(?i)\bthe\s+([a-z][a-z _-]*?)(?:\s+score)?\s+of\s+(?:this|the)\s+image\s+is\s*<?\s*" + _NUMBER)
# "The exposure of this image is dark." (a categorical attribute: a word, not a number)
_WORD = re.compile(r"(?i)\bthe\s+([a-z][a-z _-]*?)\s+of\s+(?:this|the)\s+image\s+is\s+([^.<>\d][^.<>]*?)\s*\.?\s*$")
_RANGE = re.compile(r"(?i)\bfrom\s+" + _NUMBER + r"\s+to\s+" + _NUMBER)
# Official names where the answer's wording differs from realqa's task names.
_NAME_ALIASES = {"aesthetic": "aesthetics"}


class ConversationError(ValueError):
    """A conversation file or record realqa cannot use; the message names the file and record."""


@dataclass(frozen=True)
class Conversation:
    """One record of a conversation file: an image, its question, and the labelled answer."""

    file: str
    index: int  # 0-based position in the file (LLaMA-Factory predicts in this order)
    image: str  # as the file writes it
    image_path: str  # resolved against media_dir
    question: str  # the user turn verbatim, with its <image> tag
    answer: str  # the assistant turn verbatim
    system: str | None
    task: Task  # asks ``question`` verbatim; answer prefix, range and decimals read from the answers
    cot: bool  # the answer reasons first and gives the score in <...>
    label: float | str  # the score (or, for a categorical attribute, the word) the answer states

    @property
    def key(self) -> tuple:
        """Conversations with equal keys are asked exactly the same way (they batch together)."""
        return (self.task, self.cot)


def read_conversations(files: Iterable[str | Path], media_dir: str | Path | None = None) -> list[Conversation]:
    """Every record of ``files``, in file order; a record realqa cannot use stops with its place named.

    A categorical attribute ("The exposure of this image is dark.") becomes a task whose values are
    the words its answers use across the files, in order of first appearance.
    """
    parsed = []
    for file in files:
        path = Path(file)
        base = Path(media_dir) if media_dir is not None else path.parent
        for index, record in enumerate(_records(path)):
            try:
                parsed.append(_read_record(record, str(path), index, base))
            except ConversationError as err:
                raise ConversationError(f"{path}: record {index + 1}: {err}") from None
    values: dict[tuple, list[str]] = {}
    for item in parsed:
        if item["kind"] == CATEGORICAL:
            seen = values.setdefault(item["ask"], [])
            if item["label"] not in seen:
                seen.append(item["label"])
    conversations = []
    for item in parsed:
        spec = {k: item[k] for k in ("name", "question", "cot_question", "answer_prefix", "answer_suffix", "kind")}
        spec["system"] = item["system"] or ""
        if item["kind"] == CATEGORICAL:
            task = Task(**spec, values=tuple(values[item["ask"]]))
        else:
            task = Task(**spec, low=item["low"], high=item["high"], decimals=item["decimals"])
        conversations.append(Conversation(item["file"], item["index"], item["image"], item["image_path"],
                                          item["raw_question"], item["answer"], item["system"], task, item["cot"],
                                          item["label"]))
    return conversations


def is_conversation_file(path: str | Path) -> bool:
    """A .json/.jsonl file whose first record has a conversation list and images."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".jsonl") or not path.is_file():
        return False
    try:
        first = next(iter(_records(path)), None)
    except (ConversationError, OSError, UnicodeDecodeError):
        return False
    return isinstance(first, dict) and any(key in first for key, _, _ in CONVENTIONS) and "images" in first


def _records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConversationError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ConversationError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    if not all(isinstance(r, dict) for r in records):
        raise ConversationError(f"{path}: expected a list of conversation records (JSON objects)")
    return records


def _read_record(record: dict, file: str, index: int, base: Path) -> dict:
    images = record.get("images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        found = len(images) if isinstance(images, list) else "no"
        raise ConversationError(f"expected one image path in 'images', found {found}")
    system, question, answer = _turns(record)
    if question.count(IMAGE_TAG) > 1:
        raise ConversationError(f"the question holds {question.count(IMAGE_TAG)} {IMAGE_TAG} tags; one image is scored")
    image = images[0]
    image_path = image if Path(image).is_absolute() else str(base / image)
    item = read_answer(question, answer)
    template = _verbatim(question)
    item.update(file=file, index=index, image=image, image_path=image_path, raw_question=question, answer=answer,
                system=system, question=template, cot_question=template if item["cot"] else "")
    item["ask"] = (question, item["name"], item["answer_prefix"], system)
    return item


def _turns(record: dict) -> tuple[str | None, str, str]:
    """(system, the user turn, the assistant turn after it)."""
    for messages_key, role_key, content_key in CONVENTIONS:
        messages = record.get(messages_key)
        if messages is None:
            continue
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ConversationError(f"{messages_key!r} must be a list of turns")
        turns = [(str(m.get(role_key, "")).lower(), str(m.get(content_key, ""))) for m in messages]
        system = record.get("system")
        if turns and turns[0][0] in SYSTEM_ROLES:
            system, turns = turns[0][1], turns[1:]
        if len(turns) != 2 or turns[0][0] not in USER_ROLES or turns[1][0] not in ASSISTANT_ROLES:
            raise ConversationError(f"expected one user question then one assistant answer, found roles "
                                    f"{[role for role, _ in turns]}")
        return (str(system) if system else None), turns[0][1], turns[1][1]
    raise ConversationError("no 'messages' or 'conversations' list")


def read_answer(question: str, answer: str) -> dict:
    """How a labelled answer is written: task name, kind, forced prefix, range, decimals, label.

    - chain of thought when the score is in ``<...>`` (the official evaluation reads the first);
    - a plain answer's prefix is its text before the value: scoring forces it, as training taught;
    - decimals are those the label is written with; the range is the question's "from X to Y",
      else that of realqa's task of the same name;
    - the name comes from the answer ("The composition score of this image is" -> ``composition``);
    - "The exposure of this image is dark." is a categorical answer.
    """
    bracketed = BRACKETED_SCORE.search(answer)
    named = list(_NAMED.finditer(answer))
    if bracketed is None and not named:
        word = _WORD.search(answer)
        if word is None:
            raise ConversationError(f"the answer holds no score ('of this image is N', '<N>') or stated value: "
                                    f"{answer[:80]!r}")
        return {"name": _slug(word.group(1)), "kind": CATEGORICAL, "cot": False, "label": word.group(2).strip(),
                "answer_prefix": answer[: word.start(2)], "answer_suffix": answer[word.end(2):]}
    # (the number's text, where it starts and ends): group 1 of a <N>, group 2 of a named answer
    match, group = (bracketed, 1) if bracketed is not None else (named[-1], 2)
    written, start, end = match.group(group), match.start(group), match.end(group)
    decimals = len(written.partition(".")[2])
    if decimals > MAX_DECIMALS:
        raise ConversationError(
            f"the answer's score {written} has {decimals} decimals; at most {MAX_DECIMALS} are read"
        )
    before = [m for m in named if m.start() <= match.start()] or named
    name = _slug(before[-1].group(1)) if before else "score"
    low, high = _score_range(question, name)
    label = float(written)
    if not low <= label <= high:
        raise ConversationError(f"the label {written} is outside the range {low:g}-{high:g} of {name!r}")
    cot = bracketed is not None
    # A CoT answer is never forced; its prefix only names the task (the card's plain question needs one).
    prefix = f"The {name.replace('_', ' ')} score of this image is " if cot else answer[:start]
    suffix = "." if cot else answer[end:]
    return {"name": name, "kind": SCORE, "cot": cot, "label": label, "answer_prefix": prefix, "answer_suffix": suffix,
            "low": low, "high": high, "decimals": decimals}


def _slug(words: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", words.strip().lower()).strip("_")
    return _NAME_ALIASES.get(slug, slug)


def _score_range(question: str, name: str) -> tuple[float, float]:
    stated = _RANGE.search(question)
    if stated is not None:
        return float(stated.group(1)), float(stated.group(2))
    if name in DEFAULT_TASKS:
        return DEFAULT_TASKS[name].low, DEFAULT_TASKS[name].high
    raise ConversationError(f"the question states no range ('from X to Y') and {name!r} is not a task realqa knows; "
                            f"question: {question[:80]!r}")


def _verbatim(text: str) -> str:
    """A template that renders ``text`` unchanged (Task templates are ``str.format`` strings)."""
    return text.replace("{", "{{").replace("}", "}}")


# ---------------------------------------------------------------- grouping and cards


def question_groups(conversations: list[Conversation]) -> list[list[int]]:
    """Positions of conversations asked the same way, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for position, conversation in enumerate(conversations):
        groups.setdefault(conversation.key, []).append(position)
    return list(groups.values())


def card_tasks(conversations: list[Conversation]) -> tuple[dict[str, Task], list[str]]:
    """Per task name, the task a model card should hold so a plain folder is asked the trained question.

    A name answered plainly and with reasoning gets the plain question and the CoT one
    (``cot_question``). Where one name was asked several ways, the commonest wording wins; the
    returned notes say so.
    """
    notes = []
    tasks: dict[str, Task] = {}
    names = list(dict.fromkeys(c.task.name for c in conversations))
    for name in names:
        plain = Counter(c.task for c in conversations if c.task.name == name and not c.cot)
        cot = Counter(c.task for c in conversations if c.task.name == name and c.cot)
        for kind, counter in (("plain", plain), ("chain-of-thought", cot)):
            if len(counter) > 1:
                notes.append(f"{name}: {len(counter)} {kind} wordings; the commonest "
                             f"({counter.most_common(1)[0][1]} of {sum(counter.values())}) is kept")
        chosen = plain.most_common(1)[0][0] if plain else None
        reasoning = cot.most_common(1)[0][0] if cot else None
        if chosen is None:  # only chain-of-thought answers: the plain question is realqa's, the CoT one verbatim
            fallback = DEFAULT_TASKS.get(name)
            if fallback is None:
                raise ConversationError(f"{name}: only chain-of-thought examples; a card needs a plain question too")
            chosen = replace(fallback, decimals=reasoning.decimals)
            notes.append(f"{name}: no plain example; its plain question is realqa's default")
        if reasoning is not None:
            chosen = replace(chosen, cot_question=reasoning.cot_question)
        tasks[name] = chosen
    return tasks, notes
