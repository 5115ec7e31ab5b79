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

import inspect
import re
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from .batching import Example, ExampleBuilder, accepts_token_types, collate
from .chat import DEFAULT_COT_FORM, read_cot_attributes, render_prompt
from .conversations import Conversation, question_groups
from .media import DEFAULT_MAX_IMAGE_PIXELS, MediaError
from .model import ScoringModel, load_model, uncarded_note
from .prefetch import prepare_examples
from .numeric import PARSE_NO_SCORE, digit_expectation
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
    ):
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
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._eos_id = tokenizer.eos_token_id
        self._token_types = accepts_token_types(loaded.model)
        # transformers 5.2x renamed the forward's `past_key_values` to `cache`.
        forward_params = inspect.signature(loaded.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        self._digit_index = torch.tensor(loaded.digit_ids)
        self._prompts: dict[Question, list[int]] = {}

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
        shared = self._shared_prefix(prompts)
        suffixes = [p[shared:] for p in prompts]
        limits = [self._max_new_tokens(q) for q in questions]
        window = size * self.group_batches
        prepared = prepare_examples(images, self.examples, prompts[0][:shared], dtype=self.loaded.dtype,
                                    workers=self.workers, chunk=size, ahead=2 * window)
        chunk: list = []
        for item in prepared:
            chunk.append(item)
            if len(chunk) == window:
                yield from self._score_window(chunk, questions, suffixes, limits, size)
                chunk = []
        if chunk:
            yield from self._score_window(chunk, questions, suffixes, limits, size)

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
            fmt = task.score_format
            return fmt.num_digits + (1 if fmt.decimals else 0) + 1  # one more shows whether the value ended
        longest = max(len(self.loaded.tokenizer.encode(v, add_special_tokens=False)) for v in task.values)
        return longest + 2

    # ------------------------------------------------------------ steps

    def _score_window(self, window: Sequence[tuple], questions: Sequence[Question], suffixes: Sequence[list[int]],
                      limits: Sequence[int], size: int) -> list[list[ScoreResult]]:
        """Score a window of prepared inputs in batches of similar length; results in input order."""
        results: dict[int, list[ScoreResult]] = {}
        ready = []
        for index, label, example in window:
            if isinstance(example, MediaError):
                results[index] = [ScoreResult.failed(label, q.task.name, str(example)) for q in questions]
            else:
                ready.append((index, label, example))
        ready.sort(key=lambda item: len(item[2].input_ids))  # stable: equal lengths stay in input order
        for start in range(0, len(ready), size):
            batch = ready[start:start + size]
            answers = self._answer([example for _, _, example in batch], suffixes, limits)
            for (index, label, _), per_question in zip(batch, answers):
                results[index] = [self._read(label, q, a) for q, a in zip(questions, per_question)]
        return [results[index] for index, _, _ in window]

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded batch on the model's device and dtype."""
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

    @torch.inference_mode()
    def _answer(self, examples: Sequence[Example], suffixes: Sequence[list[int]],
                max_new_tokens: Sequence[int]) -> list[list[_Answer]]:
        model = self.loaded.model
        device = self.loaded.device
        n_images, n_questions = len(examples), len(suffixes)
        prefix = self.collate(examples)
        outputs = model(**prefix, use_cache=True, logits_to_keep=1)
        cache = _returned_cache(outputs)
        cache.batch_repeat_interleave(n_questions)  # row b * Q + q: image b, question q

        rows = n_images * n_questions
        prefix_mask = prefix["attention_mask"].repeat_interleave(n_questions, dim=0)
        valid = prefix_mask.sum(-1)  # real prefix tokens per row
        offset = self._text_position_offset(prefix["image_grid_thw"]).repeat_interleave(n_questions)
        longest = max(len(s) for s in suffixes)
        suffix_ids = torch.full((rows, longest), self._pad_id, dtype=torch.long, device=device)
        suffix_mask = torch.zeros((rows, longest), dtype=torch.long, device=device)
        for q, suffix in enumerate(suffixes):  # left-padded, so every row's last token is at the end
            suffix_ids[q::n_questions, longest - len(suffix):] = torch.tensor(suffix, device=device)
            suffix_mask[q::n_questions, longest - len(suffix):] = 1
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        positions = valid[:, None] + suffix_mask.cumsum(-1) - 1 + offset[:, None]
        limits = torch.tensor(max_new_tokens, device=device).repeat(n_images)

        step_ids, step_positions = suffix_ids, positions
        tokens: list[torch.Tensor] = []
        digit_logits: list[torch.Tensor] = []
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        index = self._digit_index.to(device)
        for step in range(int(limits.max())):
            outputs = model(input_ids=step_ids, attention_mask=mask,
                            position_ids=step_positions.unsqueeze(0).expand(3, -1, -1),
                            use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
            cache = _returned_cache(outputs)
            logits = outputs.logits[:, -1].float()
            next_token = logits.argmax(-1)
            next_token = torch.where(finished, torch.full_like(next_token, self._pad_id), next_token)
            tokens.append(next_token)
            digit_logits.append(logits.index_select(-1, index))
            finished |= (next_token == self._eos_id) | (step + 1 >= limits)
            if bool(finished.all()):
                break
            step_ids = next_token[:, None]
            step_positions = step_positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)

        generated = torch.stack(tokens, dim=1).cpu()
        digits = torch.stack(digit_logits, dim=1).cpu()
        answers = []
        for b in range(n_images):
            per_question = []
            for q in range(n_questions):
                row = b * n_questions + q
                seq = generated[row, : int(limits[row])].tolist()
                if self._eos_id in seq:
                    seq = seq[: seq.index(self._eos_id)]
                per_question.append(_Answer(seq, digits[row, : len(seq)]))
            answers.append(per_question)
        return answers

    def read_answer(self, label: str, question: Question, tokens: Sequence[int], digit_logits: torch.Tensor) -> ScoreResult:
        """Read a generated answer produced elsewhere (e.g. for a video input) the way scoring does.

        ``digit_logits`` (steps, 10) holds the logits of "0".."9" at each generated step.
        """
        return self._read(label, question, _Answer(list(tokens), digit_logits))

    def _read(self, label: str, question: Question, answer: _Answer) -> ScoreResult:
        """Parse one answer; for scores, the NCM value at the digits of the number that was read."""
        task = question.task
        text = self.loaded.tokenizer.decode(answer.tokens, skip_special_tokens=True)
        parsed = task.parse(text if question.cot else task.answer_prefix + text)
        ncm = None
        if task.is_score and parsed.status != PARSE_NO_SCORE:
            positions = self._number_positions(answer.tokens, parsed.value)
            if positions is not None:
                ncm = float(digit_expectation(answer.digit_logits[positions], list(range(10))))
        result = ScoreResult(label, task.name, parsed.value, ncm, parsed.status, text)
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


def _returned_cache(outputs):
    """The KV cache a forward returned (``cache`` from transformers 5.2x, ``past_key_values`` before)."""
    return outputs["cache"] if "cache" in outputs else outputs.past_key_values


def _attribute_entry(task: Task, stated: str | None) -> dict:
    """An attribute read from reasoning, validated against its task (flagged, never coerced)."""
    if stated is None:
        return {"value": None, "status": "missing", "text": ""}
    parsed = task.parse(stated)
    return {"value": parsed.value, "status": parsed.status, "text": stated}


_ONE_INTEGER_DIGIT = re.compile(r"\d(?:\.\d+)?")


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
    quantize: str | None = None,
    card: str | None = None,
    own_questions: bool = False,
    **scorer_options,
) -> Scorer:
    """Load a Qwen2-VL / Qwen2.5-VL checkpoint (folder or hub id), an optional LoRA adapter, and wrap it.

    ``attention``: ``"auto"`` is FlashAttention-2 where the ``flash_attn`` package is installed and the
    model runs on CUDA in 16 bits, else PyTorch's SDPA. ``compile=True`` compiles the language model
    with ``torch.compile`` (dynamic shapes; the first batches pay the compilation, minutes on a CPU).
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
    return Scorer(loaded, **scorer_options)


def compile_language_model(loaded: ScoringModel) -> None:
    """``torch.compile`` the language model in place (same module tree and weights).

    Only the language model: the vision tower's attention splits the batch per image with a
    host-side list, so a compiled tower recompiles for every new mix of image sizes.
    """
    loaded.model.model.language_model.compile(dynamic=True)


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
