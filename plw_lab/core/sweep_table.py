"""Sweep folders and their table, sweep.csv: what both sweep backends (`plw_lab.core.sweep`, local,
and `plw_lab.core.sweep_ray`) write and every view reads.

    runs/sweep-<time>/
        sweep_config.yaml  the base config (every run overrides only the varied settings and where it writes)
        grid.json          the varied settings and their values, so `lab sweep --resume` knows the runs still to do
        sweep.csv          one row per run: plw, seed, one column per other varied setting (named
                           SECTION.FIELD), status, best answer accuracy and loss, and their steps
        plw0-seed0/ ...    the run folders, named after the cell's values
        ray/               Ray Tune's own records of the trials (ray backend only)

A row's status is the run's own (finished, stopped, failed), 'interrupted' when its process died
without a word (resumable from its last checkpoint), or 'pruned' when the ray backend's ASHA
scheduler stopped it at `pruned_step`.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plw_lab.core.config import LabConfig
from plw_lab.core.events import Started
from plw_lab.core.metrics import METRICS, best_of
from plw_lab.core.runs import folder_name, load_run
from plw_lab.core.stopping import CRITERIA, run_stopping

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
    # The stopping-criterion report: per curve the step it keeps and the answer accuracy there, and the exact
    # McNemar p of the adapters full-sequence loss and answer loss keep (`plw_lab.core.stopping`).
    *(f"stop_{name}_{part}" for name in CRITERIA for part in ("step", "accuracy")),
    "stop_test_p_value",
    "run",
)
GRID_FILE = "grid.json"
#: Statuses of runs that are over: `--resume` leaves them as they are.
DONE = ("finished", "pruned")
#: The settings behind sweep.csv's `plw` and `seed` columns, which every sweep varies.
SHORT_NAMES = {"plw": "train.prompt_loss_weight", "seed": "train.seed"}
#: Longest cell folder name: below `train.run_name`'s 200 characters, so a '-2' beside a name taken still fits.
MAX_CELL_NAME = 190


def is_setting(column: str) -> bool:
    """Whether a sweep.csv column is a varied setting's: those are named SECTION.FIELD, the table's own never."""
    return "." in column


def columns(settings: Sequence[str] = ()) -> tuple[str, ...]:
    """sweep.csv's columns: plw and seed, a column per other varied setting (SECTION.FIELD), then the rest."""
    return (*COLUMNS[:2], *settings, *COLUMNS[2:])


def setting_value(text: str):
    """A varied setting's value as sweep.csv writes it, read back: a bool, a whole number, a number, or the text."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def value_text(value) -> str:
    """A varied setting's value as folder names and labels show it: a number as short as it reads (0.1, 1e-05)."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


@dataclass
class Grid:
    """What a sweep varies: its PLW values crossed with its seeds and any other settings, and its arms,
    cells beside that cross product that also run at every seed. The seeds are the repeats the means
    are taken over; every other varied setting tells the cells apart."""

    #: train.prompt_loss_weight values.
    plws: list[float]
    #: train.seed values.
    seeds: list[int]
    #: The other varied settings, SECTION.FIELD -> values, in the order given (also the columns' order).
    settings: dict[str, list] = field(default_factory=dict)
    #: Cells beside the cross product, each with a value for every column but the seed.
    arms: list[dict] = field(default_factory=list)
    #: Per arm, the columns it set itself (the others keep the config's values): what its runs are named by.
    arm_keys: list[list[str]] = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        """The row keys that name a cell: plw, the other settings, seed (the seeds vary fastest)."""
        return ("plw", *self.settings, "seed")

    def cells(self) -> list[dict]:
        """Every cell's values, keyed by `columns`, in grid order: the cross product, then the arms."""
        values = itertools.product(self.plws, *self.settings.values(), self.seeds)
        crossed = [dict(zip(self.columns, combo)) for combo in values]
        return crossed + [{**arm, "seed": seed} for arm in self.arms for seed in self.seeds]

    def key(self, row: dict) -> tuple:
        """A row's cell, compared as sweep.csv writes it, so rows read back find their cells."""
        return tuple(setting_value(str(row.get(column))) for column in self.columns)

    def name(self, values: dict) -> str:
        """The folder name of a cell's run: by the values that tell it apart, e.g. plw0.1-seed0 (the
        cross product names the settings with more than one value; an arm its own settings)."""
        key = self.key(values)[:-1]
        own = next((keys for arm, keys in zip(self.arms, self.arm_keys) if self.key(arm)[:-1] == key), None)
        shown = own if own is not None else ["plw", *(k for k, v in self.settings.items() if len(v) > 1)]
        return cell_name({k: values[k] for k in self.columns if k in shown or k == "seed"})

    def save(self, folder: Path) -> None:
        spec = {"plws": self.plws, "seeds": self.seeds, "settings": self.settings}
        (folder / GRID_FILE).write_text(json.dumps({**spec, "arms": self.arms, "arm_keys": self.arm_keys}))

    @classmethod
    def load(cls, folder: Path) -> Grid:
        spec = json.loads((folder / GRID_FILE).read_text())
        # Sweeps before --grid have no settings; before sweep.arms, no arms.
        settings, arms, arm_keys = spec.get("settings", {}), spec.get("arms", []), spec.get("arm_keys", [])
        return cls(spec["plws"], spec["seeds"], settings, arms, arm_keys)


def run_row(values: dict, run_dir: Path | str, summary: dict, evals: Sequence) -> dict:
    """One sweep.csv row from a cell's values and its run's summary and evaluations (best values through
    `metrics.best_of`)."""
    names = [n for n in ("answer_accuracy", "answer_loss") if n in METRICS]
    best = best_of(evals, names)
    acc, loss = best.get("answer_accuracy") or {}, best.get("answer_loss") or {}
    ci = _ci_at(evals, acc.get("step"))
    return {
        **values,
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
        **stopping_columns(run_stopping(summary, evals)),
        "run": str(run_dir),
    }


def stopping_columns(report: dict) -> dict:
    """A run's stopping-criterion report as sweep.csv's stop_* columns (None where a curve was never measured)."""
    out = {}
    for name in CRITERIA:
        entry = report.get(name) or {}
        out[f"stop_{name}_step"] = entry.get("step")
        out[f"stop_{name}_accuracy"] = entry.get("answer_accuracy")
    out["stop_test_p_value"] = (report.get("test") or {}).get("p_value")
    return out


def folder_row(values: dict, run_dir: Path) -> dict:
    """The row of the cell whose run is in `run_dir` as it stands on disk, also when it never wrote a summary."""
    run = load_run(run_dir)
    summary = run.summary or {
        "status": run.status,
        "steps": run.step,
        "n_val": next((e.n_val for e in run.events if isinstance(e, Started)), None),
    }
    return run_row(values, run_dir, summary, run.evals)


def _ci_at(evals: Sequence, step) -> tuple:
    """The accuracy interval the evaluation at `step` reported (`answer_accuracy_ci`), if it did."""
    for event in evals:
        get = event.get if isinstance(event, dict) else lambda key, e=event: getattr(e, key, None)
        if step is not None and get("step") == step:
            ci = (get("metrics") or {}).get("answer_accuracy_ci")
            if ci and len(ci) == 2:
                return ci[0], ci[1]
    return None, None


def write_csv(path: Path, rows: Iterable[dict], settings: Sequence[str] = ()) -> None:
    names = columns(settings)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in names})
    tmp.replace(path)  # a reader never sees half a table while the sweep runs


def list_sweeps(output_dir: str | Path) -> list[Path]:
    """Sweep folders (those holding a sweep.csv) under `output_dir`, newest first."""
    base = Path(output_dir)
    found = [p for p in base.iterdir() if (p / "sweep.csv").exists()] if base.is_dir() else []
    return sorted(found, key=lambda p: (p / "sweep.csv").stat().st_mtime, reverse=True)


def read_csv(path: str | Path) -> list[dict]:
    """sweep.csv as rows with numbers where there were numbers (empty cells: None; a varied setting's
    column as `setting_value` reads it)."""
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
                elif is_setting(key):
                    row[key] = setting_value(value)
                elif key in ("seed", "steps", "n_val") or key.endswith("_step"):
                    row[key] = int(float(value))
                else:
                    row[key] = float(value)
            rows.append(row)
    return rows


class SweepTable:
    """sweep.csv as it fills: one row per cell of `grid`, in grid order whatever order the runs end in."""

    def __init__(self, folder: Path, grid: Grid, rows: Iterable[dict] = ()) -> None:
        self.path = Path(folder) / "sweep.csv"
        self.grid = grid
        self.order = {grid.key(cell): i for i, cell in enumerate(grid.cells())}
        self.rows = {grid.key(row): row for row in rows}
        self.write()

    def record(self, row: dict) -> None:
        self.rows[self.grid.key(row)] = row
        self.write()

    def write(self) -> None:
        last = len(self.order)
        rows = sorted(self.rows.values(), key=lambda r: self.order.get(self.grid.key(r), last))
        write_csv(self.path, rows, list(self.grid.settings))


@dataclass
class Cell:
    """One run of the grid: its values (`Grid.columns`), its config and its folder (which exists when it resumes)."""

    values: dict
    cfg: LabConfig
    run_dir: Path
    resume: bool = False

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def plw(self) -> float:
        return self.values["plw"]

    @property
    def seed(self) -> int:
        return self.values["seed"]


def cell_name(values: dict) -> str:
    """A cell's folder name from its values (`Grid.cells`), e.g. plw0.1-completion_loss_weight0.5-seed0 (the
    settings by their field name); a hash keeps a name too long for `train.run_name` unique."""
    parts = [f"{key.rsplit('.', 1)[-1]}{value_text(value)}" for key, value in values.items()]
    name = folder_name("-".join(parts), "cell")
    if len(name) > MAX_CELL_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_CELL_NAME - len(digest) - 1]}-{digest}"
    return name


def cell_config(cfg: LabConfig, values: dict) -> LabConfig:
    """`cfg` with a cell's values: its PLW, seed and other varied settings."""
    return cfg.override({SHORT_NAMES.get(key, key): value for key, value in values.items()})


def new_cell(cfg: LabConfig, folder: Path, values: dict, name: str) -> Cell:
    """A fresh run of `cfg` with a cell's values, in the first free folder called `name` (or `name`-2, ...)."""
    suffix = 1
    while (folder / (name if suffix == 1 else f"{name}-{suffix}")).exists():
        suffix += 1
    name = name if suffix == 1 else f"{name}-{suffix}"
    run_cfg = cell_config(cfg, values).override({"train.output_dir": str(folder), "train.run_name": name})
    return Cell(dict(values), run_cfg, folder / name)
