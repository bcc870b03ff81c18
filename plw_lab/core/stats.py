"""Dataset statistics: token counts, the generation ratio Rg and label balance.

Rg = completion tokens / prompt tokens. RACE-style data (a long passage, a one-letter answer)
has Rg near 0.01: at PLW 1 such data trains almost only on prompt tokens, which is why the
prompt-loss weight matters most there. Rg spreads over orders of magnitude, so its geometric
mean is the honest centre.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class LengthStats:
    """Raw lengths: the examples as written, before `max_length` cuts anything."""

    prompt: list[int]
    completion: list[int]
    #: Each example's completion tokens times their weight from the data (record and message `weight`
    #: fields); equal to `completion` when the data gives no weights.
    weighted_completion: list[float] = field(default_factory=list)
    #: Tokens `max_length` cut from each example (empty: nothing known to be cut).
    cut: list[int] = field(default_factory=list)

    @property
    def prompt_kept(self) -> list[int]:
        """Prompt tokens that reach the model after the cut."""
        return [p - c for p, c in zip(self.prompt, self.cut)] if self.cut else list(self.prompt)

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
            #: Tokens the loss sees after the cut (the raw counts are in prompt_tokens / completion_tokens).
            "total_prompt": sum(self.prompt_kept),
            "total_completion": sum(self.completion),
            "total_prompt_raw": sum(self.prompt),
            "examples_cut": sum(1 for c in self.cut if c),
            "tokens_cut": sum(self.cut),
            "data_weighted": sum(1 for c, w in zip(self.completion, self.weighted_completion) if w != c),
            "total_weighted_completion": sum(self.weighted_completion)
            if self.weighted_completion
            else sum(self.completion),
        }


def length_stats(encoded: Iterable) -> LengthStats:
    """Raw prompt and completion token counts of encoded examples and what was cut from each.

    Takes `plw_lab.core.masks.Encoded` (whose raw counts survive truncation) or anything with
    n_prompt/n_completion (then taken as uncut).
    """
    encoded = list(encoded)
    cut = [getattr(e, "truncated", 0) for e in encoded]
    prompt = [getattr(e, "raw_prompt", 0) or e.n_prompt + c for e, c in zip(encoded, cut)]
    completion = [getattr(e, "raw_completion", 0) or e.n_completion for e in encoded]
    weighted = [
        sum(c * w for c, w in zip(e.completion_mask, e.data_weight))
        if getattr(e, "data_weight", None)
        else e.n_completion
        for e in encoded
    ]
    return LengthStats(prompt, completion, weighted, cut if any(cut) else [])


def truncation_report(encoded: Iterable, max_length: int) -> dict:
    """What `max_length` does to examples encoded at full length (`plw_lab.core.masks.Encoded`, before the cut).

    An example longer than `max_length` loses its excess from the left of its prompt, unless even
    its template head and reply (`min_length`) do not fit: then it is skipped.
    """
    encoded = list(encoded)
    raw = [e.raw_prompt + e.raw_completion for e in encoded]
    skipped = {id(e) for e in encoded if e.min_length > max_length}
    cut = [
        (n - max_length, e.raw_prompt) for e, n in zip(encoded, raw) if n > max_length and e.min_length <= max_length
    ]
    shares = [c / p for c, p in cut if p]
    return {
        "max_length": max_length,
        "examples": len(encoded),
        "longest": max(raw, default=0),
        "p95_length": math.ceil(_quantile(sorted(raw), 0.95)) if raw else 0,
        "examples_cut": len(cut),
        "tokens_cut": sum(c for c, _ in cut),
        #: Of all prompt tokens of the examples that stay, the share cut away.
        "prompt_share_cut": sum(c for c, _ in cut) / max(1, sum(e.raw_prompt for e in encoded if id(e) not in skipped)),
        #: Of one cut example's prompt, the largest share lost.
        "max_prompt_share_cut": max(shares, default=0.0),
        "examples_skipped": len(skipped),
        #: The smallest max_length that keeps every example whole.
        "fits_all": max(raw, default=0),
    }


def truncation_message(report: dict) -> str | None:
    """One sentence on what max_length cuts, or None when it cuts nothing."""
    if not report or not (report["examples_cut"] or report["examples_skipped"]):
        return None
    n = report["examples"]
    parts = []
    if report["examples_cut"]:
        parts.append(
            f"cuts {report['examples_cut']} of {n} examples ({report['examples_cut'] / n:.1%}) from the left of their "
            f"prompts: {report['tokens_cut']:,} tokens, {report['prompt_share_cut']:.1%} of all prompt tokens "
            f"(up to {report['max_prompt_share_cut']:.0%} of one prompt)"
        )
    if report["examples_skipped"]:
        parts.append(f"skips {report['examples_skipped']} whose template head and reply alone do not fit")
    return (
        f"max_length {report['max_length']} " + " and ".join(parts) + f". The longest example has "
        f"{report['longest']} tokens (95th percentile {report['p95_length']}): set data.max_length to "
        f"{report['fits_all']} to keep every example whole."
    )


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
        return {
            "mean": float("nan"),
            "min": float("nan"),
            "median": float("nan"),
            "p95": float("nan"),
            "max": float("nan"),
        }
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
