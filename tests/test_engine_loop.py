"""The lean decode loop gives the results of the loop it replaced.

``reference_answers`` below is the engine's loop as it was (prefix prefill with transformers'
own M-RoPE positions and vision-tower inputs, a suffix forward even for one question, the KV
cache repeated per question, a 2-D mask grown each step, limits read from the device). The
engine's answers to the same examples must match it: the same greedy tokens, the same digit
logits within float tolerance, the same results, for images of mixed sizes, one or several
questions per image (chain of thought included), Qwen2-VL and Qwen2.5-VL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_PIXELS
from realqa.batching import collate
from realqa.compat import precomputed_vision_inputs, returned_cache
from realqa.engine import Question, Scorer, compile_vision_tower
from realqa.media import MediaError
from realqa.model import build_tiny_model, load_model
from realqa.prefetch import HostBuffers, run_ahead

# 4 to 64 visual tokens per image: mixed prompt lengths within a batch.
MIXED_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}
SIZES = [(56, 56), (300, 200), (90, 160), (224, 224), (120, 60), (500, 90), (64, 64)]


def mixed_images(count: int = len(SIZES), seed: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        level = rng.uniform(0.1, 0.9)
        pixels = np.clip(level * 255 + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


@pytest.fixture(scope="module")
def qwen2_loaded(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def qwen2_5_loaded(tmp_path_factory):
    return load_model(build_tiny_model(tmp_path_factory.mktemp("q25"), architecture="qwen2_5_vl"), device="cpu")


@pytest.fixture(params=["qwen2_vl", "qwen2_5_vl"])
def loaded(request, qwen2_loaded, qwen2_5_loaded):
    return qwen2_loaded if request.param == "qwen2_vl" else qwen2_5_loaded


# ---------------------------------------------------------------- the loop as it was


@torch.inference_mode()
def reference_answers(scorer: Scorer, examples, suffixes, max_new_tokens) -> list[list[tuple[list[int], torch.Tensor]]]:
    """The engine's former ``_answer``, verbatim but for naming: per image, per question, (tokens, digit logits)."""
    model = scorer.loaded.model
    n_images, n_questions = len(examples), len(suffixes)
    prefix = collate(examples, pad_id=scorer._pad_id, image_token_id=scorer._image_token_id, padding_side="left",
                     token_types=scorer._token_types)
    prefix["pixel_values"] = prefix["pixel_values"].to(scorer.loaded.dtype)
    outputs = model(**prefix, use_cache=True, logits_to_keep=1)
    cache = returned_cache(outputs)
    cache.batch_repeat_interleave(n_questions)
    rows = n_images * n_questions
    prefix_mask = prefix["attention_mask"].repeat_interleave(n_questions, dim=0)
    valid = prefix_mask.sum(-1)
    offset = scorer._text_position_offset(prefix["image_grid_thw"]).repeat_interleave(n_questions)
    longest = max(len(s) for s in suffixes)
    suffix_ids = torch.full((rows, longest), scorer._pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((rows, longest), dtype=torch.long)
    for q, suffix in enumerate(suffixes):
        suffix_ids[q::n_questions, longest - len(suffix):] = torch.tensor(suffix)
        suffix_mask[q::n_questions, longest - len(suffix):] = 1
    mask = torch.cat([prefix_mask, suffix_mask], dim=1)
    positions = valid[:, None] + suffix_mask.cumsum(-1) - 1 + offset[:, None]
    limits = torch.tensor(max_new_tokens).repeat(n_images)
    step_ids, step_positions = suffix_ids, positions
    tokens, digit_logits = [], []
    finished = torch.zeros(rows, dtype=torch.bool)
    for step in range(int(limits.max())):
        outputs = model(input_ids=step_ids, attention_mask=mask,
                        position_ids=step_positions.unsqueeze(0).expand(3, -1, -1),
                        use_cache=True, logits_to_keep=1, **{scorer._cache_arg: cache})
        cache = returned_cache(outputs)
        logits = outputs.logits[:, -1].float()
        next_token = logits.argmax(-1)
        next_token = torch.where(finished, torch.full_like(next_token, scorer._pad_id), next_token)
        tokens.append(next_token)
        digit_logits.append(logits.index_select(-1, scorer._digit_index))
        finished |= (next_token == scorer._eos_id) | (step + 1 >= limits)
        if bool(finished.all()):
            break
        step_ids = next_token[:, None]
        step_positions = step_positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype)], dim=1)
    generated = torch.stack(tokens, dim=1)
    digits = torch.stack(digit_logits, dim=1)
    answers = []
    for b in range(n_images):
        per_question = []
        for q in range(n_questions):
            row = b * n_questions + q
            seq = generated[row, : int(limits[row])].tolist()
            if scorer._eos_id in seq:
                seq = seq[: seq.index(scorer._eos_id)]
            per_question.append((seq, digits[row, : len(seq)]))
        answers.append(per_question)
    return answers


def reference_results(scorer: Scorer, images, questions, batch_size: int) -> list[list]:
    """Results the former engine gave: its prefix (every prompt keeps >= 1 own token), batches of
    ``batch_size`` consecutive inputs (each sorted by prompt length, as the engine sorts a window)."""
    prompts = [scorer.prompt_ids(q) for q in questions]
    shared = scorer._shared_prefix(prompts)
    suffixes = [p[shared:] for p in prompts]
    limits = [scorer._max_new_tokens(q) for q in questions]
    results, raw = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        examples = [scorer.examples.build(image, f"<image {start + i}>", prompts[0][:shared])
                    for i, image in enumerate(chunk)]
        order = sorted(range(len(chunk)), key=lambda i: len(examples[i].input_ids))
        answers = reference_answers(scorer, [examples[i] for i in order], suffixes, limits)
        by_input = dict(zip(order, answers))
        for i in range(len(chunk)):
            label = f"<image {start + i}>"
            raw.append(by_input[i])
            results.append([scorer._read(label, q, _answer(*a)) for q, a in zip(questions, by_input[i])])
    return results, raw


def _answer(tokens, digits):
    from realqa.engine import _Answer

    return _Answer(tokens, digits)


def engine_results(scorer: Scorer, images, questions, batch_size: int) -> tuple[list[list], list]:
    """The engine's results and, per input, its raw answers (tokens, digit logits) in input order."""
    answers_of: dict[int, list] = {}
    examples_of: dict[int, list] = {}  # host batch -> its examples
    answer, host_batch = scorer._answer, scorer._host_batch

    def batching(examples, *rest):
        batch = host_batch(examples, *rest)
        examples_of[id(batch)] = list(examples)
        return batch

    def recording(batch, *rest, **kwargs):
        found = answer(batch, *rest, **kwargs)  # the engine asks for its answers later: a _Pending
        for i, example in enumerate(examples_of[id(batch)]):
            answers_of[id(example)] = (found, i)
        return found

    build = scorer.examples.build
    built: list = []

    def remembering(image, label, *rest, **kwargs):
        example = build(image, label, *rest, **kwargs)
        built.append((label, example))
        return example

    scorer._answer, scorer._host_batch, scorer.examples.build = recording, batching, remembering
    try:
        results = list(scorer.iter_questions(images, questions, batch_size=batch_size))
    finally:
        del scorer._answer, scorer._host_batch, scorer.examples.build
    by_label = {label: example for label, example in built}
    raw = []
    for r in results:
        found, i = answers_of[id(by_label[r[0].path])]
        raw.append([(a.tokens, a.digit_logits) for a in (found.answers() if hasattr(found, "answers") else found)[i]])
    return results, raw


def assert_same(engine, reference, *, atol=1e-4):
    (results, raw), (expected, expected_raw) = engine, reference
    assert len(results) == len(expected)
    for per_question, expected_per_question in zip(raw, expected_raw):
        for (tokens, digits), (expected_tokens, expected_digits) in zip(per_question, expected_per_question):
            assert tokens == expected_tokens
            assert digits.shape == expected_digits.shape
            torch.testing.assert_close(digits, expected_digits, atol=atol, rtol=1e-4)
    for per_question, expected_per_question in zip(results, expected):
        for a, b in zip(per_question, expected_per_question):
            assert (a.path, a.task, a.score, a.status, a.text, a.error, a.attributes) == (
                b.path, b.task, b.score, b.status, b.text, b.error, b.attributes)
            assert (a.ncm is None) == (b.ncm is None)
            if a.ncm is not None:
                assert a.ncm == pytest.approx(b.ncm, abs=1e-4)


QUESTION_SETS = {
    "one": lambda s: [Question(s.task("quality"))],
    "two": lambda s: [Question(s.task("quality")), Question(s.task("aesthetics"))],
    "cot": lambda s: [Question(s.task("quality"), cot=True)],
    "cot+plain": lambda s: [Question(s.task("quality"), cot=True), Question(s.task("aesthetics"))],
}


# ---------------------------------------------------------------- the same answers


@pytest.mark.parametrize("questions", sorted(QUESTION_SETS))
def test_engine_answers_as_the_former_loop(loaded, questions):
    scorer = Scorer(loaded, group_batches=1, max_cot_tokens=12, **MIXED_PIXELS)
    asked = QUESTION_SETS[questions](scorer)
    images = mixed_images()
    assert_same(engine_results(scorer, images, asked, 4), reference_results(scorer, images, asked, 4))


def test_background_collation_gives_the_same_answers(loaded):
    images = mixed_images(9)
    inline = Scorer(loaded, batch_size=2, group_batches=2, background=False, **MIXED_PIXELS)
    ahead = Scorer(loaded, batch_size=2, group_batches=2, background=True, **MIXED_PIXELS)
    for asked in (QUESTION_SETS["one"](inline), QUESTION_SETS["two"](inline)):
        a = list(inline.iter_questions(images, asked))
        b = list(ahead.iter_questions(images, asked))
        assert [[(r.path, r.text, r.status) for r in row] for row in a] == [[(r.path, r.text, r.status) for r in row]
                                                                            for row in b]


def test_without_precomputed_vision_inputs_the_answers_are_the_same(loaded):
    """The fallback where a transformers release takes no precomputed vision inputs: the tower computes them."""
    scorer = Scorer(loaded, group_batches=1, **MIXED_PIXELS)
    assert scorer._vision_inputs  # 5.17 and 5.24 both take them
    asked = QUESTION_SETS["two"](scorer)
    images = mixed_images()
    expected = engine_results(scorer, images, asked, 4)
    scorer._vision_inputs = frozenset()
    assert_same(engine_results(scorer, images, asked, 4), expected, atol=1e-5)


def test_eager_attention_answers_as_the_former_loop(tiny_model_dir):
    """Not SDPA: the decode steps get the 2-D mask (transformers builds the 4-D one)."""
    loaded = load_model(tiny_model_dir, device="cpu")
    loaded.model.set_attn_implementation("eager")
    scorer = Scorer(loaded, group_batches=1, **MIXED_PIXELS)
    asked = QUESTION_SETS["two"](scorer)
    images = mixed_images(5)
    assert_same(engine_results(scorer, images, asked, 5), reference_results(scorer, images, asked, 5))


def test_format_model_scores_as_the_former_loop(format_scorer):
    """A model that answers numbers: the same scores, and NCM values read from the same digit logits."""
    from toy_data import brightness_image

    images = [brightness_image(level) for level in np.linspace(0.05, 0.95, 10)]
    for asked in ([Question(format_scorer.task("quality"))],
                  [Question(format_scorer.task("quality")), Question(format_scorer.tasks["quality"].with_decimals(1))]):
        engine = engine_results(format_scorer, images, asked, 5)
        assert sum(r[0].ncm is not None for r in engine[0]) >= 5
        assert_same(engine, reference_results(format_scorer, images, asked, 5))


def test_an_answer_past_the_asked_precision_is_no_score(format_scorer):
    """A model trained at 2 decimals, asked at 0 (as a wrong --decimals would ask a checkpoint without a card):
    the token after "3." shows the answer going on, so no row reads the cut "3." as the score 3."""
    from toy_data import brightness_image

    images = [brightness_image(level) for level in np.linspace(0.05, 0.95, 6)]
    trained = list(format_scorer.iter_questions(images, [Question(format_scorer.task("quality"))]))
    assert sum(r[0].status == "ok" for r in trained) >= 3  # it does write well-formed 2-decimal scores
    asked = list(format_scorer.iter_questions(images, [Question(format_scorer.tasks["quality"].with_decimals(0))]))
    for (plain,), (cut,) in zip(trained, asked):
        if plain.status == "ok":
            assert cut.status == "no_score" and cut.score is None and cut.ncm is None
            assert cut.text.startswith(plain.text[:3])  # "3.4": the digit after the point was seen


# ---------------------------------------------------------------- what the loop no longer does


def test_prefill_and_vision_tower_get_their_inputs_precomputed(loaded, monkeypatch):
    """No per-row ``get_rope_index``; the tower's position ids, boundaries (and windows) come in
    with the batch rather than from its grids; one question: no cache copy, no suffix forward."""
    import sys

    from transformers import DynamicCache

    scorer = Scorer(loaded, batch_size=4, **MIXED_PIXELS)
    inner = loaded.model.model
    calls = {"rope": 0, "repeat": 0, "forwards": 0, "computed": []}
    monkeypatch.setattr(type(inner), "get_rope_index", lambda *a, **k: calls.__setitem__("rope", calls["rope"] + 1))
    modeling = sys.modules[type(inner.visual).__module__]  # what the tower calls, given its keywords
    wanted = {"get_vision_position_ids": "position_ids", "get_vision_attention_seqlens": "cu_seqlens",
              "get_vision_window_index": "window_index"}
    for name, key in wanted.items():
        if not hasattr(modeling, name):
            continue

        def watched(*args, _original=getattr(modeling, name), _name=name, _key=key, **kwargs):
            if _key not in (kwargs.get("kwargs") or {}):
                calls["computed"].append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(modeling, name, watched)

    def count_forward(module, args, kwargs):
        calls["forwards"] += 1

    hook = loaded.model.register_forward_pre_hook(count_forward, with_kwargs=True)
    original_repeat = DynamicCache.batch_repeat_interleave

    def repeat(self, n):
        calls["repeat"] += 1
        return original_repeat(self, n)

    monkeypatch.setattr(DynamicCache, "batch_repeat_interleave", repeat)
    try:
        results = scorer.score(mixed_images(4))
    finally:
        hook.remove()
    assert calls["rope"] == 0 and calls["computed"] == [] and calls["repeat"] == 0
    steps = scorer._max_new_tokens(Question(scorer.task("quality")))
    assert calls["forwards"] <= steps  # one prefill, then at most one forward per further token
    assert all(r.error is None for r in results)
    calls["forwards"] = 0
    scorer.score_tasks(mixed_images(4), ["quality", "aesthetics"])
    assert calls["rope"] == 0 and calls["computed"] == [] and calls["repeat"] == 1


def test_precomputed_vision_inputs_read_from_the_installed_code(qwen2_loaded, qwen2_5_loaded):
    assert precomputed_vision_inputs(qwen2_loaded.model) == {"position_ids", "cu_seqlens", "max_seqlen"}
    assert precomputed_vision_inputs(qwen2_5_loaded.model) == {
        "position_ids", "cu_seqlens", "max_seqlen", "window_index", "cu_window_seqlens", "max_window_seqlen"}

    class Plain(torch.nn.Module):  # no `model.visual`: nothing is precomputed
        pass

    assert precomputed_vision_inputs(Plain()) == frozenset()


# ---------------------------------------------------------------- host batches


def test_host_batch_holds_the_plain_batch_and_the_model_own_positions(loaded):
    """The collated prefill equals ``batching.collate``; positions equal transformers' ``get_rope_index``;
    the vision inputs equal transformers' own; a reused slot gives the same batch again."""
    from transformers import vision_utils

    scorer = Scorer(loaded, **MIXED_PIXELS)
    asked = QUESTION_SETS["two"](scorer)
    prompts = [scorer.prompt_ids(q) for q in asked]
    shared = scorer._shared_prefix(prompts)
    plan = scorer._plan([p[shared:] for p in prompts], [5, 7])
    images = mixed_images()
    examples = [scorer.examples.build(image, "x", prompts[0][:shared]) for image in images]
    pool = HostBuffers(1)
    slot = pool.take()
    for group in (examples[:3], examples, examples[2:4], examples[:3]):  # grow, shrink, reuse the slot
        batch = scorer._host_batch(group, plan, slot)
        plain = collate(group, pad_id=scorer._pad_id, image_token_id=scorer._image_token_id, padding_side="left",
                        token_types=scorer._token_types)
        for key, value in plain.items():
            assert torch.equal(batch.tensors[key], value), key
        rope, _ = loaded.model.model.get_rope_index(plain["input_ids"], plain["mm_token_type_ids"],
                                                    plain["image_grid_thw"], attention_mask=plain["attention_mask"])
        assert torch.equal(batch.tensors["position_ids"], rope)
        grids = plain["image_grid_thw"]
        visual = loaded.model.model.visual
        inputs = {**batch.tensors, **batch.host}
        expected = vision_utils.get_vision_position_ids(grids, visual.spatial_merge_size)
        assert torch.equal(inputs["image_position_ids"], expected)
        assert torch.equal(inputs["image_cu_seqlens"], vision_utils.get_vision_cu_seqlens(grids))
        assert "image_cu_seqlens" in batch.host  # no flash attention: read on the host, never copied
        if hasattr(visual, "window_size"):
            index, bounds = vision_utils.get_vision_window_index(grids, visual.spatial_merge_size, visual.window_size,
                                                                 visual.patch_size)
            assert torch.equal(inputs["image_window_index"], index)
            assert torch.equal(inputs["image_cu_window_seqlens"], bounds)
        rows = len(group) * 2
        assert batch.tensors["row_limits"].tolist() == [5, 7] * len(group)
        assert batch.tensors["suffix_ids"].shape[0] == rows and batch.tensors["next_position"].shape == (rows,)
    storage = {name: buffer.data_ptr() for name, buffer in slot.buffers().items()}
    scorer._host_batch(examples[1:3], plan, slot)
    assert {name: buffer.data_ptr() for name, buffer in slot.buffers().items()} == storage  # nothing reallocated


def test_run_ahead_keeps_order_raises_where_it_failed_and_stops_when_closed():
    import threading

    assert list(run_ahead(iter(range(20)), depth=3)) == list(range(20))

    def failing():
        yield 1
        raise MediaError("x", "broken")

    seen = []
    with pytest.raises(MediaError):
        for item in run_ahead(failing()):
            seen.append(item)
    assert seen == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    stream = run_ahead(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 2  # it stopped a few items ahead


def test_host_buffers_hand_out_slots_until_closed():
    pool = HostBuffers(2)
    a, b = pool.take(), pool.take()
    assert a is not b
    view = a.empty("x", (2, 3), torch.long)
    assert view.shape == (2, 3)
    assert a.empty("x", (1, 2), torch.long).data_ptr() == view.data_ptr()  # smaller: the same buffer
    pool.give_back(a)
    assert pool.take() is a
    pool.close()
    assert pool.take() is None


# ---------------------------------------------------------------- compiled vision tower


@pytest.mark.slow
def test_compiled_vision_tower_gives_the_same_answers(tmp_path):
    """The vision tower's rotary embedding and MLPs compiled (inductor, dynamic shapes): the same answers."""
    folder = build_tiny_model(tmp_path / "tiny")
    images = mixed_images(6)
    plain = Scorer(load_model(folder, device="cpu"), batch_size=3, **MIXED_PIXELS)
    expected = engine_results(plain, images, QUESTION_SETS["one"](plain), 3)
    loaded = load_model(folder, device="cpu")
    compile_vision_tower(loaded)
    compiled = Scorer(loaded, batch_size=3, **MIXED_PIXELS)
    assert_same(engine_results(compiled, images, QUESTION_SETS["one"](compiled), 3), expected, atol=1e-4)
    again = engine_results(compiled, images[:4], QUESTION_SETS["one"](compiled), 2)  # new shapes: no failure
    assert [r[0].text for r in again[0]] == [r[0].text for r in expected[0][:4]]


def test_small_pixels_single_image_batches(loaded):
    """Batches of one (no padding at all) answer as the former loop too."""
    scorer = Scorer(loaded, group_batches=1, **SMALL_PIXELS)
    asked = QUESTION_SETS["one"](scorer)
    images = mixed_images(3)
    assert_same(engine_results(scorer, images, asked, 1), reference_results(scorer, images, asked, 1))
