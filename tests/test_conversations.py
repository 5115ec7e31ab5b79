"""LLaMA-Factory conversation files: questions read verbatim, labels from the answers, cards from both."""

from __future__ import annotations

import json

import pytest

from realqa.chat import render_prompt
from realqa.conversations import (
    ConversationError,
    card_tasks,
    is_conversation_file,
    question_groups,
    read_conversations,
)
from realqa.model import build_tiny_tokenizer

PLAIN_Q = "<image>Can you rate the quality of this picture {honestly}? Score it from 1 to 5."
COT_Q = "Look at <image> and describe clarity and exposure first; score from 1 to 5."
AESTHETIC_Q = "<image>Rate the aesthetics."


def _record(question, answer, image="imgs/a.jpg", style="messages"):
    if style == "messages":
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "images": [image]}
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            "images": [image]}


@pytest.fixture
def files(tmp_path):
    plain = tmp_path / "koniq_test.json"
    plain.write_text(json.dumps([
        _record(PLAIN_Q, "The quality score of this image is 3.47.", "imgs/a.jpg"),
        _record(PLAIN_Q, "The quality score of this image is 1.05.", "imgs/b.jpg"),
        _record(AESTHETIC_Q, "The aesthetic score of this image is 6.1.", "/abs/c.jpg"),
    ]))
    cot = tmp_path / "cot.jsonl"
    cot.write_text("\n".join(json.dumps(r) for r in [
        _record(COT_Q, "The clarity is sharp <not a score>, the exposure is fine. So the quality score of this image "
                       "is <2.31>, not <4.00>.", "imgs/a.jpg", style="conversations"),
        _record("<image>How is the exposure of this image?", "The exposure of this image is dark.", "imgs/d.jpg"),
        _record("<image>How is the exposure of this image?", "The exposure of this image is normal.", "imgs/e.jpg"),
    ]) + "\n")
    return plain, cot


def test_records_keep_their_question_answer_label_and_order(files, tmp_path):
    plain, cot = files
    conversations = read_conversations([plain, cot], media_dir=tmp_path / "media")
    assert [(c.file.endswith("koniq_test.json"), c.index) for c in conversations] == [
        (True, 0), (True, 1), (True, 2), (False, 0), (False, 1), (False, 2)]
    first, second, aesthetic, reasoning, dark, normal = conversations
    assert first.question == PLAIN_Q and first.answer == "The quality score of this image is 3.47."
    assert first.image == "imgs/a.jpg" and first.image_path == str(tmp_path / "media" / "imgs" / "a.jpg")
    assert aesthetic.image_path == "/abs/c.jpg"
    assert (first.label, second.label, aesthetic.label, reasoning.label) == (3.47, 1.05, 6.1, 2.31)
    assert (first.task.name, aesthetic.task.name, reasoning.task.name, dark.task.name) == (
        "quality", "aesthetics", "quality", "exposure")
    # range from the question's "from 1 to 5", else realqa's task of that name; decimals as written
    assert (first.task.low, first.task.high, first.task.decimals) == (1, 5, 2)
    assert (aesthetic.task.low, aesthetic.task.high, aesthetic.task.decimals) == (1, 10, 1)
    # the question renders verbatim (braces and all); the plain answer prefix is forced at scoring time
    assert first.task.question_text() == PLAIN_Q
    assert first.task.answer_prefix == "The quality score of this image is " and first.task.answer_suffix == "."
    assert not first.cot and reasoning.cot and reasoning.task.question_text(cot=True) == COT_Q
    # categorical: the values are the words the answers use, in order of first appearance
    assert dark.task.values == ("dark", "normal") and dark.label == "dark" and normal.label == "normal"
    assert dark.task == normal.task
    assert question_groups(conversations) == [[0, 1], [2], [3], [4, 5]]


def test_rendered_prompt_puts_the_image_where_the_tag_is(files):
    """The same text LLaMA-Factory's qwen2_vl template gives: default system turn, the user turn with
    the image tokens at the <image> tag, then the assistant turn."""
    _, cot = files
    reasoning = read_conversations([cot])[0]
    tokenizer = build_tiny_tokenizer()
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nLook at <|vision_start|><|image_pad|><|vision_end|> and describe clarity and "
                "exposure first; score from 1 to 5.<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(tokenizer, reasoning.task, cot=True) == expected


def test_a_system_turn_is_kept(tmp_path):
    path = tmp_path / "s.json"
    record = _record("<image>Rate it from 1 to 5.", "The quality score of this image is 2.00.")
    record["system"] = "You judge photos."
    path.write_text(json.dumps([record]))
    (conversation,) = read_conversations([path])
    prompt = render_prompt(build_tiny_tokenizer(), conversation.task)
    assert prompt.startswith("<|im_start|>system\nYou judge photos.<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("record, problem", [
    (_record("<image>Rate it.", "A lovely photo."), "holds no score"),
    ({**_record("<image>Rate it.", "The quality score of this image is 3.00."), "images": ["a", "b"]}, "one image"),
    (_record("<image>Rate it from 1 to 5.", "The quality score of this image is 7.00."), "outside the range 1-5"),
    (_record("<image>Rate the sharpness.", "The sharpness score of this image is 3.00."), "states no range"),
    (_record("<image><image>Compare.", "The quality score of this image is 3.00."), "2 <image> tags"),
])
def test_unusable_records_are_refused_naming_file_and_record(tmp_path, record, problem):
    path = tmp_path / "bad.json"
    good = _record("<image>Rate it from 1 to 5.", "The quality score of this image is 3.00.")
    path.write_text(json.dumps([good, record]))
    with pytest.raises(ConversationError, match=f"bad.json: record 2: .*{problem}"):
        read_conversations([path])


def test_card_tasks_take_the_plain_and_the_reasoning_question(files):
    plain, cot = files
    tasks, notes = card_tasks(read_conversations([plain, cot]))
    assert list(tasks) == ["quality", "aesthetics", "exposure"]
    assert tasks["quality"].question_text() == PLAIN_Q
    assert tasks["quality"].question_text(cot=True) == COT_Q
    assert tasks["exposure"].values == ("dark", "normal")
    assert notes == []


def test_card_tasks_keep_the_commonest_wording_and_say_so(tmp_path):
    path = tmp_path / "mixed.json"
    rare = _record("<image>Quality from 1 to 5?", "The quality score of this image is 3.00.")
    common = _record("<image>How good is it, from 1 to 5?", "The quality score of this image is 3.00.")
    path.write_text(json.dumps([rare, common, common]))
    tasks, notes = card_tasks(read_conversations([path]))
    assert tasks["quality"].question_text() == "<image>How good is it, from 1 to 5?"
    assert notes == ["quality: 2 plain wordings; the commonest (2 of 3) is kept"]


def test_conversation_files_are_told_apart_from_manifests(files, tmp_path):
    plain, cot = files
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "a.jpg"}) + "\n")
    assert is_conversation_file(plain) and is_conversation_file(cot)
    assert not is_conversation_file(manifest) and not is_conversation_file(tmp_path / "missing.json")


def test_score_points_a_conversation_file_to_bench_instead_of_scoring_it_as_an_image(files, capsys):
    from realqa.cli import main as cli

    plain, _ = files
    assert cli(["score", str(plain), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "koniq_test.json is a LLaMA-Factory conversation file" in err and "bench --conversations" in err
