import math

import pytest
import torch

from realqa.numeric import (
    PARSE_NO_SCORE,
    PARSE_OK,
    PARSE_OUT_OF_RANGE,
    ParsedScore,
    ScoreFormat,
    digit_expectation,
    digit_expectation_star,
    digit_probs,
    digit_std,
    digit_token_ids,
    map_range,
    parse_score,
)


@pytest.mark.parametrize("decimals", [0, 1, 2, 3])
def test_round_trip_on_a_grid(decimals):
    fmt = ScoreFormat(1, 5, decimals)
    step = 10.0**-decimals
    n = int(round((5 - 1) / step))
    for i in range(n + 1):
        value = round(1 + i * step, decimals)
        text = fmt.format(value)
        assert len(text) == (1 if decimals == 0 else 2 + decimals)
        assert parse_score(f"The quality score of this image is {text}.", fmt).value == pytest.approx(value)


@pytest.mark.parametrize(
    "decimals, value, expected",
    [(2, 3.14159, "3.14"), (2, 2.675, "2.68"), (1, 2.25, "2.3"), (0, 3.5, "4"), (3, 1.0005, "1.001"), (0, 1.49, "1")],
)
def test_format_rounds_half_up(decimals, value, expected):
    assert ScoreFormat(1, 5, decimals).format(value) == expected


def test_format_clamps_into_range_and_one_integer_digit():
    quality = ScoreFormat(1, 5, 2)
    assert quality.format(0.2) == "1.00"
    assert quality.format(7.3) == "5.00"
    assert quality.format(1) == "1.00" and quality.format(5) == "5.00"
    aesthetics = ScoreFormat(1, 10, 2)
    assert aesthetics.format(10) == "9.99"
    assert aesthetics.format(9.996) == "9.99"
    assert ScoreFormat(1, 10, 0).format(10) == "9"
    assert ScoreFormat(1, 10, 3).format(12) == "9.999"


def test_format_rejects_non_finite_and_bad_formats():
    with pytest.raises(ValueError, match="non-finite"):
        ScoreFormat(1, 5).format(float("nan"))
    with pytest.raises(ValueError, match="decimals"):
        ScoreFormat(1, 5, 4)
    with pytest.raises(ValueError, match="low < high"):
        ScoreFormat(5, 1)


def test_digits_are_the_written_digits():
    assert ScoreFormat(1, 5, 2).digits(3.47) == [3, 4, 7]
    assert ScoreFormat(1, 10, 1).digits(10) == [9, 9]


def test_parse_official_answer_forms():
    fmt = ScoreFormat(1, 5)
    plain = "The quality score of this image is 3.47."
    assert parse_score(plain, fmt) == ParsedScore(3.47, PARSE_OK, plain)
    parsed = parse_score(plain, fmt)
    assert (parsed.value, parsed.status) == (3.47, PARSE_OK)
    cot = parse_score("Clarity: high. Exposure: good. Composition: balanced. So the score is <4.12>", fmt)
    assert (cot.value, cot.status) == (4.12, PARSE_OK)
    assert parse_score("The aesthetic score of this image is 7.05", ScoreFormat(1, 10)).value == 7.05


def test_parse_last_score_wins():
    text = "The quality score of this image is 2.10. On reflection, the quality score of this image is 3.90."
    assert parse_score(text).value == 3.90
    assert parse_score("first <1.50> then <4.25>").value == 4.25
    assert parse_score("The quality score of this image is 2.00, final answer <3.00>").value == 3.00


def test_parse_failures_and_out_of_range():
    for text in ["", "I cannot rate this image.", "score of this image is high", "<>", "The score is excellent."]:
        parsed = parse_score(text, ScoreFormat(1, 5))
        assert parsed.value is None and parsed.status == PARSE_NO_SCORE and parsed.text == text
    parsed = parse_score("The quality score of this image is 7.20.", ScoreFormat(1, 5))
    assert parsed.value == 7.20 and parsed.status == PARSE_OUT_OF_RANGE  # kept as read, not clamped
    assert parse_score("3.47", ScoreFormat(1, 5)).value == 3.47  # a bare number is an answer too
    assert parse_score(" 4. ", ScoreFormat(1, 5)).value == 4.0


def test_map_range():
    assert map_range(0, (0, 100), (1, 5)) == 1
    assert map_range(100, (0, 100), (1, 5)) == 5
    assert map_range(50, (0, 100), (1, 5)) == 3
    assert map_range(0, (100, 0), (1, 5)) == 5  # lower-is-better scale
    assert map_range(map_range(37.5, (0, 100), (1, 5)), (1, 5), (0, 100)) == pytest.approx(37.5)
    assert torch.allclose(map_range(torch.tensor([1.0, 10.0]), (1, 10), (1, 5)), torch.tensor([1.0, 5.0]))
    with pytest.raises(ValueError, match="empty"):
        map_range(1, (2, 2), (1, 5))


# ---------------------------------------------------------------- NCM

DIGIT_IDS = [20 + 2 * d for d in range(10)]  # deliberately scattered, non-contiguous ids
VOCAB = 50


def _logits(rows):
    """Logits (P, VOCAB): for each position a dict digit -> logit; everything else very low."""
    logits = torch.full((len(rows), VOCAB), -1e4)
    for p, row in enumerate(rows):
        for d in range(10):
            logits[p, DIGIT_IDS[d]] = row.get(d, 0.0)
        logits[p, 0] = 50.0  # a non-digit token with the highest logit must be ignored
    return logits


def _direct_expectation(rows):
    total = 0.0
    for p, row in enumerate(rows):
        weights = [math.exp(row.get(d, 0.0)) for d in range(10)]
        z = sum(weights)
        total += 10.0**-p * sum(d * w / z for d, w in enumerate(weights))
    return total


def test_ncm_matches_direct_computation():
    rows = [{3: 4.0, 4: 2.0}, {4: 3.0, 5: 1.0, 9: 0.5}, {7: 2.5, 6: 2.0}]
    logits = _logits(rows)
    assert float(digit_expectation(logits, DIGIT_IDS)) == pytest.approx(_direct_expectation(rows), rel=1e-6)
    probs = digit_probs(logits, DIGIT_IDS)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(-1), torch.ones(3))


def test_ncm_of_a_certain_model_is_the_number_and_ncm_star_is_zero():
    rows = [{3: 60.0}, {4: 60.0}, {7: 60.0}]
    logits = _logits(rows)
    assert float(digit_expectation(logits, DIGIT_IDS)) == pytest.approx(3.47, abs=1e-6)
    star = digit_expectation_star(logits, DIGIT_IDS, torch.tensor([3, 4, 7]))
    assert float(star) == pytest.approx(0.0, abs=1e-6)


def test_ncm_star_counts_only_wrong_digits():
    rows = [{3: 1.0, 4: 1.0}, {0: 1.0, 8: 1.0}]  # 3 or 4 (half each, others ~e^0); then 0 or 8
    logits = _logits(rows)
    labels = torch.tensor([3, 8])
    expected = 0.0
    for p, (row, label) in enumerate(zip(rows, labels.tolist())):
        weights = [math.exp(row.get(d, 0.0)) for d in range(10)]
        z = sum(weights)
        expected += 10.0**-p * sum(d * w / z for d, w in enumerate(weights) if d != label)
    got = digit_expectation_star(logits, DIGIT_IDS, labels)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_ncm_of_a_batch_of_scores_of_different_lengths_by_hand():
    """The form training uses: a batch whose rows write 1 + 2 or 1 + 1 digits, padded to 3 positions."""
    certain = 60.0  # every other digit has weight e^-60 against it: the sums below are exact to ~1e-25
    row_0 = [{3: certain, 4: certain}, {4: certain}, {7: certain}]  # "3.47", the integer digit split 3 / 4
    row_1 = [{2: certain}, {6: certain}, {9: certain}]  # "2.6", then a padded position (its 9 must not count)
    logits = torch.stack([_logits(row_0), _logits(row_1)])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = torch.tensor([[3, 4, 7], [2, 5, 0]])  # row 1 is labelled 2.5: its decimal is wrong
    ncm = digit_expectation(logits, DIGIT_IDS, mask=mask)
    assert ncm.tolist() == pytest.approx([0.5 * 3 + 0.5 * 4 + 0.4 + 0.07, 2 + 0.6])
    star = digit_expectation_star(logits, DIGIT_IDS, labels, mask=mask)
    assert star.tolist() == pytest.approx([0.5 * 4, 0.6])  # half the mass on the wrong 4; all of it on the wrong 6
    # Unmasked, the padded position counts as a third digit; a row without digits (a category) is 0.
    assert float(digit_expectation(logits, DIGIT_IDS)[1]) == pytest.approx(2.69)
    assert digit_expectation(logits, DIGIT_IDS, mask=torch.zeros(2, 3)).tolist() == [0.0, 0.0]
    # A full mask is no mask.
    assert torch.equal(
        digit_expectation(logits, DIGIT_IDS, mask=torch.ones(2, 3)), digit_expectation(logits, DIGIT_IDS)
    )


def test_ncm_is_batched_and_differentiable():
    logits = torch.randn(4, 3, VOCAB, requires_grad=True)
    values = digit_expectation(logits, DIGIT_IDS)
    assert values.shape == (4,)
    assert bool(((values >= 0) & (values <= 9.99 + 1e-6)).all())
    loss = (values - 3.0).pow(2).mean() + digit_expectation_star(logits, DIGIT_IDS, torch.zeros(4, 3)).mean()
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[..., DIGIT_IDS].abs().sum() > 0
    non_digit = [i for i in range(VOCAB) if i not in DIGIT_IDS]
    assert logits.grad[..., non_digit].abs().sum() == 0  # only digit logits enter the expectation


def test_digit_ids_come_from_the_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = digit_token_ids(tokenizer)
    assert [tokenizer.decode([i]) for i in ids] == list("0123456789")
    assert len(set(ids)) == 10


def test_digit_ids_reject_a_tokenizer_that_splits_digits():
    class Splitting:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="one is required"):
        digit_token_ids(Splitting())


def test_digit_std_matches_a_hand_computation():
    """Var(S) = sum_i 10^-2i Var(d_i), positions independent: worked out by hand on two-digit mixtures."""
    certain = 60.0
    # Position 0: 3 or 4 with equal weight -> Var = 0.25. Position 1: certain 4 -> 0. Position 2: 6 or 8 equally -> 1.
    rows = [{3: certain, 4: certain}, {4: certain}, {6: certain, 8: certain}]
    logits = _logits(rows)
    expected = math.sqrt(0.25 + 0.0 + 1.0 * 0.01**2)
    assert float(digit_std(logits, DIGIT_IDS)) == pytest.approx(expected, rel=1e-6)
    # The mean of the same distributions is what NCM reports: the spread is around it.
    assert float(digit_expectation(logits, DIGIT_IDS)) == pytest.approx(3.5 + 0.4 + 0.07, abs=1e-6)


def test_digit_std_against_the_definition_on_random_logits():
    rows = [{3: 4.0, 4: 2.0}, {4: 3.0, 5: 1.0, 9: 0.5}, {7: 2.5, 6: 2.0}]
    logits = _logits(rows)
    variance = 0.0
    for p, row in enumerate(rows):
        weights = [math.exp(row.get(d, 0.0)) for d in range(10)]
        z = sum(weights)
        mean = sum(d * w / z for d, w in enumerate(weights))
        variance += 10.0 ** (-2 * p) * sum((d - mean) ** 2 * w / z for d, w in enumerate(weights))
    assert float(digit_std(logits, DIGIT_IDS)) == pytest.approx(math.sqrt(variance), rel=1e-6)


def test_digit_std_of_a_certain_model_is_zero_and_of_a_uniform_digit_is_its_spread():
    assert float(digit_std(_logits([{3: 60.0}, {4: 60.0}, {7: 60.0}]), DIGIT_IDS)) == pytest.approx(0.0, abs=1e-6)
    uniform = _logits([{}])  # every digit logit 0: d uniform on 0..9, Var = (10^2 - 1) / 12
    assert float(digit_std(uniform, DIGIT_IDS)) == pytest.approx(math.sqrt(8.25), rel=1e-6)


def test_digit_std_masks_padded_positions():
    certain = 60.0
    logits = torch.stack([_logits([{2: certain}, {5: certain, 6: certain}, {0: certain, 9: certain}])] * 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = digit_std(logits, DIGIT_IDS, mask=mask).tolist()
    assert got == pytest.approx([math.sqrt(0.25 * 0.01 + 20.25 * 1e-4), math.sqrt(0.25 * 0.01)], rel=1e-6)
    assert digit_std(logits, DIGIT_IDS, mask=torch.zeros(2, 3)).tolist() == [0.0, 0.0]
