import json

import numpy as np
import pytest
import torch
from PIL import Image

from bad_inputs import write_bad_inputs, write_unusual_inputs
from conftest import EXAMPLE_PHOTOS, SMALL_PIXELS
from realqa import load_scorer
from realqa.chat import scoring_prompt
from realqa.engine import Scorer
from realqa.model import CARD_FILE, load_model
from realqa.numeric import digit_expectation, digit_std
from toy_data import brightness_image


def _images():
    return [brightness_image(level) for level in np.linspace(0.0, 1.0, 11)] + [str(p) for p in EXAMPLE_PHOTOS]


def test_format_model_writes_parsable_scores_with_ncm(format_scorer):
    results = format_scorer.score(_images())
    ok = [r for r in results if r.status == "ok"]
    assert len(ok) >= len(results) * 2 // 3, [r.text for r in results]
    for r in ok:
        assert 1 <= r.score <= 5
        assert r.ncm is not None and 0 <= r.ncm <= 9.99
        assert r.ncm_std is not None and 0 <= r.ncm_std <= 4.53  # sqrt(20.25 * sum 10^-2i): the widest possible spread
        assert r.text.startswith(format_scorer.task("quality").score_format.format(r.score))


def test_batch_of_one_equals_batch_of_sixteen(format_scorer):
    images = _images()[:16]
    assert len(images) == 16
    together = format_scorer.score(images, batch_size=16)
    alone = [format_scorer.score([image], batch_size=1)[0] for image in images]
    for a, b in zip(together, alone):
        assert (a.score, a.status, a.text) == (b.score, b.status, b.text)
        if a.ncm is None:
            assert b.ncm is None
        else:
            assert a.ncm == pytest.approx(b.ncm, abs=1e-4)


def test_ncm_is_read_at_the_digit_positions(format_scorer):
    """Feeding the model its own answer must give the same digit expectation the scorer reports."""
    image = brightness_image(0.6)
    result = format_scorer.score([image])[0]
    assert result.status == "ok" and result.ncm is not None
    task = format_scorer.task("quality")
    loaded = format_scorer.loaded
    item = format_scorer.examples.build(image, "x", format_scorer.prompt_ids(task))
    answer_ids = loaded.tokenizer.encode(task.score_format.format(result.score), add_special_tokens=False)
    item.input_ids = item.input_ids + answer_ids
    batch = format_scorer.collate([item])
    with torch.no_grad():
        logits = loaded.model(**batch).logits[0]
    start = len(item.input_ids) - len(answer_ids)
    positions = [start - 1 + i for i, token in enumerate(answer_ids) if token in loaded.digit_ids]
    expected = float(digit_expectation(logits[positions], loaded.digit_ids))
    assert result.ncm == pytest.approx(expected, abs=1e-4)
    # The spread is read at the same positions, from the same distributions.
    assert result.ncm_std == pytest.approx(float(digit_std(logits[positions], loaded.digit_ids)), abs=1e-4)
    assert result.ncm_std > 0


def test_bad_inputs_become_error_rows_and_the_rest_is_scored(format_scorer, tmp_path):
    problems = write_bad_inputs(tmp_path / "bad")
    unusual = write_unusual_inputs(tmp_path / "odd")
    good = [str(p) for p in EXAMPLE_PHOTOS[:2]]
    inputs = (
        [good[0], str(tmp_path / "missing.jpg")]
        + [str(tmp_path / "bad" / name) for name in problems]
        + [str(tmp_path / "odd" / name) for name in unusual]
        + [good[1]]
    )
    results = format_scorer.score(inputs, batch_size=4)
    assert [r.path for r in results] == inputs
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in results}
    assert by_name["missing.jpg"].status == "error" and "not found" in by_name["missing.jpg"].error
    for name, problem in problems.items():
        row = by_name[name]
        assert row.status == "error" and row.score is None and row.ncm is None
        assert name in row.error and problem in row.error, row.error
    for name in unusual:
        assert by_name[name].status != "error", by_name[name].error
    # The neighbours of failures score exactly as they do alone.
    alone = format_scorer.score(good)
    assert [(r.score, r.text) for r in (results[0], results[-1])] == [(r.score, r.text) for r in alone]


def test_exif_rotation_is_applied_before_scoring(format_scorer, tmp_path):
    photo = Image.open(EXAMPLE_PHOTOS[0]).convert("RGB")
    upright = tmp_path / "upright.png"
    photo.save(upright)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = tmp_path / "stored.png"
    photo.transpose(Image.Transpose.ROTATE_90).save(stored, exif=exif)  # displays upright again
    a, b = format_scorer.score([str(upright), str(stored)])
    assert (a.score, a.text) == (b.score, b.text)


def test_pil_inputs_and_single_inputs(format_scorer):
    image = brightness_image(0.3)
    [from_list] = format_scorer.score([image])
    [single] = format_scorer.score(image)
    assert from_list.path == "<image 0>" and (single.score, single.text) == (from_list.score, from_list.text)


def test_unknown_task_names_the_choices(format_scorer):
    with pytest.raises(ValueError, match="unknown task .sharpness.; this model answers: quality"):
        format_scorer.score([brightness_image(0.5)], task="sharpness")


def test_prompt_comes_from_chat_template_and_task(tiny_model_dir):
    from transformers import AutoTokenizer

    from realqa.tasks import AESTHETICS

    prompt = scoring_prompt(AutoTokenizer.from_pretrained(tiny_model_dir), AESTHETICS)
    assert "from 1 to 10" in prompt
    assert prompt.endswith("<|im_start|>assistant\nThe aesthetic score of this image is ")
    assert prompt.count("<|image_pad|>") == 1


def test_card_tasks_are_the_questions_asked(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    card = json.loads((folder / CARD_FILE).read_text())
    card["tasks"] = {"sharpness": {"low": 0, "high": 9, "question": "How sharp, {low} to {high}?",
                                   "answer_prefix": "Sharpness: ", "decimals": 1}}
    (folder / CARD_FILE).write_text(json.dumps(card))
    scorer = load_scorer(str(folder), device="cpu", **SMALL_PIXELS)
    assert list(scorer.tasks) == ["sharpness"]
    assert "How sharp, 0 to 9?" in scoring_prompt(scorer.loaded.tokenizer, scorer.task("sharpness"))
    [result] = scorer.score([brightness_image(0.5)], task="sharpness")
    # The tiny model's weights are seeded noise (the same under every supported transformers release):
    # its answer is read against the card's task and holds no score.
    assert result.task == "sharpness" and result.status == "no_score", result.text
    assert result.text and result.score is None and result.ncm is None and result.error is None


def test_lora_adapter_loads_and_changes_the_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, device="cpu")
    peft_model = get_peft_model(
        base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    base_scorer = load_scorer(str(tiny_model_dir), device="cpu", **SMALL_PIXELS)
    tuned_scorer = load_scorer(str(tiny_model_dir), adapter=str(adapter_dir), device="cpu", **SMALL_PIXELS)
    batch = tuned_scorer.collate(
        [tuned_scorer.examples.build(brightness_image(0.5), "x", tuned_scorer.prompt_ids(tuned_scorer.task("quality")))]
    )
    with torch.no_grad():
        tuned = tuned_scorer.loaded.model(**batch).logits
        plain = base_scorer.loaded.model(**batch).logits
    assert not torch.allclose(tuned, plain)
    assert "adapter" in tuned_scorer.loaded.name


def test_unsupported_model_type_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="model type 'llama' is not supported"):
        load_scorer(str(tmp_path), device="cpu")


def test_scorer_options_are_validated(format_scorer):
    with pytest.raises(ValueError, match="batch_size"):
        Scorer(format_scorer.loaded, batch_size=0)
    with pytest.raises(ValueError, match="min_pixels"):
        Scorer(format_scorer.loaded, min_pixels=10, max_pixels=5)


def test_qwen2_5_vl_checkpoints_score_too(tmp_path):
    from realqa.model import build_tiny_model

    folder = build_tiny_model(tmp_path / "q25", architecture="qwen2_5_vl")
    scorer = load_scorer(str(folder), device="cpu", batch_size=4, **SMALL_PIXELS)
    assert scorer.loaded.model.config.model_type == "qwen2_5_vl"
    images = [brightness_image(level) for level in (0.2, 0.5, 0.8)]
    together = scorer.score(images)
    alone = [scorer.score([image])[0] for image in images]
    # Seeded noise weights: three answers, read, none holding a score (nothing failed on the way).
    assert [r.status for r in together] == ["no_score"] * 3, [r.text for r in together]
    assert all(r.text and r.error is None for r in together)
    assert [(r.score, r.text) for r in together] == [(r.score, r.text) for r in alone]


def test_engine_matches_hf_generate_on_the_full_prompt(format_scorer):
    """The shared-prefix decoder against the plain path: transformers' own greedy `generate`."""
    from transformers import GenerationConfig

    task = format_scorer.task("quality")
    images = [brightness_image(level) for level in (0.1, 0.45, 0.8)] + [str(EXAMPLE_PHOTOS[1])]
    ours = format_scorer.score(images)
    tokenizer = format_scorer.loaded.tokenizer
    for image, result in zip(images, ours):
        example = format_scorer.examples.build(image, "x", format_scorer.prompt_ids(task))
        batch = format_scorer.collate([example])
        config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            sequence = format_scorer.loaded.model.generate(**batch, generation_config=config)
        new = sequence[0, batch["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert tokenizer.decode(new, skip_special_tokens=True) == result.text
