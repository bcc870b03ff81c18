"""The app's process-level objects: the training job, the job registry and the models of runs.

One `JobRegistry` per app runs at most one `TrainingJob` at a time in a background thread; every
visitor watches the same job's events. A run started while another trains waits in the registry's
queue (one per visitor, checked when it joins) and starts by itself when the one before it ends.
`Limits` are what the operator of a shared app allows. `RunModels` keeps the model of the run being
compared loaded, shared by visitors and used under its lock. Nothing here imports gradio, so these
can be driven and tested without a page.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plw_lab import api
from plw_lab.api import LoadedRun
from plw_lab.app.visitors import owner_key, record_owner
from plw_lab.core.config import ConfigError, LabConfig, ModelConfig
from plw_lab.core.data import DataError, hub_ids_only
from plw_lab.core.events import Failed, Started, drop_superseded, read_events
from plw_lab.core.models import ModelError
from plw_lab.core.runs import ResumeError, write_json
from plw_lab.core.runs import load_run as read_run
from plw_lab.core.sweep import make_grid
from plw_lab.views.history import History

#: An absolute server path (not part of a URL): shown to visitors by its last component only.
SERVER_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"(),:;]+/)+([^\s/'\"(),:;]*)")
#: Where a stopped app keeps the runs that waited in its queue (under the runs folder): each one's config
#: (`ID.yaml`) and why it did not start with a hash of its owner (`ID.json`), until its owner comes back.
NOT_STARTED = "not-started"
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
    """A training job is already running in this process and the run cannot wait for it (no queue, the
    queue is full, or the visitor already has a run waiting)."""


@dataclass(frozen=True)
class Limits:
    """What the operator of a shared app allows (`lab app --max-queue --max-steps --max-minutes`)."""

    #: Runs that may wait while one trains (0: none; Start is refused while a run trains).
    max_queue: int = 8
    #: Optimiser steps a run may take (0: no limit); a run must then set train.max_steps within it.
    max_steps: int = 0
    #: Minutes a run may train before it is stopped with a checkpoint, as by its Stop button (0: no limit).
    max_minutes: float = 0

    def check(self, cfg: LabConfig) -> None:
        steps = cfg.train.max_steps
        if self.max_steps and not 0 < steps <= self.max_steps:
            raise ConfigError(
                f"train.max_steps is {steps}; this app trains at most {self.max_steps} optimiser steps a run "
                f"(its operator's limit): set it between 1 and {self.max_steps}"
            )

    def describe(self) -> str:
        """The limits in words, for the page (shown before Start)."""
        parts = []
        if self.max_steps:
            parts.append(f"at most {self.max_steps} optimiser steps a run")
        if self.max_minutes:
            parts.append(f"a run is stopped (with a checkpoint) after {self.max_minutes:g} minutes")
        if self.max_queue:
            parts.append(f"while a run trains, Start puts yours in a queue of up to {self.max_queue}")
        else:
            parts.append("one run at a time: Start waits until the run training now ends")
        return "This app: " + "; ".join(parts) + "."


class TrainingJob:
    """One training run in a background thread; its events accumulate for any number of watchers."""

    def __init__(
        self,
        cfg: LabConfig,
        examples=None,
        resume_from: Path | None = None,
        owner: str | None = None,
        sweep: tuple | None = None,
        steps: int | None = None,
        max_seconds: float = 0,
        on_end=None,
        reading=contextlib.nullcontext,
    ):
        self.id = uuid.uuid4().hex[:8]
        #: What its thread reads data within: `hub_ids_only` for a visitor's run on a shared app.
        self.reading = reading
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
        #: The optimiser steps it will take, all its runs together (None: unknown), for the queue's estimates.
        self.steps = steps
        #: Seconds it may train before it is stopped like the Stop button does (0: no limit).
        self.max_seconds = max_seconds
        #: Why it left the queue without starting ('' while it waits, runs or has run).
        self.not_started = ""
        self._on_end = on_end
        #: Its progress so far, kept as events arrive, for the queue's estimated waits.
        self.history = History.from_events(self.events)
        self.thread = threading.Thread(target=self._run, name=f"plw-train-{self.id}", daemon=True)

    def _collect(self, event) -> None:
        if self.sweep and self.owner and isinstance(event, Started):
            # A sweep's runs are known by their events alone; the sweep folder is the one that holds them.
            record_owner(event.run_dir, self.owner)
            record_owner(Path(event.run_dir).parent, self.owner)
        with self._lock:
            self.events.append(event)
            self.history.add(event)

    def _run(self) -> None:
        limit = None
        if self.max_seconds:
            minutes = self.max_seconds / 60
            limit = threading.Timer(
                self.max_seconds, self.stop.request, [f"stopped by the app's limit of {minutes:g} minutes"]
            )
            limit.daemon = True
            limit.start()
        try:
            with self.reading():
                self._train()
        except BaseException as exc:  # train() reports its own failures; this catches what escapes it
            self.error = error_text(exc)
            self._collect(Failed(step=0, error=self.error, summary={"status": "failed", "error": self.error}))
            if not isinstance(exc, REFUSALS):  # a refused setting is the visitor's to fix, not a bug to log
                traceback.print_exc()
        finally:
            if limit is not None:
                limit.cancel()
            if self._on_end is not None:
                self._on_end(self)

    def _train(self) -> None:
        if self.sweep:
            plws, seeds = self.sweep
            self.sweep_dir = str(
                api.sweep(self.cfg, plws, seeds, subscribers=[self._collect], stop=self.stop, examples=self.examples)
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

    @property
    def queued(self) -> bool:
        """Whether it waits for its turn (not started, not taken out of the queue)."""
        return self.thread.ident is None and not self.not_started

    def eta(self, now: float) -> float | None:
        """Seconds until it has trained (None: not known yet); a time limit caps it."""
        with self._lock:
            left = self.history.eta(now)
            elapsed = self.history.elapsed(now) or 0.0
        if self.max_seconds:
            left = min(left if left is not None else float("inf"), max(self.max_seconds - elapsed, 0.0))
        return left

    def step_seconds(self) -> float | None:
        with self._lock:
            return self.history.step_seconds()

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
    """The process's training jobs: at most one runs at a time, the runs started meanwhile wait in `queue`
    (first come, first served); the latest job is kept for watchers."""

    def __init__(self, allow_remote_code: bool = False, allow_local_paths: bool = False, limits: Limits | None = None):
        self._lock = threading.Lock()
        # Starts one at a time: a run found to wait is checked before it joins the queue, without holding
        # `_lock` (which every watcher takes) while it reads the data.
        self._starting = threading.Lock()
        self.current: TrainingJob | None = None
        self.queue: list[TrainingJob] = []
        self.limits = limits or Limits()
        #: Set once the app is shutting down: nothing starts any more.
        self.closing = False
        #: Seconds per optimiser step of the last job that measured them, for estimates while a new one loads.
        self._step_seconds: float | None = None
        #: Whether the owner started the app allowing models' own code (`app.py --allow-remote-code`).
        self.allow_remote_code = allow_remote_code
        #: Whether visitors may name the server's files and folders (`app.py --allow-local-paths`).
        self.allow_local_paths = allow_local_paths

    def reading(self):
        """What the app reads data within: hub ids only, unless its owner allows local paths."""
        return contextlib.nullcontext() if self.allow_local_paths else hub_ids_only()

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
        """Start the run now, or queue it while another trains (then `job.queued`). A run that will wait
        is checked now, with every refusal `train` would make when it starts (a run that starts at once is
        refused by `train` itself, as its first event)."""
        self.check_remote_code(cfg)
        self.limits.check(cfg)
        runs = len(make_grid(cfg, *sweep).cells()) if sweep else 1
        steps = cfg.train.max_steps * runs if cfg.train.max_steps else None
        with self._starting:
            if self.running() is not None:
                with self._lock:
                    self._check_queueable(owner)  # before the slow check, which reads the data
                if resume_from is None:
                    with self.reading():
                        steps = api.check_run(cfg, examples) * runs
            job = TrainingJob(
                cfg,
                examples,
                resume_from,
                owner,
                sweep,
                steps,
                self.limits.max_minutes * 60 * runs,
                self._ended,
                self.reading,
            )
            with self._lock:
                if self.closing:
                    raise JobBusy("The app is shutting down; start the run when it is back.")
                if self.current is not None and self.current.running:
                    self._check_queueable(owner)
                    self.queue.append(job)
                else:
                    self.current = job
                    job.start()
                return job

    def _check_queueable(self, owner: str | None) -> None:
        if not self.limits.max_queue:
            raise JobBusy("A training job is already running in this app; watch it in the Train tab or stop it first.")
        if owner is None:
            raise JobBusy("A training job is already running; only a visitor of the page can queue a run.")
        if any(job.owner == owner for job in self.queue):
            raise JobBusy("You already have a run waiting in the queue; cancel it first to queue another.")
        if len(self.queue) >= self.limits.max_queue:
            raise JobBusy(f"The queue is full ({self.limits.max_queue} runs wait); try again when one has started.")

    def _ended(self, job: TrainingJob) -> None:
        """A job's thread is ending: the next queued run starts (`job` is still alive while it calls this)."""
        with self._lock:
            self._step_seconds = job.step_seconds() or self._step_seconds
            if self.current is job and self.queue and not self.closing:
                self.current = self.queue.pop(0)
                self.current.start()

    def queued(self, visitor: str | None) -> tuple[int, TrainingJob] | None:
        """The visitor's waiting run and its place in the queue (1: next), or None."""
        with self._lock:
            return next(((i + 1, job) for i, job in enumerate(self.queue) if visitor and job.owner == visitor), None)

    def cancel(self, visitor: str | None) -> bool:
        """Take the visitor's waiting run out of the queue; False when they have none."""
        with self._lock:
            for job in self.queue:
                if visitor and job.owner == visitor:
                    self.queue.remove(job)
                    job.not_started = "cancelled by its owner"
                    return True
        return False

    def waits(self, now: float | None = None) -> list[tuple[TrainingJob, float | None]]:
        """Each queued job with the seconds until it should start (None: not known yet): the running job's
        ETA, then each job ahead of it by its own steps at the measured seconds per step (capped by the
        time limit)."""
        now = time.time() if now is None else now
        with self._lock:
            running = self.current if self.current is not None and self.current.running else None
            queue = list(self.queue)
            per_step = (running.step_seconds() if running else None) or self._step_seconds
        wait = running.eta(now) if running else 0.0
        out = []
        for job in queue:
            out.append((job, wait))
            own = job.steps * per_step if job.steps and per_step else None
            if job.max_seconds:
                own = min(own if own is not None else float("inf"), job.max_seconds)
            wait = None if wait is None or own is None else wait + own
        return out

    def shutdown(self, signum: int) -> TrainingJob | None:
        """The process is being stopped by `signum`: queued runs are recorded as not started, the running
        one stops after its current optimiser step with a checkpoint, like its Stop button; returns it."""
        name = signal.Signals(signum).name
        with self._lock:
            self.closing = True
            for job in self.queue:
                job.not_started = f"the app was stopped by {name} before its turn"
                kept = record_not_started(job)
                print(f"queued run {job.id} not started ({job.not_started}); {kept}", file=sys.stderr)
            self.queue.clear()
            job = self.current if self.current is not None and self.current.running else None
        if job is not None:
            job.stop.signal = signum
            job.stop.request(f"stopped by {name}")
        return job

    @staticmethod
    def not_started(runs_dir: Path, visitor: str | None) -> list[tuple[str, LabConfig]]:
        """The visitor's runs that a stopped app recorded as not started (why, and each run's config),
        oldest first; told once: their records are removed."""
        folder = Path(runs_dir) / NOT_STARTED
        if not visitor or not folder.is_dir():
            return []
        out = []
        for notice in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                record = json.loads(notice.read_text())
                if record.get("owner_sha256") != owner_key(visitor):
                    continue
                cfg = LabConfig.load(notice.with_suffix(".yaml"))
            except (OSError, ValueError, AttributeError):  # half written when the app was killed: nothing to tell
                continue
            out.append((str(record.get("reason", "")), cfg))
            notice.unlink(missing_ok=True)
            notice.with_suffix(".yaml").unlink(missing_ok=True)
        return out

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


def record_not_started(job: TrainingJob) -> str:
    """Keep a queued run that will not start (its config, why, its owner's hash) in its runs folder's
    `NOT_STARTED` folder, for its owner's next visit; says where, or why it could not."""
    folder = Path(job.cfg.train.output_dir) / NOT_STARTED
    try:
        folder.mkdir(parents=True, exist_ok=True)
        job.cfg.save(folder / f"{job.id}.yaml")
        owner = owner_key(job.owner) if job.owner else None
        write_json(folder / f"{job.id}.json", {"reason": job.not_started, "owner_sha256": owner, "steps": job.steps})
    except OSError as exc:  # a full disk must not keep the app from stopping
        return f"its settings could not be kept ({exc.strerror or exc})"
    return f"its settings are kept in {folder / (job.id + '.yaml')}"


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
                with self.registry.reading():
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
