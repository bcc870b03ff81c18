"""The app's process-level objects: the training job, the job registry and the models of runs.

One `JobRegistry` per app runs at most one `TrainingJob` at a time in a background thread; every
visitor watches the same job's events. `RunModels` keeps the model of the run being compared
loaded, shared by visitors and used under its lock. Nothing here imports gradio, so these can be
driven and tested without a page.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from plw_lab import api
from plw_lab.api import LoadedRun
from plw_lab.app.visitors import record_owner
from plw_lab.core.config import ConfigError, LabConfig, ModelConfig
from plw_lab.core.data import DataError
from plw_lab.core.events import Failed, Started, drop_superseded, read_events
from plw_lab.core.models import ModelError
from plw_lab.core.runs import ResumeError
from plw_lab.core.runs import load_run as read_run

#: An absolute server path (not part of a URL): shown to visitors by its last component only.
SERVER_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"(),:;]+/)+([^\s/'\"(),:;]*)")
REMOTE_CODE_REFUSED = (
    "its config sets model.trust_remote_code, which runs the model's own Python code; "
    "the app allows that only when started with --allow-remote-code"
)


def hide_paths(text: str) -> str:
    """`text` with every absolute server path cut to its last component (a visitor sees file names, not the
    server's folders)."""
    return SERVER_PATH.sub(lambda m: m.group(1) or "/", text)


def error_text(exc: BaseException) -> str:
    """An exception as a visitor reads it: the lab's own errors and plain refusals by their message,
    anything unexpected with its type (it is a bug worth reporting); no server paths."""
    if (
        isinstance(exc, (ConfigError, DataError, ValueError, PermissionError, FileNotFoundError))
        or type(exc) is RuntimeError
    ):
        return hide_paths(str(exc))
    return hide_paths(f"{type(exc).__name__}: {exc}")


#: How `train` refuses bad input before anything is written: messages for the visitor, not the server log.
REFUSALS = (ConfigError, DataError, ModelError, ResumeError)


class JobBusy(RuntimeError):
    """A training job is already running in this process."""


class TrainingJob:
    """One training run in a background thread; its events accumulate for any number of watchers."""

    def __init__(
        self,
        cfg: LabConfig,
        examples=None,
        resume_from: Path | None = None,
        owner: str | None = None,
        sweep: tuple | None = None,
    ):
        self.id = uuid.uuid4().hex[:8]
        self.cfg = cfg
        #: The visitor token of whoever started it: only they may stop it, and its folders record it
        #: (None: started outside the page, e.g. by a script; no visitor may stop it).
        self.owner = owner
        self.examples = examples
        #: (PLW values, seeds): run a `plw_lab.core.sweep` grid instead of one run; `sweep_dir` is its folder.
        self.sweep = sweep
        self.sweep_dir = ""
        self.resume_from = resume_from
        self.stop = api.StopRequest()
        #: The run folder, known from the moment training creates it (before its first event).
        self.run_path: Path | None = resume_from
        # A resumed run's watchers see its whole history; its `started` event voids what it retrains.
        self.events: list = drop_superseded(read_events(resume_from / "events.jsonl")) if resume_from else []
        self._lock = threading.Lock()
        self.result = None
        self.error = ""
        self.created = time.time()
        self.thread = threading.Thread(target=self._run, name=f"plw-train-{self.id}", daemon=True)

    def _collect(self, event) -> None:
        if self.sweep and self.owner and isinstance(event, Started):
            # A sweep's runs are known by their events alone; the sweep folder is the one that holds them.
            record_owner(event.run_dir, self.owner)
            record_owner(Path(event.run_dir).parent, self.owner)
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        try:
            if self.sweep:
                plws, seeds = self.sweep
                self.sweep_dir = str(
                    api.sweep(
                        self.cfg, plws, seeds, subscribers=[self._collect], stop=self.stop, examples=self.examples
                    )
                )
            else:
                self.result = api.train(
                    self.cfg,
                    subscribers=[self._collect],
                    stop=self.stop,
                    examples=self.examples,
                    resume_from=self.resume_from,
                    on_run_dir=self._set_run_path,
                )
        except BaseException as exc:  # train() reports its own failures; this catches what escapes it
            self.error = error_text(exc)
            self._collect(Failed(step=0, error=self.error, summary={"status": "failed", "error": self.error}))
            if not isinstance(exc, REFUSALS):  # a refused setting is the visitor's to fix, not a bug to log
                traceback.print_exc()

    def _set_run_path(self, path: Path) -> None:
        self.run_path = Path(path)
        if self.owner:  # recorded as the folder appears, so its owner is known before its first event
            record_owner(path, self.owner)

    def start(self) -> TrainingJob:
        self.thread.start()
        return self

    def owns(self, path: Path) -> bool:
        """Whether this job is running and trains the run in `path`."""
        return self.running and self.run_path is not None and self.run_path.resolve() == Path(path).resolve()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def events_since(self, cursor: int) -> list:
        with self._lock:
            return self.events[cursor:]

    def n_events(self) -> int:
        with self._lock:
            return len(self.events)

    @property
    def run_dir(self) -> str:
        if self.run_path is not None:
            return str(self.run_path)
        for event in self.events_since(0):
            if isinstance(event, Started):
                return event.run_dir
        return ""


class JobRegistry:
    """The process's training jobs: at most one runs at a time; the latest is kept for watchers."""

    def __init__(self, allow_remote_code: bool = False, allow_local_paths: bool = False) -> None:
        self._lock = threading.Lock()
        self.current: TrainingJob | None = None
        #: Whether the owner started the app allowing models' own code (`app.py --allow-remote-code`).
        self.allow_remote_code = allow_remote_code
        #: Whether visitors may name the server's files and folders (`app.py --allow-local-paths`).
        self.allow_local_paths = allow_local_paths

    def check_remote_code(self, cfg: LabConfig, what: str = "this run") -> None:
        if cfg.model.trust_remote_code and not self.allow_remote_code:
            raise ConfigError(f"{what} cannot run here: {REMOTE_CODE_REFUSED}")

    def start(
        self,
        cfg: LabConfig,
        examples=None,
        resume_from: Path | None = None,
        owner: str | None = None,
        sweep: tuple | None = None,
    ) -> TrainingJob:
        self.check_remote_code(cfg)
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy(
                    "A training job is already running in this app; watch it in the Train tab or stop it first."
                )
            self.current = TrainingJob(cfg, examples, resume_from, owner, sweep).start()
            return self.current

    def resume(self, run, owner: str | None = None) -> TrainingJob:
        """Continue a stopped, interrupted or failed `Run` from its last checkpoint, as this app's job."""
        if run.config is None:
            raise ResumeError(f"{run.name}: its config.yaml cannot be read by this version of the lab")
        if not run.resumable:
            raise ResumeError(
                f"{run.name} is {run.status}"
                + (
                    ""
                    if run.status in ("finished", "running")
                    else ", and it has no checkpoint or ended by early stopping"
                )
                + "; nothing to resume"
            )
        return self.start(run.config, resume_from=run.path, owner=owner)

    def owns(self, path: Path) -> bool:
        """Whether the running job trains the run in `path` (known from the moment its folder exists)."""
        job = self.current
        return job is not None and job.owns(path)

    def stop(self, visitor: str | None = None) -> bool:
        """Ask the running job to stop after its current optimiser step; only its owner may (a job
        started outside the page, with no owner, is stopped where it was started)."""
        job = self.current
        if job is None or not job.running:
            return False
        if job.owner is None:
            raise PermissionError("this run was not started by a visitor of this page; you can watch it, not stop it")
        if job.owner != visitor:
            raise PermissionError("this run was started by another visitor; only they can stop it")
        job.stop.set()
        return True

    def forget(self, run_path: Path) -> None:
        """A deleted run's finished job is no longer shown to new visitors."""
        with self._lock:
            job = self.current
            if (
                job is not None
                and not job.running
                and job.run_dir
                and Path(job.run_dir).resolve() == Path(run_path).resolve()
            ):
                self.current = None

    def running(self) -> TrainingJob | None:
        job = self.current
        return job if job is not None and job.running else None


class RunModels:
    """Keeps the model of one run loaded for the Compare tab; shared by visitors, loaded on demand."""

    def __init__(self, registry: JobRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._loaded: LoadedRun | None = None
        self._tokenizers: dict[tuple[str, str], Any] = {}

    def tokenizer(self, model_name: str, chat_template: str = ""):
        from plw_lab.core.models import load_tokenizer

        key = (model_name, chat_template)
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = load_tokenizer(ModelConfig(name=model_name, chat_template=chat_template))
            return self._tokenizers[key]

    def get(self, run_path: Path) -> LoadedRun:
        run_path = Path(run_path).resolve()
        with self._lock:
            if self._loaded is not None and self._loaded.path.resolve() == run_path:
                return self._loaded
            if self.registry.owns(run_path):
                raise RuntimeError("this run is still training; compare it when it has finished or been stopped")
            job = self.registry.current
            result = job.result if job is not None and not job.running else None
            if result is not None and result.model is not None and Path(result.run_dir).resolve() == run_path:
                loaded = api.loaded_from_result(result, job.cfg)
            else:
                config = read_run(run_path).config
                if config is not None:
                    self.registry.check_remote_code(config, run_path.name)
                loaded = api.load_run(run_path)
            self._loaded = loaded
            return loaded

    def is_loaded(self, run_path: Path) -> bool:
        loaded = self._loaded
        return loaded is not None and loaded.path.resolve() == Path(run_path).resolve()

    def forget(self, run_path: Path) -> None:
        with self._lock:
            if self._loaded is not None and self._loaded.path.resolve() == Path(run_path).resolve():
                self._loaded = None
