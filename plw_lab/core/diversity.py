"""How varied a model's outputs are: distinct-n of generated texts and the entropy of its answers.

Mode collapse shows in free text as the same phrases over and over (few distinct n-grams) and in
multiple-choice data as one answer for every question (an answer distribution with little
entropy). Both are computed with the adapter on and off in the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whitespace-split words of `texts` (pooled; NaN if none).

    1.0: no n-gram repeats anywhere in the set; near 0: the texts repeat the same phrases.
    """
    grams = []
    for text in texts:
        words = text.split()
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def answer_entropy(counts: Mapping[str, int]) -> float:
    """Entropy in bits of an answer distribution given as counts: 0 when one answer takes all,
    log2(k) when k answers are equally common. NaN without answers."""
    total = sum(counts.values())
    if not total:
        return float("nan")
    return -sum(c / total * math.log2(c / total) for c in counts.values() if c) + 0.0


def text_diversity(texts: list[str]) -> dict:
    """distinct-1 and distinct-2 of a set of generations."""
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
