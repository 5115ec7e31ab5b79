"""The training entry point: load the base model, read and check the data, train, and write the
adapter (or full model), processor files, the model card the scorer reads and the README.md model card
people read (:mod:`realqa.train.card`)."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..batching import ExampleBuilder, processor_size
from ..compat import accepts_token_types
from ..model import ModelCard, ScoringModel, load_model
from ..tasks import DEFAULT_TASKS
from .card import write_model_card
from .config import TrainConfig
from .data import (
    AnswerEncoder,
    Collator,
    ScoreConversations,
    attribute_tasks,
    check_images,
    mix_sources,
    read_conversation_source,
    read_source,
)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    train_loss: float
    wall_seconds: float
    log_history: list[dict]
    held_out: list[dict]
    model: Any = field(repr=False, default=None)


def lora_targets(model, train_vision_tower: bool) -> list[str]:
    """Every linear layer of the language model (and of the vision blocks when the tower trains).

    The multimodal projector (``merger``) and ``lm_head`` stay frozen, as in LLaMA-Factory.
    """
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lm_head" in name or "merger" in name:
            continue
        if "visual" in name and not train_vision_tower:
            continue
        names.append(name)
    return names


def _prepare_model(loaded: ScoringModel, config: TrainConfig):
    model = loaded.model
    model.train()
    if config.finetuning == "full":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = config.train_vision_tower or "visual" not in name
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.effective_alpha,
        lora_dropout=config.lora.dropout,
        target_modules=lora_targets(model, config.train_vision_tower),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input under frozen embeddings
    return model


def _load_dtype(config: TrainConfig) -> torch.dtype:
    """LoRA keeps the frozen base in the training precision (PEFT keeps adapters in fp32); full
    fine-tuning keeps fp32 master weights and lets autocast (or DeepSpeed) run in bf16/fp16."""
    amp = _precision(config)
    if config.finetuning == "lora" and amp.get("bf16"):
        return torch.bfloat16
    if config.finetuning == "lora" and amp.get("fp16"):
        return torch.float16
    return torch.float32


def _precision(config: TrainConfig) -> dict:
    if config.precision == "auto":
        if torch.cuda.is_available():
            return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}
        return {}
    return {"bf16": config.precision == "bf16", "fp16": config.precision == "fp16"}


def train(config: TrainConfig, *, log=print) -> TrainResult:
    """Run one fine-tuning job and write the adapter (or full model), processor files and card."""
    from transformers import TrainingArguments, set_seed

    from ..engine import Scorer
    from .trainer import ScoreHeldOut, ScoreTrainer

    set_seed(config.seed)
    started = time.time()
    loaded = load_model(config.model, device="cpu", dtype=_load_dtype(config))
    builder = ExampleBuilder(loaded.image_processor, loaded.model.config.image_token_id,
                             min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                             preprocessing=config.preprocessing)

    read, conversations = {}, {}
    for source in config.train + config.eval:
        if source.conversations is not None:
            items, conversations[id(source)] = read_conversation_source(source)
            read[id(source)] = (items, [])
        else:
            read[id(source)] = read_source(source, log)
    train_sources = [(source, read[id(source)][0]) for source in config.train]
    eval_sources = [(source, read[id(source)][0]) for source in config.eval]
    written = sorted({c.task.decimals for records in conversations.values() for c in records if c.task.is_score})
    if written and written != [config.decimals]:
        log(f"conversation answers are trained as written ({'/'.join(map(str, written))} decimals); "
            f"decimals={config.decimals} applies to manifest sources only")
    schema = {spec.name: spec for _, specs in read.values() for spec in specs}
    tasks = {name: task.with_decimals(config.decimals) for name, task in loaded.card.tasks.items()}
    tasks.update(attribute_tasks(list(schema.values()), config.decimals))
    uses_cot = any(source.form == "cot" for source in config.train)
    asked = {source.task for source in config.train}
    attributes = [name for name in schema if uses_cot or name in asked]
    encoder = AnswerEncoder(loaded.tokenizer, tasks, loaded.digit_ids, attributes, config.cot_form)
    for source, items in train_sources + eval_sources:
        if source.task is not None:
            encoder.task(source.task)  # unknown task names fail now
        row_name = "record" if source.conversations is not None else "sample"
        for row, item in enumerate(items, 1):
            try:
                encoder.encode(item)
            except ValueError as err:
                raise ValueError(f"{source.name}: {row_name} {row}: {err}") from None
    card = _card(config, encoder, [c for source in config.train for c in conversations.get(id(source), [])], log)
    problems = check_images([item for _, items in train_sources + eval_sources for item in items], builder)
    if problems:
        listing = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise ValueError(f"{len(problems)} image(s) cannot be used; fix or drop them before training:\n  {listing}")
    train_items = mix_sources(train_sources, config.seed)
    eval_items = [item for _, items in eval_sources for item in items]
    log(f"training on {len(train_items)} examples from {len(train_sources)} source(s); "
        f"{len(eval_items)} held-out; {config.finetuning}, lr {config.lr:g}, decimals {config.decimals}")

    model = _prepare_model(loaded, config)
    token_types = accepts_token_types(model)
    pad_id = loaded.pad_id
    do_eval = bool(eval_items)
    args = TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if do_eval and config.eval_steps else "no",
        eval_steps=config.eval_steps,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the collator's extra keys must reach compute_loss
        report_to=config.report_to,
        disable_tqdm=not config.progress_bar,
        deepspeed=config.deepspeed,
        ddp_find_unused_parameters=False,
        **_precision(config),
    )
    trainer = ScoreTrainer(
        model=model,
        args=args,
        train_dataset=ScoreConversations(train_items, encoder, builder),
        eval_dataset=ScoreConversations(eval_items, encoder, builder) if do_eval else None,
        data_collator=Collator(pad_id, loaded.model.config.image_token_id, token_types),
        digit_ids=loaded.digit_ids,
        ncm_loss_weight=config.ncm_loss_weight,
    )

    def scorer_for(current_model) -> Scorer:
        view = ScoringModel(current_model, loaded.tokenizer, loaded.image_processor, card, loaded.digit_ids,
                            "in-training")
        return Scorer(view, batch_size=max(1, config.per_device_batch_size * 2),
                      min_pixels=config.min_pixels, max_pixels=config.max_pixels)

    held_out = None
    if eval_sources:
        held_out = ScoreHeldOut(scorer_for, eval_sources, config.eval_steps, config.eval_max_samples)
        held_out.trainer = trainer
        trainer.add_callback(held_out)

    resume = _checkpoint_to_resume(config)
    if resume is not None and config.finetuning == "full" and not config.deepspeed:
        _restore_full_weights(model, resume, log)
        trainer.weights_restored = True
    outcome = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    evaluated = trainer.evaluate() if do_eval else {}
    figures = {**(held_out.history[-1] if held_out and held_out.history else {}), **_quality_figures(evaluated)}
    _save(trainer, loaded, config, card)
    if trainer.is_world_process_zero():
        write_model_card(config.output_dir, config, card, steps=outcome.global_step, train_loss=outcome.training_loss,
                         metrics=figures)
    wall = time.time() - started
    return TrainResult(
        output_dir=Path(config.output_dir),
        steps=outcome.global_step,
        train_loss=outcome.training_loss,
        wall_seconds=wall,
        log_history=list(trainer.state.log_history),
        held_out=held_out.history if held_out else [],
        model=trainer.model,
    )


def _checkpoint_to_resume(config: TrainConfig) -> Path | None:
    """The checkpoint folder ``resume_from_checkpoint`` names ("latest": the newest in ``output_dir``)."""
    resume = config.resume_from_checkpoint
    if resume is None:
        return None
    if resume == "latest":
        from transformers.trainer_utils import get_last_checkpoint

        latest = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
        if latest is None:
            raise ValueError(f"resume_from_checkpoint=latest: no checkpoint-N folder in {config.output_dir}")
        return Path(latest)
    if not Path(resume).is_dir():
        raise ValueError(f"resume_from_checkpoint: {resume} is not a checkpoint folder")
    return Path(resume)


def _restore_full_weights(model, checkpoint: Path, log) -> None:
    """Put a full fine-tune's checkpoint weights into ``model`` through ``from_pretrained``, and check every one.

    Why: the Trainer loads a checkpoint's state dict by the model's own parameter names, but
    ``save_pretrained`` writes Qwen2-VL's older layout (``model.layers.*``, ``visual.*``); every key then
    misses, transformers only warns, and training went on from the base weights with the checkpoint's
    optimizer state. ``from_pretrained`` maps the layout; a strict ``load_state_dict`` then refuses
    anything that does not fit. (The Trainer still restores the optimizer, scheduler and data order.)
    """
    restored = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    try:
        model.load_state_dict(restored.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: its weights do not fit the model being trained: {err}") from None
    finally:
        del restored
    log(f"resuming from {checkpoint}: weights restored and checked")


def _card(config: TrainConfig, encoder: AnswerEncoder, conversations: Sequence = (), log=print) -> ModelCard:
    """What the output answers: the tasks trained, the attributes (asked or reasoned over), the CoT form,
    the image preprocessing.

    The conversation files' questions join the tasks verbatim (:func:`realqa.conversations.card_tasks`),
    so that scoring a plain folder asks what the model was trained on; where a conversation task has
    the name of a manifest-trained one, the conversation wording is kept (and logged). Their tasks other
    than quality and aesthetics are attributes (RealQA's composition, exposure, ...).
    """
    attribute_names = [task.name for task in encoder.attributes]
    manifest_tasks = [source.task for source in config.train if source.task is not None]
    used = [name for name in dict.fromkeys(manifest_tasks) if name not in attribute_names]
    tasks = {name: encoder.task(name) for name in used + attribute_names}
    if conversations:
        from ..conversations import card_tasks

        asked, notes = card_tasks(list(conversations))
        for note in notes:
            log(f"model card: {note}")
        for name, task in asked.items():
            if name in tasks and tasks[name] != task:
                log(f"model card: {name!r} is asked as in the conversation files, not with realqa's wording")
            tasks[name] = task
        attribute_names += [name for name in asked if name not in DEFAULT_TASKS and name not in attribute_names]
    return ModelCard(
        tasks=tasks,
        description=f"{config.finetuning} fine-tune of {config.model} with realqa",
        trained_on=[source.name for source in config.train],
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        attributes=attribute_names,
        cot_form=config.cot_form if any(source.form == "cot" for source in config.train) else None,
        preprocessing=config.preprocessing,
        extra={"base_model": config.model, "finetuning": config.finetuning, "train_config": config.to_dict()},
    )


def _quality_figures(evaluated: dict) -> dict:
    """The trainer's evaluation figures about the model (loss, NCM error), not about its speed."""
    return {key: value for key, value in evaluated.items()
            if key != "epoch" and not key.endswith(("_runtime", "_per_second"))}


def _save(trainer, loaded: ScoringModel, config: TrainConfig, card: ModelCard) -> None:
    """The adapter (LoRA) or full weights, plus tokenizer, image processor and the card the scorer reads."""
    out = Path(config.output_dir)
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return
    loaded.tokenizer.save_pretrained(out)
    # The saved processor sizes images as training did, so a plain transformers load sees what the card says
    # (the base's processor may carry other limits: the canvas would be resized to more tokens).
    processor = copy.deepcopy(loaded.image_processor)
    processor.size = processor_size(config.min_pixels, config.max_pixels)
    for name, value in (("min_pixels", config.min_pixels), ("max_pixels", config.max_pixels)):
        if hasattr(processor, name):
            setattr(processor, name, value)
    processor.save_pretrained(out)
    card.save(out)
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
