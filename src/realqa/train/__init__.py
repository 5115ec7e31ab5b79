"""Fine-tuning a Qwen2-VL model to answer with scores as text, on Hugging Face ``Trainer`` + PEFT.

The recipe defaults follow RealQA's official LLaMA-Factory configs: LoRA rank 128 on every linear
layer of the language model, vision tower trainable, dropout 0.15, lr 1e-4 (1e-5 for full
fine-tuning), cosine schedule with 10% warmup, batch 2 x accumulation 8, bf16, 2 epochs.

The same entry point runs on one CPU, one GPU, or many processes under ``torchrun`` /
``accelerate launch`` (DDP, FSDP, DeepSpeed ZeRO-2/3 through the config files in ``configs/``).

Training data is realqa manifests (answers written by realqa from the labels) or LLaMA-Factory
conversation files (the official RealQA training files: each question and answer trained verbatim;
``configs/official/`` reproduces the official recipes on them).

The package, by concern: :mod:`~realqa.train.config` (the config file and its overrides),
:mod:`~realqa.train.data` (samples, answers, examples, batches), :mod:`~realqa.train.trainer` (the
``Trainer`` with the NCM loss and metrics, the held-out callback; it imports transformers' trainer)
and :mod:`~realqa.train.run` (:func:`train`: the run, the card, the saved output).
"""

from __future__ import annotations

from .config import DEFAULT_LR, DataSource, LoraSettings, TrainConfig, load_config
from .data import (
    AnswerEncoder,
    Collator,
    ScoreConversations,
    TrainItem,
    attribute_tasks,
    check_images,
    mix_sources,
    read_conversation_source,
    read_source,
    score_span,
)
from .run import TrainResult, lora_targets, train

__all__ = [
    "DEFAULT_LR", "AnswerEncoder", "Collator", "DataSource", "LoraSettings", "ScoreConversations", "ScoreHeldOut",
    "ScoreTrainer", "TrainConfig", "TrainItem", "TrainResult", "attribute_tasks", "check_images", "load_config",
    "lora_targets", "mix_sources", "read_conversation_source", "read_source", "score_span", "train",
]


def __getattr__(name: str):
    # The trainer module imports transformers' Trainer: loaded on first use, not with the config.
    if name in ("ScoreTrainer", "ScoreHeldOut"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
