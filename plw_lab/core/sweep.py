"""PLW sweeps: a grid of PLW values x seeds (x any other settings) on one split, one run per cell,
and what they add up to. The folders and sweep.csv they write are `plw_lab.core.sweep_table`'s.

Seeds change the LoRA initialisation and the order of the training examples, never the split
(`data.split_seed` stays), so every run is scored on the same validation examples. `points`
turns the rows into what the sweep figure draws: per cell of the varied settings the mean over
seeds with a 95% interval, and along the figure's x-axis (PLW unless another varied number is
chosen) the quadratic fit of performance for each series of the other settings, when it has at
least 4 x values. Runs that did not finish, were pruned, or ran a different number of steps are
kept in the table and the figure but left out of the means and the fit.

`sweep.backend` picks who trains the runs: 'local' trains them one after another in this process,
'ray' (`plw_lab.core.sweep_ray`, imported only then) makes each a Ray Tune trial. Both write the
same folders and rows.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from plw_lab.core.config import ConfigError, LabConfig, field_specs, setting_name, shown
from plw_lab.core.extras import require
from plw_lab.core.runs import ResumeError, folder_name, load_run, run_config
from plw_lab.core.sweep_table import (
    DONE,
    GRID_FILE,
    SHORT_NAMES,
    Cell,
    Grid,
    SweepTable,
    cell_config,
    folder_row,
    is_setting,
    new_cell,
    read_csv,
    run_row,
)

#: The fit needs this many distinct x values (a parabola through 3 points always fits exactly).
MIN_FIT_XS = 4
#: Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: the normal approximation below).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
#: The seeds of a sweep that names none.
DEFAULT_SEEDS = (0, 1)
#: Settings a sweep sets for each run itself: where it writes. sweep.* are the sweep's own, not a run's.
SET_BY_SWEEP = ("train.output_dir", "train.run_name")
PLW, SEED = SHORT_NAMES["plw"], SHORT_NAMES["seed"]
SCHEDULE, SCHEDULE_END = "train.plw_schedule", "train.plw_end"


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


def make_grid(cfg: LabConfig, plws=None, seeds=None, settings: dict | None = None) -> Grid:
    """The grid of a sweep of `cfg`: `plws` x `seeds` x every setting in `settings` (any name `--set`
    takes -> its values, as a comma list or a sequence), then `cfg.sweep.arms` at every seed, each
    value read and checked exactly as `--set` reads it. What is not given comes from `cfg.sweep`
    (`plws`, `seeds`, `grid`, whose settings `settings` add to or replace); where that is empty too,
    the PLW presets and `DEFAULT_SEEDS`."""
    plws = plws if plws is not None else cfg.sweep.plws or None
    seeds = seeds if seeds is not None else cfg.sweep.seeds or None
    given = {setting_name(key): (key, values) for key, values in (settings or {}).items()}
    merged = {setting_name(key): (key, values) for key, values in cfg.sweep.grid.items()} | given
    raw = {name: (name, values) for name, values in ((PLW, plws), (SEED, seeds)) if values is not None}
    for name, (key, values) in merged.items():
        _check_varied(name)
        if name in raw:
            raise ConfigError(f"{name} is varied twice (as {raw[name][0]} and {key}); give its values once")
        raw[name] = (key, values)
    varied = {name: _grid_values(cfg, key, values) for name, (key, values) in raw.items()}
    presets = next(f for f in field_specs("train") if f["name"] == "prompt_loss_weight")["presets"]
    grid = Grid(varied.pop(PLW, list(presets)), varied.pop(SEED, list(DEFAULT_SEEDS)), varied)
    arms = [_arm(cfg, arm) for arm in cfg.sweep.arms]
    # A column for every setting an arm sets, and the schedule's end beside a schedule: rows read 'PLW 1→0 linear'.
    columns = [name for arm in arms for name in arm]
    if SCHEDULE in columns or SCHEDULE in grid.settings:
        columns.append(SCHEDULE_END)
    for name in dict.fromkeys(columns):
        if name not in (PLW, *grid.settings):
            grid.settings[name] = [cfg.value(name)]
    columns = {PLW: "plw", **{name: name for name in grid.settings}}
    seen = {grid.key(cell)[:-1] for cell in grid.cells()}
    for given_arm, arm in zip(cfg.sweep.arms, arms):
        cell = {column: arm.get(name, cfg.value(name)) for name, column in columns.items()}
        if grid.key(cell)[:-1] in seen:
            raise ConfigError(f"sweep.arms: {shown(given_arm)} is already a cell of the sweep; list each cell once")
        seen.add(grid.key(cell)[:-1])
        grid.arms.append(cell)
        grid.arm_keys.append([columns[name] for name in arm])
    return grid


def _check_varied(name: str) -> None:
    if name in SET_BY_SWEEP:
        raise ConfigError(f"a sweep cannot vary {name}: it sets where each of its runs writes itself")
    if name.startswith("sweep."):
        raise ConfigError(f"a sweep cannot vary {name}: sweep.* settings are the whole sweep's, not a run's")


def _arm(cfg: LabConfig, arm: dict) -> dict:
    """One of sweep.arms as setting name -> value, each value read and checked as `--set` reads it."""
    out = {}
    for key, value in arm.items():
        name = setting_name(key)
        _check_varied(name)
        if name == SEED:
            raise ConfigError("sweep.arms: an arm runs at every seed of the sweep; leave train.seed out of it")
        if name in out:
            raise ConfigError(f"sweep.arms: {shown(arm)} sets {name} twice")
        out[name] = _grid_values(cfg, key, [value])[0]
    return out


def _grid_values(cfg: LabConfig, key: str, values) -> list:
    """The values of one varied setting, each read through `cfg.override` as `--set key=value` is."""
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)
    items = [v for v in items if v != ""]
    if not items:
        raise ConfigError(f"{key}: give at least one value to vary it over")
    name = setting_name(key)
    if isinstance(cfg.value(name), (list, dict)):
        raise ConfigError(f"{key} is a list or mapping setting; a grid varies settings of one value each")
    # Numbers from a YAML list go through their text too, so a float setting's 1 is 1.0 as `--set` reads it.
    items = [str(v) if isinstance(v, (int, float)) else v for v in items]
    parsed = [cfg.override({key: item}).value(name) for item in items]
    twice = [value for i, value in enumerate(parsed) if value in parsed[:i]]
    if twice:
        raise ConfigError(f"{key} lists {shown(twice[0])} twice")
    return parsed


def ray_backend():
    """`plw_lab.core.sweep_ray`, or a `MissingExtraError` with the install line where Ray Tune is missing."""
    require("ray", "sweep.backend ray")
    from plw_lab.core import sweep_ray

    return sweep_ray


def run_sweep(
    cfg: LabConfig,
    plws: Sequence | None = None,
    seeds: Sequence | None = None,
    name: str = "",
    subscribers=(),
    stop: threading.Event | None = None,
    on_run: Callable[[dict], None] | None = None,
    examples=None,
    watch: Callable[[float, int], Sequence] | None = None,
    grid: dict | None = None,
    on_folder: Callable[[Path], None] | None = None,
) -> Path:
    """Train one run per cell of `make_grid(cfg, plws, seeds, grid)` on the same split; write sweep.csv
    after each run. Returns the sweep folder, which `on_folder` also gets as soon as it exists.

    `subscribers` see every run's events; `watch(plw, seed)` may return more subscribers for that
    run alone (e.g. a live chart per run); `on_run` gets each finished row; a set `stop` ends the
    sweep after the current run stops (its row says "stopped"; on the ray backend every running
    trial stops so). On the ray backend the runs train in Ray's workers: their events are in their
    folders' events.jsonl.
    """
    spec = make_grid(cfg, plws, seeds, grid)
    check_sweep(cfg)
    # Everything checkable is checked before the sweep folder exists, so a refused sweep leaves nothing.
    # On the ray backend the workers' machines may differ from this one: they check the rest themselves.
    configs = [cell_config(cfg, values).validate() for values in spec.cells()]
    if cfg.sweep.backend == "ray":
        ray_backend()
    else:
        from plw_lab.core.training import plan

        plan(configs[0], examples)
    base = Path(cfg.train.output_dir)
    stem = folder_name(name, f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    folder, suffix = base / stem, 1
    while folder.exists():
        suffix += 1
        folder = base / f"{stem}-{suffix}"
    try:
        folder.mkdir(parents=True)
    except OSError as exc:  # a file on the way, no permission, a name too long for the file system
        raise ConfigError(f"cannot create the sweep folder {str(folder)!r} ({exc.strerror}); choose another") from None
    if on_folder:
        on_folder(folder)
    cfg.save(folder / "sweep_config.yaml")  # not config.yaml: the folder is not itself a run
    spec.save(folder)
    cells = [new_cell(cfg, folder, values, spec.name(values)) for values in spec.cells()]
    run_cells(cfg, cells, SweepTable(folder, spec), subscribers, stop, on_run, examples, watch)
    return folder


def resume_sweep(
    folder: str | Path,
    settings: dict | None = None,
    subscribers=(),
    stop: threading.Event | None = None,
    on_run: Callable[[dict], None] | None = None,
) -> Path:
    """Finish the runs of the sweep in `folder` that did not finish, on the grid it recorded: a
    stopped, failed or interrupted run continues from its checkpoint (or starts again beside its
    folder when it has none), a run never started starts; finished and pruned runs stay as they
    are. `settings` override sweep.* (e.g. another backend or cluster); the runs keep their own configs."""
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
    grid = Grid.load(folder)
    rows = {grid.key(r): r for r in read_csv(folder)} if (folder / "sweep.csv").exists() else {}
    kept, cells = [], []
    for values in grid.cells():
        row = rows.get(grid.key(values))
        if row and row["status"] in DONE:
            kept.append(row)
            continue
        run_dir = Path(row["run"]) if row else folder / grid.name(values)
        if (run_dir / "config.yaml").exists():
            run = load_run(run_dir)
            ended_early = str(run.summary.get("stop_reason", "")).startswith("early stopping")
            if run.status == "running":
                raise ResumeError(f"{run_dir.name} is still training; let it end (or stop it) before resuming")
            if run.status == "finished" or ended_early:
                kept.append(folder_row(values, run_dir))
                continue
            if run.resumable:
                cells.append(Cell(values, run.config, run_dir, resume=True))
                continue
        # Nothing to continue from: a fresh run beside it.
        cells.append(new_cell(cfg, folder, values, grid.name(values)))
    run_cells(cfg, cells, SweepTable(folder, grid, kept), subscribers, stop, on_run)
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
        if subscribers or watch:
            raise ValueError(
                "the ray backend trains in Ray's workers: events go to each run's events.jsonl, not to subscribers"
            )
        ray_backend().run_cells(cfg, cells, table, on_run=on_run, examples=examples, stop=stop)
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
        row = run_row(cell.values, result.run_dir, result.summary, load_run(result.run_dir).evals)
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
    """Least-squares y = a + b x + c x^2 over every run, with R^2; None below `MIN_FIT_XS` distinct x."""
    if len(set(xs)) < MIN_FIT_XS:
        return None
    import numpy as np

    c, b, a = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 2)
    predicted = [a + b * x + c * x * x for x in xs]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    r2 = 1 - sum((y - p) ** 2 for y, p in zip(ys, predicted)) / total if total else 1.0
    return {"a": float(a), "b": float(b), "c": float(c), "r2": float(r2)}


def varied(rows: Sequence[dict]) -> list[str]:
    """The settings sweep rows vary besides the seed: plw, then each column named SECTION.FIELD."""
    return ["plw", *dict.fromkeys(key for row in rows for key in row if is_setting(key))]


def axes(rows: Sequence[dict]) -> list[str]:
    """The varied settings a sweep figure can draw along its x-axis: those whose every value is a number."""
    number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    return [key for key in varied(rows) if all(number(row.get(key)) for row in rows)]


def points(rows: Sequence[dict], metric: str = "best_answer_accuracy", x: str = "plw") -> dict:
    """What the sweep figure draws of `metric`: every run with why it is left out (if it is); per cell
    of the varied settings (`varied`) the mean over comparable runs' seeds with its interval; and per
    series (each combination of the varied settings other than `x`, which must be one of `axes`)
    the quadratic fit of `metric` against `x` over its comparable runs."""
    if x not in axes(rows):
        raise ValueError(f"a sweep figure's x-axis is one of {', '.join(axes(rows))}, not {x!r}")
    steps = reference_steps(rows)
    settings = varied(rows)
    series = [key for key in settings if key != x]
    runs = [{**r, "excluded": comparable(r, steps)} for r in rows if r.get(metric) is not None]
    kept = [r for r in runs if not r["excluded"]]
    cells: dict[tuple, list[float]] = {}
    for r in kept:
        cells.setdefault(tuple(r[key] for key in settings), []).append(r[metric])
    means = [{**dict(zip(settings, cell)), **summarise(values)} for cell, values in sorted(cells.items())]
    lines: dict[tuple, list[dict]] = {}
    for r in kept:
        lines.setdefault(tuple(r[key] for key in series), []).append(r)
    fits = []
    for line, group in sorted(lines.items()):
        fit = quadratic_fit([r[x] for r in group], [r[metric] for r in group])
        if fit:
            fits.append({"series": dict(zip(series, line)), **fit})
    return {"metric": metric, "steps": steps, "x": x, "series": series, "runs": runs, "means": means, "fits": fits}


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
