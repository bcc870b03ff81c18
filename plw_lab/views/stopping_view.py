"""The stopping-criterion report (`plw_lab.core.stopping`) in words and as a table: what the CLI
prints after a run and the app's Train and Compare tabs and notebook 02 show."""

from __future__ import annotations

from plw_lab.core.metrics import METRICS
from plw_lab.core.stopping import criteria


def curve_name(name: str) -> str:
    """A metric's label without the "val" every validation curve carries: "full-sequence loss"."""
    return METRICS[name].label.removeprefix("val ")


def _accuracy(entry: dict) -> str:
    accuracy = METRICS["answer_accuracy"]
    return accuracy.format_with_interval(
        {"answer_accuracy": entry.get("answer_accuracy"), "answer_accuracy_ci": entry.get("interval")}
    )


def stopping_sentences(report: dict | None) -> str:
    """ "Stopping on full-sequence loss keeps step 0: 53.7% [46.0–61.3%]. Stopping on answer loss keeps step 120:
    74.4% [67.1–80.5%]. Paired on 160 examples: p = 2e-06, significant at 5%." ("" without a report)."""
    test = (report or {}).get("test")
    kept = criteria(report or {})
    if not kept:
        return ""
    shown = [test["first"], test["second"]] if test else [n for n in ("full_loss", "completion_loss") if n in kept]
    parts = []
    for name in shown:
        entry = kept[name]
        where = f"Stopping on {curve_name(name)} keeps step {entry['step']}"
        if entry.get("answer_accuracy") is None:
            where += f" ({METRICS[name].format(entry['value'])})"
            parts.append(where + ".")
        else:
            parts.append(f"{where}: {_accuracy(entry)}.")
    if test and test["first_step"] == test["second_step"]:
        parts.append("Both keep the same adapter.")
    elif test:
        parts.append(
            f"Paired on {test['n']} examples (exact McNemar; {test['first_only']} right only at step "
            f"{test['first_step']}, {test['second_only']} only at step {test['second_step']}): "
            f"p = {test['p_value']:.2g}, {test['verdict']}."
        )
    return " ".join(parts)


def stopping_rows(report: dict | None) -> list[dict]:
    """One row per curve: the step it keeps, its best value, and the answer accuracy with its interval there."""
    return [
        {
            "stop on": curve_name(name),
            "kept step": entry["step"],
            "best value": METRICS[name].format(entry["value"]),
            "answer accuracy there": _accuracy(entry) if entry.get("answer_accuracy") is not None else "\u2013",
        }
        for name, entry in criteria(report or {}).items()
    ]
