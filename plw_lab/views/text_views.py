"""Text views: markdown statistics, the training progress bar, comparison and run tables, generations.

Each function takes plain data (statistics, a `History`, comparison dicts, runs) and returns
markdown, an HTML string or table rows (a list of dicts for a DataFrame), shared by the Gradio
app and the notebooks. Nothing here imports a UI toolkit or touches a model.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Sequence

from plw_lab.core.config import TrainConfig
from plw_lab.core.events import event_field
from plw_lab.core.metrics import METRICS, metric
from plw_lab.core.metrics import label as metric_label
from plw_lab.core.runs import run_best, run_config
from plw_lab.core.stats import LengthStats
from plw_lab.core.sweep import SCHEDULE, SCHEDULE_END, varied
from plw_lab.core.sweep_table import value_text
from plw_lab.core.weights import plw_text
from plw_lab.views.history import History
from plw_lab.views.tokens_view import completion_weight_share

SEP = " \u00b7 "
DASH = "\u2013"


# -- data -------------------------------------------------------------------------------------


def stats_markdown(
    stats: LengthStats,
    plw: float,
    skipped: int = 0,
    total: int | None = None,
    packing: dict | None = None,
    completion_weight: float = 1.0,
) -> str:
    """`packing` is `plw_lab.core.packing.packing_efficiency(...)` for the chosen batch size and max length;
    `completion_weight` is lambda_r (`train.completion_loss_weight`)."""
    s = stats.summary()
    p, c = s["prompt_tokens"], s["completion_tokens"]
    share = completion_weight_share(s["total_prompt"], s["total_completion"], plw, completion_weight)
    scope = f" (statistics over the first {stats.n} of {total})" if total and total > stats.n else ""
    lines = [
        f"**{stats.n} examples**{scope}" + (f", {skipped} skipped (too long or empty)" if skipped else ""),
        "",
        "| tokens (as written) | mean | min | median | p95 | max |",
        "|---|---:|---:|---:|---:|---:|",
        f"| prompt | {p['mean']:.1f} | {p['min']:g} | {p['median']:g} | {p['p95']:.0f} | {p['max']:g} |",
        f"| completion | {c['mean']:.1f} | {c['min']:g} | {c['median']:g} | {c['p95']:.0f} | {c['max']:g} |",
        "",
        f"Generation ratio R<sub>g</sub> = completion / prompt tokens: mean **{s['rg_mean']:.4g}**, "
        f"geometric mean **{s['rg_geomean']:.4g}**, median {s['rg_median']:.4g}.",
        "",
        f"At PLW **{plw:g}**"
        f"{f' and completion weight λ<sub>r</sub> **{completion_weight:g}**' if completion_weight != 1 else ''}"
        f" the completion tokens carry **{share:.1%}** of the total loss weight "
        f"({s['total_completion']} completion vs {s['total_prompt']} prompt tokens).",
    ]
    if s["tokens_cut"]:
        lines += [
            "",
            f"\u26a0 The lengths above are as written; **max_length cuts {s['examples_cut']} of {stats.n} examples**: "
            f"{s['tokens_cut']:,} prompt tokens, {s['tokens_cut'] / max(1, s['total_prompt_raw']):.0%} of all prompt "
            "tokens (the loss-weight share above counts what is kept).",
        ]
    if s["data_weighted"]:
        lines += [
            "",
            f"**{s['data_weighted']}** examples carry their own weight from the data (a `weight` field on the record "
            f"or its messages): their completion tokens count {s['total_weighted_completion']:.4g} in all instead of "
            f"{s['total_completion']}.",
        ]
    if packing and packing.get("tokens"):
        lines += [
            "",
            "Packing efficiency (share of computed positions that are real tokens): "
            f"padded **{packing['padded']:.0%}**, packed **{packing['packed']:.0%}** "
            f"({packing['speedup']:.2f}x fewer positions with `train.packing`).",
        ]
    return "\n".join(lines)


def preview_rows(
    examples: Sequence, encoded_by_index: dict | None = None, limit: int = 50, width: int = 110
) -> list[dict]:
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


# -- training progress --------------------------------------------------------------------------


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
    "stopping": ("#b45309", "#fffbeb", "stopping"),
    "finished": ("#15803d", "#f0fdf4", "finished"),
    "stopped": ("#b45309", "#fffbeb", "stopped"),
    "failed": ("#b91c1c", "#fef2f2", "failed"),
}


def _bar(fraction: float | None, colour: str, height: int, test_id: str) -> str:
    """A progress bar; an unknown fraction shows as a striped bar that fills the track."""
    if fraction is None:
        fill = f"width:100%;background:repeating-linear-gradient(45deg,{colour}55 0 8px,{colour}22 8px 16px)"
    else:
        fill = f"width:{fraction * 100:.1f}%;background:{colour};transition:width .4s"
    return (
        f'<div class="{test_id}" data-fraction="{"" if fraction is None else f"{fraction:.3f}"}" '
        f'style="height:{height}px;background:#e5e7eb;border-radius:{height // 2}px;margin:6px 0;overflow:hidden">'
        f'<div style="height:100%;{fill}"></div></div>'
    )


def progress_html(history: History, note: str = "", now: float | None = None) -> str:
    """The run's status, a bar over its steps, the current phase with its own bar, ETA (evaluations
    included), elapsed time, tokens/s and train loss. `now` (epoch seconds) keeps the clock ticking."""
    now = time.time() if now is None else now
    colour, background, label = STATUS_STYLE.get(history.status, STATUS_STYLE["idle"])
    last = history.last_step or {}
    step = int(last.get("step") or 0)
    total = history.total_steps or int(last.get("total_steps") or 0)
    fraction = 1.0 if history.status == "finished" else (min(step / total, 1.0) if total else 0.0)
    live = history.status in ("starting", "running", "stopping")
    elapsed = history.elapsed(now) if live or history.done else None
    parts = [f"step <b>{step}</b> / {total or '?'}"]
    if last.get("epoch") is not None:
        parts.append(f"epoch {float(last['epoch']):.2f}")
    if live:
        parts.append(f"ETA <b>{format_duration(history.eta(now))}</b>")
    if elapsed is not None:
        parts.append(f"elapsed {format_duration(elapsed)}")
    if last.get("tokens_per_second"):
        parts.append(f"<b>{last['tokens_per_second']:,.0f}</b> tokens/s")
    if last.get("train_loss") is not None:
        parts.append(f"train loss {float(last['train_loss']):.4f}")
    if history.evals:
        parts.append(f"{len(history.evals)} evaluations")
    phase_row = ""
    what, phase_fraction = history.phase_progress(now)
    if live and what:
        since = format_duration(now - history.phase_since) if history.phase_since is not None else ""
        phase_row = (
            f'<div class="plw-phase" data-phase="{html.escape(history.phase)}" style="font-size:13px;color:#374151;'
            f'margin-top:6px">{html.escape(what)}{f" {SEP} {since}" if since else ""}</div>'
            + _bar(phase_fraction, colour, 6, "plw-phase-bar")
        )
    detail = ""
    if history.done and history.end_message:
        detail = f'<div class="plw-progress-msg">{html.escape(history.end_message)}</div>'
    if note:
        detail += f'<div class="plw-progress-msg">{html.escape(note)}</div>'
    run = f'<span class="plw-run">{html.escape(history.run_dir)}</span>' if history.run_dir else ""
    return (
        f'<div class="plw-progress" data-status="{history.status}" data-step="{step}" data-phase="{history.phase}" '
        f'style="border:1px solid {colour}33;background:{background};border-radius:8px;padding:10px 12px">'
        f'<div style="display:flex;justify-content:space-between;align-items:center;gap:8px;flex-wrap:wrap">'
        f'<span style="font-weight:600;color:{colour};text-transform:uppercase;letter-spacing:.04em">{label}</span>'
        f"{run}</div>"
        + _bar(fraction, colour, 10, "plw-steps-bar")
        + f'<div style="font-size:13px;color:#374151">{SEP.join(parts)}</div>{phase_row}{detail}</div>'
    )


def run_settings_html(config: dict, n_train: int | None = None, n_val: int | None = None) -> str:
    """A run's data and settings in one line each: what a watcher needs to know what they are watching."""
    t, d, m, lora = (config.get(k) or {} for k in ("train", "data", "model", "lora"))
    source = str(d.get("source", ""))
    shown = source if source.startswith(("builtin:", "hf:")) else _source_name(source)
    data = f"data: <b>{html.escape(shown or '?')}</b>"
    if n_train is not None and n_val is not None:
        data += f", {n_train:,} train / {n_val:,} validation"
    steps = t.get("max_steps") or 0
    length = f"{steps} steps" if steps > 0 else f"{t.get('epochs', '?')} epochs"
    plw = plw_text(t.get("plw_schedule", "constant"), t.get("prompt_loss_weight", 0), t.get("plw_end", 0))
    settings = [
        f"PLW <b>{plw}</b>",
        length,
        f"learning rate {t.get('learning_rate', 0):g}",
        f"batch {t.get('batch_size', '?')} \u00d7 {t.get('grad_accum', 1)}",
        f"LoRA r {lora.get('r', '?')}, alpha {lora.get('alpha', '?')}, "
        f"layers {html.escape(str(lora.get('layers', '')))}",
        f"model {html.escape(str(m.get('name', '')))}",
    ]
    return f'<div class="plw-run-data">{data}</div><div class="plw-run-settings">{SEP.join(settings)}</div>'


def run_point(result) -> dict:
    """A finished run's numbers for comparing remedies: accuracy with its interval (adapter on and off),
    the predicted answers and their entropy, KL to the base model, the probe perplexity, steps."""
    summary, comparison = result.summary or {}, result.comparison or {}
    on, off = comparison.get("on") or {}, comparison.get("off") or {}
    m_on, m_off = on.get("metrics") or {}, off.get("metrics") or {}
    ppl_on, ppl_off = on.get("probe_perplexity"), off.get("probe_perplexity")
    return {
        "accuracy": m_on.get("answer_accuracy"),
        "accuracy_ci": m_on.get("answer_accuracy_ci"),
        "accuracy_off": m_off.get("answer_accuracy"),
        "majority_baseline": m_on.get("majority_baseline"),
        "predicted": m_on.get("predicted") or {},
        "answer_entropy": m_on.get("answer_entropy"),
        "kl_to_base": m_on.get("kl_to_base"),
        "probe_ppl": ppl_on,
        "probe_ppl_change": ppl_on / ppl_off - 1 if ppl_on and ppl_off else None,
        "examples": m_on.get("examples") or [],
        "steps": summary.get("steps"),
        "adapter_step": summary.get("adapter_step"),
    }


def _pct(value, signed: bool = False) -> str:
    return "\u2013" if value is None or value != value else f"{value:+.0%}" if signed else f"{value:.0%}"


def relative_change(value) -> str:
    """A relative change such as a perplexity's: a percentage, or a factor once it is tenfold or more
    (a wrecked model's perplexity can grow a millionfold, which no one reads as a percentage)."""
    if value is None or value != value:
        return "\u2013"
    if abs(value) < 0.005:
        return "\u00b10%"  # "-0%" for a change of -0.1% reads as a sign error
    return f"\u00d7{value + 1:,.3g}" if value + 1 >= 10 else f"{value:+.0%}"


def run_report(result, reference=None) -> dict:
    """One finished run as a compact, rounded row of a comparison table (strings, narrow columns).

    With `reference` (another run on the same validation set), the accuracy difference is tested
    on the paired answers (exact McNemar), so the row says whether it is beyond noise.
    """
    from plw_lab.core.evaluation import paired_answers

    point = run_point(result)
    ci = point["accuracy_ci"]
    row = {
        "accuracy on [95% CI]": f"{_pct(point['accuracy'])} [{_pct(ci[0])}\u2013{_pct(ci[1])}]"
        if ci
        else _pct(point["accuracy"]),
        "predicted (on)": " \u00b7 ".join(f"{k} {v}" for k, v in point["predicted"].items()),
        "answer entropy": "\u2013" if point["answer_entropy"] is None else f"{point['answer_entropy']:.2f} bits",
        "KL to base": "\u2013" if point["kl_to_base"] is None else f"{point['kl_to_base']:.3f}",
        "probe ppl": "\u2013"
        if point["probe_ppl"] is None
        else f"{point['probe_ppl']:.4g} ({relative_change(point['probe_ppl_change'])})",
        "steps (kept)": f"{point['steps']} ({point['adapter_step']})",
    }
    if reference is not None and reference is not result:
        ref = run_point(reference)
        if point["examples"] and ref["examples"]:
            test = paired_answers(ref["examples"], point["examples"])
            diff = (point["accuracy"] or 0) - (ref["accuracy"] or 0)
            row["accuracy vs reference"] = f"{diff * 100:+.0f} pts, p={test['p_value']:.2f} ({test['verdict']})"
    return row


def remedy_verdicts(results: dict, reference: str) -> list[str]:
    """One plain sentence per remedy: what it changed against `reference`, and whether the accuracy
    change is beyond noise (exact McNemar on the same validation examples)."""
    from plw_lab.core.evaluation import paired_answers

    ref = run_point(results[reference])
    lines = []
    for name, result in results.items():
        if name == reference:
            continue
        point = run_point(result)
        parts = [name + ":"]
        if point["examples"] and ref["examples"]:
            test = paired_answers(ref["examples"], point["examples"])
            diff = (point["accuracy"] or 0) - (ref["accuracy"] or 0)
            parts.append(
                f"accuracy {_pct(point['accuracy'])} vs {_pct(ref['accuracy'])} ({diff * 100:+.0f} points, "
                f"{test['first_only']} examples lost, {test['second_only']} gained; McNemar p = {test['p_value']:.2f}, "
                f"{'a real difference' if test['verdict'].startswith('significant') else 'not beyond noise'});"
            )
        if point["answer_entropy"] is not None and ref["answer_entropy"] is not None:
            parts.append(f"answer entropy {point['answer_entropy']:.2f} vs {ref['answer_entropy']:.2f} bits;")
        if point["kl_to_base"] is not None and ref["kl_to_base"] is not None:
            parts.append(f"KL to base {point['kl_to_base']:.3f} vs {ref['kl_to_base']:.3f};")
        if point["probe_ppl_change"] is not None and ref["probe_ppl_change"] is not None:
            parts.append(
                f"probe perplexity {relative_change(point['probe_ppl_change'])} "
                f"vs {relative_change(ref['probe_ppl_change'])} (no interval: one fixed set of passages)."
            )
        lines.append(" ".join(parts))
    return lines


# -- compare ----------------------------------------------------------------------------------


#: The metrics of the on/off table, in order: losses, then answers, then the baselines beside them.
COMPARISON_METRICS = (
    "completion_loss",
    "answer_loss",
    "format_loss",
    "prompt_loss",
    "full_loss",
    "token_accuracy",
    "answer_accuracy",
    "answer_accuracy_generated",
    "unparseable",
    "candidate_mass",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "majority_baseline",
    "chance",
    "kl_to_base",
    "answer_entropy",
    "distinct_1",
    "distinct_2",
)


def metrics_comparison_rows(
    on: dict,
    off: dict,
    probe_on: float | None = None,
    probe_off: float | None = None,
    paired: dict | None = None,
    split: dict | None = None,
) -> list[dict]:
    """Rows of metric / adapter off / adapter on / change, for a side-by-side table.

    Accuracies carry their 95% interval. `paired` (the comparison's exact McNemar tests) adds a
    row per accuracy saying whether the change is beyond noise; `split` (`format_vs_task`) a row
    saying how much of the generated-accuracy gain is format and how much task.
    """
    rows = []
    for name in COMPARISON_METRICS:
        a, b = off.get(name), on.get(name)
        if a is None and b is None:
            continue
        m = METRICS[name]
        change = None if a is None or b is None or a != a or b != b else b - a
        if change is None:
            shown = DASH
        elif m.unit == "share":
            shown = f"{change * 100:+.1f} pts"
        elif m.unit == "count":
            shown = f"{change:+d}"
        else:
            shown = f"{change:+.4f}"
        rows.append(
            {
                "metric": m.label,
                "adapter off": m.format_with_interval(off),
                "adapter on": m.format_with_interval(on),
                "change": shown,
            }
        )
    for name, test in (paired or {}).items():
        rows.append(
            {
                "metric": f"paired test of {METRICS[name].label} (exact McNemar, same {test['n']} examples)",
                "adapter off": f"right only off: {test['first_only']}",
                "adapter on": f"right only on: {test['second_only']}",
                "change": f"p = {test['p_value']:.3g}: {test['verdict']}",
            }
        )
    if split:
        rows.append(
            {
                "metric": "gain in generated accuracy: task vs format",
                "adapter off": (
                    f"candidate mass {split['candidate_mass'][0]:.0%}, parseable {split['parse_rate'][0]:.0%}"
                ),
                "adapter on": (
                    f"candidate mass {split['candidate_mass'][1]:.0%}, parseable {split['parse_rate'][1]:.0%}"
                ),
                "change": f"task {split['task_gain'] * 100:+.1f} pts, format {split['format_gain'] * 100:+.1f} pts",
            }
        )
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


PROBE_METRICS = ("answer_accuracy", "balanced_accuracy", "auc", "majority_baseline")


def probe_rows(probe: dict, comparison: dict | None = None) -> list[dict]:
    """The frozen-feature probe beside the adapter off and on: one row a model, the same metrics and intervals."""
    sides = [
        ("frozen base + logistic regression, mean-pooled prompt", probe["mean"]),
        ("frozen base + logistic regression, last prompt token", probe["last"]),
    ]
    if comparison:
        sides += [
            ("adapter off (base model)", comparison["off"]["metrics"]),
            ("adapter on (fine-tuned)", comparison["on"]["metrics"]),
        ]
    rows = []
    for name, metrics in sides:
        row = {"model": name}
        for key in PROBE_METRICS:
            if any(key in m for _, m in sides):
                row[metric_label(key)] = metric(key).format_with_interval(metrics)
        rows.append(row)
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
            f"<td>{html.escape(str(row.get('reference', '') or DASH))}</td>"
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
        "<th>adapter off (base model)</th><th>adapter on (fine-tuned)</th></tr></thead>"
        f"<tbody>{''.join(cells)}</tbody></table>"
    )


def _clip_tail(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else "\u2026" + text[-(width - 1) :]


# -- runs -------------------------------------------------------------------------------------


def measured_markdown(label: str, commands: Sequence[str]) -> str:
    """Where a measured lesson's numbers come from (`plw_lab.api.Lesson.label`) and the commands that reproduce it."""
    shown = "\n".join(commands)
    return f"**{label}**. Reproduce it with:\n\n```bash\n{shown}\n```"


def verdict_html(sentences: Sequence[str]) -> str:
    """A sweep verdict's sentences (`plw_lab.core.sweep_verdict`) as a list; an indented sentence (what one arm's
    stopping contrast and prompt loss say) nests under the arm's own."""
    items: list[list[str]] = []
    for sentence in sentences:
        if sentence.startswith(" ") and items:
            items[-1].append(sentence.strip())
        else:
            items.append([sentence.strip()])
    lines = []
    for head, *details in items:
        nested = "".join(f"<li>{html.escape(d)}</li>" for d in details)
        lines.append(f"<li>{html.escape(head)}{f'<ul>{nested}</ul>' if nested else ''}</li>")
    return f'<ul class="plw-verdict">{"".join(lines)}</ul>' if lines else ""


def runs_rows(runs: Sequence) -> list[dict]:
    """One row per run: name, status, config essentials including PLW, best metrics and their steps."""
    rows = []
    for run in runs:
        cfg = run_config(run)
        t, d, m, lora = cfg.get("train", {}), cfg.get("data", {}), cfg.get("model", {}), cfg.get("lora", {})
        best = run_best(run)
        summary = getattr(run, "summary", None) or {}

        def best_of(name, best=best):
            b = best.get(name)
            if not b:
                return "\u2013"
            m = METRICS[name]
            return f"{m.format_with_interval({name: b['value'], m.interval: b.get('ci')})} @ {b['step']}"

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
                # an interrupted run has no summary: the last step it reached
                "steps": summary.get(
                    "steps",
                    getattr(run, "step", max([event_field(e, "step", 0) for e in getattr(run, "evals", [])] or [0])),
                ),
                "best completion loss @ step": best_of("completion_loss"),
                "best accuracy @ step": best_of("answer_accuracy"),
                "best answer loss @ step": best_of("answer_loss"),
                "best full loss @ step": best_of("full_loss"),
                "time": format_duration(summary.get("elapsed_seconds")),
            }
        )
    return rows


def _source_name(source: str) -> str:
    if source.startswith(("builtin:", "hf:")):
        return source.removeprefix("builtin:")
    return source.replace("\\", "/").rsplit("/", 1)[-1]


# -- settings help ---------------------------------------------------------------------------


def settings_help_markdown(sections: dict[str, list[dict]]) -> str:
    """A reference table of every setting, built from `plw_lab.core.config.field_specs`."""
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


def cell_text(values: dict, seed: bool = True) -> str:
    """A sweep cell's values in words, e.g. 'PLW 0.1, train.completion_loss_weight 0.5, seed 0', the PLW
    with its schedule where the sweep varies one ('PLW 1→0 linear'); `seed` False: without the seed, as
    for a mean over seeds."""
    keys = [key for key in varied([values]) if key in values] + (["seed"] if seed else [])
    scheduled = "plw" in values and SCHEDULE in values
    parts = []
    for key in keys:
        if scheduled and key == "plw":
            end = values.get(SCHEDULE_END, TrainConfig.plw_end)  # a sweep from before the column: the default
            parts.append(f"PLW {plw_text(values[SCHEDULE], values['plw'], end)}")
        elif not (scheduled and key in (SCHEDULE, SCHEDULE_END)):
            parts.append(f"{'PLW' if key == 'plw' else key} {value_text(values.get(key))}")
    return ", ".join(parts)


def grid_text(grid) -> str:
    """A sweep's grid (`plw_lab.core.sweep_table.Grid`) in words: 'PLW 0, 1 x train.completion_loss_weight
    0.5, 1 x seeds 0, 1', and its arms: '(PLW 0, 1 + PLW 1→0 linear) x seeds 0, 1'."""
    listed = lambda values: ", ".join(map(value_text, values))
    crossed = [f"PLW {listed(grid.plws)}"]
    crossed += [f"{key} {listed(values)}" for key, values in grid.settings.items() if len(values) > 1]
    seeds = f"seeds {listed(grid.seeds)}"
    if not grid.arms:
        return " x ".join([*crossed, seeds])
    arms = [cell_text({k: arm[k] for k in keys}, seed=False) for arm, keys in zip(grid.arms, grid.arm_keys)]
    return f"({' x '.join(crossed)} + {' + '.join(arms)}) x {seeds}"


def sweep_row_text(row: dict) -> str:
    """One finished run of a sweep (a `sweep.csv` row) in a line: its status and best values, the
    accuracy with its 95% interval."""
    low, high = row.get("answer_accuracy_ci_low"), row.get("answer_accuracy_ci_high")
    accuracy = metric("answer_accuracy").format_with_interval(
        {
            "answer_accuracy": row.get("best_answer_accuracy"),
            "answer_accuracy_ci": [low, high] if low is not None else None,
        }
    )
    status = f"pruned at step {row['pruned_step']}" if row["status"] == "pruned" else row["status"]
    return (
        f"{cell_text(row)}: {status} after {row.get('steps')} steps; best answer accuracy "
        f"{accuracy} at step {row.get('best_answer_accuracy_step')}, best answer loss "
        f"{metric('answer_loss').format(row.get('best_answer_loss'))} at step {row.get('best_answer_loss_step')}"
    )
