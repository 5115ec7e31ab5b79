"""Batched scoring: the answer prefix is forced, only the number is decoded, NCM comes from the same logits.

Per batch: one prefill over (question + image + answer prefix) and ``1 + 1 + k`` greedy decode steps
for a score like ``3.47`` (plus one to see that the number ended). The raw logits of those steps
give the digit distributions, hence the NCM expected score, at no extra cost.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from .chat import scoring_prompt
from .media import DEFAULT_MAX_IMAGE_PIXELS, MediaError, load_image
from .model import MAX_PIXELS, MIN_PIXELS, ScoringModel, load_model
from .numeric import PARSE_NO_SCORE, digit_expectation, parse_score
from .results import ScoreResult
from .tasks import Task

ImageInput = "str | os.PathLike | PIL.Image.Image"


@dataclass
class _Prepared:
    """One image turned into model inputs: prompt ids with the image tokens expanded, and its patches."""

    index: int
    input_ids: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


class Scorer:
    """Scores images with a loaded RealQA model. Create one with :func:`load_scorer`."""

    def __init__(
        self,
        loaded: ScoringModel,
        *,
        batch_size: int = 8,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        self.loaded = loaded
        self.batch_size = batch_size
        self.image_size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        self.max_image_pixels = max_image_pixels
        config = loaded.model.config
        self._image_token_id = config.image_token_id
        self._pad_id = loaded.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = loaded.tokenizer.eos_token_id
        self._merge = getattr(loaded.image_processor, "merge_size", 2)
        # transformers >= 5.2x wants mm_token_type_ids for M-RoPE; older 5.x releases do not accept it.
        self._pass_token_types = "mm_token_type_ids" in inspect.signature(loaded.model.forward).parameters
        self._prompts: dict[tuple[str, int], list[int]] = {}

    @property
    def tasks(self) -> dict[str, Task]:
        return self.loaded.card.tasks

    def task(self, name: str, decimals: int | None = None) -> Task:
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; this model answers: {', '.join(self.tasks)}")
        task = self.tasks[name]
        return task if decimals is None else task.with_decimals(decimals)

    # ------------------------------------------------------------ public API

    def score(
        self,
        images: Iterable[ImageInput] | ImageInput,
        task: str = "quality",
        *,
        decimals: int | None = None,
        batch_size: int | None = None,
    ) -> list[ScoreResult]:
        """Score images (paths or PIL images): one :class:`ScoreResult` per input, in input order."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
            images = [images]
        return list(self.iter_scores(images, task, decimals=decimals, batch_size=batch_size))

    def iter_scores(
        self,
        images: Iterable[ImageInput],
        task: str = "quality",
        *,
        decimals: int | None = None,
        batch_size: int | None = None,
    ) -> Iterator[ScoreResult]:
        """Like :meth:`score`, yielding results in input order as each batch finishes."""
        spec = self.task(task, decimals)
        size = batch_size or self.batch_size
        chunk: list[tuple[int, ImageInput]] = []
        for index, image in enumerate(images):
            chunk.append((index, image))
            if len(chunk) == size:
                yield from self._score_chunk(chunk, spec)
                chunk = []
        if chunk:
            yield from self._score_chunk(chunk, spec)

    # ------------------------------------------------------------ steps

    def _score_chunk(self, chunk: Sequence[tuple[int, ImageInput]], task: Task) -> list[ScoreResult]:
        results: dict[int, ScoreResult] = {}
        prepared: list[_Prepared] = []
        labels = {index: _label(index, image) for index, image in chunk}
        for index, image in chunk:
            try:
                prepared.append(self._prepare(index, image, labels[index], task))
            except MediaError as err:
                results[index] = ScoreResult.failed(labels[index], task.name, str(err))
        if prepared:
            for item, result in zip(prepared, self._generate(prepared, task, labels)):
                results[item.index] = result
        return [results[index] for index, _ in chunk]

    def _prompt_ids(self, task: Task) -> list[int]:
        key = (task.name, task.decimals)
        if key not in self._prompts:
            tokenizer = self.loaded.tokenizer
            prompt = scoring_prompt(tokenizer, task)
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            if ids.count(self._image_token_id) != 1:
                raise ValueError(f"the chat template gave {ids.count(self._image_token_id)} image tokens; expected 1")
            # The forced prefix must tokenize the way the full answer does, or the model sees a
            # token boundary it never saw in training.
            example = tokenizer.encode(prompt + task.score_format.format(task.high), add_special_tokens=False)
            if example[: len(ids)] != ids:
                raise ValueError(f"task {task.name!r}: the answer prefix {task.answer_prefix!r} does not end "
                                 "on a token boundary before the score; end it with a space or a word")
            self._prompts[key] = ids
        return self._prompts[key]

    def _prepare(self, index: int, image: ImageInput, label: str, task: Task) -> _Prepared:
        picture = load_image(image, max_pixels=self.max_image_pixels, label=label)
        try:
            features = self.loaded.image_processor(images=[picture], size=self.image_size, return_tensors="pt")
        except ValueError as err:  # e.g. an aspect ratio beyond what the processor accepts
            raise MediaError(label, f"image cannot be preprocessed ({err})") from None
        grid = features["image_grid_thw"]
        num_tokens = int(grid[0].prod()) // self._merge**2
        ids = self._prompt_ids(task)
        at = ids.index(self._image_token_id)
        expanded = ids[:at] + [self._image_token_id] * num_tokens + ids[at + 1 :]
        return _Prepared(index, expanded, features["pixel_values"], grid)

    def _collate(self, items: Sequence[_Prepared]) -> dict[str, torch.Tensor]:
        """Left-pad the prompts so every row's next token is generated at the same position."""
        longest = max(len(item.input_ids) for item in items)
        input_ids = torch.full((len(items), longest), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, longest - len(item.input_ids) :] = torch.tensor(item.input_ids)
            attention_mask[row, longest - len(item.input_ids) :] = 1
        device, dtype = self.loaded.device, self.loaded.dtype
        batch = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "pixel_values": torch.cat([item.pixel_values for item in items]).to(device, dtype),
            "image_grid_thw": torch.cat([item.image_grid_thw for item in items]).to(device),
        }
        if self._pass_token_types:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self._image_token_id).long()
        return batch

    @torch.inference_mode()
    def _generate(self, items: Sequence[_Prepared], task: Task, labels: dict[int, str]) -> list[ScoreResult]:
        from transformers import GenerationConfig

        fmt = task.score_format
        number_tokens = fmt.num_digits + (1 if fmt.decimals else 0)
        tokenizer = self.loaded.tokenizer
        config = GenerationConfig(
            max_new_tokens=number_tokens + 1,  # one more shows whether the number ended
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=self._pad_id,
        )
        batch = self._collate(items)
        output = self.loaded.model.generate(**batch, generation_config=config)
        new_tokens = output.sequences[:, batch["input_ids"].shape[1] :].cpu()
        logits = torch.stack(output.logits, dim=1)  # (batch, steps, vocab), raw: before any processor
        number_shape = re.compile(r"\d\.\d{%d}" % fmt.decimals if fmt.decimals else r"\d")
        results = []
        for row, item in enumerate(items):
            tokens = new_tokens[row].tolist()
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            parsed = parse_score(task.answer_prefix + text, fmt)
            ncm = None
            digit_positions = [i for i, token in enumerate(tokens) if token in self.loaded.digit_ids][: fmt.num_digits]
            if parsed.status != PARSE_NO_SCORE and len(digit_positions) == fmt.num_digits:
                # NCM is defined where the model wrote a well-formed number: read its digit positions.
                written = tokenizer.decode(tokens[: digit_positions[-1] + 1], skip_special_tokens=True)
                if number_shape.fullmatch(written):
                    ncm = float(digit_expectation(logits[row, digit_positions], self.loaded.digit_ids))
            results.append(ScoreResult(labels[item.index], task.name, parsed.value, ncm, parsed.status, text))
        return results


def _label(index: int, image: ImageInput) -> str:
    """The identity a result row keeps: the path as given, or the position of an in-memory image."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return str(image) if not isinstance(image, bytes) else image.decode()
    return f"<image {index}>"


def load_scorer(
    model: str,
    adapter: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    **scorer_options,
) -> Scorer:
    """Load a Qwen2-VL / Qwen2.5-VL checkpoint (folder or hub id), an optional LoRA adapter, and wrap it.

    ``scorer_options`` go to :class:`Scorer`: ``batch_size``, ``min_pixels``, ``max_pixels``,
    ``max_image_pixels``.
    """
    return Scorer(load_model(model, adapter, device=device, dtype=dtype), **scorer_options)
