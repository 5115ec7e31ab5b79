"""Fine-grained attributes and chain-of-thought answers: wording, parsing, training, scoring, evaluation."""

import csv
import json

import pytest

from conftest import SMALL_PIXELS
from realqa import load_scorer
from realqa.chat import COT_FORMS, cot_answer, read_cot_attributes
from realqa.cli import main
from realqa.data.manifest import read_manifest
from realqa.engine import Question, _Answer
from realqa.evaluation import evaluate_predictions, format_table, read_labels, read_predictions
from realqa.metrics import classification
from realqa.results import ResultWriter, ScoreResult
from realqa.tasks import CATEGORICAL, QUALITY, attribute_task, parse_choice
from realqa.train import load_config, train
from toy_data import write_attribute_toy_dataset

EXPOSURE = attribute_task("exposure", values=["dark", "normal", "bright"])
CLARITY = attribute_task("clarity", values=["blurry", "sharp"])
LEVEL = attribute_task("level_shot", low=0, high=1)


def test_attribute_tasks_state_their_answers_and_level():
    assert EXPOSURE.kind == CATEGORICAL and EXPOSURE.level == "low"
    assert EXPOSURE.question_text() == "How is the exposure of this image? Answer with dark, normal or bright."
    assert EXPOSURE.answer_text("dark") == "The exposure of this image is dark."
    assert LEVEL.level == "middle" and LEVEL.question_text().endswith("Give a score from 0 to 1.")
    with pytest.raises(ValueError, match="'purple' is not a value of 'exposure'"):
        EXPOSURE.answer_text("purple")


def test_categorical_answers_are_read_not_coerced():
    values = EXPOSURE.values
    assert parse_choice("The exposure of this image is Bright.", values, EXPOSURE.answer_prefix).value == "bright"
    assert parse_choice("normal", values).status == "ok"
    flagged = parse_choice("greenish", values)
    assert (flagged.value, flagged.status) == ("greenish", "invalid_value")
    assert parse_choice("  ", values).status == "no_score"


@pytest.mark.parametrize("form", sorted(COT_FORMS))
def test_cot_forms_round_trip(form):
    values = {"exposure": "dark", "clarity": "sharp"}
    text = cot_answer(QUALITY, 3.456, [EXPOSURE, CLARITY], values, form)
    assert text.endswith("<3.46>.") and QUALITY.parse(text).value == 3.46
    assert read_cot_attributes(text, [EXPOSURE, CLARITY, LEVEL], form) == {**values, "level_shot": None}


def test_classification_metrics_by_hand():
    # labels a a b c ; preds a b b None: accuracy 2/4; F1 a = 2/3, b = 2/3, c = 0 -> macro 4/9
    result = classification(["a", "b", "b", None], ["a", "a", "b", "c"])
    assert (result.n_total, result.n_failed, result.accuracy) == (4, 1, 0.5)
    assert result.macro_f1 == pytest.approx(4 / 9)


# ---------------------------------------------------------------- trained on the attribute toy set


@pytest.fixture(scope="module")
def attribute_data(tmp_path_factory):
    return write_attribute_toy_dataset(tmp_path_factory.mktemp("attr-data"), n_train=48, n_test=24)


@pytest.fixture(scope="module")
def attribute_model(tiny_model_dir, attribute_data, tmp_path_factory):
    train_manifest, _ = attribute_data
    out = tmp_path_factory.mktemp("attr-model")
    sources = (
        f"[{{manifest: {train_manifest}, task: quality}}, {{manifest: {train_manifest}, task: quality, form: cot}},"
        f" {{manifest: {train_manifest}, task: exposure}}, {{manifest: {train_manifest}, task: clarity}}]"
    )
    overrides = [f"model={tiny_model_dir}", f"output_dir={out}", f"train={sources}", "finetuning=full",
                 "learning_rate=3e-3", "epochs=10", "per_device_batch_size=8", "gradient_accumulation_steps=1",
                 "save_steps=100000", "gradient_checkpointing=false", "progress_bar=false",
                 *(f"{k}={v}" for k, v in SMALL_PIXELS.items())]
    train(load_config(None, overrides), log=lambda message: None)
    return out


@pytest.fixture(scope="module")
def attribute_scorer(attribute_model):
    return load_scorer(str(attribute_model), device="cpu", batch_size=8)


def _test_images(attribute_data):
    test = read_manifest(attribute_data[1])
    return [str(test.image_path(s)) for s in test.samples], test.samples


def test_card_lists_attribute_tasks_and_cot_form(attribute_model):
    card = json.loads((attribute_model / "realqa_card.json").read_text())
    assert card["attributes"] == ["exposure", "clarity"] and card["cot_form"] == "list"
    assert card["tasks"]["exposure"]["values"] == ["bright", "dark", "normal"]  # as observed in the data


def test_attributes_are_answered_and_learned(attribute_scorer, attribute_data):
    images, samples = _test_images(attribute_data)
    results = attribute_scorer.score(images, attributes=True)
    assert all(set(r.attributes) == {"exposure", "clarity"} for r in results)
    statuses = [r.attributes[name]["status"] for r in results for name in ("exposure", "clarity")]
    assert statuses.count("ok") >= 0.9 * len(statuses), statuses
    exposure = classification([r.attributes["exposure"]["value"] for r in results],
                              [s.attributes["exposure"] for s in samples])
    majority = max(sum(s.attributes["exposure"] == v for s in samples) for v in ("dark", "normal", "bright"))
    assert exposure.accuracy > majority / len(samples), exposure  # better than always answering the commonest


def test_shared_image_pass_equals_separate_questions(attribute_scorer, attribute_data):
    images, _ = _test_images(attribute_data)
    images = images[:6]
    together = attribute_scorer.score(images, attributes=True)
    for name in ("quality", "exposure", "clarity"):
        alone = attribute_scorer.score(images, task=name)
        for shared, single in zip(together, alone):
            got = shared if name == "quality" else shared.attributes[name]
            text = got.text if name == "quality" else got["text"]
            assert text == single.text, name
    by_task = attribute_scorer.score_tasks(images, ["quality", "clarity"])
    assert [r["clarity"].text for r in by_task] == [r.attributes["clarity"]["text"] for r in together]


def test_cot_answers_reason_then_score(attribute_scorer, attribute_data):
    images, samples = _test_images(attribute_data)
    results = attribute_scorer.score(images, cot=True)
    parsed = [r for r in results if r.status == "ok"]
    assert len(parsed) >= 0.8 * len(results), [r.text for r in results]
    for r in parsed:
        assert r.text.startswith("Exposure: ") and "<" in r.text
        assert r.ncm is not None and 1 <= r.score <= 5
        assert set(r.attributes) == {"exposure", "clarity"}


def test_unfinished_or_out_of_schema_reasoning_is_flagged(attribute_scorer):
    tokenizer = attribute_scorer.loaded.tokenizer
    question = Question(attribute_scorer.task("quality"), cot=True)

    def read(text):
        tokens = tokenizer.encode(text, add_special_tokens=False)
        import torch
        return attribute_scorer._read("x.png", question, _Answer(tokens, torch.zeros(len(tokens), 10)))

    stopped = read("Exposure: dark. Clarity: sh")
    assert (stopped.status, stopped.score, stopped.text) == ("no_score", None, "Exposure: dark. Clarity: sh")
    assert stopped.attributes["clarity"]["status"] == "missing"
    odd = read("Exposure: purple. Clarity: sharp. So the quality score of this image is <3.10>.")
    assert odd.score == 3.10
    assert odd.attributes["exposure"] == {"value": "purple", "status": "invalid_value", "text": "purple"}
    looping = read("Exposure: dark. " * 20)
    assert looping.status == "no_score" and looping.text.count("Exposure") == 20


def test_cli_attributes_then_eval_per_attribute(attribute_model, attribute_data, tmp_path, capsys):
    images, _ = _test_images(attribute_data)
    out = tmp_path / "scores.csv"
    assert main(["score", *images, "--model", str(attribute_model), "--attributes", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "exposure" in table.splitlines()[0]
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header[-4:] == ["exposure", "exposure_status", "clarity", "clarity_status"]
    assert main(["eval", str(out), "--labels", str(attribute_data[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["quality", str(len(images))]
    assert [line.split()[0] for line in lines[3:]] == ["exposure", "clarity"]
    assert lines[2].split()[:4] == ["target", "rows", "failed", "accuracy"]


def test_results_round_trip_with_attributes(tmp_path):
    rows = [ScoreResult("a.png", "quality", 3.1, 3.0, "ok", "3.10.",
                        attributes={"exposure": {"value": "dark", "status": "ok", "text": "dark."}}),
            ScoreResult("b.png", "quality", 2.0, 2.1, "ok", "2.00.",
                        attributes={"exposure": {"value": "teal", "status": "invalid_value", "text": "teal."}})]
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"r{suffix}"
        with ResultWriter(path, attributes=["exposure"]) as writer:
            for row in rows:
                writer.write(row)
        predictions = read_predictions(path)
        assert [p.attributes for p in predictions] == [{"exposure": "dark"}, {"exposure": None}]
    labels = tmp_path / "labels.csv"
    labels.write_text("image,mos,exposure\na.png,3,dark\nb.png,2,dark\n")
    table = evaluate_predictions(read_predictions(tmp_path / "r.csv"), read_labels(labels))
    assert [(r.target, r.kind) for r in table] == [("quality", "score"), ("exposure", "categorical")]
    assert table[1].metrics["accuracy"] == 0.5 and table[1].metrics["n_failed"] == 1
    assert "exposure" in format_table(table)
