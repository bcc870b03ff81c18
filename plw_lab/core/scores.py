"""Pure statistics of answers: intervals, paired tests and classification scores.

Plain Python on plain lists, no model and no tensors, so each function can be checked against
numbers worked out by hand. `plw_lab/core/evaluation.py` feeds them per-example results; the views only
format what they return.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (nan, nan) for n = 0.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and does not collapse to a point at
    0 or n successes, which matters at the 30-50 validation examples the lab usually has.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact McNemar test of two sets of answers to the same examples.

    Only the discordant examples count: `a_only` right under A alone, `b_only` under B alone.
    Under "no difference" each discordant example is a fair coin, so the two-sided p-value is
    twice the binomial tail of the smaller count (capped at 1).
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired answers need the same examples: {len(a_correct)} vs {len(b_correct)}")
    a_only = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else min(1.0, 2 * binomial_tail(max(a_only, b_only), discordant, 0.5))
    return {"n": len(a_correct), "a_only": a_only, "b_only": b_only, "p_value": p_value, "verdict": verdict(p_value)}


def verdict(p_value: float, level: float = 0.05) -> str:
    """A paired test's p-value in plain words."""
    return f"significant at {level:.0%}" if p_value < level else "within noise"


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative.

    Ties count one half (the Mann-Whitney statistic). nan when one class is absent.
    """
    pos = [s for s, y in zip(scores, positive) if y]
    neg = [s for s, y in zip(scores, positive) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def balanced_accuracy(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Mean recall over the classes that occur in `truth`: 1 / classes for any constant answer."""
    classes = sorted(set(truth), key=str)
    if not classes:
        return math.nan
    recalls = []
    for c in classes:
        rows = [p for t, p in zip(truth, predicted) if t == c]
        recalls.append(sum(p == c for p in rows) / len(rows))
    return sum(recalls) / len(recalls)


def macro_f1(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Unweighted mean F1 over every class seen in `truth` or `predicted` (F1 0 where a class is never right)."""
    classes = sorted(set(truth) | set(predicted), key=str)
    if not classes:
        return math.nan
    scores = []
    for c in classes:
        hits = sum(1 for t, p in zip(truth, predicted) if t == c and p == c)
        claimed = sum(1 for p in predicted if p == c)
        actual = sum(1 for t in truth if t == c)
        scores.append(2 * hits / (claimed + actual) if claimed + actual else 0.0)
    return sum(scores) / len(scores)
