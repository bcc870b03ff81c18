"""What a sweep supports, and no more: the lesson of a grid of runs on one validation split.

An *arm* is one setting of what the sweep varies (the PLW, a PLW schedule, any other field), its
runs the seeds. For each arm: the answer accuracy of every seed's kept adapter (stopping on answer
loss, the lab's default on answer data) with the mean over seeds and its 95% t interval; the
stopping contrast (the adapter full-sequence loss would keep instead, paired example by example,
pooled over seeds in one exact McNemar test); the validation prompt loss at the first and last
evaluation (how far the model drifted from the prompts' distribution). Between arms: the
difference of the kept accuracies paired by seed with its t interval, and a pooled McNemar test
of the kept adapters, Holm-adjusted over all pairs. A difference is called real only when both
agree; everything else is said to be within noise at this budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from plw_lab.core import scores
from plw_lab.core.metrics import metric
from plw_lab.core.stopping import ANSWER_CRITERION, correctness, kept_eval, run_stopping
from plw_lab.core.sweep import PLW, SCHEDULE, SCHEDULE_END, summarise
from plw_lab.core.sweep_table import read_csv
from plw_lab.core.weights import plw_text

#: Settings that differ between a sweep's runs without making them different arms.
NOT_ARMS = ("train.seed", "train.run_name", "train.output_dir")
PLW_FIELDS = (PLW, SCHEDULE, SCHEDULE_END)
LEVEL = 0.05


@dataclass
class SeedRun:
    """One run of an arm, reduced to what the verdict needs."""

    arm: str
    seed: int
    path: str
    report: dict
    #: Per-example right/wrong of the adapters the answer loss and the full-sequence loss keep.
    kept: list[bool] | None
    full: list[bool] | None
    prompt_loss: tuple[float | None, float | None]


def flatten(config: dict) -> dict:
    return {f"{section}.{name}": value for section, part in config.items() for name, value in (part or {}).items()}


def varied_settings(configs: Sequence[dict]) -> list[str]:
    """The dotted settings whose values differ between the runs' (flattened) configs, seeds aside."""
    keys = sorted({k for c in configs for k in c} - set(NOT_ARMS))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def arm_label(config: dict, varied: Sequence[str]) -> str:
    """ "PLW 1→0 linear" or "PLW 0.1, train.completion_loss_weight 0.5": the arm's settings as people read them."""
    parts = []
    if any(k in PLW_FIELDS for k in varied):
        parts.append("PLW " + plw_text(config[SCHEDULE], config[PLW], config[SCHEDULE_END]))
    parts += [f"{k} {config.get(k)}" for k in varied if k not in PLW_FIELDS]
    return ", ".join(parts) or "all runs"


def arms_of(runs: Sequence) -> list[str]:
    """Each run's arm label (`plw_lab.core.runs.Run` objects), from the settings that vary between them."""
    configs = [flatten(run.config.to_dict()) for run in runs]
    varied = varied_settings(configs)
    return [arm_label(config, varied) for config in configs]


def seed_runs(runs: Sequence) -> list[SeedRun]:
    """`runs` (`plw_lab.core.runs.Run`, finished ones) as the verdict's records, labelled by arm."""
    out = []
    for run, arm in zip(runs, arms_of(runs)):
        evals = run.evals
        kept_at, full_at = kept_eval(evals, ANSWER_CRITERION), kept_eval(evals, "full_loss")
        prompt = [e.metrics.get("prompt_loss") for e in evals]
        out.append(
            SeedRun(
                arm=arm,
                seed=run.config.train.seed,
                path=str(run.path),
                report=run_stopping(run.summary, evals),
                kept=correctness(kept_at) if kept_at is not None else None,
                full=correctness(full_at) if full_at is not None else None,
                prompt_loss=(prompt[0], prompt[-1]) if prompt else (None, None),
            )
        )
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: a family of tests held to one 5% error rate."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _pooled(pairs: Sequence[tuple[list[bool], list[bool]]]) -> dict:
    """One exact McNemar test over the examples of several seeds (each seed's examples are its own pairs)."""
    first = [x for a, _ in pairs for x in a]
    second = [x for _, b in pairs for x in b]
    return scores.mcnemar(first, second)


def _accuracy(correct: list[bool] | None) -> float | None:
    return sum(correct) / len(correct) if correct else None


def arm_summary(arm: str, runs: Sequence[SeedRun]) -> dict:
    runs = sorted(runs, key=lambda r: r.seed)
    kept = [_accuracy(r.kept) for r in runs]
    full = [_accuracy(r.full) for r in runs]
    usable = [r for r in runs if r.kept and r.full and len(r.kept) == len(r.full)]
    contrast = _pooled([(r.full, r.kept) for r in usable]) if usable else None
    first = [r.prompt_loss[0] for r in runs if r.prompt_loss[0] is not None]
    last = [r.prompt_loss[1] for r in runs if r.prompt_loss[1] is not None]
    return {
        "arm": arm,
        "seeds": [r.seed for r in runs],
        "kept_accuracy": kept,
        "kept_steps": [r.report.get(ANSWER_CRITERION, {}).get("step") for r in runs],
        "kept": summarise([a for a in kept if a is not None]) if any(a is not None for a in kept) else None,
        "full_loss_accuracy": full,
        "full_loss_steps": [r.report.get("full_loss", {}).get("step") for r in runs],
        "full_loss": summarise([a for a in full if a is not None]) if any(a is not None for a in full) else None,
        # Pooled over seeds: full-sequence loss's adapter first, answer loss's second.
        "stopping_test": contrast,
        "seed_p_values": [(r.report.get("test") or {}).get("p_value") for r in runs],
        "prompt_loss_first": summarise(first) if first else None,
        "prompt_loss_last": summarise(last) if last else None,
        "n": len(runs[0].kept) if runs and runs[0].kept else None,
    }


def compare_arms(a: Sequence[SeedRun], b: Sequence[SeedRun]) -> dict | None:
    """Arm `a` against arm `b` on the seeds both ran: the paired difference of kept accuracy and a pooled test."""
    by_seed = {r.seed: r for r in b if r.kept}
    pairs = [
        (r, by_seed[r.seed]) for r in a if r.kept and r.seed in by_seed and len(r.kept) == len(by_seed[r.seed].kept)
    ]
    if not pairs:
        return None
    differences = [_accuracy(x.kept) - _accuracy(y.kept) for x, y in pairs]
    test = _pooled([(x.kept, y.kept) for x, y in pairs])
    return {"difference": summarise(differences), "test": test, "seeds": [x.seed for x, _ in pairs]}


def sweep_verdict(runs: Sequence) -> dict:
    """`{"arms": [...], "pairs": [...], "sentences": [...]}` for the finished runs of a sweep (see the module doc)."""
    records = seed_runs(runs)
    arms: dict[str, list[SeedRun]] = {}
    for r in records:
        arms.setdefault(r.arm, []).append(r)
    summaries = [arm_summary(name, group) for name, group in arms.items()]
    pairs = []
    for x, y in combinations(arms, 2):
        result = compare_arms(arms[x], arms[y])
        if result:
            pairs.append({"first": x, "second": y, **result})
    for pair, adjusted in zip(pairs, holm([p["test"]["p_value"] for p in pairs])):
        pair["p_adjusted"] = adjusted
        interval = pair["difference"]
        excludes_zero = interval["low"] is not None and (interval["low"] > 0 or interval["high"] < 0)
        pair["supported"] = excludes_zero and adjusted < LEVEL
    return {"arms": summaries, "pairs": pairs, "sentences": verdict_sentences(summaries, pairs)}


#: An accuracy as every view writes it (the metrics registry's format): '66.7%'.
_accuracy_text = metric("answer_accuracy").format


def _interval(summary: dict | None, scale: float = 100.0, unit: str = "%") -> str:
    if not summary or summary["low"] is None:
        return "no interval from one seed"
    return f"95% interval {scale * summary['low']:.1f} to {scale * summary['high']:.1f}{unit}"


def verdict_sentences(arms: Sequence[dict], pairs: Sequence[dict]) -> list[str]:
    """The verdict in plain sentences: each arm, its stopping contrast, each pair of arms, the prompt loss."""
    if not any(a["kept"] for a in arms):
        return ["This sweep's data has no candidate answers, so the verdict (which compares answer accuracy) is empty."]
    out = []
    for a in arms:
        seeds = len(a["seeds"])
        kept = a["kept"]
        out.append(
            f"{a['arm']}: stopping on answer loss keeps an adapter at {_accuracy_text(kept['mean'])} (mean of "
            f"{seeds} seed{'s' * (seeds != 1)}, {_interval(kept)}; "
            f"seeds {', '.join(_accuracy_text(v) for v in a['kept_accuracy'])})."
        )
        test = a["stopping_test"]
        if test and a["full_loss"]:
            gap = kept["mean"] - a["full_loss"]["mean"]
            steps = ", ".join(str(s) for s in a["full_loss_steps"])
            judged = (
                f"a difference beyond noise (exact McNemar pooled over seeds, p = {test['p_value']:.2g})"
                if test["p_value"] < LEVEL
                else f"within noise (exact McNemar pooled over seeds, p = {test['p_value']:.2g})"
            )
            out.append(
                f"  Stopping on full-sequence loss instead keeps step {steps} and "
                f"{_accuracy_text(a['full_loss']['mean'])}: {100 * gap:+.1f} points for answer loss, {judged}."
            )
        first, last = a["prompt_loss_first"], a["prompt_loss_last"]
        if first and last:
            out.append(f"  Validation prompt loss {first['mean']:.2f} at step 0, {last['mean']:.2f} at the end.")
    for p in pairs:
        d = p["difference"]
        verdict = (
            "a real difference on this data at this budget"
            if p["supported"]
            else "cannot be told apart on this data at this budget"
        )
        out.append(
            f"{p['first']} vs {p['second']}: {100 * d['mean']:+.1f} points (paired by seed over {len(p['seeds'])}, "
            f"{_interval(d, unit=' points')}; pooled McNemar p = {p['test']['p_value']:.2g}, Holm-adjusted over "
            f"{len(pairs)} comparisons {p['p_adjusted']:.2g}): {verdict}."
        )
    return out


#: The real-data PLW lesson shipped in the wheel: the measured runs of the `plw-lesson` recipe (configs,
#: events and summaries, no adapters) and `measured.json` (date, commit, machine, commands, wall time).
SHIPPED_LESSON = Path(__file__).resolve().parents[1] / "lessons" / "plw-lesson"
#: What its runs train on: the plw-lesson recipe's data.source, builtin:bbb.
SHIPPED_LESSON_DATA = "real data (B3DB molecules)"


def sweep_runs(folders: Sequence[str | Path]) -> list:
    """The finished runs inside `folders`: sweep folders (runs one level down), run folders, or folders of sweeps."""
    from plw_lab.core.runs import is_run_folder, load_run, run_folders

    found: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder of runs or sweeps")
        found += [folder] if is_run_folder(folder) else _grid_order(run_folders(folder))
    runs = [load_run(path, damaged_ok=True) for path in found]
    return [run for run in runs if run.status == "finished" and run.config is not None]


def _grid_order(paths: Sequence[Path]) -> list[Path]:
    """Run folders with each sweep's runs in its sweep.csv order (the grid's: the crossed cells, then the
    arms), so the verdict lists arms as the sweep ran them; other folders keep their name order."""
    rows: dict[Path, dict[str, int]] = {}
    for parent in dict.fromkeys(path.parent for path in paths):
        try:
            rows[parent] = {Path(r["run"] or "").name: i for i, r in enumerate(read_csv(parent / "sweep.csv"))}
        except (OSError, ValueError, KeyError):  # not a sweep, or a damaged table: the names' order
            rows[parent] = {}
    first = {parent: i for i, parent in enumerate(rows)}
    return sorted(paths, key=lambda p: (first[p.parent], rows[p.parent].get(p.name, len(rows[p.parent]))))
