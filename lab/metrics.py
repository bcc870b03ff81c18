"""The one registry of validation metrics: name, label, unit, direction, format, colour.

Every place that shows, logs, ranks or stops on a metric reads it from here: the events and
`summary.json` (keys), the charts and tables (labels, colours, formats), the run table's best
values and early stopping (direction). Adding a metric is one entry in `METRICS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    #: How the metric is labelled in charts, tables and prints.
    label: str
    #: True: larger is better; False: smaller is better; None: not a quality score (counts, baselines).
    higher_is_better: bool | None
    #: "loss" (nats per token), "share" (a fraction shown as a percentage), "score" or "perplexity".
    unit: str
    #: Python format spec of one value.
    fmt: str
    #: One sentence on what the number measures, for help texts and legends.
    help: str
    colour: str = "#64748b"
    #: Whether the metric may pick the kept adapter and drive early stopping.
    stopping: bool = False

    def format(self, value) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "\u2013"
        return format(value, self.fmt)

    def better(self, new: float, old: float | None) -> bool:
        """Whether `new` improves on `old` (None: nothing yet). Only for quality scores."""
        if old is None:
            return True
        return new > old if self.higher_is_better else new < old


_ENTRIES = (
    Metric("train_loss", "train loss", False, "loss", ".4f", "Weighted loss of the last optimiser step.", "#64748b"),
    Metric("prompt_loss", "val prompt loss", False, "loss", ".4f",
           "Mean cross-entropy of the prompt tokens (template, system and user turns).", "#2563eb", stopping=True),
    Metric("completion_loss", "val completion loss", False, "loss", ".4f",
           "Mean cross-entropy of every completion token, the end-of-turn token included.", "#ea580c", stopping=True),
    Metric("full_loss", "val full-sequence loss", False, "loss", ".4f",
           "Mean cross-entropy of prompt and completion tokens together; dominated by the prompt.", "#7c3aed", stopping=True),
    Metric("token_accuracy", "val token accuracy", True, "share", ".1%",
           "Share of completion tokens that are the model's top prediction.", "#0891b2"),
    Metric("answer_accuracy", "val answer accuracy", True, "share", ".1%",
           "Share of validation answers whose candidate has the highest log-probability.", "#16a34a", stopping=True),
    Metric("majority_baseline", "majority-class baseline", None, "share", ".1%",
           "Accuracy of always answering the most common true answer.", "#94a3b8"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}
#: Choices of `train.early_stopping_metric`.
STOPPING_METRICS: tuple[str, ...] = tuple(m.name for m in _ENTRIES if m.stopping) + ("none",)
#: The metrics a run's best values are tracked for (summary, runs table, overlays).
RANKED: tuple[str, ...] = tuple(m.name for m in _ENTRIES if m.higher_is_better is not None and m.name != "train_loss")


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def label(name: str) -> str:
    return METRICS[name].label if name in METRICS else name


def format_value(name: str, value) -> str:
    return metric(name).format(value) if name in METRICS else ("\u2013" if value is None else f"{value:.4g}")


def best_of(evals, names=RANKED) -> dict[str, dict]:
    """For each metric: its best value over `evals` and the step and epoch where it was reached.

    `evals` are `Eval` events or their dicts (anything with step, epoch and metrics).
    """
    best: dict[str, dict] = {}
    for event in evals:
        get = event.get if isinstance(event, dict) else lambda key, e=event: getattr(e, key, None)
        metrics = get("metrics") or {}
        for name in names:
            value = metrics.get(name)
            if not isinstance(value, (int, float)) or value != value:
                continue
            current = best.get(name)
            if METRICS[name].better(value, None if current is None else current["value"]):
                best[name] = {"value": value, "step": get("step"), "epoch": get("epoch")}
    return best
