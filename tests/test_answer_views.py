"""Every view of an accuracy shows its interval; answer tokens stand apart in the token view."""

import io
import re
from types import SimpleNamespace

import pytest
from conftest import mc_records

from plw_lab.cli import print_comparison, print_event
from plw_lab.core import events as ev
from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import to_examples
from plw_lab.core.masks import encode
from plw_lab.core.metrics import best_of, metric, stopping_metric
from plw_lab.views import charts, text_views, tokens_view
from plw_lab.views.history import History


def _metrics(acc, right, n=48, **extra):
    from plw_lab.core.scores import wilson

    return {
        "completion_loss": 1.0,
        "answer_loss": 2.0 - acc,
        "format_loss": 0.1,
        "answer_accuracy": acc,
        "answer_accuracy_ci": list(wilson(right, n)),
        "majority_baseline": 0.27,
        "chance": 0.25,
        "candidate_mass": 0.3 + acc / 2,
        "predicted": {"A": 12, "B": 12, "C": 12, "D": 12},
    } | extra


def _history():
    from plw_lab.core.scores import wilson

    evals = [
        ev.Eval(
            step=0,
            epoch=0,
            metrics=_metrics(
                0.25,
                12,
                answer_accuracy_generated=0.5,
                answer_accuracy_generated_ci=list(wilson(24, 48)),
                unparseable=3,
            ),
        ),
        ev.Eval(step=4, epoch=0.5, metrics=_metrics(0.5, 24)),
        ev.Eval(step=8, epoch=1, metrics=_metrics(0.625, 30)),
    ]
    return History.from_events(evals)


def test_accuracy_figure_draws_intervals_baselines_and_generated_points():
    fig = charts.accuracy_figure(_history())
    traces = {t.name: t for t in fig.data}
    acc = traces["val answer accuracy"]
    # 30/48: Wilson 48.36%-74.79% around 62.5%
    assert acc.error_y.array[-1] == pytest.approx(0.74785 - 0.625, abs=1e-4)
    assert acc.error_y.arrayminus[-1] == pytest.approx(0.625 - 0.48363, abs=1e-4)
    assert "95% interval 48%\u201375%" in acc.text[-1]
    generated = traces["val generated-answer accuracy"]
    assert list(generated.x) == [0] and generated.mode == "markers" and generated.error_y.array[0] > 0
    assert list(traces["chance"].y) == [0.25] * 3 and "majority-class baseline" in traces
    assert "val candidate mass" in traces and "95% intervals" in fig.layout.title.text


def test_loss_figure_splits_answer_and_format_loss():
    names = [t.name for t in charts.loss_figure(_history()).data]
    assert "val answer loss" in names and "val format loss" in names and "val completion loss" in names


def test_history_replaces_an_evaluation_repeated_at_the_same_step():
    history = _history()
    history.add(ev.Eval(step=8, epoch=1, metrics=_metrics(0.625, 30, answer_accuracy_generated=0.6)))
    assert [e["step"] for e in history.evals] == [0, 4, 8]
    assert history.metric_series("answer_accuracy_generated") == ([0, 8], [0.5, 0.6])
    xs, lows, highs = history.interval_series("answer_accuracy")
    assert xs == [0, 4, 8] and lows[-1] == pytest.approx(0.48363, abs=1e-4)


def test_best_values_and_the_runs_table_carry_the_interval():
    evals = [ev.Eval(step=s, epoch=0, metrics=_metrics(a, r)) for s, a, r in ((0, 0.25, 12), (4, 0.625, 30))]
    best = best_of(evals)
    assert best["answer_accuracy"]["ci"][0] == pytest.approx(0.48363, abs=1e-4)
    assert best["answer_loss"] == {"value": 2.0 - 0.625, "step": 4, "epoch": 0}
    run = SimpleNamespace(
        name="r", config=LabConfig(), summary={"best": best, "steps": 4}, events=evals, evals=evals, status="finished"
    )
    row = text_views.runs_rows([run])[0]
    assert row["best accuracy @ step"] == "62.5% [48.4\u201374.8%] @ 4"
    assert row["best answer loss @ step"] == "1.3750 @ 4"


def test_comparison_rows_state_intervals_the_paired_verdict_and_format_vs_task():
    off, on = _metrics(0.25, 12), _metrics(0.625, 30)
    paired = {
        "answer_accuracy": {
            "n": 48,
            "first_only": 2,
            "second_only": 20,
            "p_value": 0.0001,
            "verdict": "significant at 5%",
        }
    }
    split = {
        "generated_gain": 0.5,
        "task_gain": 0.375,
        "format_gain": 0.125,
        "candidate_mass": [0.2, 0.9],
        "parse_rate": [0.5, 1.0],
        "text": "t",
    }
    rows = {r["metric"]: r for r in text_views.metrics_comparison_rows(on, off, paired=paired, split=split)}
    acc = rows["val answer accuracy"]
    assert acc["adapter on"] == "62.5% [48.4\u201374.8%]" and acc["change"] == "+37.5 pts"
    test = next(r for name, r in rows.items() if name.startswith("paired test of val answer accuracy"))
    assert test["change"] == "p = 0.0001: significant at 5%" and test["adapter on"] == "right only on: 20"
    assert rows["gain in generated accuracy: task vs format"]["change"] == "task +37.5 pts, format +12.5 pts"
    assert rows["chance"]["adapter off"] == "25.0%"


def test_cli_prints_accuracy_with_its_interval_and_the_verdict():
    out = io.StringIO()
    print_event(ev.Eval(step=8, epoch=1, metrics=_metrics(0.625, 30)), out)
    print_event(
        ev.Started(run_dir="r", config={}, n_train=1, n_val=48, total_steps=8, early_stopping_metric="answer_loss"), out
    )
    text = out.getvalue()
    assert (
        "answer_accuracy 62.5% [48.4\u201374.8%]" in text
        and "chance 25.0%" in text
        and "best adapter by answer_loss" in text
    )
    out = io.StringIO()
    comparison = {
        "off": {"metrics": _metrics(0.25, 12), "generations": []},
        "on": {"metrics": _metrics(0.625, 30), "generations": []},
        "paired": {
            "answer_accuracy": {
                "n": 48,
                "first_only": 2,
                "second_only": 20,
                "p_value": 0.0001,
                "verdict": "significant at 5%",
            }
        },
        "format_vs_task": {"text": "Generated accuracy 50% -> 100% (+50%): +38% is task and +12% is format."},
    }
    print_comparison(comparison, out)
    text = out.getvalue()
    # 12/48: centre (0.25 + 0.04002) / 1.08003 = 0.26853, half 1.96 * sqrt(0.0039063 + 0.0004168) / 1.08003 = 0.11932
    assert re.search(r"answer_accuracy\s+25\.0% \[14\.9\u201338\.8%\]\s+62\.5% \[48\.4\u201374\.8%\]", text), text
    assert "p = 0.0001: significant at 5%" in text and "is format" in text


def test_token_view_marks_answer_tokens_apart_from_the_end_of_turn(tokenizer):
    enc = encode(tokenizer, to_examples(mc_records(1), DataConfig())[0], 256)
    out = tokens_view.token_html(enc, 0.0)
    answers = [s for s in re.findall(r'<span class="plw-tok[^"]*"[^>]*>', out) if 'data-answer="1"' in s]
    assert len(answers) == 1 and "plw-answer" in answers[0] and "(answer)" in answers[0]
    assert "answer token (the scored candidate" in out
    n = len(enc)
    loss_view = tokens_view.token_loss_html(enc, [None] + [1.0] * (n - 1), [None] + [2.0] * (n - 1), "on")
    assert loss_view.count('data-answer="1"') == 1 and "answer loss: on <b>1.000</b>, off <b>2.000</b>" in loss_view
    free = encode(tokenizer, to_examples([{"prompt": "Hi", "completion": "Hello"}], DataConfig())[0], 64)
    assert "answer token" not in tokens_view.token_html(free, 0.0)


def test_auto_early_stopping_follows_the_data():
    assert stopping_metric("auto", has_answers=True) == "answer_loss"
    assert stopping_metric("auto", has_answers=False) == "completion_loss"
    assert stopping_metric("full_loss", has_answers=True) == "full_loss"
    assert LabConfig().train.early_stopping_metric == "auto" and LabConfig().train.eval_interval == 4
    assert metric("answer_loss").better(1.0, 1.5) and metric("auc").better(0.8, 0.7)


def test_notebook_live_curves_draw_the_accuracy_interval():
    from plw_lab.notebook.widgets import LiveCurves

    curves = LiveCurves("ci")
    for event in [ev.Started(run_dir="r", config={}, n_train=8, n_val=48, total_steps=8), *_history_events()]:
        curves(event)
    acc = next(t for t in curves.figures["accuracy"].data if t.name == "val answer accuracy")
    assert acc.error_y.array[-1] == pytest.approx(0.74785 - 0.625, abs=1e-4)


def _history_events():
    from plw_lab.core.scores import wilson

    return [
        ev.Eval(step=s, epoch=0, metrics=_metrics(a, r) | {"answer_accuracy_ci": list(wilson(r, 48))})
        for s, a, r in ((0, 0.25, 12), (8, 0.625, 30))
    ]
