"""Plotly figures of a sweep's verdict (`plw_lab.core.sweep_verdict`): accuracy per arm with every
seed and both stopping criteria, and validation curves coloured by arm. The app's Runs tab, notebook 02
and the documentation's real-data page (exported by `scripts/plw_lesson.py`) draw these same figures."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from plw_lab.core.metrics import label as metric_label
from plw_lab.core.sweep_verdict import arms_of
from plw_lab.views.charts import METRIC_COLORS, PLOT_TEMPLATE, curves_layout, empty_figure
from plw_lab.views.history import History

#: One colour per arm, in the order the arms first appear.
ARM_COLOURS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#be123c", "#0891b2", "#a16207", "#4b5563")
#: The two stopping criteria the verdict contrasts: (arm summary key of the seeds, of the mean), label, colour.
CRITERIA = (
    ("kept_accuracy", "kept", "stopping on answer loss", METRIC_COLORS["answer_loss"]),
    ("full_loss_accuracy", "full_loss", "stopping on full-sequence loss", METRIC_COLORS["full_loss"]),
)


def verdict_figure(verdict: dict, height: int = 400, title: str = "") -> go.Figure:
    """Answer accuracy of the adapter each stopping criterion keeps, per arm: every seed a dot, the mean over
    seeds with its 95% t interval beside it."""
    arms = [a for a in verdict.get("arms", []) if a.get("kept")]
    if not arms:
        return empty_figure("No finished runs with answer accuracy", height)
    fig = go.Figure()
    for offset, (seeds_key, mean_key, name, colour) in zip((-0.15, 0.15), CRITERIA):
        xs = [i + offset for i, arm in enumerate(arms) for _ in arm[seeds_key]]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[v for arm in arms for v in arm[seeds_key]],
                mode="markers",
                name=f"{name}: one seed",
                legendgroup=name,
                marker={"size": 7, "color": colour, "opacity": 0.45},
                text=[f"{arm['arm']}, seed {seed}" for arm in arms for seed in arm["seeds"]],
                hovertemplate="%{text}<br>%{y:.1%}<extra></extra>",
            )
        )
        means = [arm[mean_key] for arm in arms]
        fig.add_trace(
            go.Scatter(
                x=[i + offset + 0.08 for i in range(len(arms))],
                y=[m["mean"] if m else None for m in means],
                mode="markers",
                name=f"{name}: mean (95% t interval)",
                legendgroup=name,
                marker={"size": 11, "color": colour, "symbol": "diamond"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [(m["high"] - m["mean"]) if m and m["high"] is not None else 0 for m in means],
                    "arrayminus": [(m["mean"] - m["low"]) if m and m["low"] is not None else 0 for m in means],
                    "color": colour,
                },
                hovertemplate="mean %{y:.1%}<extra></extra>",
            )
        )
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": title or "answer accuracy of the kept adapter, per arm", "font": {"size": 14}},
        xaxis={"tickmode": "array", "tickvals": list(range(len(arms))), "ticktext": [a["arm"] for a in arms]},
        yaxis={"title": "answer accuracy", "tickformat": ".0%"},
        legend={"orientation": "h", "y": -0.18},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
    )
    return fig


def arm_curves_figure(runs: Sequence, metric: str = "prompt_loss", height: int = 380, title: str = "") -> go.Figure:
    """One line per run of a validation metric against the step, coloured by arm (the runs' varied settings)."""
    if not runs:
        return empty_figure("No finished runs", height)
    fig = go.Figure()
    arms = arms_of(runs)
    colours = {arm: ARM_COLOURS[i % len(ARM_COLOURS)] for i, arm in enumerate(dict.fromkeys(arms))}
    shown: set[str] = set()
    for run, arm in zip(runs, arms):
        xs, ys = History.from_events(run.events).metric_series(metric)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=arm,
                legendgroup=arm,
                showlegend=arm not in shown,
                line={"color": colours[arm], "width": 1.5},
                marker={"size": 5},
                hovertemplate=f"{arm}, seed {run.config.train.seed}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
            )
        )
        shown.add(arm)
    return curves_layout(fig, metric, title or f"{metric_label(metric)}, every seed", height)
