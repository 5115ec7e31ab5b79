"""Batched scoring: the answer prefix is forced, only the number is decoded, NCM comes from the same logits.

Per batch: one prefill over (question + image + answer prefix) and ``1 + 1 + k`` greedy decode steps
for a score like ``3.47`` (plus one to see that the number ended). The raw logits of those steps
give the digit distributions, hence the NCM expected score, at no extra cost.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence

import torch

from .batching import Example, ExampleBuilder, accepts_token_types, collate
from .chat import scoring_prompt
from .media import DEFAULT_MAX_IMAGE_PIXELS, MediaError
from .model import ScoringModel, load_model
from .numeric import PARSE_NO_SCORE, digit_expectation, parse_score
from .results import ScoreResult
from .tasks import Task

ImageInput = "str | os.PathLike | PIL.Image.Image"


class Scorer:
    """Scores images with a loaded RealQA model. Create one with :func:`load_scorer`."""

    def __init__(
        self,
        loaded: ScoringModel,
        *,
        batch_size: int = 8,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded = loaded
        self.batch_size = batch_size
        self._image_token_id = loaded.model.config.image_token_id
        self.examples = ExampleBuilder(
            loaded.image_processor, self._image_token_id,
            min_pixels=min_pixels or loaded.card.min_pixels,
            max_pixels=max_pixels or loaded.card.max_pixels,
            max_image_pixels=max_image_pixels,
        )
        self._pad_id = loaded.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = loaded.tokenizer.eos_token_id
        self._token_types = accepts_token_types(loaded.model)
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
        prepared: dict[int, Example] = {}
        labels = {index: _label(index, image) for index, image in chunk}
        prompt = self.prompt_ids(task)
        for index, image in chunk:
            try:
                prepared[index] = self.examples.build(image, labels[index], prompt)
            except MediaError as err:
                results[index] = ScoreResult.failed(labels[index], task.name, str(err))
        if prepared:
            generated = self._generate(list(prepared.values()), task, [labels[i] for i in prepared])
            results.update(zip(prepared, generated))
        return [results[index] for index, _ in chunk]

    def prompt_ids(self, task: Task) -> list[int]:
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

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded batch on the model's device and dtype."""
        batch = collate(examples, pad_id=self._pad_id, image_token_id=self._image_token_id,
                        padding_side="left", token_types=self._token_types)
        batch = {key: value.to(self.loaded.device) for key, value in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(self.loaded.dtype)
        return batch

    @torch.inference_mode()
    def _generate(self, items: Sequence[Example], task: Task, labels: Sequence[str]) -> list[ScoreResult]:
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
        batch = self.collate(items)
        output = self.loaded.model.generate(**batch, generation_config=config)
        new_tokens = output.sequences[:, batch["input_ids"].shape[1] :].cpu()
        logits = torch.stack(output.logits, dim=1)  # (batch, steps, vocab), raw: before any processor
        number_shape = re.compile(r"\d\.\d{%d}" % fmt.decimals if fmt.decimals else r"\d")
        results = []
        for row, label in enumerate(labels):
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
            results.append(ScoreResult(label, task.name, parsed.value, ncm, parsed.status, text))
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

    ``scorer_options`` go to :class:`Scorer`: ``batch_size``, ``min_pixels``, ``max_pixels`` (default:
    the bounds in the model card, else RealQA's),
    ``max_image_pixels``.
    """
    return Scorer(load_model(model, adapter, device=device, dtype=dtype), **scorer_options)
