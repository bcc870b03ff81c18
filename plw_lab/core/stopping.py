"""The stopping-criterion report: which step each validation curve would keep, and how good it is.

A run evaluates its adapter every few steps; stopping on a curve means keeping the adapter of the
step where that curve is best. The curves disagree: full-sequence loss is mostly prompt tokens and
can rise from the first step on while answer accuracy climbs, so stopping on it keeps the base
model. The report puts that in numbers for every run: per curve the kept step and the answer
accuracy there with its Wilson interval, and an exact McNemar test between the checkpoints the
full-sequence loss and the answer loss keep, paired on the same validation examples through each
evaluation's per-example answers (`Eval.correct`, one character per example).
"""

from __future__ import annotations

from collections.abc import Sequence

from plw_lab.core import scores
from plw_lab.core.events import event_field
from plw_lab.core.metrics import METRICS

#: The curves a run could stop on, in the order the report lists them.
CRITERIA = (
    "full_loss",
    "prompt_loss",
    "completion_loss",
    "answer_loss",
    "format_loss",
    "answer_accuracy",
    "answer_accuracy_generated",
)
#: The curve the paired test holds against the full-sequence loss: answers where the data has them.
ANSWER_CRITERION, FREE_FORM_CRITERION = "answer_loss", "completion_loss"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def kept_eval(evals: Sequence, name: str):
    """The evaluation stopping on `name` keeps: its best value, the earliest among equals; None if never measured."""
    candidates = [e for e in evals if _finite((event_field(e, "metrics") or {}).get(name))]
    if not candidates:
        return None
    pick = max if METRICS[name].higher_is_better else min
    return pick(candidates, key=lambda e: event_field(e, "metrics")[name])


def correctness(evaluation) -> list[bool] | None:
    """The per-example right/wrong of an evaluation's scored answers, in validation order."""
    marks = event_field(evaluation, "correct") or ""
    return [mark == "1" for mark in marks] if marks else None


def paired_test(evals: Sequence, first: str, second: str) -> dict | None:
    """Exact McNemar test between the checkpoints `first` and `second` keep (None without per-example answers)."""
    a, b = kept_eval(evals, first), kept_eval(evals, second)
    if a is None or b is None:
        return None
    a_correct, b_correct = correctness(a), correctness(b)
    if a_correct is None or b_correct is None or len(a_correct) != len(b_correct):
        return None
    test = scores.mcnemar(a_correct, b_correct)
    return {
        "first": first,
        "second": second,
        "first_step": event_field(a, "step"),
        "second_step": event_field(b, "step"),
        "n": test["n"],
        "first_only": test["a_only"],
        "second_only": test["b_only"],
        "p_value": test["p_value"],
        "verdict": test["verdict"],
    }


def stopping_report(evals: Sequence) -> dict:
    """`{criterion: {"step", "value", "answer_accuracy", "interval", "n"}, ..., "test": {...} or None}`.

    `evals` are `Eval` events or their dicts. Free-form data has no answer accuracy: its entries
    carry the step and the value alone, and its paired test is None (nothing right or wrong to pair).
    """
    report: dict = {}
    for name in CRITERIA:
        chosen = kept_eval(evals, name)
        if chosen is None:
            continue
        metrics = event_field(chosen, "metrics")
        report[name] = {
            "step": event_field(chosen, "step"),
            "value": metrics[name],
            "answer_accuracy": metrics.get("answer_accuracy"),
            "interval": metrics.get("answer_accuracy_ci"),
            "n": metrics.get("n_examples"),
        }
    has_answers = any(entry["answer_accuracy"] is not None for entry in report.values())
    report["test"] = paired_test(evals, "full_loss", ANSWER_CRITERION if has_answers else FREE_FORM_CRITERION)
    return report


def run_stopping(summary: dict | None, evals: Sequence) -> dict:
    """A run's stopping report: the one its summary recorded, else computed from its evaluations (a run
    killed before writing its summary, or from a lab older than the report)."""
    return (summary or {}).get("stopping") or stopping_report(evals)


def criteria(report: dict) -> dict[str, dict]:
    """The report's per-curve entries, without the paired test."""
    return {name: entry for name, entry in report.items() if name in CRITERIA}
