"""Dataset statistics: token counts, the generation ratio Rg and label balance.

Rg = completion tokens / prompt tokens. RACE-style data (a long passage, a one-letter answer)
has Rg near 0.01: at PLW 1 such data trains almost only on prompt tokens, which is why the
prompt-loss weight matters most there.
"""

from __future__ import annotations

import math
from collections import Counter

from .masks import Encoded


def example_stats(enc: Encoded) -> dict:
    return {
        "prompt_tokens": enc.n_prompt,
        "completion_tokens": enc.n_completion,
        "generation_ratio": enc.n_completion / max(enc.n_prompt, 1),
        "truncated": enc.truncated,
    }


def dataset_stats(encoded: list[Encoded]) -> dict:
    """Per-set summary; `per_example` keeps the rows for histograms."""
    rows = [example_stats(e) for e in encoded]
    if not rows:
        return {"n_examples": 0, "per_example": []}
    ratios = [r["generation_ratio"] for r in rows]
    n = len(rows)
    labels = Counter(e.example.answer for e in encoded if e.example.answer is not None)
    return {
        "n_examples": n,
        "prompt_tokens_mean": sum(r["prompt_tokens"] for r in rows) / n,
        "completion_tokens_mean": sum(r["completion_tokens"] for r in rows) / n,
        "prompt_tokens_max": max(r["prompt_tokens"] for r in rows),
        "completion_tokens_max": max(r["completion_tokens"] for r in rows),
        "generation_ratio_mean": sum(ratios) / n,
        # The geometric mean is the honest centre of a ratio spread over orders of magnitude.
        "generation_ratio_geomean": math.exp(sum(math.log(max(r, 1e-12)) for r in ratios) / n),
        "truncated_examples": sum(1 for r in rows if r["truncated"]),
        "label_counts": dict(sorted(labels.items())),
        "majority_share": max(labels.values()) / sum(labels.values()) if labels else None,
        "per_example": rows,
    }
