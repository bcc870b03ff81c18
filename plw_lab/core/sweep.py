"""PLW sweeps: a grid of PLW values x seeds on one split, one run per cell, and what they add up to.

    runs/sweep-<time>/
        sweep_config.yaml  the base config (every run overrides only the PLW, train.seed and where it writes)
        grid.json          the PLW values and seeds, so `lab sweep --resume` knows the runs still to do
        sweep.csv          one row per run: plw, seed, status, best answer accuracy and loss, and their steps
        plw0-seed0/ ...    the run folders
        ray/               Ray Tune's own records of the trials (ray backend only)

Seeds change the LoRA initialisation and the order of the training examples, never the split
(`data.split_seed` stays), so every run is scored on the same validation examples. `points`
turns the rows into what the sweep figure draws: per PLW the mean over seeds with a 95% interval,
and the quadratic fit of performance against PLW when there are at least 4 PLW values. Runs that
did not finish, were pruned, or ran a different number of steps are kept in the table and the
figure but left out of the means and the fit.

`sweep.backend` picks who trains the runs: 'local' trains them one after another in this process,
'ray' (`plw_lab.core.sweep_ray`, imported only then) makes each a Ray Tune trial. Both write the
same folders and rows. A row's status is the run's own (finished, stopped, failed), 'interrupted'
when its process died without a word (resumable from its last checkpoint), or 'pruned' when the
ray backend's ASHA scheduler stopped it at `pruned_step`.
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.events import Started
from plw_lab.core.metrics import METRICS, best_of
from plw_lab.core.runs import ResumeError, load_run, run_config

COLUMNS = (
    "plw",
    "seed",
    "status",
    "steps",
    "pruned_step",
    "n_val",
    "best_answer_accuracy",
    "best_answer_accuracy_step",
    "answer_accuracy_ci_low",
    "answer_accuracy_ci_high",
    "best_answer_loss",
    "best_answer_loss_step",
    "run",
)
GRID_FILE = "grid.json"
#: Statuses of runs that are over: `--resume` leaves them as they are.
DONE = ("finished", "pruned")
#: The fit needs this many distinct PLW values (a parabola through 3 points always fits exactly).
MIN_FIT_PLWS = 4
#: Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: the normal approximation below).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
RAY_INSTALL = 'pip install "plw-lab[ray]"'


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t (Cornish-Fisher beyond the table; within 0.002 at df 11)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def run_row(plw: float, seed: int, run_dir: Path | str, summary: dict, evals: Sequence) -> dict:
    """One sweep.csv row from a run's summary and evaluations (best values through `metrics.best_of`)."""
    names = [n for n in ("answer_accuracy", "answer_loss") if n in METRICS]
    best = best_of(evals, names)
    acc, loss = best.get("answer_accuracy") or {}, best.get("answer_loss") or {}
    ci = _ci_at(evals, acc.get("step"))
    return {
        "plw": plw,
        "seed": seed,
        "status": summary.get("status", "unknown"),
        "steps": summary.get("steps"),
        "pruned_step": None,
        "n_val": summary.get("n_val"),
        "best_answer_accuracy": acc.get("value"),
        "best_answer_accuracy_step": acc.get("step"),
        "answer_accuracy_ci_low": ci[0],
        "answer_accuracy_ci_high": ci[1],
        "best_answer_loss": loss.get("value"),
        "best_answer_loss_step": loss.get("step"),
        "run": str(run_dir),
    }


def folder_row(plw: float, seed: int, run_dir: Path) -> dict:
    """The row of the run in `run_dir` as it stands on disk, also when it never wrote a summary."""
    run = load_run(run_dir)
    summary = run.summary or {
        "status": run.status,
        "steps": run.step,
        "n_val": next((e.n_val for e in run.events if isinstance(e, Started)), None),
    }
    return run_row(plw, seed, run_dir, summary, run.evals)


def _ci_at(evals: Sequence, step) -> tuple:
    """The accuracy interval the evaluation at `step` reported (`answer_accuracy_ci`), if it did."""
    for event in evals:
        get = event.get if isinstance(event, dict) else lambda key, e=event: getattr(e, key, None)
        if step is not None and get("step") == step:
            ci = (get("metrics") or {}).get("answer_accuracy_ci")
            if ci and len(ci) == 2:
                return ci[0], ci[1]
    return None, None


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    tmp.replace(path)  # a reader never sees half a table while the sweep runs


def list_sweeps(output_dir: str | Path) -> list[Path]:
    """Sweep folders (those holding a sweep.csv) under `output_dir`, newest first."""
    base = Path(output_dir)
    found = [p for p in base.iterdir() if (p / "sweep.csv").exists()] if base.is_dir() else []
    return sorted(found, key=lambda p: (p / "sweep.csv").stat().st_mtime, reverse=True)


def read_csv(path: str | Path) -> list[dict]:
    """sweep.csv as rows with numbers where there were numbers (empty cells: None)."""
    path = Path(path)
    if path.is_dir():
        path = path / "sweep.csv"
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                if value == "":
                    row[key] = None
                elif key in ("status", "run"):
                    row[key] = value
                elif key in ("seed", "steps", "n_val") or key.endswith("_step"):
                    row[key] = int(float(value))
                else:
                    row[key] = float(value)
            rows.append(row)
    return rows


class SweepTable:
    """sweep.csv as it fills: one row per (PLW, seed), in grid order whatever order the runs end in."""

    def __init__(self, folder: Path, grid: Sequence[tuple[float, int]], rows: Iterable[dict] = ()) -> None:
        self.path = Path(folder) / "sweep.csv"
        self.order = {cell: i for i, cell in enumerate(grid)}
        self.rows = {(row["plw"], row["seed"]): row for row in rows}
        self.write()

    def record(self, row: dict) -> None:
        self.rows[(row["plw"], row["seed"])] = row
        self.write()

    def write(self) -> None:
        last = len(self.order)
        write_csv(self.path, sorted(self.rows.values(), key=lambda r: self.order.get((r["plw"], r["seed"]), last)))


@dataclass
class Cell:
    """One run of the grid: its PLW and seed, its config and its folder (which exists when it resumes)."""

    plw: float
    seed: int
    cfg: LabConfig
    run_dir: Path
    resume: bool = False

    @property
    def name(self) -> str:
        return self.run_dir.name


def cell_name(plw: float, seed: int) -> str:
    return f"plw{float(plw):g}-seed{int(seed)}"


def new_cell(cfg: LabConfig, folder: Path, plw: float, seed: int) -> Cell:
    """A fresh run of `cfg` at this PLW and seed, in the first free folder named after them."""
    name, suffix = cell_name(plw, seed), 1
    while (folder / (name if suffix == 1 else f"{name}-{suffix}")).exists():
        suffix += 1
    name = name if suffix == 1 else f"{name}-{suffix}"
    run_cfg = cfg.override(
        {
            "train.prompt_loss_weight": float(plw),
            "train.seed": int(seed),
            "train.output_dir": str(folder),
            "train.run_name": name,
        }
    )
    return Cell(float(plw), int(seed), run_cfg, folder / name)


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
    """`plw_lab.core.sweep_ray`, or a ConfigError with the install line where Ray Tune is missing."""
    try:
        from plw_lab.core import sweep_ray
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise ConfigError(f"sweep.backend ray needs Ray Tune, which is not installed here: {RAY_INSTALL}") from None
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
    if cfg.sweep.backend == "ray":
        ray_backend()  # before the folder exists: a missing Ray leaves nothing behind
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
