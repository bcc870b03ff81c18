"""PLW sweeps: a grid of PLW values x seeds on one split, one run per cell, and what they add up to.
The folders and sweep.csv they write are `plw_lab.core.sweep_table`'s.

Seeds change the LoRA initialisation and the order of the training examples, never the split
(`data.split_seed` stays), so every run is scored on the same validation examples. `points`
turns the rows into what the sweep figure draws: per PLW the mean over seeds with a 95% interval,
and the quadratic fit of performance against PLW when there are at least 4 PLW values. Runs that
did not finish, were pruned, or ran a different number of steps are kept in the table and the
figure but left out of the means and the fit.

`sweep.backend` picks who trains the runs: 'local' trains them one after another in this process,
'ray' (`plw_lab.core.sweep_ray`, imported only then) makes each a Ray Tune trial. Both write the
same folders and rows.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.extras import require
from plw_lab.core.runs import ResumeError, load_run, run_config
from plw_lab.core.sweep_table import (
    DONE,
    GRID_FILE,
    Cell,
    SweepTable,
    cell_name,
    folder_row,
    new_cell,
    read_csv,
    run_row,
)

#: The fit needs this many distinct PLW values (a parabola through 3 points always fits exactly).
MIN_FIT_PLWS = 4
#: Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: the normal approximation below).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t (Cornish-Fisher beyond the table; within 0.002 at df 11)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def check_sweep(cfg: LabConfig) -> None:
    """The sweep.* settings that only make sense together (each alone is checked by the config)."""
    sweep = cfg.sweep
    if sweep.prune == "none":
        return
    if sweep.backend != "ray":
        raise ConfigError(
            f"sweep.prune {sweep.prune} needs sweep.backend ray: the local backend trains one run at a time, "
            "so no run can be compared with the others while it trains"
        )
    if cfg.train.early_stopping_metric == "none":
        raise ConfigError(
            "sweep.prune compares runs on train.early_stopping_metric, which is 'none'; set it (e.g. 'auto')"
        )
    if cfg.train.max_steps and sweep.grace_steps >= cfg.train.max_steps:
        raise ConfigError(
            f"sweep.grace_steps {sweep.grace_steps} must be below train.max_steps {cfg.train.max_steps}: "
            "runs are first compared after grace_steps steps"
        )


def ray_backend():
    """`plw_lab.core.sweep_ray`, or a `MissingExtraError` with the install line where Ray Tune is missing."""
    require("ray", "sweep.backend ray")
    from plw_lab.core import sweep_ray

    return sweep_ray


def run_sweep(
    cfg: LabConfig,
    plws: Sequence[float],
    seeds: Sequence[int],
    name: str = "",
    subscribers=(),
    stop: threading.Event | None = None,
    on_run: Callable[[dict], None] | None = None,
    examples=None,
    watch: Callable[[float, int], Sequence] | None = None,
) -> Path:
    """Train one run per (PLW, seed) on the same split; write sweep.csv after each run. Returns the folder.

    `subscribers` see every run's events; `watch(plw, seed)` may return more subscribers for that
    run alone (e.g. a live chart per run); `on_run` gets each finished row; a set `stop` ends the
    sweep after the current run stops (its row says "stopped"). On the ray backend the runs train
    in Ray's workers: their events are in their folders' events.jsonl, and Ctrl-C stops them.
    """
    if not plws or not seeds:
        raise ValueError("a sweep needs at least one PLW value and one seed")
    check_sweep(cfg)
    # Everything checkable is checked before the sweep folder exists, so a refused sweep leaves nothing.
    if cfg.sweep.backend == "ray":
        ray_backend()
        cfg.validate()  # the workers' machines may differ from this one: they check the rest themselves
    else:
        from plw_lab.core.training import plan

        plan(new_cell(cfg, Path(cfg.train.output_dir), plws[0], seeds[0]).cfg, examples)
    base = Path(cfg.train.output_dir)
    folder = base / (name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = base / f"{name or 'sweep'}-{suffix}"
    folder.mkdir(parents=True)
    cfg.save(folder / "sweep_config.yaml")  # not config.yaml: the folder is not itself a run
    grid = [(float(plw), int(seed)) for plw in plws for seed in seeds]
    (folder / GRID_FILE).write_text(json.dumps({"plws": [float(p) for p in plws], "seeds": [int(s) for s in seeds]}))
    table = SweepTable(folder, grid)
    cells = [new_cell(cfg, folder, plw, seed) for plw, seed in grid]
    run_cells(cfg, cells, table, subscribers, stop, on_run, examples, watch)
    return folder


def resume_sweep(
    folder: str | Path,
    settings: dict | None = None,
    subscribers=(),
    stop: threading.Event | None = None,
    on_run: Callable[[dict], None] | None = None,
) -> Path:
    """Finish the runs of the sweep in `folder` that did not finish: a stopped, failed or interrupted
    run continues from its checkpoint (or starts again beside its folder when it has none), a run
    never started starts; finished and pruned runs stay as they are. `settings` override sweep.*
    (e.g. another backend or cluster); the runs keep their own configs."""
    folder = Path(folder)
    if not (folder / "sweep_config.yaml").exists():
        raise ResumeError(f"{folder} is not a sweep folder (no sweep_config.yaml)")
    if not (folder / GRID_FILE).exists():
        raise ResumeError(f"{folder.name} has no {GRID_FILE} (a sweep from an older lab); start it again")
    cfg = LabConfig.load(folder / "sweep_config.yaml")
    bad = [key for key in settings or {} if not key.startswith("sweep.")]
    if bad:
        raise ConfigError(f"a resumed sweep keeps its runs' configs; only sweep.* settings may change, not {bad}")
    cfg = cfg.override(settings) if settings else cfg
    check_sweep(cfg)
    if cfg.sweep.backend == "ray":
        ray_backend()
    spec = json.loads((folder / GRID_FILE).read_text())
    grid = [(float(plw), int(seed)) for plw in spec["plws"] for seed in spec["seeds"]]
    rows = {(r["plw"], r["seed"]): r for r in read_csv(folder)} if (folder / "sweep.csv").exists() else {}
    kept, cells = [], []
    for plw, seed in grid:
        row = rows.get((plw, seed))
        if row and row["status"] in DONE:
            kept.append(row)
            continue
        run_dir = Path(row["run"]) if row else folder / cell_name(plw, seed)
        if (run_dir / "config.yaml").exists():
            run = load_run(run_dir)
            ended_early = str(run.summary.get("stop_reason", "")).startswith("early stopping")
            if run.status == "running":
                raise ResumeError(f"{run_dir.name} is still training; let it end (or stop it) before resuming")
            if run.status == "finished" or ended_early:
                kept.append(folder_row(plw, seed, run_dir))
                continue
            if run.resumable:
                cells.append(Cell(plw, seed, run.config, run_dir, resume=True))
                continue
        cells.append(new_cell(cfg, folder, plw, seed))  # nothing to continue from: a fresh run beside it
    table = SweepTable(folder, grid, kept)
    run_cells(cfg, cells, table, subscribers, stop, on_run)
    return folder


def run_cells(
    cfg: LabConfig,
    cells: Sequence[Cell],
    table: SweepTable,
    subscribers=(),
    stop: threading.Event | None = None,
    on_run: Callable[[dict], None] | None = None,
    examples=None,
    watch: Callable[[float, int], Sequence] | None = None,
) -> None:
    """Train `cells` on `cfg.sweep.backend`, recording each run's row in `table` as it ends."""
    if cfg.sweep.backend == "ray":
        if subscribers or watch or stop is not None:
            raise ValueError(
                "the ray backend trains in Ray's workers: events go to each run's events.jsonl, "
                "not to subscribers, and Ctrl-C stops the sweep"
            )
        ray_backend().run_cells(cfg, cells, table, on_run=on_run, examples=examples)
        return
    from plw_lab.core.training import resume, train

    stop = stop or threading.Event()
    for cell in cells:
        if stop.is_set():
            break
        own = list(watch(cell.plw, cell.seed)) if watch else []
        listeners = [*subscribers, *own]
        if cell.resume:
            result = resume(cell.run_dir, subscribers=listeners, stop=stop, compare=False)
        else:
            result = train(cell.cfg, subscribers=listeners, stop=stop, examples=examples, compare=False)
        row = run_row(cell.plw, cell.seed, result.run_dir, result.summary, load_run(result.run_dir).evals)
        table.record(row)
        if on_run:
            on_run(row)


# -- what the sweep figure draws ---------------------------------------------------------------


def reference_steps(rows: Sequence[dict]) -> int | None:
    """The step count most finished runs reached: runs with another count are not comparable."""
    counts = Counter(r.get("steps") for r in rows if r.get("status") == "finished")
    return counts.most_common(1)[0][0] if counts else None


def comparable(row: dict, steps: int | None) -> str:
    """'' when the row joins the means and the fit, else why not."""
    if row.get("status") == "pruned":
        return f"pruned at step {row.get('pruned_step')}"
    if row.get("status") != "finished":
        return f"status {row.get('status')}"
    if steps is not None and row.get("steps") != steps:
        return f"{row.get('steps')} steps, not {steps}"
    return ""


def summarise(values: Sequence[float]) -> dict:
    """Mean of the seeds' values with a 95% t interval (no interval from a single seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n, "sd": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd}


def quadratic_fit(xs: Sequence[float], ys: Sequence[float]) -> dict | None:
    """Least-squares y = a + b x + c x^2 over every run, with R^2; None below `MIN_FIT_PLWS` distinct x."""
    if len(set(xs)) < MIN_FIT_PLWS:
        return None
    import numpy as np

    c, b, a = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 2)
    predicted = [a + b * x + c * x * x for x in xs]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    r2 = 1 - sum((y - p) ** 2 for y, p in zip(ys, predicted)) / total if total else 1.0
    return {"a": float(a), "b": float(b), "c": float(c), "r2": float(r2)}


def points(rows: Sequence[dict], metric: str = "best_answer_accuracy") -> dict:
    """Per PLW the mean of `metric` over comparable runs with its interval, every run with why it is
    left out (if it is), and the quadratic fit over the comparable runs."""
    steps = reference_steps(rows)
    runs = [{**r, "excluded": comparable(r, steps)} for r in rows if r.get(metric) is not None]
    by_plw: dict[float, list[float]] = {}
    for r in runs:
        if not r["excluded"]:
            by_plw.setdefault(r["plw"], []).append(r[metric])
    means = [{"plw": plw, **summarise(values)} for plw, values in sorted(by_plw.items())]
    kept = [r for r in runs if not r["excluded"]]
    fit = quadratic_fit([r["plw"] for r in kept], [r[metric] for r in kept])
    return {"metric": metric, "steps": steps, "runs": runs, "means": means, "fit": fit}


def run_signature(run) -> tuple:
    """What must match for runs to share a PLW plot: data, validation split, steps and status."""
    cfg = run_config(run)
    data, train = cfg.get("data", {}), cfg.get("train", {})
    summary = getattr(run, "summary", None) or {}
    return (
        data.get("source"),
        data.get("limit"),
        data.get("val_size"),
        data.get("val_source"),
        data.get("split_seed"),
        summary.get("steps", train.get("max_steps")),
        summary.get("status", "running"),
    )


def odd_runs(runs: Sequence) -> dict[str, str]:
    """Runs (by name) that differ from the most common finished signature, with what differs."""
    signatures = {run.name: run_signature(run) for run in runs}
    finished = [s for s in signatures.values() if s[-1] == "finished"]
    if not finished:
        return {}
    reference = Counter(finished).most_common(1)[0][0]
    labels = ("data", "limit", "val_size", "val_source", "split_seed", "steps", "status")
    return {
        name: ", ".join(f"{label} {value}" for label, value, ref in zip(labels, sig, reference) if value != ref)
        for name, sig in signatures.items()
        if sig != reference
    }
