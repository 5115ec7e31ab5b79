"""Batched scoring: the image is encoded once, every question reuses it, only the answers are decoded.

For a batch of images and the questions asked of each (a task, its attributes, plain or
chain-of-thought), the engine

1. prefills the part of the prompt all questions share (system turn, image) once per image;
2. repeats that KV cache once per question and prefills each question's own tokens (its text
   and, for plain answers, the forced answer prefix "The quality score of this image is ");
3. decodes greedily until every answer ended, keeping the digit logits of each step, so the NCM
   expected score is read from the same forward passes.

The positions of the question tokens follow Qwen2-VL's multimodal RoPE: text after an image
continues from the image's largest position, an offset computed from its patch grid.

Throughput: images are decoded and preprocessed ahead of the model (in ``workers`` processes, see
:mod:`realqa.prefetch`); within a window of ``group_batches`` batches the images are sorted by
prompt length (their visual-token count) before batching, so a batch pads little; results still
come out in input order. On CUDA batches are copied from pinned memory without blocking.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch

from .batching import Example, ExampleBuilder, collate
from .chat import DEFAULT_COT_FORM, read_cot_attributes, render_prompt
from .compat import accepts_token_types, base_model, cache_argument, precomputed_vision_inputs, returned_cache
from .conversations import Conversation, question_groups
from .media import DEFAULT_MAX_IMAGE_PIXELS, MediaError
from .model import ScoringModel, check_asked, load_model, uncarded_note
from .numeric import PARSE_NO_SCORE, ParsedScore, digit_expectation, digit_std
from .prefetch import HostBuffers, prepare_examples, run_ahead
from .results import ScoreResult
from .tasks import Task

ImageInput = "str | os.PathLike | PIL.Image.Image"
DEFAULT_MAX_COT_TOKENS = 256


@dataclass(frozen=True)
class Question:
    """One question asked of every image: a task, answered plainly or reasoning first (CoT)."""

    task: Task
    cot: bool = False


@dataclass
class _Answer:
    tokens: list[int]
    digit_logits: torch.Tensor  # (steps, 10): the logits of "0".."9" at each generated step


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
        max_cot_tokens: int = DEFAULT_MAX_COT_TOKENS,
        cot_form: str | None = None,
        workers: int = 0,
        group_batches: int = 4,
        preprocessing: str | None = None,
        background: bool | None = None,
    ):
        """``background``: collate batches in a thread ahead of the model, into reused page-locked
        buffers (default: on CUDA; on a CPU the model's threads use the cores)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0 or group_batches < 1:
            raise ValueError(f"need workers >= 0 and group_batches >= 1, got {workers} and {group_batches}")
        self.loaded = loaded
        self.batch_size = batch_size
        self.workers = workers
        self.group_batches = group_batches
        self.max_cot_tokens = max_cot_tokens
        self.cot_form = cot_form or loaded.card.cot_form or DEFAULT_COT_FORM
        config = loaded.model.config
        self._image_token_id = config.image_token_id
        self._merge = getattr(config.vision_config, "spatial_merge_size", 2)
        self.examples = ExampleBuilder(
            loaded.image_processor, self._image_token_id,
            min_pixels=min_pixels or loaded.card.min_pixels,
            max_pixels=max_pixels or loaded.card.max_pixels,
            max_image_pixels=max_image_pixels,
            preprocessing=preprocessing or loaded.card.preprocessing,
        )
        tokenizer = loaded.tokenizer
        self._pad_id = loaded.pad_id
        self._eos_id = tokenizer.eos_token_id
        self._token_types = accepts_token_types(loaded.model)
        self._cache_arg = cache_argument(loaded.model)  # `cache` from transformers 5.2x, `past_key_values` before
        self._digit_index = torch.tensor(loaded.digit_ids)
        self._digit_index_on: dict[torch.device, torch.Tensor] = {}
        self._prompts: dict[Question, list[int]] = {}
        self.background = background
        inner = getattr(base_model(loaded.model), "model", None)
        self._visual = getattr(inner, "visual", None)
        self._vision_inputs = precomputed_vision_inputs(loaded.model)  # what the vision tower takes precomputed

    # ------------------------------------------------------------ tasks

    @property
    def tasks(self) -> dict[str, Task]:
        return self.loaded.card.tasks

    @property
    def attributes(self) -> list[Task]:
        """The fine-grained attribute tasks this model was trained on (from its card)."""
        return [self.tasks[name] for name in self.loaded.card.attributes if name in self.tasks]

    def task(self, name: str, decimals: int | None = None) -> Task:
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; this model answers: {', '.join(self.tasks)}")
        check_asked(self.loaded.card, self.loaded.card_source, name, decimals=decimals)
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
        cot: bool = False,
        attributes: bool = False,
    ) -> list[ScoreResult]:
        """Score images (paths or PIL images): one :class:`ScoreResult` per input, in input order.

        ``attributes=True`` also asks every fine-grained attribute the model knows (sharing the
        image encoding); ``cot=True`` asks for reasoning over the attributes before the score.
        """
        if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
            images = [images]
        return list(self.iter_scores(images, task, decimals=decimals, batch_size=batch_size, cot=cot,
                                     attributes=attributes))

    def iter_scores(
        self,
        images: Iterable[ImageInput],
        task: str = "quality",
        *,
        decimals: int | None = None,
        batch_size: int | None = None,
        cot: bool = False,
        attributes: bool = False,
    ) -> Iterator[ScoreResult]:
        """Like :meth:`score`, yielding results in input order as each batch finishes."""
        check_asked(self.loaded.card, self.loaded.card_source, task, cot=cot)
        main = Question(self.task(task, decimals), cot=cot)
        asked = [main] + ([Question(a) for a in self.attributes if a.name != task] if attributes else [])
        if attributes and not self.attributes:
            raise ValueError("this model's card lists no attribute tasks; it cannot answer --attributes")
        for answers in self.iter_questions(images, asked, batch_size=batch_size):
            yield self._combine(answers[0], answers[1:], main)

    def score_tasks(self, images: Iterable[ImageInput], tasks: Sequence[str], *,
                    batch_size: int | None = None) -> list[dict[str, ScoreResult]]:
        """Several tasks per image in one pass: per input, task name -> result."""
        questions = [Question(self.task(name)) for name in tasks]
        return [{q.task.name: r for q, r in zip(questions, answers)}
                for answers in self.iter_questions(images, questions, batch_size=batch_size)]

    def score_conversations(self, conversations: Sequence[Conversation], *,
                            batch_size: int | None = None) -> list[ScoreResult]:
        """Each conversation's result, in order, asked its own question verbatim (see
        :func:`realqa.conversations.read_conversations`); those asked the same way batch together."""
        results: list = [None] * len(conversations)
        for group in question_groups(list(conversations)):
            first = conversations[group[0]]
            paths = [conversations[i].image_path for i in group]
            asked = [Question(first.task, cot=first.cot)]
            for position, answers in zip(group, self.iter_questions(paths, asked, batch_size=batch_size)):
                results[position] = answers[0]
        return results

    def iter_questions(self, images: Iterable[ImageInput], questions: Sequence[Question], *,
                       batch_size: int | None = None) -> Iterator[list[ScoreResult]]:
        """For each input, in order, one result per question."""
        size = batch_size or self.batch_size
        prompts = [self.prompt_ids(q) for q in questions]
        # One question: its whole prompt is prefilled, and the prefill's logits give the first answer token.
        shared = len(prompts[0]) if len(prompts) == 1 else self._shared_prefix(prompts)
        suffixes = [p[shared:] for p in prompts]
        limits = [self._max_new_tokens(q) for q in questions]
        plan = self._plan(suffixes, limits)
        window = size * self.group_batches
        prepared = prepare_examples(images, self.examples, prompts[0][:shared], dtype=self.loaded.dtype,
                                    workers=self.workers, chunk=size, ahead=2 * window)
        cuda = self.loaded.device.type == "cuda"
        background = cuda if self.background is None else self.background
        depth = 2
        buffers = HostBuffers(depth + 2 if background else 1, pinned=cuda)
        work = self._batches(prepared, plan, size, window, buffers)
        if background:
            work = run_ahead(work, depth)
        results: dict[int, list[ScoreResult]] = {}
        windows: deque = deque()  # windows whose batches are not all read yet, in input order
        pending = None  # the batch launched last: read once the next one is on its way

        def read(items, launched) -> None:
            for (index, label, _), per_question in zip(items, launched.answers()):
                results[index] = [self._read(label, q, a) for q, a in zip(questions, per_question)]

        try:
            for items, batch in work:
                if batch is None:  # the end of a window
                    for index, label, example in items:
                        if isinstance(example, MediaError):
                            results[index] = [ScoreResult.failed(label, q.task.name, str(example)) for q in questions]
                    windows.append(items)
                else:
                    try:
                        launched = self._answer(batch, len(items), suffixes, limits, later=True)
                    finally:  # the device has its copy (on a CPU, the batch is done): the slot may be refilled
                        buffers.give_back(batch.slot, after=batch.copied)
                    if pending is not None:  # read the previous batch while the device works on this one
                        read(*pending)
                    pending = (items, launched)
                while windows and all(index in results for index, _, _ in windows[0]):
                    for index, _, _ in windows.popleft():  # a window's inputs, in input order
                        yield results.pop(index)
            if pending is not None:
                read(*pending)
                pending = None
            for items in windows:
                for index, _, _ in items:
                    yield results.pop(index)
        finally:
            buffers.close()
            work.close()

    # ------------------------------------------------------------ prompts

    def prompt_ids(self, question: Question | Task) -> list[int]:
        """Token ids of a question's prompt (one image placeholder), checked once per question."""
        if isinstance(question, Task):
            question = Question(question)
        if question not in self._prompts:
            tokenizer = self.loaded.tokenizer
            task = question.task
            prompt = render_prompt(tokenizer, task, cot=question.cot, attributes=self.attributes)
            if not question.cot:
                prompt += task.answer_prefix
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            if ids.count(self._image_token_id) != 1:
                raise ValueError(f"the chat template gave {ids.count(self._image_token_id)} image tokens; expected 1")
            if not question.cot:
                # The forced prefix must tokenize the way the full answer does, or the model sees a
                # token boundary it never saw in training.
                sample = task.value_text(task.high if task.is_score else task.values[0])
                if tokenizer.encode(prompt + sample, add_special_tokens=False)[: len(ids)] != ids:
                    raise ValueError(f"task {task.name!r}: the answer prefix {task.answer_prefix!r} does not end "
                                     "on a token boundary before the value; end it with a space or a word")
            self._prompts[question] = ids
        return self._prompts[question]

    def _shared_prefix(self, prompts: Sequence[list[int]]) -> int:
        """Length of the prefix every prompt shares, through the image, leaving each >= 1 own token."""
        shared = min(len(p) for p in prompts) - 1
        for i in range(shared):
            if len({p[i] for p in prompts}) > 1:
                shared = i
                break
        if self._image_token_id not in prompts[0][:shared]:
            raise ValueError("the questions do not share the image in their prompts; ask them separately")
        return shared

    def _max_new_tokens(self, question: Question) -> int:
        task = question.task
        if question.cot:
            return self.max_cot_tokens
        if task.is_score:
            # The digits and two tokens more, to see whether the value ended: "3.47" then "." (or a further
            # digit); "3" then "." then the end, where a "." followed by a digit would have been a point.
            return task.score_format.num_digits + 2
        longest = max(len(self.loaded.tokenizer.encode(v, add_special_tokens=False)) for v in task.values)
        return longest + 2

    # ------------------------------------------------------------ steps

    def _plan(self, suffixes: Sequence[Sequence[int]], limits: Sequence[int]) -> "_Plan":
        """What a batch of these questions needs, fixed for a whole run of batches."""
        visual = self._visual
        flash = "flash" in str(getattr(getattr(visual, "config", None), "_attn_implementation", ""))
        return _Plan(tuple(tuple(s) for s in suffixes), tuple(limits), self._vision_inputs, flash)

    def _batches(self, prepared: Iterable[tuple], plan: "_Plan", size: int, window: int,
                 buffers: HostBuffers) -> Iterator[tuple[list, "_HostBatch | None"]]:
        """``(items, host batch)`` per model batch, then ``(window's items, None)`` per window.

        Within a window of ``window`` prepared inputs the usable ones are sorted by prompt length
        (their visual-token count) and cut into batches of ``size``, so a batch pads little.
        """
        chunk: list = []
        for item in prepared:
            chunk.append(item)
            if len(chunk) == window:
                yield from self._window_batches(chunk, plan, size, buffers)
                chunk = []
        if chunk:
            yield from self._window_batches(chunk, plan, size, buffers)

    def _window_batches(self, chunk: list, plan: "_Plan", size: int, buffers: HostBuffers):
        ready = [item for item in chunk if not isinstance(item[2], MediaError)]
        ready.sort(key=lambda item: len(item[2].input_ids))  # stable: equal lengths stay in input order
        for start in range(0, len(ready), size):
            items = ready[start:start + size]
            slot = buffers.take()
            if slot is None:  # the consumer has stopped
                return
            yield items, self._host_batch([example for _, _, example in items], plan, slot)
        yield chunk, None

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded batch on the model's device and dtype: the model's plain inputs (for ``model(**batch)``
        or ``generate``). Scoring itself prefills from :meth:`_host_batch`, which adds what the engine knows."""
        batch = collate(examples, pad_id=self._pad_id, image_token_id=self._image_token_id,
                        padding_side="left", token_types=self._token_types)
        batch["pixel_values"] = batch["pixel_values"].to(self.loaded.dtype)
        device = self.loaded.device
        if device.type == "cuda":  # pinned pages copy asynchronously: the CPU goes on with the next step
            return {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}
        return {key: value.to(device) for key, value in batch.items()}

    def _text_position_offset(self, grids: torch.Tensor) -> torch.Tensor:
        """Per image, M-RoPE position minus sequence index for text after the image.

        The image's tokens span positions s .. s + max(t, h, w) - 1 (t, h, w in merged tokens)
        while occupying t*h*w sequence slots, so the following text is shifted by the difference.
        """
        t = grids[:, 0]
        h = grids[:, 1] // self._merge
        w = grids[:, 2] // self._merge
        return torch.maximum(torch.maximum(t, h), w) - t * h * w

    def _mrope_positions(self, example: Example, out: torch.Tensor) -> None:
        """Write the example's M-RoPE position ids (3, its length) into ``out``: what transformers'
        ``get_rope_index`` computes, without its per-row host round trips. Text counts up; the
        image's tokens take (t, h, w) grid positions from where it starts; text after it continues
        from its largest position + 1."""
        ids = example.input_ids
        at = ids.index(self._image_token_id)
        t, h, w = (int(v) for v in example.image_grid_thw[0].tolist())
        h, w = h // self._merge, w // self._merge
        count = t * h * w
        out[:, :at] = torch.arange(at)
        grid = out[:, at:at + count].view(3, t, h, w)
        grid[0] = torch.arange(at, at + t).view(t, 1, 1)
        grid[1] = torch.arange(at, at + h).view(1, h, 1)
        grid[2] = torch.arange(at, at + w).view(1, 1, w)
        after = at + max(t, h, w)
        out[:, at + count:] = torch.arange(after, after + len(ids) - at - count)

    def _host_batch(self, examples: Sequence[Example], plan: "_Plan", slot) -> "_HostBatch":
        """Everything a batch's prefill and decode need, built on the host into ``slot``'s buffers
        (page-locked on CUDA: copied without blocking): the left-padded inputs, their M-RoPE
        positions, the vision tower's precomputed inputs, each row's question suffix and limits."""
        n_images, n_questions = len(examples), len(plan.suffixes)
        rows = n_images * n_questions
        long = torch.long
        lengths = [len(e.input_ids) for e in examples]
        width = max(lengths)
        tensors: dict[str, torch.Tensor] = {}
        host: dict[str, torch.Tensor] = {}
        scalars: dict[str, int] = {}

        input_ids = tensors["input_ids"] = slot.empty("input_ids", (n_images, width), long).fill_(self._pad_id)
        mask = tensors["attention_mask"] = slot.empty("attention_mask", (n_images, width), long).zero_()
        positions = tensors["position_ids"] = slot.empty("position_ids", (3, n_images, width), long).zero_()
        for row, (example, n) in enumerate(zip(examples, lengths)):
            input_ids[row, width - n:] = torch.as_tensor(example.input_ids, dtype=long)
            mask[row, width - n:] = 1
            self._mrope_positions(example, positions[:, row, width - n:])
        dtype = self.loaded.dtype
        patches = sum(e.pixel_values.shape[0] for e in examples)
        channels = examples[0].pixel_values.shape[1]
        pixels = tensors["pixel_values"] = slot.empty("pixel_values", (patches, channels), dtype)
        torch.cat([e.pixel_values.to(dtype) for e in examples], out=pixels)
        grids = tensors["image_grid_thw"] = slot.empty("image_grid_thw", (n_images, 3), long)
        torch.cat([e.image_grid_thw for e in examples], out=grids)
        if self._token_types:
            tensors["mm_token_type_ids"] = slot.empty("mm_token_type_ids", (n_images, width), long).copy_(
                input_ids == self._image_token_id)
        self._vision_host_inputs(grids, plan, slot, tensors, host, scalars)

        valid = torch.tensor(lengths, dtype=long).repeat_interleave(n_questions)
        offset = self._text_position_offset(grids).repeat_interleave(n_questions)
        first = valid + offset  # the position of the first token after the prefix
        limits = tensors["row_limits"] = slot.empty("row_limits", (rows,), long)
        limits.copy_(torch.tensor(plan.limits, dtype=long).repeat(n_images))
        longest = max(len(s) for s in plan.suffixes)
        if longest:  # the questions' own tokens, after the shared prefix (row b * Q + q: image b, question q)
            suffix_ids = tensors["suffix_ids"] = slot.empty("suffix_ids", (rows, longest), long).fill_(self._pad_id)
            suffix_mask = slot.empty("suffix_mask", (rows, longest), long).zero_()
            for q, suffix in enumerate(plan.suffixes):  # left-padded, so every row's last token is at the end
                if suffix:
                    suffix_ids[q::n_questions, longest - len(suffix):] = torch.as_tensor(suffix, dtype=long)
                    suffix_mask[q::n_questions, longest - len(suffix):] = 1
            full_mask = tensors["suffix_attention_mask"] = slot.empty("suffix_attention_mask", (rows, width + longest),
                                                                      long)
            full_mask[:, :width] = mask.repeat_interleave(n_questions, dim=0)
            full_mask[:, width:] = suffix_mask
            suffix_positions = tensors["suffix_positions"] = slot.empty("suffix_positions", (rows, longest), long)
            torch.add(first[:, None] - 1, suffix_mask.cumsum(-1), out=suffix_positions)
            first = suffix_positions[:, -1] + 1
        tensors["next_position"] = slot.empty("next_position", (rows,), long).copy_(first)
        return _HostBatch(tensors, host, scalars, slot)

    def _vision_host_inputs(self, grids: torch.Tensor, plan: "_Plan", slot, tensors: dict, host: dict,
                            scalars: dict) -> None:
        """The vision tower's position ids and attention boundaries (and Qwen2.5-VL's windows), computed
        here by transformers' own functions where the installed forward takes them precomputed; it
        otherwise derives them from the grids on the GPU, waiting on the device in every block.

        Without flash attention the boundaries stay on the host: the tower only reads them as a
        list (the split of its attention per image), so they need no trip to the GPU and back."""
        accepted = plan.vision
        if not accepted:
            return
        from transformers import vision_utils

        visual = self._visual
        bounds = tensors if plan.flash else host
        if "position_ids" in accepted:
            value = vision_utils.get_vision_position_ids(grids, visual.spatial_merge_size)
            tensors["image_position_ids"] = slot.empty("image_position_ids", value.shape, value.dtype).copy_(value)
        if "cu_seqlens" in accepted:
            value = vision_utils.get_vision_cu_seqlens(grids)
            bounds["image_cu_seqlens"] = slot.empty("image_cu_seqlens", value.shape, value.dtype).copy_(value)
            if plan.flash and "max_seqlen" in accepted:
                scalars["image_max_seqlen"] = int((value[1:] - value[:-1]).max())
        if "window_index" in accepted:
            index, bounds_w = vision_utils.get_vision_window_index(
                grids, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
                patch_size=visual.patch_size)
            tensors["image_window_index"] = slot.empty("image_window_index", index.shape, index.dtype).copy_(index)
            bounds["image_cu_window_seqlens"] = slot.empty("image_cu_window_seqlens", bounds_w.shape,
                                                           bounds_w.dtype).copy_(bounds_w)
            if plan.flash and "max_window_seqlen" in accepted:
                scalars["image_max_window_seqlen"] = int((bounds_w[1:] - bounds_w[:-1]).max())

    def _digit_index_for(self, device: torch.device) -> torch.Tensor:
        if device not in self._digit_index_on:
            self._digit_index_on[device] = self._digit_index.to(device)
        return self._digit_index_on[device]

    @torch.inference_mode()
    def answer_prepared(self, tensors: dict[str, torch.Tensor], question: Question, label: str) -> ScoreResult:
        """Answer one input prepared elsewhere (a video: :func:`realqa.video.video_inputs`) through the same
        prefill and decode loop as images, read the same way.

        ``tensors`` holds the model's inputs for a batch of one, with their M-RoPE ``position_ids`` and the
        ``next_position`` of the first answer token (the loop never asks the model to work positions out)."""
        limit = self._max_new_tokens(question)
        batch = _HostBatch({**tensors, "row_limits": torch.tensor([limit])}, {}, {}, slot=None)
        (answer,), = self._answer(batch, 1, [[]], [limit])
        return self._read(label, question, answer)

    @torch.inference_mode()
    def _answer(self, batch: "_HostBatch", n_images: int, suffixes: Sequence[list[int]], max_new_tokens: Sequence[int],
                later: bool = False) -> "list[list[_Answer]] | _Pending":
        """Greedy answers to every question for a host batch of ``n_images`` inputs (built with the shared
        prefix). ``later``: return them on their way to the host (:class:`_Pending`), the device still working.

        One prefill of the prefix (the whole prompt when every suffix is empty); with suffixes, the
        cache is repeated once per question (not for one) and the questions' own tokens prefilled;
        either way the last forward's logits give each row's first answer token. Then one forward
        per token. The host never waits for the device inside the loop: the step count is known
        here, and whether every row already ended is read two steps late on CUDA.
        """
        model = self.loaded.model
        device = self.loaded.device
        n_questions = len(suffixes)
        rows = n_images * n_questions
        inputs = batch.to(device)
        prefill = {key: inputs[key] for key in inputs if key not in _DECODE_KEYS}
        outputs = model(**prefill, use_cache=True, logits_to_keep=1)
        cache = returned_cache(outputs)
        mask = inputs["attention_mask"]
        if "suffix_ids" in inputs:
            if n_questions > 1:
                cache.batch_repeat_interleave(n_questions)  # row b * Q + q: image b, question q
            mask = inputs["suffix_attention_mask"]
            outputs = model(input_ids=inputs["suffix_ids"], attention_mask=mask,
                            position_ids=inputs["suffix_positions"].unsqueeze(0).expand(3, -1, -1),
                            use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
            cache = returned_cache(outputs)
        logits = outputs.logits[:, -1]

        steps = max(max_new_tokens)
        width = mask.shape[1]
        # The decode mask, made once: SDPA takes it as the (rows, 1, 1, length) boolean transformers would
        # build each step (and, building it, check on the host whether it pads).
        full = torch.ones((rows, width + steps), dtype=mask.dtype, device=device)
        full[:, :width] = mask
        if _attention(model) == "sdpa":
            full = full.bool()[:, None, None, :]
        next_position = inputs["next_position"][None, :, None].expand(3, -1, -1)
        row_limits = inputs["row_limits"]
        index = self._digit_index_for(device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        stop = _AllFinished(device)
        tokens: list[torch.Tensor] = []
        digit_logits: list[torch.Tensor] = []
        for step in range(steps):
            logits = logits.float()
            next_token = logits.argmax(-1).masked_fill_(finished, self._pad_id)
            tokens.append(next_token)
            digit_logits.append(logits.index_select(-1, index))
            finished |= (next_token == self._eos_id) | (row_limits <= step + 1)
            if step + 1 == steps or stop(finished):
                break
            outputs = model(input_ids=next_token[:, None], attention_mask=full[..., :width + step + 1],
                            position_ids=next_position + step, use_cache=True, logits_to_keep=1,
                            **{self._cache_arg: cache})
            cache = returned_cache(outputs)
            logits = outputs.logits[:, -1]

        pending = _Pending(torch.stack(tokens, dim=1), torch.stack(digit_logits, dim=1), n_images,
                           list(max_new_tokens), self._eos_id)
        return pending if later else pending.answers()

    def _read(self, label: str, question: Question, answer: _Answer) -> ScoreResult:
        """Parse one answer; for scores, the NCM value at the digits of the number that was read, and its
        spread ``ncm_std`` (:func:`realqa.numeric.digit_std`) under the same digit distributions."""
        task = question.task
        text = self.loaded.tokenizer.decode(answer.tokens, skip_special_tokens=True)
        parsed = task.parse(text if question.cot else task.answer_prefix + text)
        if task.is_score and not question.cot and parsed.value is not None and _more_decimals(text, task):
            # The answer went on past the task's precision: a checkpoint trained at another one (a wrong
            # --decimals for a model without a card). Its cut value is not a score, and is not read as one.
            parsed = ParsedScore(None, PARSE_NO_SCORE, parsed.text)
        ncm = ncm_std = None
        if task.is_score and parsed.status != PARSE_NO_SCORE:
            positions = self._number_positions(answer.tokens, parsed.value)
            if positions is not None:
                at_digits = answer.digit_logits[positions]
                ncm = float(digit_expectation(at_digits, list(range(10))))
                ncm_std = float(digit_std(at_digits, list(range(10))))
        result = ScoreResult(label, task.name, parsed.value, ncm, parsed.status, text, ncm_std=ncm_std)
        if question.cot:
            stated = read_cot_attributes(text, self.attributes, self.cot_form)
            result = result.with_attributes({a.name: _attribute_entry(a, stated[a.name]) for a in self.attributes})
        return result

    def _number_positions(self, tokens: list[int], value: float) -> list[int] | None:
        """Positions of the last number's digit tokens, if they spell a well-formed score.

        None when the digits are not one token each or the number is not the answer's last one.
        """
        digit_ids = self.loaded.digit_ids
        positions = [i for i, token in enumerate(tokens) if token in digit_ids]
        written = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        digits_in_text = [ch for ch in written if ch.isdigit()]
        if len(digits_in_text) != len(positions):
            return None  # some digit shares a token with other characters
        number = _last_number(written)
        if number is None or not _ONE_INTEGER_DIGIT.fullmatch(number) or abs(float(number) - value) > 1e-9:
            return None  # NCM weighs the first digit as units: only a one-integer-digit score qualifies
        count = sum(ch.isdigit() for ch in number)
        return positions[-count:] if count else None

    def _combine(self, main: ScoreResult, attribute_answers: Sequence[ScoreResult], question: Question) -> ScoreResult:
        if not attribute_answers:
            return main
        entries = dict(main.attributes or {})
        for answer in attribute_answers:
            entries[answer.task] = {"value": answer.score, "status": answer.status, "text": answer.text}
        return main.with_attributes(entries)


@dataclass(frozen=True)
class _Plan:
    """What every batch of one scoring run needs besides its examples."""

    suffixes: tuple[tuple[int, ...], ...]  # per question, its tokens after the shared prefix (none: one question)
    limits: tuple[int, ...]  # per question, the most tokens its answer may take
    vision: frozenset[str]  # the vision inputs the model takes precomputed (see precomputed_vision_inputs)
    flash: bool  # the vision tower runs flash attention: its boundaries go to the device, with their maxima


# What a host batch carries for the decode loop, not for the prefill forward.
_DECODE_KEYS = frozenset({"row_limits", "next_position", "suffix_ids", "suffix_attention_mask", "suffix_positions"})


@dataclass
class _HostBatch:
    """A batch built on the host: ``tensors`` go to the model's device, ``host`` tensors stay (read there
    as lists), ``scalars`` are plain ints; all of them views of ``slot``'s reused buffers."""

    tensors: dict[str, torch.Tensor]
    host: dict[str, torch.Tensor]
    scalars: dict[str, int]
    slot: object
    copied: object = field(default=None)  # on CUDA, the event the copies to the device end with

    def to(self, device: torch.device) -> dict:
        if device.type == "cuda":
            moved = {key: value.to(device, non_blocking=True) for key, value in self.tensors.items()}
            self.copied = torch.cuda.Event()
            self.copied.record()
        else:
            moved = {key: value.to(device) for key, value in self.tensors.items()}
        return {**moved, **self.host, **self.scalars}


class _Pending:
    """A batch's generated tokens and digit logits, copied to the host without blocking on CUDA;
    :meth:`answers` waits for the copy and cuts each row's answer at its limit or end."""

    def __init__(self, generated: torch.Tensor, digits: torch.Tensor, n_images: int, limits: list[int], eos_id: int):
        cuda = generated.device.type == "cuda"
        self.generated = generated.to("cpu", non_blocking=cuda)
        self.digits = digits.to("cpu", non_blocking=cuda)
        self.copied = None
        if cuda:
            self.copied = torch.cuda.Event()
            self.copied.record()
        self.n_images, self.limits, self.eos_id = n_images, limits, eos_id
        self._answers: list[list[_Answer]] | None = None

    def answers(self) -> list[list[_Answer]]:
        if self._answers is None:
            if self.copied is not None:
                self.copied.synchronize()
            n_questions = len(self.limits)
            self._answers = []
            for b in range(self.n_images):
                per_question = []
                for q, limit in enumerate(self.limits):
                    row = b * n_questions + q
                    seq = self.generated[row, :limit].tolist()
                    if self.eos_id in seq:
                        seq = seq[: seq.index(self.eos_id)]
                    per_question.append(_Answer(seq, self.digits[row, : len(seq)]))
                self._answers.append(per_question)
        return self._answers


class _AllFinished:
    """Whether every row has ended. On CUDA the flag is copied to the host without blocking and read
    ``lag`` steps later, so the host keeps queuing forwards while the device works; the loop then runs
    at most ``lag`` forwards more than needed (their tokens are cut off like any after an answer's end)."""

    def __init__(self, device: torch.device, lag: int = 2):
        self.cuda = device.type == "cuda"
        self.lag = lag
        self.pending: deque = deque()

    def __call__(self, finished: torch.Tensor) -> bool:
        if not self.cuda:
            return bool(finished.all())
        flag = finished.all().to("cpu", non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((flag, done))
        if len(self.pending) <= self.lag:
            return False
        flag, done = self.pending.popleft()
        done.synchronize()
        return bool(flag)


def _attention(model) -> str:
    """The language model's attention implementation (``sdpa``, ``eager``, ``flash_attention_2``...)."""
    config = base_model(model).config
    config = getattr(config, "text_config", None) or config
    return str(getattr(config, "_attn_implementation", None) or "")


def _attribute_entry(task: Task, stated: str | None) -> dict:
    """An attribute read from reasoning, validated against its task (flagged, never coerced)."""
    if stated is None:
        return {"value": None, "status": "missing", "text": ""}
    parsed = task.parse(stated)
    return {"value": parsed.value, "status": parsed.status, "text": stated}


_ONE_INTEGER_DIGIT = re.compile(r"\d(?:\.\d+)?")


def _more_decimals(text: str, task: Task) -> bool:
    """Whether the last number of a plain score answer has more decimals than ``task`` writes."""
    number = _last_number(text)
    return number is not None and len(number.partition(".")[2]) > task.score_format.decimals


def _last_number(text: str) -> str | None:
    numbers = re.findall(r"\d+(?:\.\d+)?", text)
    return numbers[-1] if numbers else None


ATTENTION = ("auto", "sdpa", "flash_attention_2", "eager")


def load_scorer(
    model: str,
    adapter: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    attention: str = "auto",
    compile: bool = False,
    compile_vision: bool = False,
    quantize: str | None = None,
    card: str | None = None,
    own_questions: bool = False,
    **scorer_options,
) -> Scorer:
    """Load a Qwen2-VL / Qwen2.5-VL checkpoint (folder or hub id), an optional LoRA adapter, and wrap it.

    ``attention``: ``"auto"`` is FlashAttention-2 where the ``flash_attn`` package is installed and the
    model runs on CUDA in 16 bits, else PyTorch's SDPA. ``compile=True`` compiles the language model
    with ``torch.compile`` (dynamic shapes; the first batches pay the compilation, minutes on a CPU);
    ``compile_vision=True`` compiles the vision tower's elementwise work (:func:`compile_vision_tower`).
    ``quantize``: ``"8bit"`` / ``"4bit"`` weights through bitsandbytes (CUDA; see :func:`realqa.model.load_model`).
    ``card``: a ``realqa_card.json`` (or its folder) to follow instead of the checkpoint's own. A checkpoint
    without any card is told on stderr what is assumed (``own_questions``: the inputs bring their questions).
    ``scorer_options`` go to :class:`Scorer`:
    ``batch_size``, ``min_pixels``, ``max_pixels`` (default: the bounds in the model card, else
    RealQA's), ``max_image_pixels``, ``max_cot_tokens``, ``cot_form``, ``workers``, ``group_batches``,
    ``preprocessing`` (default: the card's profile, see :mod:`realqa.preprocessing`).
    """
    loaded = load_model(model, adapter, device=device, dtype=dtype, quantize=quantize, card=card)
    if loaded.card_source is None:  # a library warning alone must not be the only sign: stderr, once per load
        print(uncarded_note(loaded.name, own_questions=own_questions), file=sys.stderr)
    set_attention(loaded, attention)
    if compile:
        compile_language_model(loaded)
    if compile_vision:
        compile_vision_tower(loaded)
    return Scorer(loaded, **scorer_options)


def compile_language_model(loaded: ScoringModel) -> None:
    """``torch.compile`` the language model in place (same module tree and weights).

    Only the language model: the vision tower's attention splits the batch per image with a
    host-side list, so a compiled tower recompiles for every new mix of image sizes
    (:func:`compile_vision_tower` compiles the parts of it that do not).
    """
    base_model(loaded.model).model.language_model.compile(dynamic=True)


def compile_vision_tower(loaded: ScoringModel) -> None:
    """``torch.compile`` (dynamic shapes) the vision tower's elementwise work, in place: each block's
    MLP (linear, activation, linear), the rotary frequencies, and the function that rotates the
    queries and keys in every block's attention (float casts, ``rotate_half``, products and sums:
    unfused, about a third of the tower's time on a GPU). The attention itself, which splits the
    batch per image on the host, stays as it is, so a new mix of image sizes recompiles nothing.

    The rotation is a function of the model's module in transformers (``apply_rotary_pos_emb_vision``):
    it is replaced there by its compiled self, for every model of that architecture in the process.
    """
    visual = base_model(loaded.model).model.visual
    visual.rotary_pos_emb.compile(dynamic=True)
    for block in visual.blocks:
        block.mlp.compile(dynamic=True)
    modeling = sys.modules[type(visual.blocks[0].attn).__module__]
    rotate = getattr(modeling, "apply_rotary_pos_emb_vision", None)
    if rotate is not None and not getattr(rotate, "_realqa_compiled", False):
        compiled = torch.compile(rotate, dynamic=True)
        compiled._realqa_compiled = True
        modeling.apply_rotary_pos_emb_vision = compiled


def set_attention(loaded: ScoringModel, attention: str = "auto") -> str:
    """Switch the loaded model's attention kernels (it loads with SDPA); returns the one in use."""
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTION)}")
    if attention == "auto":
        import importlib.util

        fits = loaded.device.type == "cuda" and loaded.dtype in (torch.bfloat16, torch.float16)
        attention = "flash_attention_2" if fits and importlib.util.find_spec("flash_attn") else "sdpa"
    if attention == "flash_attention_2" and loaded.device.type != "cuda":
        raise ValueError("flash_attention_2 runs on CUDA only; use --attention sdpa")
    if attention != "sdpa":  # what load_model loads with
        loaded.model.set_attn_implementation(attention)
    return attention
