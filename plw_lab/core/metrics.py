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
    #: "loss" (nats per token), "share" (a fraction shown as a percentage), "score", "perplexity" or "bits".
    unit: str
    #: Python format spec of one value.
    fmt: str
    #: One sentence on what the number measures, for help texts and legends.
    help: str
    colour: str = "#64748b"
    #: Whether the metric may pick the kept adapter and drive early stopping.
    stopping: bool = False
    #: Key of the metric's 95% interval ([low, high]) in the same metrics dict, for accuracies.
    interval: str | None = None

    def format(self, value) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "\u2013"
        return format(value, self.fmt)

    def format_with_interval(self, metrics: dict) -> str:
        """The metric's value in `metrics`, followed by its interval when there is one: "62.5% [48.3–74.8%]"."""
        value = self.format(metrics.get(self.name))
        bounds = metrics.get(self.interval) if self.interval else None
        if not bounds or any(b is None or b != b for b in bounds):
            return value
        low, high = (format(b, self.fmt) for b in bounds)
        if self.unit == "share":
            low = low.removesuffix("%")
        return f"{value} [{low}–{high}]"

    def better(self, new: float, old: float | None) -> bool:
        """Whether `new` improves on `old` (None: nothing yet). Only for quality scores."""
        if old is None:
            return True
        return new > old if self.higher_is_better else new < old


_ENTRIES = (
    Metric("train_loss", "train loss", False, "loss", ".4f", "Weighted loss of the last optimiser step.", "#64748b"),
    Metric(
        "prompt_loss",
        "val prompt loss",
        False,
        "loss",
        ".4f",
        "Mean cross-entropy of the prompt tokens (template, system and user turns).",
        "#2563eb",
        stopping=True,
    ),
    Metric(
        "completion_loss",
        "val completion loss",
        False,
        "loss",
        ".4f",
        "Mean cross-entropy of every completion token, the end-of-turn token included.",
        "#ea580c",
        stopping=True,
    ),
    Metric(
        "answer_loss",
        "val answer loss",
        False,
        "loss",
        ".4f",
        "Mean cross-entropy of the answer tokens alone (the letter), without the end-of-turn token.",
        "#be123c",
        stopping=True,
    ),
    Metric(
        "format_loss",
        "val format loss",
        False,
        "loss",
        ".4f",
        "Mean cross-entropy of the completion tokens that are not the answer (e.g. <|im_end|>): learning to stop.",
        "#f59e0b",
    ),
    Metric(
        "full_loss",
        "val full-sequence loss",
        False,
        "loss",
        ".4f",
        "Mean cross-entropy of prompt and completion tokens together; dominated by the prompt.",
        "#7c3aed",
        stopping=True,
    ),
    Metric(
        "token_accuracy",
        "val token accuracy",
        True,
        "share",
        ".1%",
        "Share of completion tokens that are the model's top prediction.",
        "#0891b2",
    ),
    Metric(
        "answer_accuracy",
        "val answer accuracy",
        True,
        "share",
        ".1%",
        "Share of validation answers whose candidate has the highest log-probability.",
        "#16a34a",
        stopping=True,
        interval="answer_accuracy_ci",
    ),
    Metric(
        "answer_accuracy_generated",
        "val generated-answer accuracy",
        True,
        "share",
        ".1%",
        "Share of greedy generations that start with the right candidate; unparseable ones count as wrong. "
        "Measured at the first and last evaluation only.",
        "#15803d",
        interval="answer_accuracy_generated_ci",
    ),
    Metric(
        "candidate_mass",
        "val candidate mass",
        True,
        "share",
        ".1%",
        "Mean probability the model puts on the valid candidates at the answer position: answer format, not task.",
        "#a16207",
    ),
    Metric(
        "balanced_accuracy",
        "val balanced accuracy",
        True,
        "share",
        ".1%",
        "Mean recall over the true classes: 1 / classes for any constant answer, whatever the class balance.",
        "#0d9488",
        stopping=True,
    ),
    Metric("macro_f1", "val macro-F1", True, "score", ".3f", "Unweighted mean F1 over the classes.", "#4f46e5"),
    Metric(
        "auc",
        "val ROC AUC",
        True,
        "score",
        ".3f",
        "Binary classification: chance that a positive example's log-probability margin beats a negative's "
        "(0.5: no signal).",
        "#db2777",
        stopping=True,
    ),
    Metric(
        "unparseable",
        "unparseable generated answers",
        None,
        "count",
        "d",
        "Greedy generations that name no candidate (counted as wrong).",
        "#9ca3af",
    ),
    Metric(
        "majority_baseline",
        "majority-class baseline",
        None,
        "share",
        ".1%",
        "Accuracy of always answering the most common true answer.",
        "#94a3b8",
    ),
    Metric(
        "chance",
        "chance",
        None,
        "share",
        ".1%",
        "Accuracy of answering at random: 1 / number of candidates.",
        "#cbd5e1",
    ),
    Metric(
        "kl_to_base",
        "val KL to the base model",
        None,
        "loss",
        ".4f",
        "Mean KL(p_adapted || p_base) per validation token, prompt and completion: how far the adapter moved "
        "the model's predictions. A forgetting measure that needs no probe texts; 0 at step 0.",
        "#9333ea",
    ),
    Metric(
        "answer_entropy",
        "predicted-answer entropy",
        None,
        "bits",
        ".3f",
        "Entropy in bits of the predicted answers: 0 when one answer takes all (collapse), log2(k) when k "
        "answers are equally common.",
        "#0e7490",
    ),
    Metric(
        "distinct_1",
        "distinct-1 of generations",
        None,
        "share",
        ".1%",
        "Distinct words / all words over the greedy generations: low when the generations repeat themselves.",
        "#65a30d",
    ),
    Metric(
        "distinct_2",
        "distinct-2 of generations",
        None,
        "share",
        ".1%",
        "Distinct word pairs / all word pairs over the greedy generations.",
        "#4d7c0f",
    ),
)

METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}
#: Choices of `train.early_stopping_metric`.
STOPPING_METRICS: tuple[str, ...] = tuple(m.name for m in _ENTRIES if m.stopping) + ("none",)
#: The metrics a run's best values are tracked for (summary, runs table, overlays).
RANKED: tuple[str, ...] = tuple(m.name for m in _ENTRIES if m.higher_is_better is not None and m.name != "train_loss")


def stopping_metric(setting: str, has_answers: bool) -> str:
    """The metric `train.early_stopping_metric` names; "auto" is answer loss where answers exist.

    On letter-answer data the completion is the letter plus the end-of-turn token, whose loss
    falls to almost nothing in a few steps; stopping on completion loss then measures learning
    to stop, not learning the answer.
    """
    if setting != "auto":
        return setting
    return "answer_loss" if has_answers else "completion_loss"


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

    `evals` are `Eval` events or their dicts (anything with step, epoch and metrics). An accuracy's
    entry also carries its 95% interval ("ci") at that evaluation.
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
                interval = METRICS[name].interval
                if interval and metrics.get(interval):
                    best[name]["ci"] = list(metrics[interval])
    return best
