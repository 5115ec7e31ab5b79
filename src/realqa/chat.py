"""Conversations: one image, a task's question and (for training) the answer.

Scoring and training build their messages here, so a model is asked exactly what it learned.
The messages use the content-part format of Qwen2-VL chat templates.

Chain-of-thought (CoT) answers first state the fine-grained attributes, then give the score in
angle brackets: ``Clarity: clear. Exposure: dark. So the quality score of this image is <2.31>.``
The way the attributes are stated is a pluggable :class:`CotForm` (the paper shows two on AVA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .tasks import Task

IMAGE_PLACEHOLDER = {"type": "image"}
IMAGE_TAG = "<image>"  # LLaMA-Factory's placeholder: where a conversation file puts the image


def question_messages(task: Task, *, cot: bool = False, attributes: Sequence[Task] = ()) -> list[dict]:
    """The user turn (after the task's system turn, if it has one): the image, then the question
    (the CoT question when ``cot``). A question holding one ``<image>`` tag gets the image at the
    tag, as LLaMA-Factory renders it, so a conversation file's question is asked verbatim."""
    text = task.question_text(cot=cot, attributes=attributes)
    before, tag, after = text.partition(IMAGE_TAG)
    if not tag:
        before, after = "", text
    parts = [{"type": "text", "text": before}] if before else []
    parts += [IMAGE_PLACEHOLDER] + ([{"type": "text", "text": after}] if after else [])
    system = [{"role": "system", "content": [{"type": "text", "text": task.system}]}] if task.system else []
    return system + [{"role": "user", "content": parts}]


def render_prompt(tokenizer, task: Task, *, cot: bool = False, attributes: Sequence[Task] = ()) -> str:
    """The model's chat template applied to the question, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; a Qwen2-VL instruct checkpoint carries one")
    messages = question_messages(task, cot=cot, attributes=attributes)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def scoring_prompt(tokenizer, task: Task) -> str:
    """The prompt with the answer prefix appended: forcing "The quality score of this image is "
    leaves only the value to generate. CoT prompts have no forced prefix: the model reasons first."""
    return render_prompt(tokenizer, task) + task.answer_prefix


def answer_messages(task: Task, value) -> list[dict]:
    """The full single-turn conversation for training: question, then the answer."""
    answer = {"role": "assistant", "content": [{"type": "text", "text": task.answer_text(value)}]}
    return question_messages(task) + [answer]


# ---------------------------------------------------------------- chain of thought


@dataclass(frozen=True)
class CotForm:
    """How a CoT answer states the attributes before the score.

    ``state(attribute, value_text)`` writes one attribute; ``pattern(attribute)`` is a regex whose
    group 1 reads it back; ``joiner`` and ``closing`` frame the statements and the score.
    """

    name: str
    state: Callable[[Task, str], str]
    pattern: Callable[[Task], str]
    joiner: str
    closing: str  # uses {label} (the task's label) and {score}


COT_FORMS: dict[str, CotForm] = {
    form.name: form
    for form in (
        # One statement per attribute: "Clarity: clear. Exposure: dark. ..."
        CotForm("list", lambda a, v: f"{a.label.capitalize()}: {v}.",
                lambda a: r"(?im)\b" + re.escape(a.label) + r"\s*:\s*([^\n.]+?)\s*\.", " ",
                " So the {label} score of this image is <{score}>."),
        # One running sentence: "The clarity is clear, the exposure is dark and ..."
        CotForm("sentence", lambda a, v: f"the {a.label} is {v}",
                lambda a: r"(?i)\bthe " + re.escape(a.label) + r" is ([^,.;]+?)\s*(?:,|;|\.| and )", ", ",
                ". Overall, the {label} score of this image is <{score}>."),
    )
}
DEFAULT_COT_FORM = "list"


def cot_form(name: str) -> CotForm:
    if name not in COT_FORMS:
        raise ValueError(f"unknown chain-of-thought form {name!r}; known: {', '.join(COT_FORMS)}")
    return COT_FORMS[name]


def cot_answer(task: Task, value: float, attributes: Sequence[Task], values: Mapping[str, object],
               form: str = DEFAULT_COT_FORM) -> str:
    """Reasoning over the attributes the sample has, then the score in angle brackets."""
    chosen = cot_form(form)
    statements = [chosen.state(a, a.value_text(values[a.name])) for a in attributes if values.get(a.name) is not None]
    reasoning = chosen.joiner.join(statements)
    if form == "sentence" and reasoning:
        reasoning = reasoning[0].upper() + reasoning[1:]
    closing = chosen.closing.format(label=task.label.replace("aesthetics", "aesthetic"), score=task.value_text(value))
    return (reasoning + closing).strip()


def read_cot_attributes(text: str, attributes: Sequence[Task], form: str = DEFAULT_COT_FORM) -> dict[str, str | None]:
    """Each attribute as stated in a CoT answer (the last statement wins), None when absent."""
    chosen = cot_form(form)
    found = {}
    for attribute in attributes:
        matches = re.findall(chosen.pattern(attribute), text + " ")
        found[attribute.name] = matches[-1].strip() if matches else None
    return found
