"""Run folders: what a run leaves on disk, and reading it back.

    runs/<name>/
        config.yaml      the LabConfig, written before anything else happens
        data/            a copy of the data file the run read (uploads are temporary files)
        events.jsonl     every event, one JSON object a line, flushed as it happens
        adapter/         the adapter the run ends with (the best one when restore_best is on)
        last_adapter/    the adapter of the last optimiser step
        best_adapter/    the adapter of the best evaluation so far
        compare.json     adapter on/off comparison after training
        summary.json     status, steps, best metrics and when each was reached
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, LabConfig
from .events import Eval, Event, event_field, event_kind, read_events
from .metrics import best_of

#: Data files up to this size are copied into the run folder, so the run can be re-read after an
#: upload's temporary file is gone; a bigger corpus stays where it is and the config points there.
DATA_COPY_LIMIT = 100 * 2**20


def new_run_dir(cfg: LabConfig) -> tuple[Path, LabConfig]:
    """A fresh run folder holding the config (and a copy of a small data file), and that config."""
    base = Path(cfg.train.output_dir)
    name = cfg.train.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-plw{cfg.train.prompt_loss_weight:g}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    path = base / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{name}-{suffix}"
    if base.exists() and not base.is_dir():
        raise ConfigError(f"train.output_dir {str(base)!r} is a file, not a folder; choose another folder for the runs")
    try:
        path.mkdir(parents=True)
    except OSError as exc:  # a file on the way, no permission, a read-only disk
        raise ConfigError(f"train.output_dir {str(base)!r}: cannot create the run folder ({exc.strerror}); choose another folder") from None
    source = Path(cfg.data.source).expanduser()
    if not cfg.data.source.startswith(("builtin:", "hf:")) and source.is_file() and source.stat().st_size <= DATA_COPY_LIMIT:
        (path / "data").mkdir()
        copy = shutil.copy2(source, path / "data" / source.name)
        cfg = cfg.override({"data.source": str(Path(copy).resolve())})
    cfg.save(path / "config.yaml")
    return path, cfg


# The next three take a `Run` or any object with the same attributes.


def run_config(run) -> dict:
    """A run's config as a dict; when its config.yaml is unreadable (an older lab), the one its `started` event carries."""
    cfg = getattr(run, "config", None)
    if cfg is None:
        for event in getattr(run, "events", []):
            if event_kind(event) == "started":
                return dict(event_field(event, "config", {}) or {})
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def run_plw(run) -> float | None:
    value = run_config(run).get("train", {}).get("prompt_loss_weight")
    return None if value is None else float(value)


def run_best(run) -> dict:
    """Best value and step of each metric: from the summary, else from the run's evaluations."""
    best = (getattr(run, "summary", None) or {}).get("best")
    if best:
        return best
    return best_of(run.evals) if hasattr(run, "evals") else {}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # atomic, so a reader never sees half a file


@dataclass
class Run:
    path: Path
    config: LabConfig | None
    summary: dict
    events: list[Event] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.summary.get("status", "running or interrupted")

    @property
    def evals(self) -> list[Eval]:
        return [e for e in self.events if isinstance(e, Eval)]

    def adapter_dir(self) -> Path | None:
        for name in ("adapter", "best_adapter", "last_adapter"):
            if (self.path / name / "adapter_config.json").exists():
                return self.path / name
        return None

    def comparison(self) -> dict | None:
        path = self.path / "compare.json"
        return json.loads(path.read_text()) if path.exists() else None


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
    try:
        config = LabConfig.load(path / "config.yaml")
    except Exception:  # a config from an older lab version still lets the run be browsed
        config = None
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Run(path, config, summary, read_events(path / "events.jsonl"))


def list_runs(output_dir: str | Path) -> list[Run]:
    base = Path(output_dir)
    if not base.is_dir():
        return []
    runs = [load_run(p) for p in sorted(base.iterdir()) if (p / "config.yaml").exists()]
    return sorted(runs, key=lambda r: r.path.stat().st_mtime, reverse=True)


def delete_run(path: str | Path) -> None:
    path = Path(path)
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"{path} is not a run folder; refusing to delete it")
    shutil.rmtree(path)
