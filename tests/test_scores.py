"""The pure statistics against values worked out by hand."""

import math

import pytest

from plw_lab.core import scores


def test_wilson_interval_by_hand():
    # 30 of 48: p = 0.625, z^2 = 3.8415; centre (0.625 + 0.04002) / 1.08003 = 0.61574,
    # half 1.96 * sqrt(0.0048828 + 0.00041684) / 1.08003 = 0.13211
    low, high = scores.wilson(30, 48)
    assert low == pytest.approx(0.48363, abs=1e-4) and high == pytest.approx(0.74785, abs=1e-4)
    # 0 of 10 does not collapse to a point: [0, z^2 / (n + z^2)] = [0, 0.27753]
    assert scores.wilson(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-4))
    assert scores.wilson(10, 10)[0] == pytest.approx(1 - 0.27753, abs=1e-4)
    assert all(math.isnan(v) for v in scores.wilson(0, 0))


def test_binomial_tail_by_hand():
    # P(X >= 4 | 5, 0.4) = 5 * 0.4^4 * 0.6 + 0.4^5 = 0.0768 + 0.01024
    assert scores.binomial_tail(4, 5, 0.4) == pytest.approx(0.08704)
    assert scores.binomial_tail(0, 5, 0.4) == 1.0 and scores.binomial_tail(6, 5, 0.4) == 0.0


def test_exact_mcnemar_counts_only_discordant_examples():
    # 10 examples: both right on 4, A alone on 1, B alone on 5 -> discordant 6, larger count 5:
    # p = 2 * P(X >= 5 | 6, 1/2) = 2 * (6 + 1) / 64 = 0.21875
    a = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]
    result = scores.mcnemar(a, b)
    assert (result["a_only"], result["b_only"], result["n"]) == (1, 5, 10)
    assert result["p_value"] == pytest.approx(0.21875) and result["verdict"] == "within noise"
    # B alone right on 9 of 9 discordant: p = 2 / 512
    strong = scores.mcnemar([0] * 9 + [1], [1] * 10)
    assert strong["p_value"] == pytest.approx(2 / 512) and strong["verdict"] == "significant at 5%"
    assert scores.mcnemar([1, 0], [1, 0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same examples"):
        scores.mcnemar([1], [1, 0])


def test_roc_auc_counts_pairs_and_halves_ties():
    # positives 0.9, 0.4; negatives 0.5, 0.1, 0.4: pairs won 3 + 1 + tie 0.5 = 4.5 of 6
    assert scores.roc_auc([0.9, 0.4, 0.5, 0.1, 0.4], [1, 1, 0, 0, 0]) == pytest.approx(0.75)
    assert scores.roc_auc([1, 2, 3], [0, 0, 1]) == 1.0
    assert scores.roc_auc([5, 5, 5, 5], [1, 0, 1, 0]) == 0.5
    assert math.isnan(scores.roc_auc([1, 2], [1, 1]))


def test_balanced_accuracy_and_macro_f1_by_hand():
    truth = ["A", "A", "A", "A", "B", "B"]
    predicted = ["A", "A", "A", "B", "B", "A"]
    # recalls: A 3/4, B 1/2 -> 0.625
    assert scores.balanced_accuracy(truth, predicted) == pytest.approx(0.625)
    # F1: A = 2*3 / (4 + 4) = 0.75; B = 2*1 / (2 + 2) = 0.5 -> 0.625
    assert scores.macro_f1(truth, predicted) == pytest.approx(0.625)
    # always "A" on an 80% majority: accuracy 0.8, balanced accuracy 0.5, macro-F1 (0.8889 + 0) / 2
    always = ["A"] * 10
    skewed = ["A"] * 8 + ["B"] * 2
    assert scores.balanced_accuracy(skewed, always) == pytest.approx(0.5)
    assert scores.macro_f1(skewed, always) == pytest.approx((16 / 18) / 2)
