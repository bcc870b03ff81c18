"""Typed training events, a bus that hands them to any number of subscribers, and their JSONL log.

The app, the notebooks and the CLI all watch a run through these events; `events.jsonl` in the
run folder is the same stream on disk, so a finished run can be replayed into the same views.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict:
        return {"type": self.kind, **asdict(self)}


@dataclass
class Started(Event):
    kind: ClassVar[str] = "started"
    run_dir: str
    config: dict
    n_train: int
    n_val: int
    total_steps: int
    skipped: list = field(default_factory=list)
    #: Which computation paths the run takes and why, e.g. {"loss": "...", "frozen_layer_cache": "off: ..."}.
    paths: dict = field(default_factory=dict)
    #: Training processes (accelerate/torchrun) and examples per optimiser step over all of them.
    world_size: int = 1
    global_batch: int = 0
    #: The metric that picks the kept adapter, with `train.early_stopping_metric: auto` resolved for the data.
    early_stopping_metric: str = ""
    #: What data loading left out: exact duplicates and skipped bad records (`DataReport.to_dict`).
    data_report: dict = field(default_factory=dict)
    #: Whether this run continues an earlier one in the same folder from its checkpoint at `from_step`.
    resumed: bool = False
    from_step: int = 0
    #: What data.max_length cuts (`plw_lab.core.stats.truncation_report`): examples and tokens cut, shares lost.
    truncation: dict = field(default_factory=dict)


@dataclass
class Advice(Event):
    """Something a practitioner would want to know, e.g. a learning rate far above LoRA norms."""

    kind: ClassVar[str] = "advice"
    message: str
    step: int = 0


@dataclass
class Step(Event):
    kind: ClassVar[str] = "step"
    step: int
    epoch: float
    learning_rate: float
    train_loss: float
    grad_norm: float | None
    tokens_per_second: float
    tokens_seen: int
    elapsed: float
    total_steps: int
    #: The PLW this step trained with (`train.plw_schedule`); None in logs written before schedules existed.
    plw: float | None = None


@dataclass
class Eval(Event):
    kind: ClassVar[str] = "eval"
    step: int
    epoch: float
    metrics: dict
    #: Whether this evaluation is the best so far by the run's early-stopping metric.
    is_best: bool = False
    #: Wall-clock seconds the evaluation took.
    seconds: float = 0.0
    #: Each validation example's scored answer, right "1" or wrong "0", in validation order ("" for free-form
    #: data): one byte per example, what pairs two evaluations in the stopping report's McNemar test.
    correct: str = ""


@dataclass
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    label: str  # "best", "last" or "final"


@dataclass
class Finished(Event):
    kind: ClassVar[str] = "finished"
    step: int
    summary: dict


@dataclass
class Stopped(Event):
    kind: ClassVar[str] = "stopped"
    step: int
    reason: str
    summary: dict = field(default_factory=dict)


@dataclass
class Failed(Event):
    kind: ClassVar[str] = "failed"
    step: int
    error: str
    summary: dict = field(default_factory=dict)


@dataclass
class Phase(Event):
    """What the run is doing from now on, so watchers can name the wait between results."""

    kind: ClassVar[str] = "phase"
    name: str  # one of PHASES
    step: int = 0


#: The phases a run goes through, in order ("evaluating" repeats between stretches of "training").
PHASES = ("loading", "evaluating", "training", "final evaluation", "comparing")


def event_kind(event) -> str:
    """An event's kind, whether it is an `Event` or its dict form (a line of events.jsonl)."""
    if isinstance(event, dict):
        return event.get("type", "")
    return getattr(event, "kind", "")


def event_field(event, name: str, default=None):
    """A field of an `Event` or of its dict form."""
    if isinstance(event, dict):
        return event.get(name, default)
    return getattr(event, name, default)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (Started, Advice, Step, Eval, CheckpointSaved, Finished, Stopped, Failed, Phase)
}
TERMINAL = (Finished, Stopped, Failed)


def from_dict(data: dict) -> Event:
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    return cls(**data)


class EventBus:
    """Fan events out to subscribers; one failing subscriber never stops training or the others."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def subscribe(self, callback: Callable[[Event], None], first: bool = False) -> Callable[[], None]:
        """`first`: called before the subscribers already there (the run's own log, so that whatever a
        viewer does on an event, the event is already on disk)."""
        with self._lock:
            self._subscribers.insert(0 if first else len(self._subscribers), callback)
        return lambda: self._subscribers.remove(callback)

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception as exc:  # a broken view must not kill a run
                self.errors.append(f"{getattr(callback, '__name__', callback)}: {exc!r}")


class JsonlLog:
    """Subscriber that appends each event as one JSON line, written at once so a crash loses nothing.

    A line the disk refuses is taken back whole, so the next line never lands glued to half of it;
    `on_error` hears the reason once per stretch of refused lines (with no `on_error` it raises).
    """

    def __init__(self, path: str | Path, on_error: Callable[[str], None] | None = None) -> None:
        # The folder must exist already: a log never recreates a run folder that was deleted.
        self.path = Path(path)
        self.on_error = on_error
        self.failing = False

    def __call__(self, event: Event) -> None:
        line = (json.dumps(event.to_dict(), default=str) + "\n").encode("utf-8")
        try:
            self._append(line)
        except FileNotFoundError:  # the run folder was deleted: not a disk problem to report
            raise
        except OSError as exc:
            if self.on_error is None:
                raise
            if not self.failing:
                self.failing = True
                self.on_error(exc.strerror or str(exc))
            return
        self.failing = False

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                rest = memoryview(line)
                while rest:  # a nearly full disk can take part of a write before it refuses the rest
                    rest = rest[os.write(fd, rest) :]
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def drop_superseded(events: list) -> list:
    """The events of the run as it stands: a resumed `started` event at step k voids what the
    earlier attempt logged after k (its steps, evaluations, checkpoints and ending), because the
    resumed run retrains those steps."""
    out: list = []
    for event in events:
        if event_kind(event) == "started" and event_field(event, "resumed", False):
            from_step = int(event_field(event, "from_step", 0) or 0)
            out = [
                e
                for e in out
                if event_kind(e) not in ("finished", "stopped", "failed")
                and int(event_field(e, "step", 0) or 0) <= from_step
            ]
        out.append(event)
    return out


def read_events(path: str | Path) -> list[Event]:
    """Events from a JSONL log; a line cut short by a crash is ignored."""
    events = []
    path = Path(path)
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return events
