"""Run folders: what a run leaves on disk, and reading it back.

    runs/<name>/
        config.yaml      the LabConfig, written before anything else happens
        data/            a copy of the data file the run read (uploads are temporary files)
        events.jsonl     every event, one JSON object a line, flushed as it happens
        running.json     which process trains it (gone when training ends; a dead process means interrupted)
        adapter/         the adapter the run ends with (the best one when restore_best is on)
        last_adapter/    the adapter of the last checkpoint, with what resuming needs (optimiser,
                         scheduler, random-number and data-order state, trainer and lab state)
        best_adapter/    the adapter of the best evaluation so far
        compare.json     adapter on/off comparison after training
        summary.json     status, steps, the adapter kept and its step, best metrics and when each was reached

A sweep (`plw_lab.core.sweep`) keeps its runs one folder down, `runs/<sweep>/<run>/`; `list_runs`
lists them under the name `<sweep>/<run>`, beside the runs of the top level.

Every adapter folder is written under a temporary name and swapped in whole (`replace_folder`), so
a crash or a full disk mid-write never leaves a partial folder where a complete one was. A file
damaged anyway (cut short by a copy, emptied by hand) is a `DamagedRunError` naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.events import Eval, Event, Step, drop_superseded, event_field, event_kind, read_events
from plw_lab.core.metrics import best_of
from plw_lab.core.weights import plw_text

#: Data files up to this size are copied into the run folder, so the run can be re-read after an
#: upload's temporary file is gone; a bigger corpus stays where it is and the config points there.
DATA_COPY_LIMIT = 100 * 2**20

#: What a write to a full (or failing) disk raises: OSError from Python's own files, SafetensorError
#: from safetensors, and RuntimeError from torch.save's zip writer ("unexpected pos 64 vs 0").
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


def write_error_text(exc: BaseException) -> str:
    """A failed write in a few words: the OS's reason where there is one ("No space left on device")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def folder_name(name: str, default: str) -> str:
    """`name` as one folder inside the runs folder: every run of characters other than letters, digits,
    '.', '_' and '-' becomes '-', and leading dots go, so no name climbs out ('..') or hides; `default`
    where nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip(".") or default


def new_run_dir(cfg: LabConfig) -> tuple[Path, LabConfig]:
    """A fresh run folder holding the config (and a copy of a small data file), and that config."""
    base = Path(cfg.train.output_dir)
    t = cfg.train
    plw = plw_text(t.plw_schedule, t.prompt_loss_weight, t.plw_end)
    name = folder_name(t.run_name, f"{time.strftime('%Y%m%d-%H%M%S')}-plw{plw}")
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
        raise ConfigError(
            f"train.output_dir {str(base)!r}: cannot create the run folder ({exc.strerror}); choose another folder"
        ) from None
    try:
        # Marked as running before config.yaml exists, so nothing can delete it as a finished run while it starts.
        mark_running(path)
        source = Path(cfg.data.source).expanduser()
        if (
            not cfg.data.source.startswith(("builtin:", "hf:"))
            and source.is_file()
            and source.stat().st_size <= DATA_COPY_LIMIT
        ):
            (path / "data").mkdir()
            copy = shutil.copy2(source, path / "data" / source.name)
            cfg = cfg.override({"data.source": str(Path(copy).resolve())})
        cfg.save(path / "config.yaml")
    except BaseException as exc:
        # A folder without its config.yaml is no run: nothing could list, resume or delete it.
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ConfigError(
                f"train.output_dir {str(base)!r}: cannot write the run folder ({write_error_text(exc)}); "
                "free disk space or choose another folder"
            ) from None
        raise
    return path, cfg


# -- liveness: which process trains a run ----------------------------------------------------------

LIVE_MARK = "running.json"
#: Adapter folders and the label their checkpoint events carry; `Run.adapter` picks among them.
ADAPTERS = {"final": "adapter", "best": "best_adapter", "last": "last_adapter"}


class RunFolderGone(FileNotFoundError):
    """The run folder (or its config.yaml) was deleted while the run was writing to it."""


class ResumeError(ValueError):
    """A run cannot be resumed; the message says why and what to do."""


class DamagedRunError(ValueError):
    """A file of a run folder is cut short, emptied or unreadable; the message names the file."""


class NoAdapterError(FileNotFoundError):
    """A run saved no adapter (of the kind asked for); the message says why and what there is instead."""


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def mark_running(path: Path) -> None:
    write_json(
        path / LIVE_MARK,
        {"pid": os.getpid(), "host": socket.gethostname(), "process_started": _process_started(os.getpid())},
    )


def clear_running(path: Path) -> None:
    (path / LIVE_MARK).unlink(missing_ok=True)


def is_live(path: Path) -> bool:
    """Whether a live process trains the run in `path` (the pid in running.json, started when it says)."""
    try:
        mark = json.loads((path / LIVE_MARK).read_text())
    except (OSError, ValueError):
        return False
    if mark.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    started = _process_started(int(mark.get("pid", -1)))
    # A reused pid belongs to a process that started later than the one that wrote the mark.
    return started is not None and abs(started - float(mark.get("process_started") or started)) < 1.0


# -- folders swapped in whole ----------------------------------------------------------------------


def complete_folder(run_dir: Path, name: str) -> Path | None:
    """`run_dir/name`, or the previous complete copy when a crash hit between the two renames of a swap."""
    for path in (run_dir / name, run_dir / f".{name}.old"):
        if path.is_dir():
            return path
    return None


def replace_folder(run_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Have `write` fill a temporary folder, then swap it in for `run_dir/name`.

    A crash or an error (a full disk) while writing removes only the temporary folder; the previous
    folder stays complete. Raises `RunFolderGone` when the run folder was deleted, so a run never
    recreates a folder without its config.yaml.
    """
    if not (run_dir / "config.yaml").exists():
        raise RunFolderGone(
            f"the run folder {run_dir.name} (or its config.yaml) was deleted while the run was writing to it"
        )
    final, tmp, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    if not final.exists() and old.exists():
        old.rename(final)  # an earlier swap was cut between its renames: `old` is the complete one
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)  # a full disk can refuse even a rename, when the folder's listing must grow
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists() and old.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(folder: Path | None) -> int | None:
    """The optimiser step of a resumable checkpoint folder (None: not one)."""
    try:
        return int(json.loads((folder / "trainer_state.json").read_text())["global_step"])
    except (OSError, TypeError, ValueError, KeyError):
        return None


# The next three take a `Run` or any object with the same attributes.


def run_config(run) -> dict:
    """A run's config as a dict; when its config.yaml is unreadable (damaged, or from an older lab), the one
    its `started` event carries."""
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


#: Room a run keeps on its disk while it trains: a file of this many bytes in its folder, deleted just
#: before the run writes how it ended (summary.json, its last events, traceback.txt: about 15 KB), so a
#: disk that fills during the run still leaves its outcome on record.
ROOM = ".room_for_the_ending"
ROOM_BYTES = 64 * 1024


def keep_room(run_dir: Path) -> None:
    # Random bytes: a compressing file system would store zeros in no room at all.
    with (run_dir / ROOM).open("wb") as f:
        f.write(os.urandom(ROOM_BYTES))
        f.flush()
        os.fsync(f.fileno())  # where space is only allocated at write-back, the refusal comes now


def free_room(run_dir: Path) -> None:
    (run_dir / ROOM).unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(path)  # atomic, so a reader never sees half a file
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves neither half a file nor a stray one
        raise


# -- reading run files, naming a damaged one -----------------------------------------------------

_CUT_SHORT = "cut short or emptied, e.g. by a full disk or an interrupted copy"


def _damaged(path: Path, what: str) -> DamagedRunError:
    return DamagedRunError(f"{path} is damaged: {what} ({_CUT_SHORT})")


def read_run_json(path: Path) -> dict | None:
    """A JSON file of a run folder (summary.json, compare.json, split.json); None when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    if not text.strip():
        raise _damaged(path, "the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON object was expected, not {type(data).__name__}")
    return data


def read_run_config(path: Path) -> LabConfig | None:
    """A run's config.yaml; None when an older lab wrote settings this one does not know.

    `LabConfig.load` reads an empty file as the defaults, which for a run would be another model on
    other data: the lab writes every section, so an empty file or a missing section is damage.
    """
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    if not text.strip():
        raise _damaged(path, "the file is empty")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _damaged(path, f"invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise _damaged(path, f"a mapping of settings was expected, not {type(data).__name__}")
    missing = [name for name in LabConfig().to_dict() if not isinstance(data.get(name), dict)]
    if missing:
        raise _damaged(path, f"the {', '.join(missing)} section{'s are' if len(missing) > 1 else ' is'} missing")
    if not data["model"].get("name"):
        raise _damaged(path, "model.name is missing")
    try:
        return LabConfig.from_dict(data)
    except ConfigError:  # an older lab's settings: the run can still be browsed from its events
        return None


def check_adapter_folder(folder: Path) -> None:
    """Raise a `DamagedRunError` naming the file when an adapter folder cannot be loaded whole."""
    read_run_json(folder / "adapter_config.json")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        if not (folder / "adapter_model.bin").exists():  # the older format, written by torch.save
            raise _damaged(folder, "it holds no adapter_model.safetensors")
        return
    try:
        with safe_open(str(weights), "pt"):  # reads the header, which records how long the file must be
            pass
    except SafetensorError as exc:
        raise _damaged(weights, str(exc)) from None


@dataclass
class Run:
    path: Path
    config: LabConfig | None
    summary: dict
    events: list[Event] = field(default_factory=list)
    #: File name -> what is wrong with it, for a run listed although config.yaml or summary.json is damaged.
    damaged: dict[str, str] = field(default_factory=dict)
    #: The folder (a sweep's) holding the run inside the runs folder `list_runs` read; "" at its top level.
    group: str = ""

    @property
    def name(self) -> str:
        """The folder name, after its group's for a run inside a sweep ("sweep-x/plw0-seed0"): unique among
        the runs of one runs folder, so lists, pickers and charts key runs by it."""
        return f"{self.group}/{self.path.name}" if self.group else self.path.name

    @property
    def status(self) -> str:
        """finished, stopped or failed (from summary.json); running while a live process trains it;
        damaged when config.yaml or summary.json cannot be read (see `damaged`); otherwise interrupted
        (killed without warning: resumable from its last checkpoint)."""
        if self.damaged:
            return "damaged"
        if "status" in self.summary:
            return self.summary["status"]
        return "running" if is_live(self.path) else "interrupted"

    @property
    def step(self) -> int:
        """The last optimiser step the run reached."""
        steps = [e.step for e in self.events if isinstance(e, Step)]
        return int(self.summary.get("steps", max(steps, default=0)))

    @property
    def evals(self) -> list[Eval]:
        return [e for e in self.events if isinstance(e, Eval)]

    @property
    def resumable(self) -> bool:
        early = str(self.summary.get("stop_reason", "")).startswith("early stopping")
        return self.status in ("stopped", "interrupted", "failed") and not early and self.checkpoint() is not None

    def checkpoint(self) -> Path | None:
        """The folder a resume starts from (last_adapter/ with its trainer state), if any."""
        folder = complete_folder(self.path, "last_adapter")
        return folder if checkpoint_step(folder) is not None else None

    def adapter(self, which: str = "") -> tuple[Path, int | None] | None:
        """The adapter folder and its step: `which` is final, best or last; '' is the one summary.json keeps."""
        if which and which not in ADAPTERS:
            raise ValueError(f"--adapter must be one of {', '.join(ADAPTERS)}; got {which!r}")
        kept = self.summary.get("adapter")
        if which:
            names = [ADAPTERS[which]]
        else:
            names = ([kept] if kept else []) + [n for n in ("adapter", "best_adapter", "last_adapter") if n != kept]
        for name in names:
            folder = complete_folder(self.path, name)
            if folder is not None and (folder / "adapter_config.json").exists():
                return folder, self._adapter_step(name)
        return None

    def _adapter_step(self, name: str) -> int | None:
        if name == self.summary.get("adapter"):
            return self.summary.get("adapter_step")
        label = next(k for k, v in ADAPTERS.items() if v == name)
        saved = [e.step for e in self.events if event_kind(e) == "checkpoint" and event_field(e, "label") == label]
        return saved[-1] if saved else None

    def adapter_dir(self) -> Path | None:
        found = self.adapter()
        return found[0] if found else None

    def require_adapter(self, which: str = "") -> tuple[Path, int | None]:
        """`adapter(which)` checked whole: a `NoAdapterError` saying why there is none, a
        `DamagedRunError` naming a file cut short."""
        found = self.adapter(which)
        if found is None:
            raise NoAdapterError(self._why_no_adapter(which))
        check_adapter_folder(found[0])
        return found

    def _why_no_adapter(self, which: str) -> str:
        others = [f"{ADAPTERS[label]}/" for label in ADAPTERS if self.adapter(label) is not None]
        if which and others:
            return f"{self.name} has no {ADAPTERS[which]}/; it has {', '.join(others)}: choose another --adapter"
        if any(event_kind(e) == "checkpoint" for e in self.events):
            return f"{self.name}: its adapter folders were deleted; train the run again"
        refused = [f for f in self.summary.get("write_failures") or [] if "adapter/" in f]
        if refused:
            return (
                f"{self.name} has no adapter: the disk refused every one the run saved ({refused[0]}); "
                "free disk space and train it again"
            )
        if self.status == "running":
            return f"{self.name} is still starting and has saved no adapter yet; wait for its first checkpoint"
        phases = [e for e in self.events if event_kind(e) == "phase"]
        last = phases[-1] if phases else None
        # The last phase logged, at its own step: events a full disk refused may end the log early.
        during = {
            "loading": " during loading",
            "evaluating": f" during the step-{event_field(last, 'step', 0)} evaluation",
        }.get(event_field(last, "name") if last else "", "")
        ended = {"failed": "it failed", "stopped": "it was stopped", "interrupted": "it was killed"}.get(
            self.status, f"it ended ({self.status})"
        )
        error = f"; its error: {self.summary['error']}" if self.summary.get("error") else ""
        return (
            f"{self.name} has no adapter: no adapter was saved yet ({ended}{during}, before its first "
            f"checkpoint{error}); train it again"
        )

    def comparison(self) -> dict | None:
        return read_run_json(self.path / "compare.json")


def load_run(path: str | Path, damaged_ok: bool = False) -> Run:
    """The run in `path`. A damaged config.yaml or summary.json is a `DamagedRunError`, or with
    `damaged_ok` a run whose status is damaged (so one bad file never hides the other runs of a list)."""
    path = Path(path)
    if not is_run_folder(path):
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
    damaged: dict[str, str] = {}
    config, summary = None, {}
    try:
        config = read_run_config(path / "config.yaml")
    except DamagedRunError as exc:
        if not damaged_ok:
            raise
        damaged["config.yaml"] = str(exc)
    try:
        summary = read_run_json(path / "summary.json") or {}
    except DamagedRunError as exc:
        if not damaged_ok:
            raise
        damaged["summary.json"] = str(exc)
    return Run(path, config, summary, drop_superseded(read_events(path / "events.jsonl")), damaged)


def is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").exists()


def run_folders(base: Path) -> list[Path]:
    """The run folders in `base` and one level down (a sweep's), in name order."""
    found = []
    for child in sorted(base.iterdir()):
        if is_run_folder(child):
            found.append(child)
        elif child.is_dir():
            found += [g for g in sorted(child.iterdir()) if is_run_folder(g)]
    return found


def list_runs(output_dir: str | Path) -> list[Run]:
    """The runs in `output_dir` and in its sweep folders, grouped: a sweep's runs together, in name (grid)
    order; the top-level runs and the sweeps newest first (a sweep as new as its newest run)."""
    base = Path(output_dir)
    if not base.is_dir():
        return []
    groups: dict[str, list[Run]] = {}
    for path in run_folders(base):
        run = load_run(path, damaged_ok=True)
        if path.parent != base:
            run.group = path.parent.name
        groups.setdefault(run.group or run.name, []).append(run)
    newest = {key: max(r.path.stat().st_mtime for r in runs) for key, runs in groups.items()}
    return [run for key in sorted(groups, key=newest.get, reverse=True) for run in groups[key]]


def delete_run(path: str | Path) -> None:
    path = Path(path)
    if not is_run_folder(path):
        raise FileNotFoundError(f"{path.name} is not a run folder; refusing to delete it")
    if is_live(path):
        raise ValueError(f"{path.name} is still training; stop it first")
    shutil.rmtree(path)
