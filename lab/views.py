"""Rendering helpers for the lab's views: token HTML, plotly figures and tables.

Nothing here imports a UI toolkit, so the Gradio app, the notebooks and the tests share the
same pictures. Functions take plain data (encoded examples, events, runs) and return an HTML
string, a `plotly.graph_objects.Figure` or a `pandas.DataFrame`; none of them touches a model.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import plotly.graph_objects as go

from .stats import LengthStats, geometric_mean, label_counts, length_stats  # noqa: F401  (re-exported)

# -- colours ---------------------------------------------------------------------------------

#: Prompt tokens (system, user turns, template tokens) and completion tokens (assistant replies).
PROMPT_RGB = (37, 99, 235)  # blue
COMPLETION_RGB = (234, 88, 12)  # orange
#: Per-token loss (sequential) and loss difference (diverging: green = the adapter lowered it).
LOSS_RGB = (220, 38, 38)
BETTER_RGB = (22, 163, 74)
WORSE_RGB = (220, 38, 38)
MAX_ALPHA = 0.85

METRIC_LABELS = {
    "train_loss": "train loss",
    "prompt_loss": "val prompt loss",
    "completion_loss": "val completion loss",
    "full_loss": "val full-sequence loss",
    "answer_accuracy": "val answer accuracy",
    "token_accuracy": "val token accuracy",
    "majority_baseline": "majority-class baseline",
}
METRIC_COLORS = {
    "train_loss": "#64748b",
    "prompt_loss": "#2563eb",
    "completion_loss": "#ea580c",
    "full_loss": "#7c3aed",
    "answer_accuracy": "#16a34a",
    "token_accuracy": "#0891b2",
    "majority_baseline": "#94a3b8",
}
HIGHER_IS_BETTER = {"answer_accuracy", "token_accuracy"}
PLOT_TEMPLATE = "plotly_white"
SEP = " \u00b7 "
DASH = "\u2013"


def weight_alpha(weight: float) -> float:
    """Background opacity for a loss weight in [0, 1]; square-root scaled so PLW 0.01 is still visible."""
    weight = min(max(float(weight), 0.0), 1.0)
    return round(MAX_ALPHA * math.sqrt(weight), 3)


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def weight_color(weight: float, is_completion: bool) -> str:
    return _rgba(COMPLETION_RGB if is_completion else PROMPT_RGB, weight_alpha(weight))


def token_weight_values(prompt_mask: Sequence[int], completion_mask: Sequence[int], plw: float) -> list[float]:
    """PLW x prompt_mask + completion_mask, token by token (the rule `lab.loss.token_weights` applies)."""
    return [plw * p + c for p, c in zip(prompt_mask, completion_mask)]


def completion_weight_share(n_prompt: int, n_completion: int, plw: float) -> float:
    """Share of the total loss weight carried by completion tokens at this PLW."""
    total = n_completion + plw * n_prompt
    return n_completion / total if total else float("nan")


# -- token view ------------------------------------------------------------------------------

TOKEN_CSS = """
.plw-tokens{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
 white-space:pre-wrap;word-break:break-word;padding:10px 12px;border:1px solid #e5e7eb;border-radius:8px;
 background:#fff;color:#111827;max-height:420px;overflow:auto}
.plw-tok{border-radius:3px;padding:1px 0;margin:0 0.5px;cursor:help}
.plw-tok.plw-zero{color:#9ca3af}
.plw-tok.plw-special{font-size:11px;border:1px dashed #94a3b8}
.plw-tok.plw-c-under{box-shadow:inset 0 -2px 0 rgba(234,88,12,0.9)}
.plw-tok.plw-p-under{box-shadow:inset 0 -2px 0 rgba(37,99,235,0.35)}
.plw-cut{color:#b91c1c;font-style:italic;background:#fef2f2;border-radius:3px;padding:0 4px}
.plw-nl{color:#cbd5e1}
.plw-legend{display:flex;flex-wrap:wrap;gap:14px;align-items:center;font-size:12px;color:#374151;margin:4px 0 8px}
.plw-legend .sw{display:inline-block;width:28px;height:14px;border-radius:3px;vertical-align:middle;margin-right:5px;
 border:1px solid #e5e7eb}
.plw-legend .grad{display:inline-block;width:110px;height:12px;border-radius:3px;vertical-align:middle;margin:0 5px;
 border:1px solid #e5e7eb}
.plw-summary{font-size:12px;color:#4b5563;margin-top:6px}
"""


def _display(text: str) -> str:
    """A token's text as shown in the view: newlines marked with an arrow, tabs kept."""
    escaped = html.escape(text)
    return escaped.replace("\n", '<span class="plw-nl">\u21b5</span>\n')


def _describe(text: str) -> str:
    return repr(text)[1:-1] if text else "(empty)"


def _is_special(text: str, token_id: int, special_ids: Iterable[int] | None) -> bool:
    if special_ids is not None:
        return token_id in special_ids
    return text.startswith("<|") and text.endswith("|>")


def _pieces(enc) -> list[tuple[int, str, int]]:
    """(token index, token text, characters cut before it) for each token of an `Encoded`."""
    out = []
    previous_end = 0
    for i, (start, end) in enumerate(enc.offsets):
        gap = enc.text[previous_end:start] if start > previous_end else ""
        out.append((i, enc.text[start:end], len(gap)))
        previous_end = max(previous_end, end)
    return out


def _legend_weights(plw: float) -> str:
    grad_p = f"linear-gradient(90deg,{weight_color(0, False)},{weight_color(1, False)})"
    return (
        '<div class="plw-legend">'
        f'<span><span class="sw" style="background:{weight_color(plw, False)}"></span>'
        f"prompt / template token: weight = PLW = {plw:g}</span>"
        f'<span><span class="sw" style="background:{weight_color(1, True)}"></span>'
        "completion token: weight 1</span>"
        f'<span>weight 0<span class="grad" style="background:{grad_p}"></span>1</span>'
        '<span><span class="sw plw-special" style="border:1px dashed #94a3b8"></span>special token</span>'
        "<span>hover a token for its text, id, label and weight</span>"
        "</div>"
    )


def token_html(
    enc,
    plw: float,
    special_ids: Iterable[int] | None = None,
    max_tokens: int = 2000,
    summary: bool = True,
) -> str:
    """An encoded example token by token, each coloured by its loss weight at `plw`.

    Prompt tokens (including the chat template's) are blue with an opacity that follows their
    weight, so they fade to nothing as PLW goes to 0; completion tokens are always full orange.
    Each token's `title` (shown on hover) gives its text, id, label and weight.
    """
    special = set(special_ids) if special_ids is not None else None
    weights = token_weight_values(enc.prompt_mask, enc.completion_mask, plw)
    parts = []
    for i, text, cut in _pieces(enc)[:max_tokens]:
        if cut and enc.truncated:
            parts.append(f'<span class="plw-cut" title="{enc.truncated} tokens cut to fit max_length">'
                         f"\u2026 {enc.truncated} prompt tokens cut \u2026</span>")
        is_completion = bool(enc.completion_mask[i])
        w = weights[i]
        label = "completion" if is_completion else "prompt"
        classes = ["plw-tok", "plw-c" if is_completion else "plw-p"]
        if w == 0:
            classes.append("plw-zero")
        token_id = enc.input_ids[i]
        if _is_special(text, token_id, special):
            classes.append("plw-special")
        title = f"{_describe(text)} | id {token_id} | {label} | weight {w:.4g}"
        parts.append(
            f'<span class="{" ".join(classes)}" style="background-color:{weight_color(w, is_completion)}" '
            f'title="{html.escape(title, quote=True)}" data-label="{label}" data-weight="{w:.4g}">{_display(text)}</span>'
        )
    if len(enc.input_ids) > max_tokens:
        parts.append(f'<span class="plw-cut">\u2026 {len(enc.input_ids) - max_tokens} more tokens not shown</span>')
    foot = ""
    if summary:
        n_p, n_c = enc.n_prompt, enc.n_completion
        share = completion_weight_share(n_p, n_c, plw)
        foot = (
            f'<div class="plw-summary">{len(enc.input_ids)} tokens: {n_p} prompt, {n_c} completion'
            f"{f', {enc.truncated} cut from the prompt' if enc.truncated else ''}. "
            f"At PLW {plw:g} the completion carries <b>{share:.1%}</b> of this example's loss weight.</div>"
        )
    return (
        f"<style>{TOKEN_CSS}</style>{_legend_weights(plw)}"
        f'<div class="plw-tokens" data-mode="weights" data-plw="{plw:g}">{"".join(parts)}</div>{foot}'
    )


LOSS_MODES = ("on", "off", "diff")


def _loss_color(value: float | None, vmax: float) -> str:
    if value is None or value != value:
        return "transparent"
    return _rgba(LOSS_RGB, round(MAX_ALPHA * min(max(value / vmax, 0.0), 1.0), 3))


def _diff_color(delta: float | None, vmax: float) -> str:
    if delta is None or delta != delta:
        return "transparent"
    rgb = BETTER_RGB if delta < 0 else WORSE_RGB
    return _rgba(rgb, round(MAX_ALPHA * min(abs(delta) / vmax, 1.0), 3))


def _robust_max(values: Iterable[float | None], floor: float) -> float:
    finite = sorted(abs(v) for v in values if v is not None and v == v)
    if not finite:
        return floor
    return max(finite[min(len(finite) - 1, int(0.95 * len(finite)))], floor)


def token_loss_html(
    enc,
    losses_on: Sequence[float | None] | None,
    losses_off: Sequence[float | None] | None,
    mode: str = "on",
    plw: float = 0.0,
    special_ids: Iterable[int] | None = None,
    max_tokens: int = 2000,
) -> str:
    """The token view coloured by per-token cross-entropy: adapter on, off, or on minus off.

    The underline keeps the prompt/completion label visible (orange: completion). `losses_*` are
    aligned with `enc.input_ids` and start with None (the first token has no prediction).
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")
    special = set(special_ids) if special_ids is not None else None
    n = len(enc.input_ids)
    on = list(losses_on) if losses_on is not None else [None] * n
    off = list(losses_off) if losses_off is not None else [None] * n
    if mode == "diff":
        values = [None if a is None or b is None else a - b for a, b in zip(on, off)]
        vmax = _robust_max(values, 0.5)
    else:
        values = on if mode == "on" else off
        vmax = _robust_max(values, 1.0)
    weights = token_weight_values(enc.prompt_mask, enc.completion_mask, plw)
    parts = []
    for i, text, cut in _pieces(enc)[:max_tokens]:
        if cut and enc.truncated:
            parts.append(f'<span class="plw-cut">\u2026 {enc.truncated} prompt tokens cut \u2026</span>')
        is_completion = bool(enc.completion_mask[i])
        label = "completion" if is_completion else "prompt"
        value = values[i]
        colour = _diff_color(value, vmax) if mode == "diff" else _loss_color(value, vmax)
        classes = ["plw-tok", "plw-c-under" if is_completion else "plw-p-under"]
        if _is_special(text, enc.input_ids[i], special):
            classes.append("plw-special")

        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"

        delta = None if on[i] is None or off[i] is None else on[i] - off[i]
        title = (
            f"{_describe(text)} | id {enc.input_ids[i]} | {label} | weight {weights[i]:.4g} | "
            f"loss on {fmt(on[i])} | off {fmt(off[i])} | \u0394 {fmt(delta)}"
        )
        parts.append(
            f'<span class="{" ".join(classes)}" style="background-color:{colour}" '
            f'title="{html.escape(title, quote=True)}" data-label="{label}" data-loss="{fmt(value)}">{_display(text)}</span>'
        )
    if mode == "diff":
        legend = (
            '<div class="plw-legend">'
            f'<span><span class="sw" style="background:{_rgba(BETTER_RGB, MAX_ALPHA)}"></span>'
            f"adapter lowered the loss (down to \u2212{vmax:.2f} nats)</span>"
            f'<span><span class="sw" style="background:{_rgba(WORSE_RGB, MAX_ALPHA)}"></span>'
            f"adapter raised it (+{vmax:.2f})</span>"
            '<span>underline: <b style="color:#ea580c">completion</b> / <b style="color:#2563eb">prompt</b></span></div>'
        )
    else:
        grad = f"linear-gradient(90deg,{_loss_color(0, 1)},{_loss_color(1, 1)})"
        legend = (
            '<div class="plw-legend">'
            f"<span>per-token loss, adapter {mode}: 0<span class=\"grad\" style=\"background:{grad}\"></span>"
            f"\u2265{vmax:.2f} nats</span>"
            '<span>underline: <b style="color:#ea580c">completion</b> / <b style="color:#2563eb">prompt</b></span></div>'
        )

    def mean(mask_values, losses):
        picked = [v for m, v in zip(mask_values, losses) if m and v is not None]
        return sum(picked) / len(picked) if picked else float("nan")

    foot = (
        '<div class="plw-summary">mean completion loss: adapter on '
        f"<b>{mean(enc.completion_mask, on):.3f}</b>, off <b>{mean(enc.completion_mask, off):.3f}</b>; "
        f"mean prompt loss: on {mean(enc.prompt_mask, on):.3f}, off {mean(enc.prompt_mask, off):.3f}</div>"
    )
    return (
        f"<style>{TOKEN_CSS}</style>{legend}"
        f'<div class="plw-tokens" data-mode="loss-{mode}">{"".join(parts)}</div>{foot}'
    )


# -- dataset statistics ----------------------------------------------------------------------
# The numbers come from lab.stats (re-exported here for the app and notebooks); this part draws them.


def stats_markdown(stats: LengthStats, plw: float, skipped: int = 0, total: int | None = None, packing: dict | None = None) -> str:
    """`packing` is `lab.packing.packing_efficiency(...)` for the chosen batch size and max length."""
    s = stats.summary()
    p, c = s["prompt_tokens"], s["completion_tokens"]
    share = completion_weight_share(s["total_prompt"], s["total_completion"], plw)
    scope = f" (statistics over the first {stats.n} of {total})" if total and total > stats.n else ""
    lines = [
        f"**{stats.n} examples**{scope}" + (f", {skipped} skipped (too long or empty)" if skipped else ""),
        "",
        "| tokens | mean | min | median | p95 | max |",
        "|---|---:|---:|---:|---:|---:|",
        f"| prompt | {p['mean']:.1f} | {p['min']:g} | {p['median']:g} | {p['p95']:.0f} | {p['max']:g} |",
        f"| completion | {c['mean']:.1f} | {c['min']:g} | {c['median']:g} | {c['p95']:.0f} | {c['max']:g} |",
        "",
        f"Generation ratio R<sub>g</sub> = completion / prompt tokens: mean **{s['rg_mean']:.4g}**, "
        f"geometric mean **{s['rg_geomean']:.4g}**, median {s['rg_median']:.4g}.",
        "",
        f"At PLW **{plw:g}** the completion tokens carry **{share:.1%}** of the total loss weight "
        f"({s['total_completion']} completion vs {s['total_prompt']} prompt tokens).",
    ]
    if packing and packing.get("tokens"):
        lines += [
            "",
            f"Packing efficiency (share of computed positions that are real tokens): padded **{packing['padded']:.0%}**, "
            f"packed **{packing['packed']:.0%}** ({packing['speedup']:.2f}x fewer positions with `train.packing`).",
        ]
    return "\n".join(lines)


def _empty_figure(message: str, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"color": "#6b7280"})
    fig.update_layout(template=PLOT_TEMPLATE, height=height, xaxis={"visible": False}, yaxis={"visible": False},
                      margin={"l": 20, "r": 20, "t": 30, "b": 20})
    return fig


def empty_figure(message: str = "No data yet", height: int = 300) -> go.Figure:
    return _empty_figure(message, height)


def rg_histogram(rg: Sequence[float], bins: int = 30, height: int = 320) -> go.Figure:
    """Histogram of the generation ratio on a log x axis, with the mean and geometric mean marked.

    Bins are equal in log space; each bar spans its bin exactly, so the bars tile the log axis.
    """
    values = [v for v in rg if v > 0 and math.isfinite(v)]
    if not values:
        return _empty_figure("No examples with both prompt and completion tokens", height)
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
            hovertemplate="R<sub>g</sub> %{customdata[0]:.3g} \u2013 %{customdata[1]:.3g}<br>%{y} examples<extra></extra>",
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


def length_histogram(stats: LengthStats, height: int = 320) -> go.Figure:
    """Overlaid histograms of prompt and completion lengths in tokens."""
    if not stats.n:
        return _empty_figure("No examples", height)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=stats.prompt, name="prompt tokens", marker_color="rgba(37,99,235,0.6)", nbinsx=30))
    fig.add_trace(go.Histogram(x=stats.completion, name="completion tokens", marker_color="rgba(234,88,12,0.7)", nbinsx=30))
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="overlay",
        title={"text": "Token lengths", "font": {"size": 14}},
        xaxis={"title": "tokens"},
        yaxis={"title": "examples"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


def label_balance_figure(counts: dict[str, int], height: int = 320) -> go.Figure:
    if not counts:
        return _empty_figure("Free-form completions: no answer labels to balance", height)
    total = sum(counts.values())
    names = list(counts)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[counts[k] for k in names],
            text=[f"{counts[k] / total:.0%}" for k in names],
            textposition="outside",
            marker_color="rgba(22,163,74,0.75)",
            name="answers",
        )
    )
    majority = max(counts.values()) / total
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": f"Label balance (majority class {majority:.0%})", "font": {"size": 14}},
        xaxis={"title": "right answer", "type": "category"},
        yaxis={"title": "examples", "range": [0, max(counts.values()) * 1.18]},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


def preview_rows(examples: Sequence, encoded_by_index: dict | None = None, limit: int = 50, width: int = 110) -> list[dict]:
    """One row per example for a preview table: prompt, completion, answer and token counts."""
    rows = []
    encoded_by_index = encoded_by_index or {}
    for e in examples[:limit]:
        last = max((i for i, m in enumerate(e.messages) if m["role"] == "assistant"), default=len(e.messages) - 1)
        before = e.messages[:last]
        if len(before) == 1 and before[0]["role"] == "user":
            prompt = before[0]["content"]
        else:
            prompt = " \u00b7 ".join(f"[{m['role']}] {m['content']}" for m in before)
        completion = e.messages[last]["content"] if e.messages else ""
        enc = encoded_by_index.get(e.source_index)
        row = {
            "#": e.source_index,
            "prompt": _clip(prompt, width),
            "completion": _clip(completion, width // 2),
            "answer": e.answer or "",
            "prompt tokens": enc.n_prompt if enc else None,
            "completion tokens": enc.n_completion if enc else None,
            "Rg": round(enc.n_completion / enc.n_prompt, 4) if enc and enc.n_prompt else None,
        }
        rows.append(row)
    return rows


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


# -- training history and live charts -------------------------------------------------------


def _get(event: Any, name: str, default: Any = None) -> Any:
    if isinstance(event, dict):
        return event.get(name, default)
    return getattr(event, name, default)


def _kind(event: Any) -> str:
    if isinstance(event, dict):
        return event.get("type", "")
    return getattr(event, "kind", "")


@dataclass
class History:
    """What the charts need from a run's events; feed it live events or a run's events.jsonl."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step", "epoch", "metrics", "is_best"}
    #: Each distinct advice message and the steps it was given at (the same warning repeats at every evaluation).
    advice_steps: dict[str, list[int]] = field(default_factory=dict)
    total_steps: int = 0
    last_step: dict | None = None
    started: dict | None = None
    status: str = "idle"  # idle, running, finished, stopped, failed
    end_message: str = ""
    run_dir: str = ""
    summary: dict = field(default_factory=dict)
    n_events: int = 0

    @classmethod
    def from_events(cls, events: Iterable) -> "History":
        history = cls()
        history.extend(events)
        return history

    def extend(self, events: Iterable) -> "History":
        for event in events:
            self.add(event)
        return self

    def add(self, event: Any) -> None:
        kind = _kind(event)
        self.n_events += 1
        if kind == "started":
            self.status = "running"
            self.total_steps = int(_get(event, "total_steps", 0) or 0)
            self.run_dir = str(_get(event, "run_dir", ""))
            self.started = {
                "n_train": _get(event, "n_train"),
                "n_val": _get(event, "n_val"),
                "skipped": list(_get(event, "skipped", []) or []),
                "config": _get(event, "config", {}) or {},
                "time": _get(event, "time"),
            }
        elif kind == "step":
            self.steps.append(int(_get(event, "step")))
            self.train_loss.append(float(_get(event, "train_loss")))
            self.learning_rate.append(float(_get(event, "learning_rate", 0.0) or 0.0))
            self.total_steps = int(_get(event, "total_steps", self.total_steps) or self.total_steps)
            self.last_step = {
                k: _get(event, k)
                for k in ("step", "epoch", "tokens_per_second", "tokens_seen", "elapsed", "total_steps", "train_loss", "grad_norm")
            }
        elif kind == "eval":
            self.evals.append(
                {
                    "step": int(_get(event, "step")),
                    "epoch": float(_get(event, "epoch", 0.0) or 0.0),
                    "metrics": dict(_get(event, "metrics", {}) or {}),
                    "is_best": bool(_get(event, "is_best", False)),
                }
            )
        elif kind == "advice":
            message = str(_get(event, "message", ""))
            step = _get(event, "step", 0)
            if message not in self.advice_steps:
                self.advice_steps[message] = []
            if step:
                self.advice_steps[message].append(int(step))
        elif kind in ("finished", "stopped", "failed"):
            self.status = kind
            self.summary = dict(_get(event, "summary", {}) or {})
            if kind == "stopped":
                self.end_message = str(_get(event, "reason", ""))
            elif kind == "failed":
                self.end_message = str(_get(event, "error", ""))
            step = _get(event, "step")
            if self.last_step is None and step is not None:
                self.last_step = {"step": step}

    @property
    def advice(self) -> list[str]:
        """Distinct advice messages, each with the steps where it was given."""
        out = []
        for message, steps in self.advice_steps.items():
            if not steps:
                out.append(message)
            elif len(steps) == 1:
                out.append(f"step {steps[0]}: {message}")
            else:
                shown = ", ".join(map(str, steps[:6])) + (", \u2026" if len(steps) > 6 else "")
                out.append(f"steps {shown}: {message}")
        return out

    @property
    def done(self) -> bool:
        return self.status in ("finished", "stopped", "failed")

    def metric_series(self, name: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for e in self.evals:
            value = e["metrics"].get(name)
            if value is not None and value == value:
                xs.append(e["step"])
                ys.append(float(value))
        return xs, ys

    def best(self, name: str) -> tuple[int, float] | None:
        xs, ys = self.metric_series(name)
        if not ys:
            return None
        pick = max if name in HIGHER_IS_BETTER else min
        value = pick(ys)
        return xs[ys.index(value)], value


def _best_marker(fig: go.Figure, history: History, name: str, row_kwargs: dict | None = None) -> None:
    best = history.best(name)
    if best is None:
        return
    step, value = best
    fig.add_trace(
        go.Scatter(
            x=[step],
            y=[value],
            mode="markers",
            marker={"symbol": "star", "size": 15, "color": METRIC_COLORS.get(name, "#111"), "line": {"color": "#111", "width": 1}},
            name=f"best {METRIC_LABELS.get(name, name)}",
            legendgroup=name,
            showlegend=False,
            hovertemplate=f"best {METRIC_LABELS.get(name, name)}: {value:.4g} at step {step}<extra></extra>",
        ),
        **(row_kwargs or {}),
    )


def loss_figure(history: History, height: int = 340) -> go.Figure:
    """Train loss per step and validation prompt, completion and full-sequence loss, with best marks."""
    if not history.steps and not history.evals:
        return _empty_figure("Losses appear here as training runs", height)
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
    for name in ("prompt_loss", "completion_loss", "full_loss"):
        xs, ys = history.metric_series(name)
        if not xs:
            continue
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=METRIC_LABELS[name],
                legendgroup=name,
                line={"color": METRIC_COLORS[name], "width": 2, "dash": "dot" if name == "full_loss" else "solid"},
                marker={"size": 6},
                hovertemplate=f"step %{{x}}<br>{METRIC_LABELS[name]} %{{y:.4f}}<extra></extra>",
            )
        )
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


def accuracy_figure(history: History, height: int = 340) -> go.Figure:
    """Validation answer accuracy with the majority-class baseline and the best mark."""
    xs, ys = history.metric_series("answer_accuracy")
    if not xs:
        message = (
            "Answer accuracy appears at the first evaluation"
            if not history.evals
            else "No answer accuracy: this data has free-form completions"
        )
        return _empty_figure(message, height)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            name=METRIC_LABELS["answer_accuracy"],
            line={"color": METRIC_COLORS["answer_accuracy"], "width": 2},
            hovertemplate="step %{x}<br>accuracy %{y:.1%}<extra></extra>",
        )
    )
    bx, by = history.metric_series("majority_baseline")
    if bx:
        fig.add_trace(
            go.Scatter(
                x=bx,
                y=by,
                mode="lines",
                name=METRIC_LABELS["majority_baseline"],
                line={"color": METRIC_COLORS["majority_baseline"], "dash": "dash", "width": 2},
                hovertemplate="majority baseline %{y:.1%}<extra></extra>",
            )
        )
    _best_marker(fig, history, "answer_accuracy")
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": "Validation answer accuracy (\u2605 = best)", "font": {"size": 14}},
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
        return _empty_figure("Predicted-answer distribution appears at the first evaluation", height)
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
        fig.add_trace(go.Bar(x=choices, y=[truth.get(c, 0) for c in choices], name="true answers", marker_color="#94a3b8"))
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="group",
        title={"text": "Distribution of predicted answers", "font": {"size": 14}},
        xaxis={"title": "answer", "type": "category"},
        yaxis={"title": "validation examples"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "\u2013"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


STATUS_STYLE = {
    "idle": ("#6b7280", "#f3f4f6", "idle"),
    "starting": ("#1d4ed8", "#eff6ff", "starting"),
    "running": ("#1d4ed8", "#eff6ff", "training"),
    "finished": ("#15803d", "#f0fdf4", "finished"),
    "stopped": ("#b45309", "#fffbeb", "stopped"),
    "failed": ("#b91c1c", "#fef2f2", "failed"),
}


def progress_html(history: History, note: str = "") -> str:
    """A progress bar with step, ETA, tokens/s and the status of the run."""
    colour, background, label = STATUS_STYLE.get(history.status, STATUS_STYLE["idle"])
    last = history.last_step or {}
    step = int(last.get("step") or 0)
    total = history.total_steps or int(last.get("total_steps") or 0)
    fraction = min(step / total, 1.0) if total else 0.0
    if history.status == "finished":
        fraction = 1.0
    elapsed = last.get("elapsed")
    eta = (elapsed / step * (total - step)) if elapsed and step and total and not history.done else None
    tps = last.get("tokens_per_second")
    parts = [f"step <b>{step}</b> / {total or '?'}"]
    if last.get("epoch") is not None:
        parts.append(f"epoch {float(last['epoch']):.2f}")
    if history.status == "running":
        parts.append(f"ETA <b>{format_duration(eta)}</b>")
    if elapsed is not None:
        parts.append(f"elapsed {format_duration(elapsed)}")
    if tps:
        parts.append(f"<b>{tps:,.0f}</b> tokens/s")
    if last.get("train_loss") is not None:
        parts.append(f"train loss {float(last['train_loss']):.4f}")
    if history.evals:
        parts.append(f"{len(history.evals)} evaluations")
    detail = ""
    if history.done and history.end_message:
        detail = f'<div class="plw-progress-msg">{html.escape(history.end_message)}</div>'
    if note:
        detail += f'<div class="plw-progress-msg">{html.escape(note)}</div>'
    run = f'<span class="plw-run">{html.escape(history.run_dir)}</span>' if history.run_dir else ""
    return (
        f'<div class="plw-progress" data-status="{history.status}" data-step="{step}" '
        f'style="border:1px solid {colour}33;background:{background};border-radius:8px;padding:10px 12px">'
        f'<div style="display:flex;justify-content:space-between;align-items:center;gap:8px;flex-wrap:wrap">'
        f'<span style="font-weight:600;color:{colour};text-transform:uppercase;letter-spacing:.04em">{label}</span>{run}</div>'
        f'<div style="height:10px;background:#e5e7eb;border-radius:5px;margin:8px 0;overflow:hidden">'
        f'<div style="height:100%;width:{fraction * 100:.1f}%;background:{colour};transition:width .4s"></div></div>'
        f'<div style="font-size:13px;color:#374151">{SEP.join(parts)}</div>{detail}</div>'
    )


# -- compare ---------------------------------------------------------------------------------


def logprob_figure(choices: Sequence[str], on: dict | None, off: dict | None, answer: str | None = None, height: int = 300) -> go.Figure:
    """Log-probability of each candidate answer with the adapter on and off; the right answer is marked."""
    if not choices:
        return _empty_figure("No candidate answers: free-form data", height)
    fig = go.Figure()
    labels = [f"{c} \u2713" if c == answer else c for c in choices]
    if off is not None:
        fig.add_trace(go.Bar(x=labels, y=[off.get(c) for c in choices], name="adapter off (base)", marker_color="#2563eb"))
    if on is not None:
        fig.add_trace(go.Bar(x=labels, y=[on.get(c) for c in choices], name="adapter on", marker_color="#ea580c"))
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        barmode="group",
        title={"text": "Answer log-probabilities" + (f" (right answer {answer} \u2713)" if answer else ""), "font": {"size": 14}},
        xaxis={"title": "candidate answer", "type": "category"},
        yaxis={"title": "log p(answer)"},
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
    )
    return fig


def metrics_comparison_rows(on: dict, off: dict, probe_on: float | None = None, probe_off: float | None = None) -> list[dict]:
    """Rows of metric / adapter off / adapter on / change, for a side-by-side table."""
    rows = []
    for name in ("completion_loss", "prompt_loss", "full_loss", "token_accuracy", "answer_accuracy", "majority_baseline"):
        a, b = off.get(name), on.get(name)
        if a is None and b is None:
            continue
        rows.append({"metric": METRIC_LABELS.get(name, name), "adapter off": _num(a), "adapter on": _num(b), "change": _num(None if a is None or b is None else b - a, signed=True)})
    if probe_on is not None or probe_off is not None:
        rows.append(
            {
                "metric": "forgetting probe perplexity (general text)",
                "adapter off": _num(probe_off),
                "adapter on": _num(probe_on),
                "change": _num(None if probe_on is None or probe_off is None else probe_on - probe_off, signed=True),
            }
        )
    return rows


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or value != value:
        return "\u2013"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def show_generation(text: str, limit: int = 600) -> str:
    """A generation as shown to a person: whitespace-only output is named, runs of blank lines shortened."""
    text = str(text or "")
    if not text.strip():
        return f"(no visible text: {text[:40]!r})" if text else "(empty: the model ended its turn at once)"
    import re

    text = re.sub(r"\n{3,}", "\n\n", text.strip("\n"))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def generations_html(rows: Sequence[dict]) -> str:
    """Side-by-side greedy generations: rows of {prompt, reference, off, on}."""
    if not rows:
        return '<div class="plw-empty">No generations yet.</div>'
    cells = []
    for row in rows:
        cells.append(
            "<tr>"
            f'<td class="plw-gen-prompt">{html.escape(_clip_tail(row.get("prompt", ""), 300))}</td>'
            f'<td>{html.escape(str(row.get("reference", "") or DASH))}</td>'
            f'<td class="plw-gen-off">{html.escape(show_generation(row.get("off", "")))}</td>'
            f'<td class="plw-gen-on">{html.escape(show_generation(row.get("on", "")))}</td>'
            "</tr>"
        )
    return (
        "<style>.plw-gen{width:100%;border-collapse:collapse;font-size:13px}"
        ".plw-gen th,.plw-gen td{border:1px solid #e5e7eb;padding:6px 8px;vertical-align:top;white-space:pre-wrap;"
        "word-break:break-word;text-align:left}.plw-gen th{background:#f9fafb}"
        ".plw-gen-prompt{color:#4b5563;font-size:12px;max-width:420px}"
        ".plw-gen-off{background:#eff6ff}.plw-gen-on{background:#fff7ed}</style>"
        '<table class="plw-gen"><thead><tr><th>prompt (end)</th><th>reference</th>'
        '<th>adapter off (base model)</th><th>adapter on (fine-tuned)</th></tr></thead>'
        f"<tbody>{''.join(cells)}</tbody></table>"
    )


def _clip_tail(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else "\u2026" + text[-(width - 1):]


# -- runs ------------------------------------------------------------------------------------


def _run_config(run) -> dict:
    cfg = getattr(run, "config", None)
    if cfg is None:
        for event in getattr(run, "events", []):
            if _kind(event) == "started":
                return dict(_get(event, "config", {}) or {})
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def run_plw(run) -> float | None:
    value = _run_config(run).get("train", {}).get("prompt_loss_weight")
    return None if value is None else float(value)


def run_best(run) -> dict:
    """Best value and step of each metric: from the summary, else from the run's evaluations."""
    best = (getattr(run, "summary", None) or {}).get("best")
    if best:
        return best
    from .runs import best_by_metric

    return best_by_metric(run.evals) if hasattr(run, "evals") else {}


def runs_rows(runs: Sequence) -> list[dict]:
    """One row per run: name, status, config essentials including PLW, best metrics and their steps."""
    rows = []
    for run in runs:
        cfg = _run_config(run)
        t, d, m, lora = cfg.get("train", {}), cfg.get("data", {}), cfg.get("model", {}), cfg.get("lora", {})
        best = run_best(run)
        summary = getattr(run, "summary", None) or {}

        def best_of(name, percent=False):
            b = best.get(name)
            if not b:
                return "\u2013"
            value = f"{b['value']:.1%}" if percent else f"{b['value']:.4f}"
            return f"{value} @ {b['step']}"

        rows.append(
            {
                "run": run.name,
                "status": getattr(run, "status", summary.get("status", "")),
                "PLW": t.get("prompt_loss_weight"),
                "model": m.get("name", ""),
                "data": _source_name(str(d.get("source", ""))),
                "norm": t.get("loss_normalization", ""),
                "lr": t.get("learning_rate"),
                "LoRA r": lora.get("r"),
                "steps": summary.get("steps", max([_get(e, "step", 0) for e in getattr(run, "evals", [])] or [0])),
                "best completion loss @ step": best_of("completion_loss"),
                "best accuracy @ step": best_of("answer_accuracy", percent=True),
                "best full loss @ step": best_of("full_loss"),
                "time": format_duration(summary.get("elapsed_seconds")),
            }
        )
    return rows


def _source_name(source: str) -> str:
    if source.startswith(("builtin:", "hf:")):
        return source.removeprefix("builtin:")
    return source.replace("\\", "/").rsplit("/", 1)[-1]


def overlay_figure(runs: Sequence, metric: str = "completion_loss", height: int = 380) -> go.Figure:
    """One curve per run for a validation metric (or the train loss), labelled with the run's PLW."""
    if not runs:
        return _empty_figure("Choose runs to overlay", height)
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
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if metric != "train_loss" else "lines", name=label,
                                 hovertemplate=f"{html.escape(run.name)}<br>step %{{x}}: %{{y:.4g}}<extra></extra>"))
    if not fig.data:
        return _empty_figure(f"The chosen runs have no {METRIC_LABELS.get(metric, metric)} values", height)
    fig.update_layout(
        template=PLOT_TEMPLATE,
        height=height,
        title={"text": f"{METRIC_LABELS.get(metric, metric)} by run", "font": {"size": 14}},
        xaxis={"title": "optimiser step"},
        yaxis={"title": METRIC_LABELS.get(metric, metric), **({"tickformat": ".0%"} if metric in HIGHER_IS_BETTER else {})},
        legend={"orientation": "h", "y": -0.22},
        margin={"l": 55, "r": 20, "t": 40, "b": 40},
    )
    return fig


def plw_zero_position(plws: Iterable[float]) -> float:
    """Where PLW 0 sits on a log axis: a decade below the smallest positive PLW (at most 1e-3)."""
    positive = [p for p in plws if p and p > 0]
    return min(min(positive) / 10, 1e-3) if positive else 1e-3


def plw_sweep_figure(runs: Sequence, height: int = 380) -> go.Figure:
    """Best answer accuracy and best completion loss against PLW on a log axis (PLW 0 at a labelled small value)."""
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
        points.append((plw, acc, loss, run.name))
    if not points:
        return _empty_figure("Runs with evaluations appear here: best metrics against PLW", height)
    zero = plw_zero_position(p[0] for p in points)
    points.sort(key=lambda p: p[0])
    xs = [p[0] if p[0] > 0 else zero for p in points]
    fig = go.Figure()
    if any(p[1] is not None for p in points):
        fig.add_trace(
            go.Scatter(
                x=[x for x, p in zip(xs, points) if p[1] is not None],
                y=[p[1] for p in points if p[1] is not None],
                mode="markers+lines",
                name="best answer accuracy",
                marker={"size": 10, "color": METRIC_COLORS["answer_accuracy"]},
                line={"color": METRIC_COLORS["answer_accuracy"], "width": 1, "dash": "dot"},
                text=[f"{p[3]} (PLW {p[0]:g})" for p in points if p[1] is not None],
                hovertemplate="%{text}<br>best accuracy %{y:.1%}<extra></extra>",
            )
        )
    if any(p[2] is not None for p in points):
        fig.add_trace(
            go.Scatter(
                x=[x for x, p in zip(xs, points) if p[2] is not None],
                y=[p[2] for p in points if p[2] is not None],
                mode="markers+lines",
                name="best completion loss",
                yaxis="y2",
                marker={"size": 10, "symbol": "diamond", "color": METRIC_COLORS["completion_loss"]},
                line={"color": METRIC_COLORS["completion_loss"], "width": 1, "dash": "dot"},
                text=[f"{p[3]} (PLW {p[0]:g})" for p in points if p[2] is not None],
                hovertemplate="%{text}<br>best completion loss %{y:.4f}<extra></extra>",
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
            {"type": "line", "xref": "x", "yref": "paper", "x0": zero * 3, "x1": zero * 3, "y0": 0, "y1": 1,
             "line": {"color": "#cbd5e1", "dash": "dot", "width": 1}}
        ] if any(p[0] == 0 for p in points) else [],
    )
    return fig


# -- settings help ---------------------------------------------------------------------------


def settings_help_markdown(sections: dict[str, list[dict]]) -> str:
    """A reference table of every setting, built from `lab.config.field_specs`."""
    lines = ["| setting | default | range / choices | what it does |", "|---|---|---|---|"]
    for section, specs in sections.items():
        for spec in specs:
            bounds = ""
            if spec.get("choices"):
                bounds = ", ".join(map(str, spec["choices"]))
            elif "min" in spec or "max" in spec:
                bounds = f"{spec.get('min', '')} \u2013 {spec.get('max', '')}".strip()
            help_text = str(spec.get("help", "")).replace("|", "\\|").replace("\n", " ")
            default = str(spec["default"]).replace("|", "\\|").replace("\n", "\\n")
            if len(default) > 40:
                default = default[:39] + "\u2026"
            lines.append(f"| `{section}.{spec['name']}` | `{default}` | {bounds} | {help_text} |")
    return "\n".join(lines)
