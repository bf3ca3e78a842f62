import math

import numpy as np
import pytest

from genrank import ZeroLabelMassWarning, expected_scores

VALUES = [1, 2, 3, 4, 5, 6, 7]


def test_expected_value_renormalised_over_labels():
    # probabilities 0.1 on "1", 0.3 on "7", nothing else seen; mass 0.4
    lp = np.full((1, 7), -np.inf)
    lp[0, 0], lp[0, 6] = math.log(0.1), math.log(0.3)
    s = expected_scores(lp, VALUES)
    assert s.score[0] == pytest.approx((0.1 * 1 + 0.3 * 7) / 0.4)  # = 5.5
    assert s.label_mass[0] == pytest.approx(0.4)
    assert s.zero_mass == 0


def test_card_formula_counts_missing_labels_as_zero():
    lp = np.full((1, 7), -np.inf)
    lp[0, 0], lp[0, 6] = math.log(0.1), math.log(0.3)
    s = expected_scores(lp, VALUES, normalize=False)
    assert s.score[0] == pytest.approx(0.1 * 1 + 0.3 * 7)  # = 2.2
    assert s.label_mass[0] == pytest.approx(0.4)


def test_full_distribution_hand_computed():
    p = np.array([0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.1])  # mass 0.8
    s = expected_scores(np.log(p)[None], VALUES)
    assert s.score[0] == pytest.approx((0.05 + 0.1 + 0.3 + 0.4 + 1.0 + 1.2 + 0.7) / 0.8)  # 4.6875
    assert s.label_mass[0] == pytest.approx(0.8)


def test_yes_no_is_probability_of_yes():
    s = expected_scores(np.log([[0.2, 0.6]]), [0, 1])  # labels no, yes
    assert s.score[0] == pytest.approx(0.75)


def test_extreme_logprobs_do_not_underflow():
    s = expected_scores(np.array([[-2000.0, -2001.0]]), [0, 1])
    assert s.score[0] == pytest.approx(1 / (1 + math.e))
    assert s.label_mass[0] == 0.0


def test_zero_label_mass_gives_defined_score_and_warning():
    lp = np.array([[-np.inf] * 7, [0.0] + [-np.inf] * 6])
    with pytest.warns(ZeroLabelMassWarning, match="1 of 2"):
        s = expected_scores(lp, VALUES)
    assert not np.isnan(s.score).any()
    assert s.score.tolist() == [1.0, 1.0]
    assert s.zero_mass == 1
    with pytest.warns(ZeroLabelMassWarning):
        assert expected_scores(lp[:1], VALUES, normalize=False).score[0] == 0.0


@pytest.mark.parametrize("bad", [np.array([[np.nan, 0.0]]), np.array([[0.5, -1.0]]), np.zeros((2, 3))])
def test_rejects_values_that_are_not_label_logprobs(bad):
    with pytest.raises(ValueError):
        expected_scores(bad, [0, 1])


# -- score kinds (genrank.scorer.ScoreRule) ------------------------------------------------------

from genrank.scorer import ScoreRule, sigmoid  # noqa: E402


def test_log_odds_is_the_logit_difference_from_logprobs_or_logits():
    logits = np.array([[2.0, 5.5, -1.0], [0.3, -0.7, 4.0]])  # two prompts, three vocabulary tokens
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    rule = ScoreRule("log_odds", (0.0, 1.0), relevance="sigmoid", shift=4.5)
    want = logits[:, 1] - logits[:, 0]  # logit("1") - logit("0"), labels ("0", "1")
    from_logprobs = rule.scores(logprobs[:, :2], "logprobs")
    from_logits = rule.scores(logits[:, :2], "logits")
    np.testing.assert_allclose(from_logprobs.score, want, atol=1e-12)
    np.testing.assert_allclose(from_logits.score, want, atol=1e-12)
    np.testing.assert_allclose(from_logprobs.label_mass, np.exp(logprobs[:, :2]).sum(axis=1))
    assert np.isnan(from_logits.label_mass).all()  # unknown from logits
    np.testing.assert_allclose(rule.relevance_of(want), 1 / (1 + np.exp(-(want - 4.5))))  # mxbai's sigmoid_normalize


def test_log_odds_with_one_label_missing_is_an_error_not_a_score():
    rule = ScoreRule("log_odds", (0.0, 1.0), relevance="sigmoid")
    s = rule.scores(np.array([[-0.5, -np.inf], [-1.0, -2.0]]), "logprobs")
    assert np.isnan(s.score[0]) and s.score[1] == pytest.approx(-1.0)
    assert list(s.errors) == [0] and "only one of the two labels" in s.errors[0]


def test_logit_kind_is_the_raw_logit_and_refuses_logprobs():
    rule = ScoreRule("logit", (1.0,), relevance="sigmoid")
    assert rule.accepts == ("logits",)
    s = rule.scores(np.array([[3.25], [-np.inf], [-40.0]]), "logits")
    assert s.score[0] == 3.25 and np.isnan(s.score[1]) and list(s.errors) == [1]
    np.testing.assert_allclose(rule.relevance_of(np.array([3.25, 0.0, -800.0])), [sigmoid(3.25), 0.5, 0.0])
    with pytest.raises(ValueError, match="'logit' score cannot be computed from label logprobs; it needs logits"):
        rule.scores(np.array([[-0.1]]), "logprobs")


def test_expected_from_logits_renormalises_over_the_labels():
    logits = np.array([[1.0, 3.0, 0.0]])
    rule = ScoreRule("expected", (0.0, 1.0))
    s = rule.scores(logits[:, :2], "logits")
    assert s.score[0] == pytest.approx(np.exp(3.0) / (np.exp(1.0) + np.exp(3.0)))  # Qwen3-Reranker's P(yes)
    assert np.isnan(s.label_mass[0])
    assert ScoreRule("expected", (1.0, 2.0), normalize=False).accepts == ("logprobs",)  # the card formula needs mass
    np.testing.assert_allclose(ScoreRule("expected", (1.0, 7.0)).relevance_of(np.array([1.0, 4.0, 7.0])), [0, 0.5, 1])
