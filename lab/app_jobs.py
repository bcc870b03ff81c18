"""The app's process-level objects: the training job, the job registry and the models of runs.

One `JobRegistry` per app runs at most one `TrainingJob` at a time in a background thread; every
visitor watches the same job's events. `RunModels` keeps the model of the run being compared
loaded, shared by visitors and used under its lock. Nothing here imports gradio, so these can be
driven and tested without a page.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, LabConfig, ModelConfig
from .data import DataError
from .events import Failed, Started


def error_text(exc: BaseException) -> str:
    """An exception as a person reads it: the lab's own errors by their message, others with their type."""
    if isinstance(exc, (ConfigError, DataError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobBusy(RuntimeError):
    """A training job is already running in this process."""


class TrainingJob:
    """One training run in a background thread; its events accumulate for any number of watchers."""

    def __init__(self, cfg: LabConfig, examples=None, sweep: tuple | None = None):
        self.id = uuid.uuid4().hex[:8]
        self.cfg = cfg
        self.examples = examples
        #: (PLW values, seeds): run a `lab.sweep` grid instead of one run; `sweep_dir` is its folder.
        self.sweep = sweep
        self.sweep_dir = ""
        self.stop = threading.Event()
        self.events: list = []
        self._lock = threading.Lock()
        self.result = None
        self.error = ""
        self.created = time.time()
        self.thread = threading.Thread(target=self._run, name=f"plw-train-{self.id}", daemon=True)

    def _collect(self, event) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        try:
            from .training import train

            if self.sweep:
                from .sweep import run_sweep

                plws, seeds = self.sweep
                self.sweep_dir = str(run_sweep(self.cfg, plws, seeds, subscribers=[self._collect], stop=self.stop,
                                               examples=self.examples))
            else:
                self.result = train(self.cfg, subscribers=[self._collect], stop=self.stop, examples=self.examples)
        except BaseException as exc:  # train() reports its own failures; this catches what escapes it
            self.error = error_text(exc)
            self._collect(Failed(step=0, error=self.error, summary={"status": "failed", "error": self.error}))
            traceback.print_exc()

    def start(self) -> "TrainingJob":
        self.thread.start()
        return self

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
        for event in self.events_since(0):
            if isinstance(event, Started):
                return event.run_dir
        return ""


class JobRegistry:
    """The process's training jobs: at most one runs at a time; the latest is kept for watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: TrainingJob | None = None

    def start(self, cfg: LabConfig, examples=None, sweep: tuple | None = None) -> TrainingJob:
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy("A training job is already running in this app; watch it in the Train tab or stop it first.")
            self.current = TrainingJob(cfg, examples, sweep).start()
            return self.current

    def stop(self) -> bool:
        job = self.current
        if job is None or not job.running:
            return False
        job.stop.set()
        return True

    def running(self) -> TrainingJob | None:
        job = self.current
        return job if job is not None and job.running else None


@dataclass
class LoadedRun:
    """A run's model with its adapter, ready for comparisons (use it under `lock`)."""

    path: Path
    config: LabConfig
    model: Any
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    val: list | None = None
    comparison: dict | None = None
    token_losses: dict = field(default_factory=dict)

    def validation(self) -> list:
        """The run's encoded validation set, prepared on first use (call it under `lock`)."""
        if self.val is None:
            from .training import prepare

            self.val = prepare(self.config, self.tokenizer).val
        return self.val

    def per_token_losses(self, enc) -> tuple[list, list]:
        """Per-token losses of one encoded example with the adapter on and off, cached by its tokens."""
        from .evaluation import adapter, token_losses

        key = (tuple(enc.input_ids),)
        with self.lock:
            if key not in self.token_losses:
                with adapter(self.model, True):
                    on = token_losses(self.model, enc)
                with adapter(self.model, False):
                    off = token_losses(self.model, enc)
                if len(self.token_losses) > 64:
                    self.token_losses.clear()
                self.token_losses[key] = (on, off)
            return self.token_losses[key]


class RunModels:
    """Keeps the model of one run loaded for the Compare tab; shared by visitors, loaded on demand."""

    def __init__(self, registry: JobRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._loaded: LoadedRun | None = None
        self._tokenizers: dict[tuple[str, str], Any] = {}

    def tokenizer(self, model_name: str, chat_template: str = ""):
        from .models import load_tokenizer

        key = (model_name, chat_template)
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = load_tokenizer(ModelConfig(name=model_name, chat_template=chat_template))
            return self._tokenizers[key]

    def get(self, run_path: Path) -> LoadedRun:
        from .runs import load_run

        run_path = Path(run_path).resolve()
        with self._lock:
            if self._loaded is not None and self._loaded.path == run_path:
                return self._loaded
            job = self.registry.current
            if job is not None and job.running and job.run_dir and Path(job.run_dir).resolve() == run_path:
                raise RuntimeError("this run is still training; compare it when it has finished or been stopped")
            result = job.result if job is not None and not job.running else None
            if result is not None and result.model is not None and Path(result.run_dir).resolve() == run_path:
                loaded = LoadedRun(run_path, job.cfg, result.model, result.tokenizer)
                loaded.val = result.data.val if result.data else None
                loaded.comparison = result.comparison
            else:
                from .models import load_adapter, load_model, load_tokenizer, pick_device

                run = load_run(run_path)
                if run.config is None:
                    raise RuntimeError(f"{run.name}: its config.yaml cannot be read by this version of the lab")
                adapter_dir = run.adapter_dir()
                if adapter_dir is None:
                    raise RuntimeError(f"{run.name} has no saved adapter (it may have failed before training started)")
                device = pick_device(run.config.model.device)
                base = load_model(run.config.model, device)
                model = load_adapter(base, adapter_dir)
                model.eval()
                loaded = LoadedRun(run_path, run.config, model, load_tokenizer(run.config.model))
                loaded.comparison = run.comparison()
            self._loaded = loaded
            return loaded

    def forget(self, run_path: Path) -> None:
        with self._lock:
            if self._loaded is not None and self._loaded.path == Path(run_path).resolve():
                self._loaded = None
