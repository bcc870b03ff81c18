"""The stopping-criterion report on hand-built curves whose full-loss and answer-loss minima differ,
checked against numbers worked out by hand."""

import math

import pytest

from plw_lab.core.config import LabConfig
from plw_lab.core.events import Eval
from plw_lab.core.runs import load_run
from plw_lab.core.scores import wilson
from plw_lab.core.stopping import stopping_report
from plw_lab.views.stopping_view import stopping_rows, stopping_sentences

N = 20


def _eval(step, full, answer_loss, right, correct=None):
    """An evaluation of N examples, the first `right` of them answered right (unless `correct` says otherwise)."""
    correct = correct or "1" * right + "0" * (N - right)
    return Eval(
        step=step,
        epoch=step / 10,
        metrics={
            "full_loss": full,
            "prompt_loss": full + 0.1,
            "completion_loss": answer_loss + 0.05,
            "answer_loss": answer_loss,
            "answer_accuracy": correct.count("1") / N,
            "answer_accuracy_ci": list(wilson(correct.count("1"), N)),
            "n_examples": N,
        },
        correct=correct,
    )


# Full-sequence loss is best at step 0 (the base model) and rises; answer loss falls until step 20.
EVALS = [
    _eval(0, 3.0, 1.4, 8),
    _eval(10, 3.5, 0.9, 12),
    _eval(20, 3.9, 0.6, 18),
    _eval(30, 4.0, 0.7, 16),
]


def test_each_curve_keeps_its_own_best_step_with_the_accuracy_there():
    report = stopping_report(EVALS)
    assert report["full_loss"] == {
        "step": 0,
        "value": 3.0,
        "answer_accuracy": 0.4,
        "interval": list(wilson(8, N)),
        "n": N,
    }
    assert report["answer_loss"]["step"] == 20 and report["answer_loss"]["answer_accuracy"] == 0.9
    assert report["answer_accuracy"]["step"] == 20
    assert report["prompt_loss"]["step"] == 0 and report["completion_loss"]["step"] == 20
    assert "format_loss" not in report  # never measured: no entry rather than a made-up one


def test_the_paired_test_compares_the_two_kept_checkpoints_example_by_example():
    test = stopping_report(EVALS)["test"]
    # Step 0 gets examples 0-7 right, step 20 examples 0-17: 10 discordant, all for step 20.
    assert (test["first"], test["first_step"], test["second"], test["second_step"]) == (
        "full_loss",
        0,
        "answer_loss",
        20,
    )
    assert (test["n"], test["first_only"], test["second_only"]) == (N, 0, 10)
    assert test["p_value"] == pytest.approx(2 * 0.5**10)
    assert test["verdict"] == "significant at 5%"


def test_discordant_pairs_in_both_directions_are_counted_from_the_per_example_answers():
    # The same accuracy (10/20) at both steps, but different examples right: 6 vs 6 discordant, p = 1.
    evals = [
        _eval(0, 1.0, 2.0, 10, correct="1" * 10 + "0" * 10),
        _eval(5, 2.0, 1.0, 10, correct="1" * 4 + "0" * 6 + "1" * 6 + "0" * 4),
    ]
    test = stopping_report(evals)["test"]
    assert (test["first_only"], test["second_only"], test["p_value"]) == (6, 6, 1.0)


def test_the_sentence_and_table_say_what_each_curve_keeps():
    report = stopping_report(EVALS)
    text = stopping_sentences(report)
    assert text.startswith("Stopping on full-sequence loss keeps step 0: 40.0% [")
    assert "Stopping on answer loss keeps step 20: 90.0% [" in text
    assert "p = 0.002, significant at 5%" in text
    rows = {row["stop on"]: row for row in stopping_rows(report)}
    assert rows["full-sequence loss"]["kept step"] == 0 and rows["answer loss"]["kept step"] == 20
    assert rows["answer loss"]["answer accuracy there"].startswith("90.0% [")


def test_free_form_data_reports_steps_without_accuracy_or_test():
    evals = [
        Eval(step=s, epoch=0.0, metrics={"full_loss": f, "completion_loss": c}) for s, f, c in [(0, 2, 3), (4, 3, 1)]
    ]
    report = stopping_report(evals)
    assert report["test"] is None
    assert report["full_loss"]["step"] == 0 and report["completion_loss"]["step"] == 4
    assert report["completion_loss"]["answer_accuracy"] is None
    assert stopping_sentences(report) == (
        "Stopping on full-sequence loss keeps step 0 (2.0000). Stopping on completion loss keeps step 4 (1.0000)."
    )


def test_a_nan_evaluation_is_never_kept():
    evals = [_eval(0, math.nan, 1.0, 5), _eval(4, 2.0, math.nan, 6)]
    report = stopping_report(evals)
    assert report["full_loss"]["step"] == 4 and report["answer_loss"]["step"] == 0


def test_a_trained_run_records_per_example_answers_and_skips_generation_when_asked(tmp_path):
    from conftest import mc_records

    from plw_lab.core.data import to_examples
    from plw_lab.core.training import train

    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path),
            "train.max_steps": 2,
            "train.eval_interval": 1,
            "train.batch_size": 4,
            "data.val_size": 10,
            "eval.generated_accuracy": False,
            "eval.probe_texts": 0,
        }
    )
    result = train(cfg, examples=to_examples(mc_records(30), cfg.data), compare=False)
    evals = load_run(result.run_dir).evals
    assert [len(e.correct) for e in evals] == [10, 10, 10]
    assert all(e.correct.count("1") == round(e.metrics["answer_accuracy"] * 10) for e in evals)
    assert not any("answer_accuracy_generated" in e.metrics for e in evals)
    stopping = result.summary["stopping"]
    assert "answer_accuracy_generated" not in stopping and stopping["test"]["n"] == 10
