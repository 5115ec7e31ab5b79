"""The Hugging Face ``Trainer`` for score answers: cross-entropy on the answer, an optional NCM loss,
NCM metrics on evaluation batches; and the callback scoring the held-out sources during training.

The NCM terms are :func:`realqa.numeric.digit_expectation` and
:func:`~realqa.numeric.digit_expectation_star`, the ones scoring reports, over each row's digit
positions (a batch may mix scores of different lengths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import Trainer, TrainerCallback

from ..metrics import classification, evaluate
from ..numeric import digit_expectation, digit_expectation_star
from .config import DataSource
from .data import TrainItem

# The keys the collator adds for the NCM terms; taken out of the batch before the model's forward.
SCORE_KEYS = ("digit_positions", "digit_mask", "target_digits", "target_value")


def digit_logits(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits that predict the tokens at ``positions`` (B, P): those of the position before each."""
    index = (positions - 1).clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def batch_ncm(logits: torch.Tensor, score: dict[str, torch.Tensor],
              digit_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NCM and NCM* of each row's score from the model's logits (B, T, V), and which rows have a score.

    ``score`` holds the collator's :data:`SCORE_KEYS`; rows without a score (categorical answers)
    have an all-zero ``digit_mask`` and NCM 0.
    """
    at_digits = digit_logits(logits, score["digit_positions"])
    mask = score["digit_mask"]
    expected = digit_expectation(at_digits, digit_ids, mask=mask)
    wrong = digit_expectation_star(at_digits, digit_ids, score["target_digits"], mask=mask)
    return expected, wrong, mask.any(-1)


class ScoreTrainer(Trainer):
    """Cross-entropy on the answer, an optional NCM loss, and NCM metrics on evaluation batches."""

    def __init__(self, *args, digit_ids: Sequence[int], ncm_loss_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.digit_ids = list(digit_ids)
        self.ncm_loss_weight = ncm_loss_weight
        self._ncm_totals: dict[str, float] = {}

    # Set once realqa has put a full fine-tune's checkpoint weights in place and checked them (see
    # realqa.train.run._restore_full_weights): the Trainer's own load would miss every key and only warn.
    weights_restored = False

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.weights_restored:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        score = {key: inputs.pop(key) for key in SCORE_KEYS if key in inputs}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.ncm_loss_weight and score and bool(score["digit_mask"].any()):
            expected, _, rows = batch_ncm(outputs.logits, score, self.digit_ids)
            error = torch.nn.functional.mse_loss(expected[rows], score["target_value"][rows].float())
            loss = loss + self.ncm_loss_weight * error
        if not model.training and score:
            self._record_ncm(outputs.logits.detach(), score)
        return (loss, outputs) if return_outputs else loss

    def _record_ncm(self, logits: torch.Tensor, score: dict) -> None:
        expected, wrong, rows = batch_ncm(logits, score, self.digit_ids)
        totals = self._ncm_totals
        totals["n"] = totals.get("n", 0) + int(rows.sum())
        totals["abs"] = totals.get("abs", 0.0) + float((expected - score["target_value"])[rows].abs().sum())
        totals["star"] = totals.get("star", 0.0) + float(wrong[rows].sum())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, dict(inputs))
        return loss.detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        self._ncm_totals = {}
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        totals = self._gather_totals()
        if totals.get("n"):
            output.metrics[f"{prefix}_ncm_mae"] = totals["abs"] / totals["n"]
            output.metrics[f"{prefix}_ncm_star"] = totals["star"] / totals["n"]
        return output

    def _gather_totals(self) -> dict[str, float]:
        keys = ("n", "abs", "star")
        local = torch.tensor([float(self._ncm_totals.get(k, 0.0)) for k in keys], device=self.args.device)
        summed = self.accelerator.reduce(local, reduction="sum") if self.accelerator.num_processes > 1 else local
        return dict(zip(keys, summed.tolist()))


class ScoreHeldOut(TrainerCallback):
    """Scores the held-out images with the scorer (generation, as at inference) and logs SRCC/PLCC
    (accuracy and macro F1 for categorical answers): every ``every`` steps, and at the end.

    ``scorer_factory(model)`` gives a :class:`~realqa.engine.Scorer` on the model being trained;
    ``trainer`` is set once the trainer exists.
    """

    def __init__(self, scorer_factory: Callable, sources: list[tuple[DataSource, list[TrainItem]]],
                 every: int | None = None, max_samples: int | None = None):
        self.scorer_factory = scorer_factory
        self.sources = sources
        self.every = every
        self.max_samples = max_samples
        self.trainer = None
        self.history: list[dict] = []

    def run(self, state) -> None:
        trainer = self.trainer
        if not trainer.is_world_process_zero() or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            return  # sharded weights cannot score on one rank; run `realqa eval` on the output instead
        scorer = self.scorer_factory(trainer.model)
        was_training = trainer.model.training
        trainer.model.eval()
        logs = {}
        for source, all_items in self.sources:
            all_items = all_items[: self.max_samples] if self.max_samples else all_items
            groups: dict[tuple[str, bool], list[TrainItem]] = {}  # a conversation file may ask several tasks
            for item in all_items:
                groups.setdefault((item.task, item.cot), []).append(item)
            for (task_name, cot), items in groups.items():
                name = f"{Path(source.name).stem}_{task_name}" + ("_cot" if cot else "")
                score_items(scorer, items, name, logs)
        if was_training:
            trainer.model.train()
        self.history.append({"step": state.global_step, **logs})
        trainer.log(logs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.run(state)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self.run(state)


def score_items(scorer, items: list[TrainItem], name: str, logs: dict) -> None:
    """Each item asked its own question (items asked alike batch together); metrics into ``logs``."""
    from ..engine import Question

    asked: dict = {}
    for position, item in enumerate(items):
        question = Question(item.question if item.question is not None else scorer.task(item.task), cot=item.cot)
        asked.setdefault(question, []).append(position)
    results = [None] * len(items)
    for question, positions in asked.items():
        answers = scorer.iter_questions([items[p].image for p in positions], [question])
        for position, answer in zip(positions, answers):
            results[position] = answer[0]
    labels = [item.value for item in items]
    if next(iter(asked)).task.is_score:
        for field_name in ("score", "ncm"):
            evaluation = evaluate([getattr(r, field_name) for r in results], labels)
            tag = f"heldout_{name}" + ("" if field_name == "score" else "_ncm")
            logs[f"{tag}_srcc"] = evaluation.srcc
            logs[f"{tag}_plcc"] = evaluation.plcc
            logs[f"{tag}_failed"] = evaluation.n_failed
    else:
        evaluation = classification([r.score if r.status == "ok" else None for r in results], labels)
        logs[f"heldout_{name}_accuracy"] = evaluation.accuracy
        logs[f"heldout_{name}_macro_f1"] = evaluation.macro_f1
        logs[f"heldout_{name}_failed"] = evaluation.n_failed
    logs[f"heldout_{name}_rows"] = len(items)
