"""Notebook helpers: ipywidgets controls and live plotly FigureWidgets over the lab's views.

This is the only lab module that imports ipywidgets. The pictures themselves (token HTML from
`plw_lab.views.tokens_view`, the Train tab's figures from `plw_lab.views.charts`, the training history from
`plw_lab.views.history`, the progress line from `plw_lab.views.text_views`) are made elsewhere; here they are wired to
controls and to the training events, so the notebooks stay thin:

    view = token_view(encoded, plw=0.0)              # token view with a PLW slider
    curves = LiveCurves("PLW 0.1"); display(curves)  # the Train tab's charts, fed by training events
    result = train(cfg, subscribers=[curves])

plus two small table helpers (a token table of a collated batch, answer log-probability
summaries). The stopping points (`plw_lab.views.history`) and run reports (`plw_lab.views.text_views`) live in the
core; they are imported here too because the notebooks import them from this module.
"""

from __future__ import annotations

import dataclasses
import html
import math
import warnings

import ipywidgets as W
import plotly.graph_objects as go
from IPython.display import display

from plw_lab.core.config import TrainConfig
from plw_lab.core.weights import token_weight_values
from plw_lab.views.charts import accuracy_figure, loss_figure, predicted_distribution_figure
from plw_lab.views.history import History
from plw_lab.views.text_views import progress_html
from plw_lab.views.tokens_view import token_html

#: The PLW values the config suggests, as buttons beside the slider.
PLW_PRESETS = next(f.metadata["presets"] for f in dataclasses.fields(TrainConfig) if f.name == "prompt_loss_weight")


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
        value=plw,
        min=0.0,
        max=1.0,
        step=0.01,
        description="PLW",
        readout_format=".2f",
        continuous_update=True,
        layout=W.Layout(width="420px"),
    )
    example_slider = W.IntSlider(
        value=0,
        min=0,
        max=max(len(items) - 1, 0),
        description="example",
        layout=W.Layout(width="420px", display="" if len(items) > 1 else "none"),
    )
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
        warnings.warn(
            "plotly's FigureWidget needs `pip install anywidget`; the curves are redrawn instead of live-updated",
            stacklevel=2,
        )
        return _RedrawnFigure(fig)


class _RedrawnFigure:
    """Stand-in for a FigureWidget: an Output widget that shows the figure again after each update."""

    def __init__(self, fig: go.Figure) -> None:
        self.fig, self.output = fig, W.Output()
        self.data, self.layout = fig.data, fig.layout

    def show(self, fig: go.Figure) -> None:
        self.fig, self.data, self.layout = fig, fig.data, fig.layout
        self.output.outputs = ()
        self.output.append_display_data(fig)

    def _ipython_display_(self) -> None:
        display(self.output)


def _show(widget, fig: go.Figure) -> None:
    """Put a freshly drawn figure into a FigureWidget in one update (or redraw the stand-in)."""
    if isinstance(widget, _RedrawnFigure):
        widget.show(fig)
        return
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(list(fig.data))
        widget.layout = fig.layout


#: The Train tab's charts, in its order: each redrawn from the run's `History` by `plw_lab.views.charts`.
CHARTS = {"loss": loss_figure, "accuracy": accuracy_figure, "predicted": predicted_distribution_figure}


class LiveCurves:
    """A training-event subscriber that shows the run as the app's Train tab does, live.

    The progress line (`plw_lab.views.text_views.progress_html`) and the Train tab's figures (`plw_lab.views.charts`:
    losses, answer accuracy with the majority-class baseline, predicted answers; a star marks
    each metric's best value so far), redrawn from the run's `History` at every step and
    evaluation, and the run's advice below. Pass the object itself as a subscriber:
    `train(cfg, subscribers=[curves])`; `curves.figures` are the FigureWidgets by chart name and
    `curves.figure` the loss chart.
    """

    def __init__(self, title: str = "", height: int = 340) -> None:
        self.title, self.height = title, height
        self.history = History()
        self.figures = {name: _figure_widget(draw(self.history, height)) for name, draw in CHARTS.items()}
        self.figure = self.figures["loss"]
        self.status = W.HTML(progress_html(self.history))
        self.notes = W.HTML()
        shown = {name: f.output if isinstance(f, _RedrawnFigure) else f for name, f in self.figures.items()}
        heading = [W.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.widget = W.VBox(
            [*heading, self.status, shown["loss"], W.HBox([shown["accuracy"], shown["predicted"]]), self.notes]
        )

    def _ipython_display_(self) -> None:
        display(self.widget)
        for widget in self.figures.values():
            if isinstance(widget, _RedrawnFigure):
                widget.show(widget.fig)

    def __call__(self, event) -> None:
        self.history.add(event)
        kind = getattr(event, "kind", "")
        if kind in ("phase", "started", "step", "eval", "finished", "stopped", "failed"):
            self.status.value = progress_html(self.history)
        if kind == "advice" or kind in ("finished", "stopped", "failed"):
            self.notes.value = "".join(
                f'<div style="font-size:12px;color:#92400e">\u26a0 {html.escape(a)}</div>' for a in self.history.advice
            )
        if kind in ("started", "step", "finished", "stopped", "failed"):
            _show(self.figures["loss"], loss_figure(self.history, self.height))
        if kind in ("eval", "finished", "stopped", "failed"):
            for name, draw in CHARTS.items():
                _show(self.figures[name], draw(self.history, self.height))


# -- plain helpers the notebooks share ----------------------------------------------------------


def shown_curves(title: str = "") -> LiveCurves:
    """A `LiveCurves` already displayed in the notebook, e.g. one per run of a sweep:
    `run_sweep(..., watch=lambda plw, seed: [shown_curves(f"PLW {plw:g}")])`."""
    curves = LiveCurves(title)
    display(curves)
    return curves


def batch_frame(tokenizer, batch: dict, row: int = 0, plw: float = 0.0, completion_weight: float = 1.0):
    """One row of a collated batch, token by token: what the model reads and what it is trained on.

    `label` is the token as a training target (-100, the usual "ignore" label, where its weight
    is 0); `weight` is the loss's own rule (`plw_lab.core.weights`): PLW x prompt_mask + lambda_r x
    completion_mask, times the data's weights. Position t is trained to predict the token at t+1, so a
    token's weight is applied to the prediction made one position before it.
    """
    import pandas as pd

    data_weight = batch.get("data_weight")
    weights = token_weight_values(
        batch["prompt_mask"][row].tolist(),
        batch["completion_mask"][row].tolist(),
        plw,
        completion_weight,
        data_weight[row].tolist() if data_weight is not None else None,
    )
    rows = []
    for i in range(batch["input_ids"].shape[1]):
        token_id = int(batch["input_ids"][row, i])
        attended = int(batch["attention_mask"][row, i])
        p, c = int(batch["prompt_mask"][row, i]), int(batch["completion_mask"][row, i])
        weight = weights[i]
        rows.append(
            {
                "position": i,
                "token": tokenizer.decode([token_id]) if attended else "(padding)",
                "input_id": token_id,
                "attention": attended,
                "prompt_mask": p,
                "completion_mask": c,
                "weight": weight,
                "label": token_id if weight > 0 else -100,
            }
        )
    return pd.DataFrame(rows).set_index("position")


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
