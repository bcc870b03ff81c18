"""Dataset statistics: token counts, the generation ratio Rg and label balance.

Rg = completion tokens / prompt tokens. RACE-style data (a long passage, a one-letter answer)
has Rg near 0.01: at PLW 1 such data trains almost only on prompt tokens, which is why the
prompt-loss weight matters most there. Rg spreads over orders of magnitude, so its geometric
mean is the honest centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass
class LengthStats:
    prompt: list[int]
    completion: list[int]
    #: Each example's completion tokens times their weight from the data (record and message `weight`
    #: fields); equal to `completion` when the data gives no weights.
    weighted_completion: list[float] = field(default_factory=list)

    @property
    def rg(self) -> list[float]:
        """Generation ratio Rg = completion tokens / prompt tokens, per example."""
        return [c / p for p, c in zip(self.prompt, self.completion) if p > 0 and c > 0]

    @property
    def n(self) -> int:
        return len(self.prompt)

    def summary(self) -> dict:
        rg = self.rg
        return {
            "examples": self.n,
            "prompt_tokens": _describe_numbers(self.prompt),
            "completion_tokens": _describe_numbers(self.completion),
            "rg_mean": sum(rg) / len(rg) if rg else float("nan"),
            "rg_geomean": geometric_mean(rg),
            "rg_median": _quantile(sorted(rg), 0.5),
            "total_prompt": sum(self.prompt),
            "total_completion": sum(self.completion),
            "data_weighted": sum(1 for c, w in zip(self.completion, self.weighted_completion) if w != c),
            "total_weighted_completion": sum(self.weighted_completion) if self.weighted_completion else sum(self.completion),
        }


def length_stats(encoded: Iterable) -> LengthStats:
    """Prompt and completion token counts of encoded examples (anything with n_prompt/n_completion)."""
    encoded = list(encoded)
    weighted = [sum(c * w for c, w in zip(e.completion_mask, e.data_weight)) if getattr(e, "data_weight", None) else e.n_completion
                for e in encoded]
    return LengthStats([e.n_prompt for e in encoded], [e.n_completion for e in encoded], weighted)


def geometric_mean(values: Sequence[float]) -> float:
    positive = [v for v in values if v > 0]
    if not positive:
        return float("nan")
    return math.exp(sum(math.log(v) for v in positive) / len(positive))


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    position = q * (len(sorted_values) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def _describe_numbers(values: Sequence[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"mean": float("nan"), "min": float("nan"), "median": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "mean": sum(ordered) / len(ordered),
        "min": ordered[0],
        "median": _quantile(ordered, 0.5),
        "p95": _quantile(ordered, 0.95),
        "max": ordered[-1],
    }


def label_counts(examples: Iterable) -> dict[str, int]:
    """How often each right answer occurs (label name for classification, letter otherwise)."""
    counts: dict[str, int] = {}
    for e in examples:
        if getattr(e, "answer_index", None) is None:
            continue
        key = (e.meta or {}).get("label") or e.choices[e.answer_index]
        counts[str(key)] = counts.get(str(key), 0) + 1
    return dict(sorted(counts.items()))
