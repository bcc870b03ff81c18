"""Plotly figures: dataset statistics, training curves, adapter on/off comparisons and runs against PLW.

Every figure takes plain data (statistics, a `History`, comparison dicts, runs) and returns a
`plotly.graph_objects.Figure` in the lab's colours, so the Gradio app and the notebooks draw the
same charts. `METRIC_COLORS` colours and `plw_lab.core.metrics.label` names each metric wherever it is shown.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go

from plw_lab.core.metrics import METRICS
from plw_lab.core.metrics import label as metric_label
from plw_lab.core.runs import run_best, run_plw
from plw_lab.core.stats import LengthStats, geometric_mean
from plw_lab.views.history import History
from plw_lab.views.text_views import cell_text

METRIC_COLORS = {name: m.colour for name, m in METRICS.items()}
PLOT_TEMPLATE = "plotly_white"
#: Colours of traces that stand for one thing each (a run, a sweep's series), in order.
PALETTE = (
    "#2563eb",
    "#ea580c",
    "#16a34a",
    "#9333ea",
    "#dc2626",
    "#0891b2",
    "#a16207",
    "#db2777",
    "#4f46e5",
    "#65a30d",
)


def empty_figure(message: str = "No data yet", height: int = 300) -> go.Figure:
    """A blank figure with a message in the middle, for a chart that has nothing to draw yet."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"color": "#6b7280"}
    )
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        xaxis={"visible": False},
        yaxis={"visible": False},
        margin={"l": 20, "r": 20, "t": 30, "b": 20},
    )
    return fig


# -- dataset statistics -----------------------------------------------------------------------


def rg_histogram(rg: Sequence[float], bins: int = 30, height: int = 320) -> go.Figure:
    """Histogram of the generation ratio on a log x axis, with the mean and geometric mean marked.

    Bins are equal in log space; each bar spans its bin exactly, so the bars tile the log axis.
    """
    values = [v for v in rg if v > 0 and math.isfinite(v)]
    if not values:
        return empty_figure("No examples with both prompt and completion tokens", height)
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    bins = max(1, min(bins, len(set(values)) * 2))
    edges = [10 ** (lo + (hi - lo) * k / bins) for k in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        k = min(int((math.log10(v) - lo) / (hi - lo) * bins), bins - 1)
        counts[k] += 1
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=centers,
            y=counts,
            width=widths,
            name="examples",
            marker={"color": "rgba(234,88,12,0.75)", "line": {"color": "rgba(234,88,12,1)", "width": 1}},
            customdata=list(zip(edges, edges[1:])),
            hovertemplate=(
                "R<sub>g</sub> %{customdata[0]:.3g} \u2013 %{customdata[1]:.3g}<br>%{y} examples<extra></extra>"
            ),
        )
    )
    mean = sum(values) / len(values)
    gmean = geometric_mean(values)
    top = max(counts)
    for value, label, dash, colour in ((mean, "mean", "dash", "#1d4ed8"), (gmean, "geometric mean", "dot", "#7c3aed")):
        fig.add_trace(
            go.Scatter(
                x=[value, value],
                y=[0, top * 1.08],
                mode="lines",
                name=f"{label} {value:.3g}",
                line={"color": colour, "dash": dash, "width": 2},
                hovertemplate=f"{label}: {value:.4g}<extra></extra>",
            )
        )
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": "Generation ratio R<sub>g</sub> = completion / prompt tokens", "font": {"size": 14}},
        xaxis={"type": "log", "title": "R<sub>g</sub> (log scale)"},
        yaxis={"title": "examples"},
        bargap=0,
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


def length_histogram(stats: LengthStats, height: int = 320, max_length: int | None = None) -> go.Figure:
    """Overlaid histograms of prompt and completion lengths as written (before any cut), with the
    `max_length` line and how many examples it cuts."""
    if not stats.n:
        return empty_figure("No examples", height)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=stats.prompt, name="prompt tokens", marker_color="rgba(37,99,235,0.6)", nbinsx=30))
    fig.add_trace(
        go.Histogram(x=stats.completion, name="completion tokens", marker_color="rgba(234,88,12,0.7)", nbinsx=30)
    )
    lengths = list(stats.prompt) + list(stats.completion)
    low, high = min(lengths), max(lengths)
    pad = max((high - low) * 0.04, 2.0)  # a completion of always 2 tokens is a bar, not a line on the axis
    title = "Token lengths as written"
    if max_length:
        cut = sum(1 for c in stats.cut if c)
        title += f" \u00b7 max_length {max_length} cuts {cut} of {stats.n} ({sum(stats.cut):,} tokens)"
        # An example's whole length is prompt + completion; the line sits at the prompt length that fits
        # beside the median completion, so the bars right of it are the prompts that get cut.
        line = max_length - sorted(stats.completion)[stats.n // 2]
        fig.add_vline(
            x=line,
            line={"color": "#dc2626", "dash": "dash", "width": 2},
            annotation_text=f"max_length {max_length}",
            annotation_position="top",
        )
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="overlay",
        title={"text": title, "font": {"size": 14}},
        xaxis={"title": "tokens", "range": [max(low - pad, 0) - 1, high + pad]},
        yaxis={"title": "examples"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


def label_balance_figure(
    counts: dict[str, int], height: int = 320, after: dict[str, int] | None = None, after_label: str = "after balancing"
) -> go.Figure:
    """The right answers' counts; with `after`, the counts a balancing setting leaves beside them."""
    if not counts:
        return empty_figure("Free-form completions: no answer labels to balance", height)
    total = sum(counts.values())
    names = list(counts)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[counts[k] for k in names],
            text=[f"{counts[k] / total:.0%}" for k in names],
            textposition="outside",
            marker_color="rgba(22,163,74,0.75)",
            name="answers" if after is None else "before",
        )
    )
    title = f"Label balance (majority class {max(counts.values()) / total:.0%})"
    top = max(counts.values())
    if after is not None:
        after_total = sum(after.values()) or 1
        fig.add_bar(
            x=names,
            y=[after.get(k, 0) for k in names],
            name=after_label,
            textposition="outside",
            text=[f"{after.get(k, 0) / after_total:.0%}" for k in names],
            marker_color="rgba(37,99,235,0.7)",
        )
        title += f"; {after_label}: majority {max(after.values()) / after_total:.0%}"
        top = max(top, max(after.values()))
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="group",
        title={"text": title, "font": {"size": 14}},
        xaxis={"title": "right answer", "type": "category"},
        yaxis={"title": "examples", "range": [0, top * 1.18]},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


# -- training ---------------------------------------------------------------------------------


def _best_marker(fig: go.Figure, history: History, name: str) -> None:
    best = history.best(name)
    if best is None:
        return
    step, value = best
    fig.add_trace(
        go.Scatter(
            x=[step],
            y=[value],
            mode="markers",
            marker={
                "symbol": "star",
                "size": 15,
                "color": METRIC_COLORS.get(name, "#111"),
                "line": {"color": "#111", "width": 1},
            },
            name=f"best {metric_label(name)}",
            legendgroup=name,
            showlegend=False,
            hovertemplate=f"best {metric_label(name)}: {value:.4g} at step {step}<extra></extra>",
        )
    )


def _metric_trace(
    history: History,
    name: str,
    mode: str = "lines+markers",
    dash: str = "solid",
    width: float = 2,
    marker: dict | None = None,
    **extra,
) -> go.Scatter | None:
    """One validation metric's curve in its registry colour and format, with its 95% error bars if it has an
    interval."""
    xs, ys = history.metric_series(name)
    if not xs:
        return None
    m = METRICS[name]
    share = m.unit == "share"
    return go.Scatter(
        x=xs,
        y=ys,
        mode=mode,
        name=m.label,
        line={"color": m.colour, "width": width, "dash": dash},
        marker=marker or {"size": 6},
        error_y=error_bars(history, name, xs, ys),
        text=_interval_text(history, name, xs),
        hovertemplate=f"step %{{x}}<br>{m.label} %{{y:{'.1%' if share else '.4f'}}}<br>%{{text}}<extra></extra>",
        **extra,
    )


def loss_figure(history: History, height: int = 340) -> go.Figure:
    """Train loss per step and validation prompt, completion and full-sequence loss, with best marks."""
    if not history.steps and not history.evals:
        return empty_figure("Losses appear here as training runs", height)
    fig = go.Figure()
    if history.steps:
        fig.add_trace(
            go.Scatter(
                x=history.steps,
                y=history.train_loss,
                mode="lines",
                name="train loss (weighted)",
                line={"color": METRIC_COLORS["train_loss"], "width": 1.5},
                hovertemplate="step %{x}<br>train loss %{y:.4f}<extra></extra>",
            )
        )
    for name in ("prompt_loss", "completion_loss", "answer_loss", "format_loss", "full_loss"):
        trace = _metric_trace(
            history, name, dash={"full_loss": "dot", "format_loss": "dash"}.get(name, "solid"), legendgroup=name
        )
        if trace is None:
            continue
        fig.add_trace(trace)
        _best_marker(fig, history, name)
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": "Loss (\u2605 = best value of each validation loss)", "font": {"size": 14}},
        xaxis={"title": "optimiser step", "range": _step_range(history)},
        yaxis={"title": "cross-entropy (nats)"},
        legend={"orientation": "h", "y": -0.22},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
        uirevision="loss",
    )
    return fig


def _step_range(history: History) -> list[float] | None:
    """The steps seen so far, padded so the markers at either end are not cut in half."""
    end = max(max(history.steps or [0]), max([e["step"] for e in history.evals] or [0]))
    if not end:
        return None
    pad = max(end * 0.03, 0.3)
    return [-pad, end + pad]


def error_bars(history: History, name: str, xs: list[int], ys: list[float]) -> dict | None:
    """Plotly `error_y` of metric `name`'s 95% interval at the steps `xs` (None without intervals)."""
    ix, lows, highs = history.interval_series(name)
    bounds = dict(zip(ix, zip(lows, highs)))
    if not bounds:
        return None
    return {
        "type": "data",
        "array": [bounds[x][1] - y if x in bounds else 0 for x, y in zip(xs, ys)],
        "arrayminus": [y - bounds[x][0] if x in bounds else 0 for x, y in zip(xs, ys)],
        "thickness": 1.2,
        "width": 3,
    }


def _interval_text(history: History, name: str, xs: list[int]) -> list[str]:
    ix, lows, highs = history.interval_series(name)
    bounds = dict(zip(ix, zip(lows, highs)))
    return [f"95% interval {bounds[x][0]:.0%}\u2013{bounds[x][1]:.0%}" if x in bounds else "" for x in xs]


#: Accuracy-like curves of the accuracy figure: answer accuracy first, then what exists for the data.
ACCURACY_CURVES = ("answer_accuracy", "answer_accuracy_generated", "balanced_accuracy", "auc", "candidate_mass")


def accuracy_figure(history: History, height: int = 340) -> go.Figure:
    """Validation answer accuracy with its 95% (Wilson) error bars, beside the majority baseline and chance.

    Also drawn where the data has them: generated-answer accuracy (first and last evaluation),
    balanced accuracy and ROC AUC (classification), and candidate mass (answer format).
    """
    xs, ys = history.metric_series("answer_accuracy")
    if not xs:
        message = (
            "Answer accuracy appears at the first evaluation"
            if not history.evals
            else "No answer accuracy: this data has free-form completions"
        )
        return empty_figure(message, height)
    fig = go.Figure()
    for name in ACCURACY_CURVES:
        sparse = name == "answer_accuracy_generated"  # measured at the first and last evaluation only
        trace = _metric_trace(
            history,
            name,
            mode="markers" if sparse else "lines+markers",
            dash="dot" if name in ("candidate_mass", "auc") else "solid",
            width=2 if name == "answer_accuracy" else 1.5,
            marker={"size": 10 if sparse else 6, "symbol": "diamond" if sparse else "circle"},
        )
        if trace is not None:
            fig.add_trace(trace)
    for name, dash in (("majority_baseline", "dash"), ("chance", "dot")):
        trace = _metric_trace(history, name, mode="lines", dash=dash)
        if trace is not None:
            fig.add_trace(trace)
    _best_marker(fig, history, "answer_accuracy")
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": "Validation answer accuracy, 95% intervals (\u2605 = best)", "font": {"size": 14}},
        xaxis={"title": "optimiser step", "range": _step_range(history)},
        yaxis={"title": "accuracy", "tickformat": ".0%", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.22},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
        uirevision="accuracy",
    )
    return fig


def predicted_distribution_figure(history: History, height: int = 300) -> go.Figure:
    """Predicted answers at the latest evaluation against the true answers (collapse shows here)."""
    if not history.evals or not history.evals[-1]["metrics"].get("predicted"):
        return empty_figure("Predicted-answer distribution appears at the first evaluation", height)
    last = history.evals[-1]
    return answer_distribution_figure(
        {f"predicted (step {last['step']})": last["metrics"]["predicted"]}, last["metrics"].get("answers"), height
    )


def answer_distribution_figure(predicted: dict[str, dict], truth: dict | None = None, height: int = 300) -> go.Figure:
    """Grouped bars: for each label in `predicted` (e.g. adapter on/off), how often each answer is predicted."""
    fig = go.Figure()
    palette = ["#ea580c", "#2563eb", "#7c3aed", "#0891b2"]
    named = {"adapter off": "#2563eb", "adapter on": "#ea580c"}  # the same colours as every on/off view
    choices: list[str] = []
    for counts in list(predicted.values()) + ([truth] if truth else []):
        for k in counts or {}:
            if k not in choices:
                choices.append(k)
    for colour, (label, counts) in zip(palette, predicted.items()):
        colour = next((c for prefix, c in named.items() if label.startswith(prefix)), colour)
        fig.add_trace(go.Bar(x=choices, y=[(counts or {}).get(c, 0) for c in choices], name=label, marker_color=colour))
    if truth:
        fig.add_trace(
            go.Bar(x=choices, y=[truth.get(c, 0) for c in choices], name="true answers", marker_color="#94a3b8")
        )
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="group",
        title={"text": "Distribution of predicted answers", "font": {"size": 14}},
        # no axis title: the answer letters say it, and a title there sat under the legend
        xaxis={"type": "category"},
        yaxis={"title": "validation examples"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


# -- compare ----------------------------------------------------------------------------------


def logprob_figure(
    choices: Sequence[str], on: dict | None, off: dict | None, answer: str | None = None, height: int = 300
) -> go.Figure:
    """Log-probability of each candidate answer with the adapter on and off; the right answer is marked."""
    if not choices:
        return empty_figure("No candidate answers: free-form data", height)
    fig = go.Figure()
    labels = [f"{c} \u2713" if c == answer else c for c in choices]
    if off is not None:
        fig.add_trace(
            go.Bar(x=labels, y=[off.get(c) for c in choices], name="adapter off (base)", marker_color="#2563eb")
        )
    if on is not None:
        fig.add_trace(go.Bar(x=labels, y=[on.get(c) for c in choices], name="adapter on", marker_color="#ea580c"))
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="group",
        title={
            "text": "Answer log-probabilities" + (f" (right answer {answer} \u2713)" if answer else ""),
            "font": {"size": 14},
        },
        xaxis={"title": "candidate answer", "type": "category"},
        yaxis={"title": "log p(answer)"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
    )
    return fig


# -- runs -------------------------------------------------------------------------------------


def overlay_figure(runs: Sequence, metric: str = "completion_loss", height: int = 380) -> go.Figure:
    """One curve per run for a validation metric (or the train loss), labelled with the run's PLW."""
    if not runs:
        return empty_figure("Choose runs to overlay", height)
    fig = go.Figure()
    for run in runs:
        history = History.from_events(getattr(run, "events", []))
        if metric == "train_loss":
            xs, ys = history.steps, history.train_loss
        else:
            xs, ys = history.metric_series(metric)
        if not xs:
            continue
        plw = run_plw(run)
        label = f"PLW {plw:g} \u00b7 {run.name}" if plw is not None else run.name
        error = error_bars(history, metric, xs, ys) if metric in METRICS and METRICS[metric].interval else None
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers" if metric != "train_loss" else "lines",
                name=label,
                error_y=error,
                hovertemplate=f"{html.escape(run.name)}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
            )
        )
    if not fig.data:
        return empty_figure(f"The chosen runs have no {metric_label(metric)} values", height)
    return curves_layout(fig, metric, f"{metric_label(metric)} by run", height)


def curves_layout(fig: go.Figure, metric: str, title: str, height: int) -> go.Figure:
    """The layout of every chart of one validation metric against the step, one curve per run."""
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": title, "font": {"size": 14}},
        xaxis={"title": "optimiser step"},
        # Shares on a fixed 0-100% axis, so runs and charts compare at a glance and a jump of a few
        # examples does not fill the chart.
        yaxis={
            "title": metric_label(metric),
            **({"tickformat": ".0%", "range": [0, 1.02]} if METRICS[metric].unit == "share" else {}),
        },
        legend={"orientation": "h", "y": -0.22},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
    )
    return fig


def plw_zero_position(plws: Iterable[float]) -> float:
    """Where PLW 0 sits on a log axis: a decade below the smallest positive PLW (at most 1e-3)."""
    positive = [p for p in plws if p and p > 0]
    return min(min(positive) / 10, 1e-3) if positive else 1e-3


def plw_sweep_figure(runs: Sequence, height: int = 380) -> go.Figure:
    """Best answer accuracy and best completion loss against PLW on a log axis (PLW 0 at a labelled small value).

    Runs that differ from the most common finished kind (other data, split, step count or status,
    `plw_lab.core.sweep.odd_runs`) are drawn hollow, off the lines, with what differs in their hover text.
    """
    from plw_lab.core.sweep import odd_runs

    odd = odd_runs(runs)
    points = []
    for run in runs:
        plw = run_plw(run)
        if plw is None:
            continue
        best = run_best(run)
        acc = (best.get("answer_accuracy") or {}).get("value")
        loss = (best.get("completion_loss") or {}).get("value")
        if acc is None and loss is None:
            continue
        points.append((plw, acc, loss, run.name, odd.get(run.name, ""), (best.get("answer_accuracy") or {}).get("ci")))
    if not points:
        return empty_figure("Runs with evaluations appear here: best metrics against PLW", height)
    zero = plw_zero_position(p[0] for p in points)
    points.sort(key=lambda p: p[0])
    xs = [p[0] if p[0] > 0 else zero for p in points]
    fig = go.Figure()
    for index, name, colour, symbol, axis, fmt in (
        (1, "best answer accuracy", METRIC_COLORS["answer_accuracy"], "circle", "y", ".1%"),
        (2, "best completion loss", METRIC_COLORS["completion_loss"], "diamond", "y2", ".4f"),
    ):
        for hollow in (False, True):
            chosen = [(x, p) for x, p in zip(xs, points) if p[index] is not None and bool(p[4]) == hollow]
            if not chosen:
                continue
            intervals = [p[5] if index == 1 else None for _, p in chosen]  # Wilson 95% of the best accuracy
            fig.add_trace(
                go.Scatter(
                    x=[x for x, _ in chosen],
                    y=[p[index] for _, p in chosen],
                    mode="markers" if hollow else "markers+lines",
                    name=f"{name} (differs: left off the line)" if hollow else name,
                    yaxis=axis,
                    marker={"size": 10, "symbol": f"{symbol}-open" if hollow else symbol, "color": colour},
                    line={"color": colour, "width": 1, "dash": "dot"},
                    text=[f"{p[3]} (PLW {p[0]:g})" + (f"; differs: {p[4]}" if p[4] else "") for _, p in chosen],
                    error_y={
                        "type": "data",
                        "array": [ci[1] - p[index] if ci else 0 for ci, (_, p) in zip(intervals, chosen)],
                        "arrayminus": [p[index] - ci[0] if ci else 0 for ci, (_, p) in zip(intervals, chosen)],
                    }
                    if any(intervals)
                    else None,
                    hovertemplate=f"%{{text}}<br>{name} %{{y:{fmt}}}<extra></extra>",
                )
            )
    ticks = sorted({zero, *[x for x in xs if x != zero], *[v for v in (1e-3, 1e-2, 1e-1, 1.0) if v > zero]})
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": "Best metrics against prompt-loss weight", "font": {"size": 14}},
        xaxis={
            "type": "log",
            "title": "PLW (log scale; 0 drawn at the left edge)",
            "tickvals": ticks,
            "ticktext": ["0" if t == zero else f"{t:g}" for t in ticks],
        },
        yaxis={"title": "best answer accuracy", "tickformat": ".0%", "range": [0, 1.05]},
        yaxis2={"title": "best completion loss", "overlaying": "y", "side": "right", "showgrid": False},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 60, "r": 60, "t": 40, "b": 40},
        shapes=[
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": zero * 3,
                "x1": zero * 3,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#cbd5e1", "dash": "dot", "width": 1},
            }
        ]
        if any(p[0] == 0 for p in points)
        else [],
    )
    return fig


def remedies_figure(points: dict[str, dict], x: str = "kl_to_base", height: int = 440) -> go.Figure:
    """Accuracy (with its 95% interval) against a forgetting measure, one marker per run.

    `points` maps a run's name to `plw_lab.notebook.widgets.run_point`-style numbers ("accuracy",
    "accuracy_ci", "majority_baseline", and `x`: "kl_to_base" or "probe_ppl_change"). Each run is
    its own trace, named in the legend, so labels never overlap however close the runs lie.
    """
    palette = PALETTE
    fig = go.Figure()
    baseline = None
    for i, (name, p) in enumerate(points.items()):
        if p.get("accuracy") is None or p.get(x) is None:
            continue
        ci = p.get("accuracy_ci") or [p["accuracy"], p["accuracy"]]
        fig.add_scatter(
            x=[p[x]],
            y=[p["accuracy"]],
            name=name,
            mode="markers",
            marker={"size": 12, "color": palette[i % len(palette)], "symbol": "diamond" if i == 0 else "circle"},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [ci[1] - p["accuracy"]],
                "arrayminus": [p["accuracy"] - ci[0]],
            },
            hovertemplate=f"{name}<br>accuracy %{{y:.0%}} [{ci[0]:.0%}\u2013{ci[1]:.0%}]<br>%{{x:.3g}}<extra></extra>",
        )
        baseline = p.get("majority_baseline") if baseline is None else baseline
    if baseline is not None:
        fig.add_hline(
            y=baseline,
            line_dash="dash",
            line_color="#94a3b8",
            annotation_text="majority baseline",
            annotation_position="bottom right",
        )
    x_title = {
        "kl_to_base": "forgetting: KL to the base model (nats per token)",
        "probe_ppl_change": "forgetting: probe perplexity change",
    }.get(x, x)
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": "Accuracy (95% interval) against forgetting, per run", "font": {"size": 14}},
        xaxis={"title": x_title, **({"tickformat": "+.0%"} if x == "probe_ppl_change" else {})},
        yaxis={"title": "validation accuracy, adapter on", "tickformat": ".0%", "range": [0, 1]},
        legend={"orientation": "v", "x": 1.02, "y": 1},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def sweep_figure(rows: Sequence[dict], x: str = "plw", height: int = 420) -> go.Figure:
    """A sweep (`plw_lab.core.sweep` rows): best answer accuracy (seeds' mean with a 95% interval) and best
    answer loss against `x` (PLW, or another varied number: `plw_lab.core.sweep.axes`), the step each run
    reached its best accuracy, and the quadratic fit where there are 4 or more x values. Each combination of
    the other varied settings is a series of its own colour. Runs that did not finish, were pruned or ran
    another number of steps are drawn hollow and left out of the means and the fit."""
    from plotly.subplots import make_subplots

    from plw_lab.core.sweep import points

    acc, loss = points(rows, "best_answer_accuracy", x), points(rows, "best_answer_loss", x)
    if not acc["runs"] and not loss["runs"]:
        return empty_figure("Sweep runs appear here as they finish", height)
    every = [r[x] for r in acc["runs"] + loss["runs"]]
    positive = [v for v in every if v > 0]
    # PLW's presets span decades from 0, and so may a learning rate; other settings read best evenly spaced.
    log = x == "plw" or (len(positive) == len(every) and max(positive) >= 100 * min(positive))
    zero = plw_zero_position(every)
    at = (lambda v: v if v > 0 else zero) if log else (lambda v: v)
    title = "PLW" if x == "plw" else x
    lines = acc["series"]
    of = lambda row: tuple(row.get(key) for key in lines)
    keys = sorted({of(r) for r in rows})
    colours = {
        "best_answer_accuracy": METRIC_COLORS["answer_accuracy"],
        "best_answer_loss": METRIC_COLORS.get("answer_loss", METRIC_COLORS["completion_loss"]),
    }
    # One series keeps the metrics' own colours; several get a colour each, named by their settings.
    colour = lambda metric, key: colours[metric] if len(keys) == 1 else PALETTE[keys.index(key) % len(PALETTE)]
    named = lambda key, text: text if len(keys) == 1 else f"{cell_text(dict(zip(lines, key)), seed=False)}: {text}"
    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.08,
        subplot_titles=("best answer accuracy", "best answer loss", "step of the best accuracy (convergence)"),
    )
    for col, summary in ((1, acc), (2, loss)):
        metric = summary["metric"]
        fmt = ".1%" if metric == "best_answer_accuracy" else ".4f"
        for key in keys:
            mine = [r for r in summary["runs"] if of(r) == key]
            kept, odd = [r for r in mine if not r["excluded"]], [r for r in mine if r["excluded"]]
            for group, hollow in ((kept, False), (odd, True)):
                if not group:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=[at(r[x]) for r in group],
                        y=[r[metric] for r in group],
                        mode="markers",
                        name=("runs left out (" + "; ".join(sorted({r["excluded"] for r in group})) + ")")
                        if hollow
                        else named(key, "one run (seed)"),
                        legendgroup="odd" if hollow else f"runs{key}",
                        showlegend=(col == 1 and len(keys) == 1) or hollow,
                        marker={
                            "size": 7,
                            "color": colour(metric, key),
                            "opacity": 0.45 if not hollow else 1,
                            "symbol": "circle-open" if hollow else "circle",
                        },
                        text=[f"{cell_text(r)}, {r['excluded'] or r['status']}, {r['steps']} steps" for r in group],
                        hovertemplate=f"%{{text}}<br>%{{y:{fmt}}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
            means = [m for m in summary["means"] if of(m) == key]
            if means:
                with_ci = [m["low"] is not None for m in means]
                fig.add_trace(
                    go.Scatter(
                        x=[at(m[x]) for m in means],
                        y=[m["mean"] for m in means],
                        mode="lines+markers",
                        name=named(key, "mean over seeds (95% t interval)"),
                        legendgroup=f"mean{key}",
                        showlegend=col == 1,
                        line={"color": colour(metric, key), "width": 2},
                        marker={"size": 10, "color": colour(metric, key)},
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": [m["high"] - m["mean"] if ok else 0 for m, ok in zip(means, with_ci)],
                            "arrayminus": [m["mean"] - m["low"] if ok else 0 for m, ok in zip(means, with_ci)],
                        },
                        text=[
                            f"{cell_text(m, seed=False)}: mean of {m['n']} seed(s)"
                            + ("" if ok else ", no interval from one seed")
                            for m, ok in zip(means, with_ci)
                        ],
                        hovertemplate=f"%{{text}}<br>%{{y:{fmt}}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
        for fit in summary["fits"]:
            key = tuple(fit["series"].get(k) for k in lines)
            span = [r[x] for r in summary["runs"] if of(r) == key]
            xs = [min(span) + (max(span) - min(span)) * k / 60 for k in range(61)]
            fig.add_trace(
                go.Scatter(
                    x=[at(v) for v in xs],
                    y=[fit["a"] + fit["b"] * v + fit["c"] * v * v for v in xs],
                    mode="lines",
                    name=named(key, f"quadratic fit (R\u00b2 {fit['r2']:.2f})"),
                    showlegend=True,
                    line={"color": colour(metric, key), "dash": "dash", "width": 1.5},
                    hovertemplate=(
                        f"fit: {fit['a']:.3g} + {fit['b']:.3g}\u00b7{title} + {fit['c']:.3g}\u00b7{title}\u00b2"
                        "<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
    cell = lambda r: (of(r), r.get(x), r.get("seed"))
    left_out = {cell(r) for r in acc["runs"] + loss["runs"] if r["excluded"]}
    for metric, symbol in (("best_answer_accuracy_step", "circle"), ("best_answer_loss_step", "diamond")):
        which = "best_answer_accuracy" if "accuracy" in metric else "best_answer_loss"
        for key in keys:
            group = [r for r in rows if r.get(metric) is not None and of(r) == key]
            if group:
                fig.add_trace(
                    go.Scatter(
                        x=[at(r[x]) for r in group],
                        y=[r[metric] for r in group],
                        mode="markers",
                        name=named(key, "step of best " + ("accuracy" if "accuracy" in metric else "answer loss")),
                        legendgroup=f"runs{key}",
                        showlegend=len(keys) == 1,
                        marker={
                            "size": 8,
                            "symbol": [f"{symbol}-open" if cell(r) in left_out else symbol for r in group],
                            "color": colour(which, key),
                        },
                        text=[f"{cell_text(r)}, of {r['steps']} steps" for r in group],
                        hovertemplate="%{text}<br>best at step %{y}<extra></extra>",
                    ),
                    row=1,
                    col=3,
                )
    if log:
        ticks = sorted({*map(at, every), *([zero, *(v for v in (1e-2, 1e-1, 1.0) if v > zero)] if x == "plw" else [])})
        axis = {"type": "log", "tickvals": ticks, "ticktext": ["0" if t == zero else f"{t:g}" for t in ticks]}
    else:
        axis = {"type": "linear"}
    scale = (" (log; 0 at the left)" if 0 in every else " (log)") if log else ""
    for col in (1, 2, 3):
        fig.update_xaxes(title_text=title + scale, row=1, col=col, **axis)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="cross-entropy (nats)", row=1, col=2)
    fig.update_yaxes(title_text="optimiser step", rangemode="tozero", row=1, col=3)
    steps = acc["steps"] or loss["steps"]
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={
            "text": f"Sweep: {len(rows)} runs" + (f", {steps} steps each" if steps else ""),
            "font": {"size": 14},
        },
        legend={"orientation": "h", "y": -0.28},
        margin={"l": 55, "r": 20, "t": 60, "b": 40},
    )
    return fig
