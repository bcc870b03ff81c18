"""A run's training history: its events folded into the series the charts and progress views draw.

Feed `History` live events (the app's watcher, the notebooks' `LiveCurves`) or a finished run's
`events.jsonl`; both give the same steps, losses, evaluations, advice and status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .events import event_field, event_kind
from .metrics import METRICS


@dataclass
class History:
    """What the charts need from a run's events; feed it live events or a run's events.jsonl."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step", "epoch", "metrics", "is_best"}
    #: Each distinct advice message and the steps it was given at (the same warning repeats at every evaluation).
    advice_steps: dict[str, list[int]] = field(default_factory=dict)
    total_steps: int = 0
    last_step: dict | None = None
    started: dict | None = None
    status: str = "idle"  # idle, running, finished, stopped, failed
    end_message: str = ""
    run_dir: str = ""
    summary: dict = field(default_factory=dict)
    n_events: int = 0

    @classmethod
    def from_events(cls, events: Iterable) -> "History":
        history = cls()
        history.extend(events)
        return history

    def extend(self, events: Iterable) -> "History":
        for event in events:
            self.add(event)
        return self

    def add(self, event: Any) -> None:
        kind = event_kind(event)
        self.n_events += 1
        if kind == "started":
            if self.steps or self.evals:  # a new run in the same stream (a sweep): its own curves
                fresh = History()
                self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "n_events"})
            self.status = "running"
            self.total_steps = int(event_field(event, "total_steps", 0) or 0)
            self.run_dir = str(event_field(event, "run_dir", ""))
            self.started = {
                "n_train": event_field(event, "n_train"),
                "n_val": event_field(event, "n_val"),
                "skipped": list(event_field(event, "skipped", []) or []),
                "config": event_field(event, "config", {}) or {},
                "time": event_field(event, "time"),
            }
        elif kind == "step":
            self.steps.append(int(event_field(event, "step")))
            self.train_loss.append(float(event_field(event, "train_loss")))
            self.learning_rate.append(float(event_field(event, "learning_rate", 0.0) or 0.0))
            self.total_steps = int(event_field(event, "total_steps", self.total_steps) or self.total_steps)
            self.last_step = {
                k: event_field(event, k)
                for k in ("step", "epoch", "tokens_per_second", "tokens_seen", "elapsed", "total_steps", "train_loss", "grad_norm")
            }
        elif kind == "eval":
            self.evals.append(
                {
                    "step": int(event_field(event, "step")),
                    "epoch": float(event_field(event, "epoch", 0.0) or 0.0),
                    "metrics": dict(event_field(event, "metrics", {}) or {}),
                    "is_best": bool(event_field(event, "is_best", False)),
                }
            )
        elif kind == "advice":
            message = str(event_field(event, "message", ""))
            step = event_field(event, "step", 0)
            if message not in self.advice_steps:
                self.advice_steps[message] = []
            if step:
                self.advice_steps[message].append(int(step))
        elif kind in ("finished", "stopped", "failed"):
            self.status = kind
            self.summary = dict(event_field(event, "summary", {}) or {})
            if kind == "stopped":
                self.end_message = str(event_field(event, "reason", ""))
            elif kind == "failed":
                self.end_message = str(event_field(event, "error", ""))
            step = event_field(event, "step")
            if self.last_step is None and step is not None:
                self.last_step = {"step": step}

    @property
    def advice(self) -> list[str]:
        """Distinct advice messages, each with the steps where it was given."""
        out = []
        for message, steps in self.advice_steps.items():
            if not steps:
                out.append(message)
            elif len(steps) == 1:
                out.append(f"step {steps[0]}: {message}")
            else:
                shown = ", ".join(map(str, steps[:6])) + (", \u2026" if len(steps) > 6 else "")
                out.append(f"steps {shown}: {message}")
        return out

    @property
    def done(self) -> bool:
        return self.status in ("finished", "stopped", "failed")

    def metric_series(self, name: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for e in self.evals:
            value = e["metrics"].get(name)
            if value is not None and value == value:
                xs.append(e["step"])
                ys.append(float(value))
        return xs, ys

    def best(self, name: str) -> tuple[int, float] | None:
        xs, ys = self.metric_series(name)
        if not ys:
            return None
        pick = max if METRICS[name].higher_is_better else min
        value = pick(ys)
        return xs[ys.index(value)], value
