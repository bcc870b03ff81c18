"""The token view: an encoded example token by token, coloured by its loss weight or its loss.

Prompt tokens are blue and fade with the prompt-loss weight, completion tokens are orange, and
the answer tokens of multiple-choice and classification data are outlined apart from the rest
of the completion (the end-of-turn token: format); the loss views colour each token by its
cross-entropy with the adapter on, off, or the difference.
Each function takes an `Encoded` and returns an HTML string with its own CSS and legend, so the
Gradio app and the notebooks show the same picture. The weights come from the loss's own rule
(`plw_lab.core.weights`); `completion_weight_share` states its consequence for every view.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from plw_lab.core.weights import token_weight_values

#: Prompt tokens (system, user turns, template tokens) and completion tokens (assistant replies).
PROMPT_RGB = (37, 99, 235)  # blue
COMPLETION_RGB = (234, 88, 12)  # orange
#: Per-token loss (sequential) and loss difference (diverging: green = the adapter lowered it).
LOSS_RGB = (220, 38, 38)
BETTER_RGB = (22, 163, 74)
WORSE_RGB = (220, 38, 38)
MAX_ALPHA = 0.85


def weight_alpha(weight: float) -> float:
    """Background opacity for a loss weight in [0, 1]; square-root scaled so PLW 0.01 is still visible."""
    weight = min(max(float(weight), 0.0), 1.0)
    return round(MAX_ALPHA * math.sqrt(weight), 3)


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def weight_color(weight: float, is_completion: bool) -> str:
    return _rgba(COMPLETION_RGB if is_completion else PROMPT_RGB, weight_alpha(weight))


#: Above this opacity the blue behind a prompt token is dark enough that its text turns white.
LIGHT_TEXT_ABOVE = 0.5


def text_color(weight: float, is_completion: bool) -> str | None:
    """A light text colour where the background is saturated blue (high PLW); None keeps the default dark text."""
    return "#ffffff" if not is_completion and weight_alpha(weight) > LIGHT_TEXT_ABOVE else None


#: A prompt longer than this many tokens before the completion is folded in the middle, so the
#: completion (what is trained at PLW 0) is in view without scrolling.
FOLD_ABOVE, FOLD_HEAD, FOLD_TAIL = 160, 40, 80


def fold_range(enc) -> tuple[int, int] | None:
    """The tokens [start, end) to fold away in a long prompt: all but its start and its last tokens."""
    first_completion = next((i for i, c in enumerate(enc.completion_mask) if c), len(enc.input_ids))
    if first_completion <= FOLD_ABOVE:
        return None
    return FOLD_HEAD, first_completion - FOLD_TAIL


def completion_weight_share(n_prompt: float, n_completion: float, plw: float, completion_weight: float = 1.0) -> float:
    """Share of the total loss weight carried by completion tokens at this PLW and lambda_r."""
    total = completion_weight * n_completion + plw * n_prompt
    return completion_weight * n_completion / total if total else float("nan")


TOKEN_CSS = """
.plw-tokens{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
 white-space:pre-wrap;word-break:break-word;padding:10px 12px;border:1px solid #e5e7eb;border-radius:8px;
 background:#fff;color:#111827;max-height:420px;overflow:auto}
.plw-tok{border-radius:3px;padding:1px 0;margin:0 0.5px;cursor:help}
.plw-tok.plw-zero{color:#9ca3af}
.plw-tok.plw-special{font-size:11px;border:1px dashed #94a3b8}
.plw-tok.plw-c-under{box-shadow:inset 0 -2px 0 rgba(234,88,12,0.9)}
.plw-tok.plw-p-under{box-shadow:inset 0 -2px 0 rgba(37,99,235,0.35)}
.plw-tok.plw-answer{outline:2px solid #be123c;outline-offset:-1px;font-weight:700}
.plw-cut{color:#b91c1c;font-style:italic;background:#fef2f2;border-radius:3px;padding:0 4px}
.plw-nl{color:#cbd5e1}
.plw-legend{display:flex;flex-wrap:wrap;gap:14px;align-items:center;font-size:12px;color:#374151;margin:4px 0 8px}
.plw-legend .sw{display:inline-block;width:28px;height:14px;border-radius:3px;vertical-align:middle;margin-right:5px;
 border:1px solid #e5e7eb}
.plw-legend .grad{display:inline-block;width:110px;height:12px;border-radius:3px;vertical-align:middle;margin:0 5px;
 border:1px solid #e5e7eb}
.plw-summary{font-size:12px;color:#4b5563;margin-top:6px}
.plw-fold{display:inline}
.plw-fold>summary{display:inline;cursor:pointer;color:#1e40af;background:#eff6ff;border:1px dashed #93c5fd;
 border-radius:3px;padding:0 4px;font-style:italic;list-style:none}
.plw-fold[open]>summary{display:none}
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


def _answer_mask(enc) -> list[int]:
    """The example's answer mask; empty for encodings made without one (free-form, or built by hand)."""
    return getattr(enc, "answer_mask", None) or []


def _is_answer(enc, i: int) -> bool:
    mask = _answer_mask(enc)
    return i < len(mask) and bool(mask[i])


ANSWER_ATTR = ' data-answer="1"'
ANSWER_LEGEND = (
    '<span><span class="sw plw-answer" style="outline:2px solid #be123c;outline-offset:-1px"></span>'
    "answer token (the scored candidate: answer loss and accuracy; the rest of the completion is format)</span>"
)


def _legend_weights(
    plw: float, answer: bool = False, completion_weight: float = 1.0, data_weights: bool = False
) -> str:
    grad_p = f"linear-gradient(90deg,{weight_color(0, False)},{weight_color(1, False)})"
    return (
        '<div class="plw-legend">'
        f'<span><span class="sw" style="background:{weight_color(plw, False)}"></span>'
        f"prompt / template token: weight = PLW = {plw:g}</span>"
        f'<span><span class="sw" style="background:{weight_color(completion_weight, True)}"></span>'
        f"completion token: weight = λ<sub>r</sub> = {completion_weight:g}</span>"
        + ("<span>times the record's or message's weight from the data</span>" if data_weights else "")
        + f'<span>weight 0<span class="grad" style="background:{grad_p}"></span>1</span>'
        '<span><span class="sw plw-special" style="border:1px dashed #94a3b8"></span>special token</span>'
        + (ANSWER_LEGEND if answer else "")
        + "<span>hover a token for its text, id, label and weight</span>"
        "</div>"
    )


def token_html(
    enc,
    plw: float,
    special_ids: Iterable[int] | None = None,
    max_tokens: int = 2000,
    summary: bool = True,
    completion_weight: float = 1.0,
) -> str:
    """An encoded example token by token, each coloured by its loss weight at `plw` and `completion_weight`
    (lambda_r), times the weights the data gives its record and messages.

    Prompt tokens (including the chat template's) are blue with an opacity that follows their
    weight, so they fade to nothing as PLW goes to 0; completion tokens are always full orange.
    Each token's `title` (shown on hover) gives its text, id, label and weight.
    """
    special = set(special_ids) if special_ids is not None else None
    data_weight = getattr(enc, "data_weight", None) or None
    weights = token_weight_values(enc.prompt_mask, enc.completion_mask, plw, completion_weight, data_weight)
    parts = []
    fold = fold_range(enc)
    for i, text, cut in _pieces(enc)[:max_tokens]:
        if fold and i == fold[0]:
            parts.append(
                f'<details class="plw-fold" data-folded="{fold[1] - fold[0]}"><summary>\u2026 {fold[1] - fold[0]} '
                f"prompt tokens (weight {plw:g} each) folded to bring the completion into view: show them"
                "</summary>"
            )
        if cut and enc.truncated:
            parts.append(
                f'<span class="plw-cut" title="{enc.truncated} tokens cut to fit max_length">'
                f"\u2026 {enc.truncated} prompt tokens cut \u2026</span>"
            )
        is_completion = bool(enc.completion_mask[i])
        w = weights[i]
        label = "completion" if is_completion else "prompt"
        classes = ["plw-tok", "plw-c" if is_completion else "plw-p"]
        if w == 0:
            classes.append("plw-zero")
        token_id = enc.input_ids[i]
        if _is_special(text, token_id, special):
            classes.append("plw-special")
        answer = _is_answer(enc, i)
        if answer:
            classes.append("plw-answer")
        title = f"{_describe(text)} | id {token_id} | {label}{' (answer)' if answer else ''} | weight {w:.4g}"
        if i == 0:
            title += " (the first token: nothing before it predicts it, so it is never a target)"
        if data_weight:
            title += f" (data weight {data_weight[i]:.4g})"
        colour = text_color(w, is_completion)
        parts.append(
            f'<span class="{" ".join(classes)}" style="background-color:{weight_color(w, is_completion)}'
            f'{f";color:{colour}" if colour else ""}" '
            f'title="{html.escape(title, quote=True)}" data-label="{label}" data-weight="{w:.4g}"'
            f"{ANSWER_ATTR if answer else ''}>{_display(text)}</span>"
        )
        if fold and i == fold[1] - 1:
            parts.append("</details>")
    if len(enc.input_ids) > max_tokens:
        parts.append(f'<span class="plw-cut">\u2026 {len(enc.input_ids) - max_tokens} more tokens not shown</span>')
    foot = ""
    if summary:
        n_p, n_c = enc.n_prompt, enc.n_completion
        completion_total = sum(w for w, c in zip(weights, enc.completion_mask) if c)
        share = completion_total / sum(weights) if sum(weights) else float("nan")
        foot = (
            f'<div class="plw-summary">{len(enc.input_ids)} tokens: {n_p} prompt, {n_c} completion'
            f"{f', {enc.truncated} cut from the prompt' if enc.truncated else ''}. "
            f"At PLW {plw:g}{f' and completion weight {completion_weight:g}' if completion_weight != 1 else ''} "
            f"the completion carries <b>{share:.1%}</b> of this example's loss weight"
            f"{f'; the data weights this record {enc.example.weight:g}' if data_weight else ''}.</div>"
        )
    return (
        f"<style>{TOKEN_CSS}</style>"
        f"{_legend_weights(plw, any(_answer_mask(enc)), completion_weight, bool(data_weight))}"
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
    aligned with `enc.input_ids` and start with None (the first token has no prediction). With
    `losses_off` None and mode "on", the losses are one model's (e.g. a base model with no adapter)
    and the view says nothing about an adapter.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")
    special = set(special_ids) if special_ids is not None else None
    single = losses_off is None and mode == "on"
    n = len(enc.input_ids)
    on = list(losses_on) if losses_on is not None else [None] * n
    off = list(losses_off) if losses_off is not None else [None] * n
    if mode == "diff":
        values = [None if a is None or b is None else a - b for a, b in zip(on, off)]
        vmax = _robust_max(values, 0.5)
    else:
        values = on if mode == "on" else off
        vmax = _robust_max(values, 1.0)
    weights = token_weight_values(
        enc.prompt_mask, enc.completion_mask, plw, data_weight=getattr(enc, "data_weight", None)
    )
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
        answer = _is_answer(enc, i)
        if answer:
            classes.append("plw-answer")

        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"

        delta = None if on[i] is None or off[i] is None else on[i] - off[i]
        title = (
            f"{_describe(text)} | id {enc.input_ids[i]} | {label}{' (answer)' if answer else ''} | "
            f"weight {weights[i]:.4g} | "
            + (f"loss {fmt(on[i])}" if single else f"loss on {fmt(on[i])} | off {fmt(off[i])} | \u0394 {fmt(delta)}")
        )
        parts.append(
            f'<span class="{" ".join(classes)}" style="background-color:{colour}" '
            f'title="{html.escape(title, quote=True)}" data-label="{label}" data-loss="{fmt(value)}"'
            f"{ANSWER_ATTR if answer else ''}>{_display(text)}</span>"
        )
    has_answer = any(_answer_mask(enc))
    answer_legend = ANSWER_LEGEND if has_answer else ""
    if mode == "diff":
        legend = (
            '<div class="plw-legend">'
            f'<span><span class="sw" style="background:{_rgba(BETTER_RGB, MAX_ALPHA)}"></span>'
            f"adapter lowered the loss (down to \u2212{vmax:.2f} nats)</span>"
            f'<span><span class="sw" style="background:{_rgba(WORSE_RGB, MAX_ALPHA)}"></span>'
            f"adapter raised it (+{vmax:.2f})</span>"
            '<span>underline: <b style="color:#ea580c">completion</b> / <b style="color:#2563eb">prompt</b></span>'
            f"{answer_legend}</div>"
        )
    else:
        grad = f"linear-gradient(90deg,{_loss_color(0, 1)},{_loss_color(1, 1)})"
        legend = (
            '<div class="plw-legend">'
            f"<span>per-token loss{'' if single else f', adapter {mode}'}: 0"
            f'<span class="grad" style="background:{grad}"></span>'
            f"\u2265{vmax:.2f} nats</span>"
            '<span>underline: <b style="color:#ea580c">completion</b> / <b style="color:#2563eb">prompt</b></span>'
            f"{answer_legend}</div>"
        )

    def mean(mask_values, losses):
        picked = [v for m, v in zip(mask_values, losses) if m and v is not None]
        return sum(picked) / len(picked) if picked else float("nan")

    if single:
        foot = (
            f'<div class="plw-summary">mean completion loss <b>{mean(enc.completion_mask, on):.3f}</b>; '
            f"mean prompt loss {mean(enc.prompt_mask, on):.3f} (the first token, never predicted, left out)"
            + (f"; answer loss <b>{mean(_answer_mask(enc), on):.3f}</b>" if has_answer else "")
            + "</div>"
        )
    else:
        foot = (
            '<div class="plw-summary">mean completion loss: adapter on '
            f"<b>{mean(enc.completion_mask, on):.3f}</b>, off <b>{mean(enc.completion_mask, off):.3f}</b>; "
            f"mean prompt loss: on {mean(enc.prompt_mask, on):.3f}, off {mean(enc.prompt_mask, off):.3f}"
            + (
                f"; answer loss: on <b>{mean(_answer_mask(enc), on):.3f}</b>, "
                f"off <b>{mean(_answer_mask(enc), off):.3f}</b>"
                if has_answer
                else ""
            )
            + "</div>"
        )
    return (
        f"<style>{TOKEN_CSS}</style>{legend}"
        f'<div class="plw-tokens" data-mode="loss-{mode}">{"".join(parts)}</div>{foot}'
    )
