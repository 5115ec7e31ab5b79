"""Conversations: one image, the task's question and (for training) the answer.

Scoring and training build their messages here, so a model is asked exactly what it learned.
The messages use the content-part format of Qwen2-VL chat templates.
"""

from __future__ import annotations

from .tasks import Task

IMAGE_PLACEHOLDER = {"type": "image"}


def question_messages(task: Task) -> list[dict]:
    """The user turn: the image, then the question stating the score range."""
    return [{"role": "user", "content": [IMAGE_PLACEHOLDER, {"type": "text", "text": task.question_text()}]}]


def scoring_prompt(tokenizer, task: Task) -> str:
    """The model's chat template applied to the question, with the answer prefix appended.

    Forcing the prefix ("The quality score of this image is ") leaves only the number to generate.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; a Qwen2-VL instruct checkpoint carries one")
    text = tokenizer.apply_chat_template(question_messages(task), add_generation_prompt=True, tokenize=False)
    return text + task.answer_prefix


def answer_messages(task: Task, value: float) -> list[dict]:
    """The full single-turn conversation for training: question, then the answer at the task's decimals."""
    answer = {"role": "assistant", "content": [{"type": "text", "text": task.answer_text(value)}]}
    return question_messages(task) + [answer]
