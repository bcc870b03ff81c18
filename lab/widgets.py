"""Notebook helpers: ipywidgets controls and live plotly FigureWidgets over the lab's views.

This is the only lab module that imports ipywidgets. The pictures themselves (token HTML from
`lab.tokens_view`, figure styles from `lab.charts`, the training history from `lab.history`, the
progress bar from `lab.text_views`) are made elsewhere; here they are wired to controls and to the
training events, so the notebooks stay thin:

    view = token_view(encoded, plw=0.0)              # token view with a PLW slider
    curves = LiveCurves("PLW 0.1"); display(curves)  # a FigureWidget fed by training events
    result = train(cfg, subscribers=[curves])

plus a few plain helpers the notebooks share (a token table of a collated batch, the step each
metric would stop at, answer log-probability summaries, general-text examples for replay).
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import math
import warnings
from typing import Iterable, Sequence

import ipywidgets as W
import plotly.graph_objects as go
from IPython.display import display

from .charts import METRIC_COLORS, METRIC_LABELS, PLOT_TEMPLATE
from .config import TrainConfig
from .metrics import METRICS
from .data import Example, split
from .events import event_field
from .history import History
from .text_views import progress_html
from .tokens_view import token_html

LOSSES = ("prompt_loss", "completion_loss", "full_loss")
#: The PLW values the config suggests, as buttons beside the slider.
PLW_PRESETS = next(f.metadata["presets"] for f in dataclasses.fields(TrainConfig) if f.name == "prompt_loss_weight")
STOP_METRICS = ("full_loss", "completion_loss", "answer_accuracy")


# -- token view with a PLW slider -------------------------------------------------------------


def token_view(encoded, plw: float = 0.0, tokenizer=None, max_tokens: int = 600) -> W.VBox:
    """Examples token by token, coloured by their loss weight; a slider sets the PLW.

    `encoded` is one `Encoded` or a list of them (then a second slider picks the example). The
    returned box has `.plw` and `.example` (the sliders) and `.html` (the view), so code can move
    the sliders too.
    """
    items = list(encoded) if isinstance(encoded, (list, tuple)) else [encoded]
    special = set(tokenizer.all_special_ids) if tokenizer is not None else None
    plw_slider = W.FloatSlider(
        value=plw, min=0.0, max=1.0, step=0.01, description="PLW", readout_format=".2f",
        continuous_update=True, layout=W.Layout(width="420px"),
    )
    example_slider = W.IntSlider(value=0, min=0, max=max(len(items) - 1, 0), description="example",
                                 layout=W.Layout(width="420px", display="" if len(items) > 1 else "none"))
    presets = []
    for value in PLW_PRESETS:
        button = W.Button(description=f"{value:g}", tooltip=f"PLW {value:g}", layout=W.Layout(width="48px"))
        button.on_click(lambda _b, v=value: setattr(plw_slider, "value", v))
        presets.append(button)
    out = W.HTML()

    def redraw(_change=None) -> None:
        out.value = token_html(items[example_slider.value], plw_slider.value, special, max_tokens)

    plw_slider.observe(redraw, names="value")
    example_slider.observe(redraw, names="value")
    redraw()
    box = W.VBox([W.HBox([plw_slider, *presets]), example_slider, out])
    box.plw, box.example, box.html = plw_slider, example_slider, out
    return box


# -- live training curves -----------------------------------------------------------------------


def _figure_widget(fig: go.Figure):
    """`go.FigureWidget(fig)`; without anywidget (plotly >= 6 needs it), a redrawn figure instead."""
    try:
        return go.FigureWidget(fig)
    except ImportError:
        warnings.warn("plotly's FigureWidget needs `pip install anywidget`; the curves are redrawn instead of live-updated")
        return _RedrawnFigure(fig)


class _RedrawnFigure:
    """Stand-in for a FigureWidget: an Output widget that shows the figure again after each update."""

    def __init__(self, fig: go.Figure) -> None:
        self.fig, self.output = fig, W.Output()
        self.data, self.layout = fig.data, fig.layout

    @contextlib.contextmanager
    def batch_update(self):
        yield
        self.output.outputs = ()
        self.output.append_display_data(self.fig)

    def _ipython_display_(self) -> None:
        display(self.output)


class LiveCurves:
    """A training-event subscriber that draws the run live in one plotly FigureWidget.

    Train loss every step; validation prompt, completion and full-sequence loss (left axis) and
    answer accuracy with the majority-class baseline (right axis) at every evaluation. A star
    marks the best value of each so far, i.e. the step each metric would pick as the stopping
    point. Above the chart, progress, tokens/s and the run's advice. Pass the object itself as a
    subscriber: `train(cfg, subscribers=[curves])`.
    """

    def __init__(self, title: str = "", height: int = 420) -> None:
        self.title = title
        self.history = History()
        fig = go.Figure()
        self._index: dict[str, int] = {}

        def add(key: str, trace) -> None:
            self._index[key] = len(fig.data)
            fig.add_trace(trace)

        colors, labels = METRIC_COLORS, METRIC_LABELS
        add("train_loss", go.Scatter(x=[], y=[], mode="lines", name="train loss (weighted)",
                                     line={"color": colors["train_loss"], "width": 1.2}))
        for name in LOSSES:
            add(name, go.Scatter(x=[], y=[], mode="lines+markers", name=labels[name], legendgroup=name,
                                 line={"color": colors[name], "width": 2, "dash": "dot" if name == "full_loss" else "solid"}))
        add("answer_accuracy", go.Scatter(x=[], y=[], mode="lines+markers", name=labels["answer_accuracy"], yaxis="y2",
                                          legendgroup="answer_accuracy", line={"color": colors["answer_accuracy"], "width": 2}))
        add("majority_baseline", go.Scatter(x=[], y=[], mode="lines", name=labels["majority_baseline"], yaxis="y2",
                                            line={"color": colors["majority_baseline"], "dash": "dash", "width": 1.5}))
        for name in (*LOSSES, "answer_accuracy"):
            add(f"best:{name}", go.Scatter(
                x=[], y=[], mode="markers", name=f"best {labels[name]}", legendgroup=name, showlegend=False,
                yaxis="y2" if name == "answer_accuracy" else "y",
                marker={"symbol": "star", "size": 15, "color": colors[name], "line": {"color": "#111", "width": 1}},
                hovertemplate=f"best {labels[name]}: %{{y:.4g}} at step %{{x}}<extra></extra>",
            ))
        fig.update_layout(
            template=PLOT_TEMPLATE,
            height=height,
            title={"text": (title + " \u00b7 " if title else "") + "validation losses and accuracy (\u2605 = best so far)",
                   "font": {"size": 14}},
            xaxis={"title": "optimiser step"},
            yaxis={"title": "cross-entropy (nats)"},
            yaxis2={"title": "answer accuracy", "overlaying": "y", "side": "right", "range": [0, 1.02],
                    "tickmode": "array", "tickvals": [0, 0.25, 0.5, 0.75, 1.0], "tickformat": ".0%", "showgrid": False},
            legend={"orientation": "h", "y": -0.2},
            margin={"l": 55, "r": 55, "t": 45, "b": 40},
        )
        self.figure = _figure_widget(fig)
        self.status = W.HTML(progress_html(self.history))
        self.notes = W.HTML()
        chart = self.figure.output if isinstance(self.figure, _RedrawnFigure) else self.figure
        self.widget = W.VBox([self.status, chart, self.notes])

    def _ipython_display_(self) -> None:
        display(self.widget)
        if isinstance(self.figure, _RedrawnFigure):
            with self.figure.batch_update():
                pass

    def __call__(self, event) -> None:
        self.history.add(event)
        kind = getattr(event, "kind", "")
        if kind in ("started", "step", "eval", "finished", "stopped", "failed"):
            self.status.value = progress_html(self.history)
        if kind == "advice" or kind in ("finished", "stopped", "failed"):
            self.notes.value = "".join(
                f'<div style="font-size:12px;color:#92400e">\u26a0 {html.escape(a)}</div>' for a in self.history.advice
            )
        if kind in ("started", "step", "eval", "finished", "stopped", "failed"):
            self._redraw(kind)

    def _set(self, key: str, xs, ys) -> None:
        trace = self.figure.data[self._index[key]]
        trace.x, trace.y = list(xs), list(ys)

    def _redraw(self, kind: str) -> None:
        h = self.history
        with self.figure.batch_update():
            if kind == "started" and h.total_steps:
                self.figure.layout.xaxis.range = [-0.5, h.total_steps + 0.5]
            if kind == "step":
                self._set("train_loss", h.steps, h.train_loss)
                return
            for name in (*LOSSES, "answer_accuracy", "majority_baseline"):
                self._set(name, *h.metric_series(name))
            for name in (*LOSSES, "answer_accuracy"):
                best = h.best(name)
                self._set(f"best:{name}", [best[0]] if best else [], [best[1]] if best else [])


# -- plain helpers the notebooks share ----------------------------------------------------------


def shown_curves(title: str = "") -> LiveCurves:
    """A `LiveCurves` already displayed in the notebook, e.g. one per run of a sweep:
    `run_sweep(..., watch=lambda plw, seed: [shown_curves(f"PLW {plw:g}")])`."""
    curves = LiveCurves(title)
    display(curves)
    return curves


def batch_frame(tokenizer, batch: dict, row: int = 0, plw: float = 0.0):
    """One row of a collated batch, token by token: what the model reads and what it is trained on.

    `label` is the token as a training target (-100, the usual "ignore" label, where its weight
    is 0); `weight` is PLW x prompt_mask + completion_mask. Position t is trained to predict the
    token at t+1, so a token's weight is applied to the prediction made one position before it.
    """
    import pandas as pd

    rows = []
    for i in range(batch["input_ids"].shape[1]):
        token_id = int(batch["input_ids"][row, i])
        attended = int(batch["attention_mask"][row, i])
        p, c = int(batch["prompt_mask"][row, i]), int(batch["completion_mask"][row, i])
        weight = plw * p + c if i > 0 else 0.0  # the first token is never predicted
        rows.append({
            "position": i,
            "token": tokenizer.decode([token_id]) if attended else "(padding)",
            "input_id": token_id,
            "attention": attended,
            "prompt_mask": p,
            "completion_mask": c,
            "weight": weight,
            "label": token_id if weight > 0 else -100,
        })
    return pd.DataFrame(rows).set_index("position")


def stopping_points(evals: Sequence, metrics: Iterable[str] = STOP_METRICS) -> list[dict]:
    """For each metric, the evaluation it would pick as the stopping point, and what the run had there.

    `evals` are `Eval` events (or their dicts). A loss picks its minimum, accuracy its maximum.
    """
    rows = []
    for name in metrics:
        candidates = [e for e in evals if event_field(e, "metrics", {}).get(name) is not None and event_field(e, "metrics")[name] == event_field(e, "metrics")[name]]
        if not candidates:
            continue
        pick = max if METRICS[name].higher_is_better else min
        chosen = pick(candidates, key=lambda e: event_field(e, "metrics")[name])  # the first among equals
        m = event_field(chosen, "metrics")
        rows.append({
            "stop on": name,
            "step": event_field(chosen, "step"),
            "answer_accuracy": m.get("answer_accuracy"),
            "completion_loss": m.get("completion_loss"),
            "full_loss": m.get("full_loss"),
            "prompt_loss": m.get("prompt_loss"),
        })
    return rows


def answer_summary(metrics: dict) -> dict:
    """Accuracy, mean log-probability of the right answer and predicted counts, from `evaluate_answers`."""
    examples = metrics.get("examples") or []
    right = [e["logprobs"][e["answer"]] for e in examples]
    return {
        "answer_accuracy": metrics.get("answer_accuracy"),
        "mean log p(right answer)": sum(right) / len(right) if right else float("nan"),
        "mean p(right answer)": sum(math.exp(v) for v in right) / len(right) if right else float("nan"),
        "predicted": metrics.get("predicted"),
    }


def general_examples(texts: Sequence[str], split_at: float = 0.5) -> list[Example]:
    """Plain passages as continuation examples (first part as prompt, the rest as completion), for
    mixing general data into a fine-tuning set ("replay") against forgetting."""
    out = []
    for i, text in enumerate(texts):
        words = text.split()
        if len(words) < 4:
            continue
        cut = max(1, int(len(words) * split_at))
        out.append(Example(
            [{"role": "user", "content": "Continue the text:\n" + " ".join(words[:cut])},
             {"role": "assistant", "content": " ".join(words[cut:])}],
            source_index=100_000 + i,
            meta={"general": True},
        ))
    return out


def fixed_split(train_examples: Sequence[Example], val_examples: Sequence[Example], seed: int = 0, val_max: int = 0) -> tuple[list[Example], int]:
    """Examples and a `data.val_size` with which the lab's split gives exactly these train and
    validation lists, so runs that add training data (e.g. replay) keep the same validation set.

        examples, val_size = fixed_split(train_ex + extra, val_ex, cfg.data.split_seed, cfg.data.val_max)
        train(cfg.override({"data.val_size": val_size}), examples=examples)

    The seed is the split's (`data.split_seed`). Examples that carry group keys (`meta["group"]`,
    multiple-choice passages) are split by group, which this arrangement does not model: pass
    ungrouped examples or set `data.group_by: none`.
    """
    if val_max and len(val_examples) > val_max:
        raise ValueError(f"{len(val_examples)} validation examples exceed data.val_max = {val_max}; raise it or pass fewer")
    n = len(train_examples) + len(val_examples)
    train_slots, val_slots = split(list(range(n)), len(val_examples), seed)
    arranged: list = [None] * n
    for slot, example in zip(sorted(val_slots), val_examples):
        arranged[slot] = example
    for slot, example in zip(sorted(train_slots), train_examples):
        arranged[slot] = example
    return arranged, len(val_examples)


def run_report(result) -> dict:
    """One finished run as a row of a comparison table: answers and probe with the adapter on and off."""
    from .advice import collapse

    summary, comparison = result.summary or {}, result.comparison or {}
    on, off = comparison.get("on") or {}, comparison.get("off") or {}
    m_on, m_off = on.get("metrics") or {}, off.get("metrics") or {}
    ppl_on, ppl_off = on.get("probe_perplexity"), off.get("probe_perplexity")
    return {
        "accuracy off": m_off.get("answer_accuracy"),
        "accuracy on": m_on.get("answer_accuracy"),
        "majority baseline": m_on.get("majority_baseline"),
        "predicted (on)": " \u00b7 ".join(f"{k} {v}" for k, v in (m_on.get("predicted") or {}).items()),
        "collapsed": bool(collapse(m_on)) if m_on else None,
        "completion loss on": m_on.get("completion_loss"),
        "probe ppl off": ppl_off,
        "probe ppl on": ppl_on,
        "probe ppl change": ppl_on / ppl_off - 1 if ppl_on and ppl_off else None,
        "steps": summary.get("steps"),
        "adapter step": summary.get("adapter_step"),
        "seconds": round(summary.get("elapsed_seconds") or 0),
    }
