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
