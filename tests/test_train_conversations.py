"""Training on LLaMA-Factory conversation files: questions and answers verbatim, as the official recipes."""

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, SMALL_PIXELS
from realqa.chat import render_prompt
from realqa.tasks import Task
from realqa.train import (
    AnswerEncoder,
    DataSource,
    load_config,
    mix_sources,
    read_conversation_source,
    score_span,
    train,
)

# Verbatim wording of our own: braces that must not be formatted, the <image> tag mid-question,
# and (CoT) other numbers before and after the bracketed score.
PLAIN_QUESTION = "Rate {this} photo <image> on a scale from 1 to 5 {low}, please."
COT_QUESTION = "Think {step by step} about <image> first, then rate it from 1 to 5."
CATEGORY_QUESTION = "How is the exposure of <image>? Say dark or bright."
PLAIN_LABELS = [3.47, 1.20, 4.85, 2.05]
COT_LABELS = [2.81, 3.66, 1.74, 4.12]


def plain_answer(label: float) -> str:
    return f"Well {{ok}}, the quality score of this image is {label:.2f} out of 5."


def cot_answer(label: float) -> str:
    return f"The {{sharp}} edges and 2 faces look fine, so the quality score of this image is <{label:.2f}>. Done 9."


def write_conversation_file(folder: Path) -> Path:
    """Four plain, four CoT and two categorical records; images in ``folder/img`` named relative to it."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    records = []

    def add(question: str, answer: str, shade: int) -> None:
        name = f"p{len(records)}.png"
        Image.new("RGB", (64, 48), (shade, 255 - shade, (3 * shade) % 256)).save(folder / "img" / name)
        records.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                        "images": [name]})

    for i, label in enumerate(PLAIN_LABELS):
        add(PLAIN_QUESTION, plain_answer(label), 30 * i)
    for i, label in enumerate(COT_LABELS):
        add(COT_QUESTION, cot_answer(label), 20 + 30 * i)
    for word, shade in (("dark", 10), ("bright", 240)):
        add(CATEGORY_QUESTION, f"The exposure of this image is {word}.", shade)
    path = folder / "convs.json"
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory) -> Path:
    return write_conversation_file(tmp_path_factory.mktemp("convs"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from realqa.model import load_model

    return load_model(tiny_model_dir, device="cpu")


def _items(conv_file):
    items, conversations = read_conversation_source(DataSource(conversations=str(conv_file),
                                                               media_dir=str(conv_file.parent / "img")))
    return items, conversations


# ---------------------------------------------------------------- encoding


def test_items_carry_the_verbatim_question_and_answer(conv_file):
    items, conversations = _items(conv_file)
    assert len(items) == 10 and len(conversations) == 10
    first, cot, category = items[0], items[4], items[8]
    assert first.image == str(conv_file.parent / "img" / "p0.png") and Path(first.image).is_file()
    assert (first.task, first.value, first.cot, first.answer) == ("quality", 3.47, False, plain_answer(3.47))
    assert first.question.question_text() == PLAIN_QUESTION
    assert (cot.task, cot.value, cot.cot, cot.answer) == ("quality", 2.81, True, cot_answer(2.81))
    assert cot.question.question_text(cot=True) == COT_QUESTION
    assert (category.task, category.value, category.cot) == ("exposure", "dark", False)
    assert category.question.values == ("dark", "bright")
    assert {item.source for item in items} == {str(conv_file)}


def test_prompt_is_the_rendered_verbatim_question_and_the_answer_is_supervised_verbatim(conv_file, loaded):
    tokenizer = loaded.tokenizer
    items, conversations = _items(conv_file)
    encoder = AnswerEncoder(tokenizer, loaded.card.tasks, loaded.digit_ids)
    for index in (0, 4, 8):  # plain, CoT, categorical
        item, conversation = items[index], conversations[index]
        ids, labels, _ = encoder.encode(item)
        prompt = render_prompt(tokenizer, conversation.task, cot=conversation.cot)
        masked = labels.index(next(label for label in labels if label != -100))
        assert ids[:masked] == tokenizer.encode(prompt, add_special_tokens=False)
        assert all(label == -100 for label in labels[:masked])
        assert labels[masked:] == ids[masked:]
        assert tokenizer.decode(ids[masked:]) == conversation.answer + "<|im_end|>"
    plain_prompt = render_prompt(tokenizer, conversations[0].task, cot=False)
    assert plain_prompt.endswith("<|im_start|>user\nRate {this} photo <|vision_start|><|image_pad|><|vision_end|> "
                                 "on a scale from 1 to 5 {low}, please.<|im_end|>\n<|im_start|>assistant\n")
    cot_prompt = render_prompt(tokenizer, conversations[4].task, cot=True)
    assert ("<|im_start|>user\nThink {step by step} about <|vision_start|><|image_pad|><|vision_end|> first, then "
            "rate it from 1 to 5.<|im_end|>") in cot_prompt
    assert "<image>" not in plain_prompt + cot_prompt


def test_digit_positions_point_at_the_score_digits(conv_file, loaded):
    tokenizer = loaded.tokenizer
    items, _ = _items(conv_file)
    encoder = AnswerEncoder(tokenizer, loaded.card.tasks, loaded.digit_ids)

    ids, labels, digits = encoder.encode(items[0])  # plain: the number after the answer's prefix
    assert [tokenizer.decode([ids[p]]) for p in digits] == ["3", "4", "7"]
    answer_start = next(i for i, label in enumerate(labels) if label != -100)
    assert tokenizer.decode(ids[answer_start: digits[0]]) == "Well {ok}, the quality score of this image is "
    assert tokenizer.decode(ids[digits[-1] + 1:]) == " out of 5.<|im_end|>"

    ids, labels, digits = encoder.encode(items[5])  # CoT: the number in <...>, not "2" before it nor "9" after
    assert [tokenizer.decode([ids[p]]) for p in digits] == ["3", "6", "6"]
    answer_start = next(i for i, label in enumerate(labels) if label != -100)
    assert tokenizer.decode(ids[answer_start: digits[0]]).endswith("so the quality score of this image is <")
    assert tokenizer.decode(ids[digits[-1] + 1:]) == ">. Done 9.<|im_end|>"

    assert encoder.encode(items[9])[2] == []  # categorical: no digits


def test_score_span_finds_the_bracketed_or_prefixed_number():
    task = Task(name="quality", low=1, high=5, question="q", answer_prefix="Score {x}: ", answer_suffix=".")
    assert score_span(task, "Score {x}: 3.47.", "3.47", cot=False) == (11, 15)
    assert score_span(task, "1 thing, then <3.47> and 2.", "3.47", cot=True) == (15, 19)
    with pytest.raises(ValueError, match="writes the score '3.5', not '3.50'"):
        score_span(task, "Score {x}: 3.5.", "3.50", cot=False)
    with pytest.raises(ValueError, match="no score in angle brackets"):
        score_span(task, "Roughly 3.47.", "3.47", cot=True)


# ---------------------------------------------------------------- config


def test_conversation_sources_in_the_config(tmp_path):
    base = ["model=m", "output_dir=o"]
    config = load_config(None, [*base, "train=[{conversations: c.json, media_dir: imgs/, weight: 2}, a.jsonl]",
                                "preprocessing=llamafactory"])
    first, second = config.train
    assert (first.conversations, first.media_dir, first.weight) == ("c.json", "imgs/", 2)
    assert (first.manifest, first.task) == (None, None)
    assert (second.manifest, second.task, second.form, second.conversations) == ("a.jsonl", "quality", "plain", None)
    assert config.preprocessing == "llamafactory"
    assert load_config(None, [*base, "train=[a.jsonl]"]).preprocessing == "realqa"
    with pytest.raises(
        ValueError, match=r"train\[0\]: a data source needs exactly one of 'manifest' or 'conversations'"
    ):
        load_config(None, [*base, "train=[{manifest: a.jsonl, conversations: c.json}]"])
    with pytest.raises(ValueError, match=r"train\[0\]: c.json: task, form do not apply to a conversation source"):
        load_config(None, [*base, "train=[{conversations: c.json, task: quality, form: cot}]"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) train\[0\]\.media_dr"):
        load_config(None, [*base, "train=[{conversations: c.json, media_dr: x}]"])
    with pytest.raises(ValueError, match="unknown preprocessing profile 'fork'"):
        load_config(None, [*base, "train=[a.jsonl]", "preprocessing=fork"])


def test_weight_repeats_a_conversation_source(conv_file):
    items, _ = _items(conv_file)
    source = DataSource(conversations=str(conv_file), weight=2.5)
    mixed = mix_sources([(source, items)], seed=0)
    assert len(mixed) == 25 and sorted(mixed, key=items.index)[:2] == [items[0], items[0]]


OFFICIAL = {
    "koniq_plain.yaml": (["koniq10k_training_decimal2"], "lora", 2, 0.15, 1e-4, 2, 8),
    "koniq_plain_cot.yaml": (["koniq10k_training_decimal2", "koniq10k_training_decimal2_cot"], "lora", 6, 0.15, 1e-4,
                             2, 8),
    "ava_plain_cot.yaml": (["ava_training_decimal2_cot", "ava_training_decimal2"], "lora", 6, 0.15, 1e-4, 2, 8),
    "realqa.yaml": (["aesthetic_high_and_low_9502_4300_llm_fusion_en_new_high_mid_low_new_simple"]
                    + ["aesthetic_low_and_middle_9502_and_4300_llm_en_" + tail for tail in (
                        "both_high_en", "both_mid_en", "both_low_en", "composition_score_new_simple",
                        "eye_score_new_simple", "subject_and_subject_integrity_new_simple",
                        "subject_and_subject_clutter_new_simple", "background_and_background_clutter_new_simple",
                        "level_shot_new_simple", "exposure_new_simple", "clearness_new_simple",
                        "saturation_new_simple")], "lora", 2, 0.05, 1e-4, 2, 8),
    "koniq_full_zero3.yaml": (["koniq10k_training_decimal2"], "full", 2, 0.15, 1e-5, 1, 4),
}


def test_official_configs_load_with_the_official_settings():
    folder = ROOT / "configs" / "official"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(OFFICIAL)
    for name, (datasets, finetuning, epochs, dropout, lr, batch, accumulation) in OFFICIAL.items():
        config = load_config(folder / name)
        assert [s.conversations for s in config.train] == [f"data/{d}.json" for d in datasets], name
        assert all(s.media_dir == "data/" and s.manifest is None and s.weight == 1 for s in config.train), name
        assert (config.preprocessing, config.finetuning) == ("llamafactory", finetuning), name
        assert (config.epochs, config.lr) == (epochs, lr), name
        assert (config.per_device_batch_size, config.gradient_accumulation_steps) == (batch, accumulation), name
        assert (config.lr_scheduler, config.warmup_ratio, config.precision, config.train_vision_tower) == (
            "cosine", 0.1, "bf16", True), name
        assert config.deepspeed == ("configs/deepspeed/zero3.json" if finetuning == "full" else None), name
        if finetuning == "lora":
            assert (config.lora.rank, config.lora.alpha, config.lora.effective_alpha, config.lora.dropout) == (
                128, None, 256, dropout), name
        header = (folder / name).read_text().split("\nmodel:")[0]
        assert all(d in header for d in datasets), name  # the comment header names the official datasets
    assert (ROOT / "configs" / "deepspeed" / "zero3.json").is_file()


# ---------------------------------------------------------------- a training run


@pytest.mark.slow
def test_training_on_a_conversation_file_writes_a_card_with_the_verbatim_questions(tiny_model_dir, conv_file,
                                                                                    tmp_path, monkeypatch):
    import realqa.train.run as train_module  # where train() looks its ExampleBuilder up
    from realqa.engine import Scorer
    from realqa.model import load_model, read_card

    profiles = []

    class RecordingBuilder(train_module.ExampleBuilder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            profiles.append(self.profile.name)

    monkeypatch.setattr(train_module, "ExampleBuilder", RecordingBuilder)
    out = tmp_path / "out"
    source = f"{{conversations: {conv_file}, media_dir: {conv_file.parent / 'img'}}}"
    overrides = [f"model={tiny_model_dir}", f"output_dir={out}", f"train=[{source}]", f"eval=[{source}]",
                 "preprocessing=llamafactory", "lora.rank=4", "max_steps=3", "per_device_batch_size=4",
                 "gradient_accumulation_steps=1", "logging_steps=1", "save_steps=1000", "gradient_checkpointing=false",
                 *(f"{k}={v}" for k, v in SMALL_PIXELS.items())]
    messages = []
    result = train(load_config(None, overrides), log=messages.append)

    assert result.steps == 3 and profiles == ["llamafactory"]
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert any("training on 10 examples from 1 source(s); 10 held-out" in m for m in messages)
    held = result.held_out[-1]
    assert (held["heldout_convs_quality_rows"], held["heldout_convs_quality_cot_rows"],
            held["heldout_convs_exposure_rows"]) == (4, 4, 2)

    card = read_card(out)
    assert card.preprocessing == "llamafactory"
    assert card.trained_on == [str(conv_file)]
    assert sorted(card.tasks) == ["exposure", "quality"] and card.attributes == ["exposure"]
    quality = card.tasks["quality"]
    assert quality.question_text() == PLAIN_QUESTION and quality.question_text(cot=True) == COT_QUESTION
    assert (quality.answer_prefix, quality.answer_suffix, quality.low, quality.high, quality.decimals) == (
        "Well {ok}, the quality score of this image is ", " out of 5.", 1, 5, 2)
    assert card.tasks["exposure"].question_text() == CATEGORY_QUESTION
    assert card.tasks["exposure"].values == ("dark", "bright")
    saved = json.loads((out / "realqa_card.json").read_text())
    assert saved["preprocessing"] == "llamafactory" and saved["train_config"]["preprocessing"] == "llamafactory"

    # Scoring a plain folder with the output asks the trained question, prepared the trained way.
    scorer = Scorer(load_model(tiny_model_dir, adapter=out, device="cpu"))
    assert scorer.examples.profile.name == "llamafactory"
    asked = scorer.loaded.tokenizer.decode(scorer.prompt_ids(scorer.task("quality")))
    assert asked.endswith("Rate {this} photo <|vision_start|><|image_pad|><|vision_end|> on a scale from 1 to 5 {low}, "
                          "please.<|im_end|>\n<|im_start|>assistant\nWell {ok}, the quality score of this image is ")
    assert asked.count("<|image_pad|>") == 1
