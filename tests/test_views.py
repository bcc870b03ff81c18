"""The UI-toolkit-free views: token HTML, statistics, plotly figures, training history and run tables."""

import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from plw_lab.core import events as ev
from plw_lab.core import weights
from plw_lab.core.config import LabConfig, field_specs
from plw_lab.core.data import Example
from plw_lab.core.masks import Encoded
from plw_lab.core.stats import LengthStats, geometric_mean, label_counts, length_stats
from plw_lab.views import charts, text_views, tokens_view
from plw_lab.views.history import History


def _encoded(truncated: int = 0) -> Encoded:
    """A hand-made encoding: template and prompt tokens, then a two-token completion."""
    pieces = [
        ("<|im_start|>", 1, 1, 0),
        ("user", 4093, 1, 0),
        ("\n", 198, 1, 0),
        ("Is it <b>red</b>?", 500, 1, 0),
        ("<|im_end|>", 2, 1, 0),
        ("\n", 198, 1, 0),
        ("B", 50, 0, 1),
        ("<|im_end|>", 2, 0, 1),
    ]
    text, offsets = "", []
    for piece, *_ in pieces:
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    example = Example(
        [{"role": "user", "content": "Is it <b>red</b>?"}, {"role": "assistant", "content": "B"}],
        choices=("A", "B"),
        answer_index=1,
    )
    enc = Encoded(
        input_ids=[p[1] for p in pieces],
        prompt_mask=[p[2] for p in pieces],
        completion_mask=[p[3] for p in pieces],
        offsets=offsets,
        text=text,
        example=example,
        truncated=truncated,
    )
    return enc


def _spans(html_text: str) -> list[str]:
    return re.findall(r'<span class="plw-tok[^"]*"[^>]*>', html_text)


def _attr(span: str, name: str) -> str:
    return re.search(rf'{name}="([^"]*)"', span).group(1)


# -- token view --------------------------------------------------------------------------------


def test_token_html_has_one_span_per_token_with_title_and_weight():
    enc = _encoded()
    out = tokens_view.token_html(enc, 0.1)
    spans = _spans(out)
    assert len(spans) == len(enc.input_ids)
    first = spans[0]
    assert (
        "id 1" in _attr(first, "title") and "prompt" in _attr(first, "title") and "weight 0 " in _attr(first, "title")
    )
    assert "weight 0.1" in _attr(spans[1], "title")  # the first token is never a target; the next prompt tokens are
    completion = spans[6]
    assert _attr(completion, "data-label") == "completion"
    assert _attr(completion, "data-weight") == "1"
    assert "weight 1" in _attr(completion, "title")
    # the legend explains the colours, and the summary gives the completion's share of the loss weight
    assert "plw-legend" in out and "completion token" in out
    assert "carries" in out


def test_token_html_escapes_text_and_marks_newlines_and_special_tokens():
    out = tokens_view.token_html(_encoded(), 0.5)
    assert "<b>red</b>" not in out  # user text is escaped, never injected
    assert "&lt;b&gt;red&lt;/b&gt;" in out
    assert "\u21b5" in out  # newline tokens are visible
    specials = [s for s in _spans(out) if "plw-special" in s]
    assert len(specials) == 3  # <|im_start|> and both <|im_end|>


def test_prompt_colours_follow_plw_while_completion_stays_full():
    enc = _encoded()
    styles = {}
    for plw in (0.0, 0.01, 0.5, 1.0):
        spans = _spans(tokens_view.token_html(enc, plw))
        styles[plw] = (_attr(spans[1], "style"), _attr(spans[6], "style"), _attr(spans[1], "data-weight"))
    prompt_styles = [styles[p][0] for p in (0.0, 0.01, 0.5, 1.0)]
    assert len(set(prompt_styles)) == 4  # every PLW gives a different prompt colour
    assert len({styles[p][1] for p in styles}) == 1  # completion colour never changes
    assert styles[0.0][2] == "0" and styles[1.0][2] == "1"
    # at PLW 0 the prompt is transparent and greyed out; opacity grows with the weight
    assert "0.000)" in styles[0.0][0]
    alphas = [float(re.search(r"background-color:rgba\([^)]*,([0-9.]+)\)", s).group(1)) for s in prompt_styles]
    assert alphas == sorted(alphas) and alphas[0] == 0.0 and alphas[-1] == pytest.approx(tokens_view.MAX_ALPHA)
    assert "plw-zero" in _spans(tokens_view.token_html(enc, 0.0))[1]


def test_weight_alpha_is_square_root_scaled_and_clamped():
    assert tokens_view.weight_alpha(0) == 0
    assert tokens_view.weight_alpha(1) == pytest.approx(tokens_view.MAX_ALPHA)
    assert tokens_view.weight_alpha(0.01) == pytest.approx(tokens_view.MAX_ALPHA * 0.1, abs=1e-3)
    assert tokens_view.weight_alpha(2) == tokens_view.weight_alpha(1)
    assert weights.token_weight_values([1, 1, 0], [0, 0, 1], 0.25) == [
        0,
        0.25,
        1,
    ]  # the first token is never a target


def test_completion_weight_share():
    assert tokens_view.completion_weight_share(100, 10, 0.0) == 1.0
    assert tokens_view.completion_weight_share(100, 10, 1.0) == pytest.approx(10 / 110)
    assert math.isnan(tokens_view.completion_weight_share(0, 0, 0.5))


def test_token_html_marks_truncated_prompt():
    enc = _encoded()
    # drop two prompt tokens from the middle as `_truncate_prompt` does
    for name in ("input_ids", "prompt_mask", "completion_mask", "offsets"):
        del getattr(enc, name)[2:4]
    enc.truncated = 2
    out = tokens_view.token_html(enc, 0.0)
    assert "2 prompt tokens cut" in out
    assert len(_spans(out)) == len(enc.input_ids)


def test_token_loss_html_modes():
    enc = _encoded()
    on = [None, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.5]
    off = [None, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 0.5]
    diff = tokens_view.token_loss_html(enc, on, off, "diff")
    spans = _spans(diff)
    assert len(spans) == len(enc.input_ids)
    assert "rgba(22,163,74" in _attr(spans[6], "style")  # lower loss with the adapter: green
    assert "loss on 0.200" in _attr(spans[6], "title") and "off 3.000" in _attr(spans[6], "title")
    assert "\u0394 -2.800" in _attr(spans[6], "title")
    assert "transparent" in _attr(spans[0], "style")  # the first token has no prediction
    on_view = tokens_view.token_loss_html(enc, on, off, "on")
    off_view = tokens_view.token_loss_html(enc, on, off, "off")
    assert _attr(_spans(on_view)[6], "style") != _attr(_spans(off_view)[6], "style")
    assert "plw-c-under" in _spans(on_view)[6] and "plw-p-under" in _spans(on_view)[1]
    assert 'data-mode="loss-off"' in off_view
    with pytest.raises(ValueError):
        tokens_view.token_loss_html(enc, on, off, "sideways")


# -- statistics -------------------------------------------------------------------------------


def test_length_stats_and_geometric_mean():
    encs = [SimpleNamespace(n_prompt=p, n_completion=c) for p, c in ((10, 1), (100, 10), (1000, 1000))]
    stats = length_stats(encs)
    assert stats.rg == [0.1, 0.1, 1.0]
    summary = stats.summary()
    assert summary["rg_mean"] == pytest.approx(0.4)
    assert summary["rg_geomean"] == pytest.approx((0.1 * 0.1 * 1.0) ** (1 / 3))
    assert summary["prompt_tokens"]["max"] == 1000
    assert geometric_mean([2, 8]) == pytest.approx(4)
    assert math.isnan(geometric_mean([]))
    text = text_views.stats_markdown(stats, 0.0)
    assert "3 examples" in text and "geometric mean" in text and "100.0%" in text
    assert "carry" in text_views.stats_markdown(stats, 1.0)


def test_rg_histogram_uses_a_log_axis_and_marks_means():
    rg = [0.01, 0.02, 0.05, 0.1, 0.1, 0.5, 1.0, 3.0]
    fig = charts.rg_histogram(rg, bins=10)
    assert fig.layout.xaxis.type == "log"
    bars = [t for t in fig.data if t.type == "bar"]
    lines = [t for t in fig.data if t.type == "scatter"]
    assert len(bars) == 1 and sum(bars[0].y) == len(rg)
    assert [t.name.split(" ")[0] for t in lines] == ["mean", "geometric"]
    assert lines[0].x[0] == pytest.approx(sum(rg) / len(rg))
    assert lines[1].x[0] == pytest.approx(geometric_mean(rg))
    # bins are equal in log space: each bar spans [lo, hi] with hi/lo constant
    ratios = [(c + w / 2) / (c - w / 2) for c, w in zip(bars[0].x, bars[0].width)]
    assert max(ratios) == pytest.approx(min(ratios))
    empty = charts.rg_histogram([])
    assert not empty.data and empty.layout.annotations


def test_rg_histogram_with_a_single_value():
    fig = charts.rg_histogram([0.5, 0.5, 0.5])
    assert sum(next(t for t in fig.data if t.type == "bar").y) == 3


def test_length_and_label_figures():
    stats = LengthStats([10, 20, 30], [1, 2, 3])
    fig = charts.length_histogram(stats)
    assert [t.name for t in fig.data] == ["prompt tokens", "completion tokens"]
    examples = [Example([], choices=("A", "B"), answer_index=i % 2) for i in range(5)]
    counts = label_counts(examples)
    assert counts == {"A": 3, "B": 2}
    labels = [Example([], choices=("A", "B"), answer_index=0, meta={"label": "positive"})]
    assert label_counts(labels) == {"positive": 1}
    balance = charts.label_balance_figure(counts)
    assert list(balance.data[0].x) == ["A", "B"] and "60%" in balance.layout.title.text
    assert charts.label_balance_figure({}).layout.annotations


def test_preview_rows():
    enc = _encoded()
    rows = text_views.preview_rows([enc.example], {0: enc})
    assert rows[0]["completion"] == "B" and rows[0]["answer"] == "B"
    assert rows[0]["prompt tokens"] == 6 and rows[0]["completion tokens"] == 2
    assert rows[0]["Rg"] == pytest.approx(2 / 6, abs=1e-4)


# -- training charts ----------------------------------------------------------------------------


def _events(with_accuracy=True):
    out = [ev.Started(run_dir="runs/x", config={}, n_train=10, n_val=5, total_steps=4)]
    out.append(ev.Advice(message="only 10 training examples"))
    losses = {0: (2.0, 3.0, 0.2), 2: (1.9, 1.0, 0.6), 4: (2.1, 1.5, 0.4)}
    for step in range(1, 5):
        out.append(
            ev.Step(
                step=step,
                epoch=step / 4,
                learning_rate=1e-3,
                train_loss=3.0 - step * 0.1,
                grad_norm=1.0,
                tokens_per_second=100.0,
                tokens_seen=100 * step,
                elapsed=float(step),
                total_steps=4,
            )
        )
    for step, (prompt, completion, acc) in sorted(losses.items()):
        metrics = {"prompt_loss": prompt, "completion_loss": completion, "full_loss": (prompt + completion) / 2}
        if with_accuracy:
            metrics.update(
                {
                    "answer_accuracy": acc,
                    "majority_baseline": 0.5,
                    "predicted": {"A": 3, "B": 2},
                    "answers": {"A": 2, "B": 3},
                }
            )
        out.append(ev.Eval(step=step, epoch=step / 4, metrics=metrics, is_best=step == 2))
        if step:
            out.append(ev.Advice(message="predictions collapsed", step=step))
    return out


def test_history_and_loss_figure_marks_the_best_step():
    history = History.from_events(_events())
    assert history.steps == [1, 2, 3, 4] and history.total_steps == 4 and history.status == "running"
    assert history.best("completion_loss") == (2, 1.0)
    assert history.best("answer_accuracy") == (2, 0.6)
    assert history.best("prompt_loss") == (2, 1.9)
    fig = charts.loss_figure(history)
    names = [t.name for t in fig.data]
    assert names[0].startswith("train loss")
    for label in ("val prompt loss", "val completion loss", "val full-sequence loss"):
        assert label in names
    stars = [t for t in fig.data if t.mode == "markers"]
    assert {t.name for t in stars} == {
        "best val prompt loss",
        "best val completion loss",
        "best val full-sequence loss",
    }
    best_completion = next(t for t in stars if t.name == "best val completion loss")
    assert list(best_completion.x) == [2] and list(best_completion.y) == [1.0]
    # the frame spans the whole run so curves grow into it
    assert fig.layout.xaxis.range[1] >= 4


def test_history_dedupes_repeated_advice():
    history = History.from_events(_events())
    assert history.advice == ["only 10 training examples", "steps 2, 4: predictions collapsed"]


def test_accuracy_figure_has_baseline_and_best_mark():
    history = History.from_events(_events())
    fig = charts.accuracy_figure(history)
    names = [t.name for t in fig.data]
    assert names == ["val answer accuracy", "majority-class baseline", "best val answer accuracy"]
    assert fig.layout.yaxis.tickformat == ".0%"
    free_form = History.from_events(_events(with_accuracy=False))
    assert not charts.accuracy_figure(free_form).data
    assert not charts.loss_figure(History()).data


def test_predicted_distribution_figure():
    fig = charts.predicted_distribution_figure(History.from_events(_events()))
    assert [t.name for t in fig.data] == ["predicted (step 4)", "true answers"]
    assert list(fig.data[0].y) == [3, 2]


def test_progress_html_shows_step_eta_and_speed():
    history = History.from_events(_events()[:4])  # started, advice, steps 1 and 2
    out = text_views.progress_html(history)
    assert 'data-status="running"' in out and 'data-step="2"' in out
    assert "ETA" in out and "tokens/s" in out and "2</b> / 4" in out
    finished = History.from_events(_events() + [ev.Stopped(step=4, reason="stopped by the user")])
    out = text_views.progress_html(finished)
    assert 'data-status="stopped"' in out and "stopped by the user" in out and "ETA" not in out
    failed = History.from_events([ev.Failed(step=0, error="DataError: <bad>")])
    assert "DataError: &lt;bad&gt;" in text_views.progress_html(failed)
    assert text_views.format_duration(75) == "1m 15s" and text_views.format_duration(None) == "\u2013"


# -- compare ----------------------------------------------------------------------------------


def test_logprob_and_answer_distribution_figures():
    fig = charts.logprob_figure(["A", "B"], {"A": -0.1, "B": -3.0}, {"A": -1.0, "B": -1.2}, answer="A")
    assert [t.name for t in fig.data] == ["adapter off (base)", "adapter on"]
    assert list(fig.data[1].y) == [-0.1, -3.0]
    assert list(fig.data[0].x)[0] == "A \u2713"
    assert not charts.logprob_figure([], None, None).data
    dist = charts.answer_distribution_figure(
        {"adapter off": {"A": 5}, "adapter on": {"A": 2, "B": 3}}, {"A": 2, "B": 3}
    )
    assert [t.name for t in dist.data] == ["adapter off", "adapter on", "true answers"]
    assert list(dist.data[0].y) == [5, 0]


def test_metrics_comparison_rows_and_generations():
    rows = text_views.metrics_comparison_rows(
        {"completion_loss": 1.0, "answer_accuracy": 0.8},
        {"completion_loss": 2.0, "answer_accuracy": 0.5},
        probe_on=12.0,
        probe_off=10.0,
    )
    assert rows[0] == {
        "metric": "val completion loss",
        "adapter off": "2.0000",
        "adapter on": "1.0000",
        "change": "-1.0000",
    }
    assert rows[-1]["metric"].startswith("forgetting probe") and rows[-1]["change"] == "+2.0000"
    out = text_views.generations_html([{"prompt": "p", "reference": "A", "off": "<script>x</script>", "on": "\n\n\n"}])
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "no visible text" in out
    assert text_views.show_generation("").startswith("(empty")
    assert text_views.show_generation("a\n\n\n\nb") == "a\n\nb"


# -- runs ------------------------------------------------------------------------------------


def _run(name, plw, acc, loss, status="finished"):
    cfg = LabConfig().override({"train.prompt_loss_weight": plw, "data.source": "/tmp/upload/abc/my.jsonl"})
    evals = [
        ev.Eval(step=0, epoch=0, metrics={"completion_loss": loss + 1, "answer_accuracy": acc / 2}),
        ev.Eval(step=5, epoch=1, metrics={"completion_loss": loss, "answer_accuracy": acc}),
    ]
    summary = {
        "status": status,
        "steps": 5,
        "elapsed_seconds": 65,
        "best": {
            "completion_loss": {"value": loss, "step": 5, "epoch": 1},
            "answer_accuracy": {"value": acc, "step": 5, "epoch": 1},
        },
    }
    return SimpleNamespace(name=name, config=cfg, summary=summary, events=evals, evals=evals, status=status)


def test_runs_rows_have_plw_and_best_metrics_with_steps():
    rows = text_views.runs_rows([_run("a", 0.1, 0.75, 1.25)])
    row = rows[0]
    assert row["PLW"] == 0.1 and row["status"] == "finished" and row["data"] == "my.jsonl"
    assert row["best completion loss @ step"] == "1.2500 @ 5"
    assert row["best accuracy @ step"] == "75.0% @ 5"
    assert row["time"] == "1m 05s"
    # without a summary (an interrupted run) the best values come from the evaluations
    run = _run("b", 0.0, 0.5, 2.0)
    run.summary = {}
    assert text_views.runs_rows([run])[0]["best completion loss @ step"] == "2.0000 @ 5"


def test_overlay_figure_one_curve_per_run():
    runs = [_run("a", 0.0, 0.7, 1.0), _run("b", 0.1, 0.6, 1.1)]
    fig = charts.overlay_figure(runs, "completion_loss")
    assert [t.name for t in fig.data] == ["PLW 0 \u00b7 a", "PLW 0.1 \u00b7 b"]
    assert fig.layout.yaxis.title.text == "val completion loss"
    assert charts.overlay_figure(runs, "answer_accuracy").layout.yaxis.tickformat == ".0%"
    assert not charts.overlay_figure([]).data


def test_plw_sweep_figure_places_zero_on_the_log_axis():
    runs = [_run("a", 0.0, 0.7, 1.0), _run("b", 0.01, 0.8, 0.9), _run("c", 1.0, 0.5, 1.4)]
    fig = charts.plw_sweep_figure(runs)
    assert fig.layout.xaxis.type == "log"
    acc, loss = fig.data
    assert acc.name == "best answer accuracy" and loss.name == "best completion loss"
    zero = charts.plw_zero_position([0.0, 0.01, 1.0])
    assert zero == pytest.approx(0.001)
    assert list(acc.x) == [zero, 0.01, 1.0] and list(acc.y) == [0.7, 0.8, 0.5]
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
    assert ticks[zero] == "0" and ticks[1.0] == "1"
    assert loss.yaxis == "y2"
    assert charts.plw_zero_position([]) == 1e-3
    assert charts.plw_zero_position([0.0001]) == pytest.approx(1e-5)
    assert not charts.plw_sweep_figure([]).data


def test_settings_help_lists_every_field():
    sections = {s: field_specs(s) for s in ("model", "data", "lora", "train", "eval")}
    text = text_views.settings_help_markdown(sections)
    for section, specs in sections.items():
        for spec in specs:
            assert f"`{section}.{spec['name']}`" in text


def test_views_do_not_import_a_ui_toolkit():
    code = (
        "import sys, plw_lab.views.charts, plw_lab.views.history, plw_lab.views.text_views, plw_lab.views.tokens_view; "
        "bad = [m for m in ('gradio', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_app_modules_import_gradio():
    lab_dir = Path(__file__).resolve().parents[1] / "plw_lab"
    importers = [
        p.relative_to(lab_dir).parts[0]
        for p in sorted(lab_dir.rglob("*.py"))
        if re.search(r"^\s*(import|from)\s+gradio", p.read_text(), re.M)
    ]
    assert importers and set(importers) == {"app"}, importers


def _remedy_run(right: int, n: int, probe_on: float, steps: int = 12):
    """A finished run as notebook 03 reads it: `right` of `n` validation answers right (the first ones)."""
    from types import SimpleNamespace

    from plw_lab.core.scores import wilson

    examples = [{"index": i, "answer": "A", "predicted": "A" if i < right else "B"} for i in range(n)]
    on = {
        "answer_accuracy": right / n,
        "answer_accuracy_ci": list(wilson(right, n)),
        "predicted": {"A": right, "B": n - right},
        "answer_entropy": 1.0,
        "kl_to_base": 0.5,
        "examples": examples,
    }
    comparison = {"on": {"metrics": on, "probe_perplexity": probe_on}, "off": {"metrics": {}, "probe_perplexity": 40.0}}
    return SimpleNamespace(summary={"steps": steps, "adapter_step": steps}, comparison=comparison)


def test_remedy_reports_test_paired_answers_and_name_a_wrecked_probe_as_a_factor():
    from plw_lab.views.text_views import remedy_verdicts, run_report

    hard = _remedy_run(right=10, n=40, probe_on=40.0 * 3_712_006)  # perplexity a few million times the base's
    cure = _remedy_run(right=30, n=40, probe_on=44.0)  # 20 more right, none fewer: McNemar p = 2 x 0.5^20
    row = run_report(cure, reference=hard)
    assert row["accuracy on [95% CI]"] == "75% [60%\u201386%]"
    assert row["probe ppl"] == "44 (+10%)" and run_report(hard)["probe ppl"] == "1.485e+08 (\u00d73.71e+06)"
    assert row["accuracy vs reference"].startswith("+50 pts, p=0.00 (significant")
    (line,) = remedy_verdicts({"too hard": hard, "cure": cure}, reference="too hard")
    assert "0 examples lost, 20 gained" in line and "a real difference" in line and "+10% vs \u00d73.71e+06" in line
    same = _remedy_run(right=11, n=40, probe_on=40.0)
    (line,) = remedy_verdicts({"too hard": hard, "same": same}, reference="too hard")
    assert "not beyond noise" in line and "probe perplexity \u00b10% vs" in line
