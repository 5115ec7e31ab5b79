"""The ``README.md`` a training output carries: a Hugging Face model card, ready to upload with the folder.

YAML front matter (``base_model``, ``library_name``, ``tags``, ``license``, ``pipeline_tag``) and a body
saying what the model is, what it was trained on and how (the recipe), the held-out figures the run
computed, and how to score with it (command line and Python). ``realqa_card.json`` beside it stays the
file the scorer reads; this one is for people.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import yaml

from ..checkpoints import is_hub_id
from ..model import ModelCard
from .config import TrainConfig

README = "README.md"
UNKNOWN_LICENSE = "unknown"
_HUB_CACHE = re.compile(r"^models--([^/]+?)--(.+)$")  # huggingface_hub's cache folder: models--owner--name


def hub_id_of(model: str) -> str | None:
    """The hub id a base model was named by: as given, or read back from a hub cache path
    (``.../models--owner--name/snapshots/<sha>``); None for another local folder."""
    if is_hub_id(model):
        return model
    for part in Path(model).parts:
        found = _HUB_CACHE.match(part)
        if found:
            return f"{found.group(1)}/{found.group(2)}"
    return None


def write_model_card(folder: str | Path, config: TrainConfig, card: ModelCard, *, steps: int | None = None,
                     train_loss: float | None = None, metrics: dict | None = None) -> Path:
    """Write ``folder/README.md``; ``metrics``: the figures the run computed on its held-out data (name -> value)."""
    path = Path(folder, README)
    path.write_text(model_card_text(config, card, steps=steps, train_loss=train_loss, metrics=metrics), encoding="utf-8")
    return path


def model_card_text(config: TrainConfig, card: ModelCard, *, steps: int | None = None, train_loss: float | None = None,
                    metrics: dict | None = None) -> str:
    base = hub_id_of(config.model)
    lora = config.finetuning == "lora"
    tags = ["realqa", "image-quality-assessment", "image-aesthetics-assessment", "qwen2-vl", "lora" if lora else "full"]
    front = {
        **({"base_model": base} if base else {}),
        "library_name": "peft" if lora else "transformers",
        "license": config.license or UNKNOWN_LICENSE,
        "pipeline_tag": "image-text-to-text",
        "tags": tags,
    }
    scores = [name for name, task in card.tasks.items() if task.is_score]
    main_task = scores[0] if scores else next(iter(card.tasks))
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {Path(config.output_dir).name}",
        _summary(config, card, base, lora),
        "## Training data\n\n" + _data(config, card),
        "## Recipe\n\n" + _recipe(config, card, steps, train_loss),
        "## Evaluation\n\n" + _evaluation(metrics),
        "## Scoring with realqa\n\n" + _usage(config, base, lora, main_task),
    ]
    return "\n\n".join(sections) + "\n"


def _summary(config: TrainConfig, card: ModelCard, base: str | None, lora: bool) -> str:
    kind = "A LoRA adapter" if lora else "A fully fine-tuned model"
    named = f"`{base}`" if base else f"a local base model (`{Path(config.model).name}`; set `base_model` above before uploading)"
    tasks = ", ".join(f"{name} ({task.low:g}-{task.high:g})" if task.is_score else f"{name} ({', '.join(task.values)})"
                      for name, task in card.tasks.items())
    return (f"{kind} for {named}, trained with realqa, the next-token recipe of RealQA "
            f"([Next Token Is Enough](https://arxiv.org/abs/2503.06141)): the model answers \"The quality score of this "
            f"image is 3.47.\" and the digit probabilities give a continuous expected score (NCM) and its spread "
            f"(`ncm_std`).\n\nIt answers: {tasks}.")


def _data(config: TrainConfig, card: ModelCard) -> str:
    lines = []
    for source in config.train:
        if source.conversations is not None:
            lines.append(f"- `{Path(source.conversations).name}` (LLaMA-Factory conversations, trained verbatim)")
        else:
            split = f", split {source.split}" if source.split else ""
            lines.append(f"- `{Path(source.manifest).name}`: {source.task}, {source.form} answers{split}")
        if source.weight != 1:
            lines[-1] += f", weight {source.weight:g}"
    if config.eval:
        lines.append("\nHeld out: " + ", ".join(f"`{Path(source.name).name}`" for source in config.eval) + ".")
    if card.attributes:
        lines.append(f"\nAttributes: {', '.join(card.attributes)}.")
    return "\n".join(lines)


def _recipe(config: TrainConfig, card: ModelCard, steps: int | None, train_loss: float | None) -> str:
    decimals = sorted({task.decimals for task in card.tasks.values() if task.is_score})
    rows = [
        ("fine-tuning", config.finetuning),
        ("tasks", ", ".join(card.tasks)),
        ("decimals", "/".join(map(str, decimals)) or str(config.decimals)),
        ("epochs", f"{config.epochs:g}" + (f" (max steps {config.max_steps})" if config.max_steps > 0 else "")),
        ("learning rate", f"{config.lr:g}, {config.lr_scheduler}, warmup {config.warmup_ratio:g}"),
        ("batch", f"{config.per_device_batch_size} per device x {config.gradient_accumulation_steps} accumulation"),
        ("precision", config.precision),
        ("vision tower", "trained" if config.train_vision_tower else "frozen"),
        ("NCM loss weight", f"{config.ncm_loss_weight:g}"),
        ("image preprocessing", f"{config.preprocessing}, {config.min_pixels}-{config.max_pixels} pixels"),
        ("seed", str(config.seed)),
    ]
    if config.finetuning == "lora":
        lora = config.lora
        rows.insert(1, ("LoRA", f"rank {lora.rank}, alpha {lora.effective_alpha}, dropout {lora.dropout:g}"))
    if card.cot_form:
        rows.append(("chain of thought", card.cot_form))
    if steps is not None:
        rows.append(("steps run", str(steps)))
    if train_loss is not None and math.isfinite(train_loss):
        rows.append(("final training loss", f"{train_loss:.4f}"))
    return _table(("setting", "value"), rows) + "\n\nThe whole configuration is in `train_config.json`."


def _evaluation(metrics: dict | None) -> str:
    numbers = [(name, value) for name, value in (metrics or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step"]
    if not numbers:
        return "The run held no data out, so it computed no figures; score a test set with `realqa bench`."
    rows = [(name, f"{value:.4f}" if isinstance(value, float) else str(value)) for name, value in numbers]
    return "Computed by the training run on its held-out data, at the end of training:\n\n" + _table(("metric", "value"), rows)


def _usage(config: TrainConfig, base: str | None, lora: bool, task: str) -> str:
    here = config.output_dir
    base_ref = base or config.model
    if lora:
        cli = f"realqa score photos/ --model {base_ref} --adapter {here} --task {task} --out scores.csv"
        python = f'metric = realqa.create_metric("{base_ref}", adapter="{here}", task="{task}")'
    else:
        cli = f"realqa score photos/ --model {here} --task {task} --out scores.csv"
        python = f'metric = realqa.create_metric("{here}", task="{task}")'
    return ("```bash\n" + cli + "\n```\n\n```python\nimport realqa\n\n" + python + "\n"
            "scores = metric([\"a.jpg\", \"b.jpg\"])          # expected scores (NCM), NaN where an image failed\n"
            "rows = metric.score_rows([\"a.jpg\", \"b.jpg\"])  # score, ncm, ncm_std, status, text, error per image\n```\n\n"
            f"Once uploaded, name the repository (`owner/name`) in place of `{here}`.")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
