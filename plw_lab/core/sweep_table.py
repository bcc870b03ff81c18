"""Sweep folders and their table, sweep.csv: what both sweep backends (`plw_lab.core.sweep`, local,
and `plw_lab.core.sweep_ray`) write and every view reads.

    runs/sweep-<time>/
        sweep_config.yaml  the base config (every run overrides only the PLW, train.seed and where it writes)
        grid.json          the PLW values and seeds, so `lab sweep --resume` knows the runs still to do
        sweep.csv          one row per run: plw, seed, status, best answer accuracy and loss, and their steps
        plw0-seed0/ ...    the run folders
        ray/               Ray Tune's own records of the trials (ray backend only)

A row's status is the run's own (finished, stopped, failed), 'interrupted' when its process died
without a word (resumable from its last checkpoint), or 'pruned' when the ray backend's ASHA
scheduler stopped it at `pruned_step`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plw_lab.core.config import LabConfig
from plw_lab.core.events import Started
from plw_lab.core.metrics import METRICS, best_of
from plw_lab.core.runs import load_run

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
