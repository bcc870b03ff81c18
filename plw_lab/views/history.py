"""A run's training history: its events folded into the series the charts and progress views draw.

Feed `History` live events (the app's watcher, the notebooks' `LiveCurves`) or a finished run's
`events.jsonl`; both give the same steps, losses, evaluations, advice and status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from plw_lab.core.events import event_field, event_kind
from plw_lab.core.metrics import METRICS


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
    #: What the run is doing (`plw_lab.core.events.PHASES`), the step it is at and since when (epoch seconds).
    phase: str = ""
    phase_step: int = 0
    phase_since: float | None = None
    began: float | None = None  # time of the run's first event
    ended: float | None = None  # time of its finished, stopped or failed event
    eval_interval: int = 0

    @classmethod
    def from_events(cls, events: Iterable) -> History:
        history = cls()
        history.extend(events)
        return history

    def extend(self, events: Iterable) -> History:
        for event in events:
            self.add(event)
        return self

    def add(self, event: Any) -> None:
        kind = event_kind(event)
        self.n_events += 1
        when = event_field(event, "time")
        if self.began is None:
            self.began = when
        if kind == "phase":
            self.phase, self.phase_step, self.phase_since = (
                str(event_field(event, "name")),
                int(event_field(event, "step", 0) or 0),
                when,
            )
        elif kind == "started":
            if event_field(event, "resumed", False):
                self._retrain_after(int(event_field(event, "from_step", 0) or 0))
            elif self.steps or self.evals:
                # Another run in the same stream (a sweep) gets its own curves.
                fresh = History()
                self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k not in ("n_events", "began")})
            self.status = "running"
            self.total_steps = int(event_field(event, "total_steps", 0) or 0)
            self.run_dir = str(event_field(event, "run_dir", ""))
            self.started = {
                "n_train": event_field(event, "n_train"),
                "n_val": event_field(event, "n_val"),
                "skipped": list(event_field(event, "skipped", []) or []),
                "config": event_field(event, "config", {}) or {},
                "time": when,
            }
            self.eval_interval = int(((self.started["config"] or {}).get("train") or {}).get("eval_interval") or 0)
        elif kind == "step":
            self.steps.append(int(event_field(event, "step")))
            self.train_loss.append(float(event_field(event, "train_loss")))
            self.learning_rate.append(float(event_field(event, "learning_rate", 0.0) or 0.0))
            self.total_steps = int(event_field(event, "total_steps", self.total_steps) or self.total_steps)
            self.last_step = {
                k: event_field(event, k)
                for k in (
                    "step",
                    "epoch",
                    "tokens_per_second",
                    "tokens_seen",
                    "elapsed",
                    "total_steps",
                    "train_loss",
                    "grad_norm",
                    "time",
                )
            }
            if self.phase in ("", "loading"):  # a log without phase events still reads as training
                self.phase, self.phase_since = "training", when
        elif kind == "eval":
            step = int(event_field(event, "step"))
            # An evaluation repeated at a step (generated answers added after an early stop) replaces the first.
            self.evals = [e for e in self.evals if e["step"] != step]
            self.evals.append(
                {
                    "step": step,
                    "epoch": float(event_field(event, "epoch", 0.0) or 0.0),
                    "metrics": dict(event_field(event, "metrics", {}) or {}),
                    "is_best": bool(event_field(event, "is_best", False)),
                    "seconds": float(event_field(event, "seconds", 0.0) or 0.0),
                    "time": when,
                }
            )
            if self.phase == "evaluating":  # an evaluation during training hands back to training
                self.phase, self.phase_since = "training", when
        elif kind == "advice":
            message = str(event_field(event, "message", ""))
            step = event_field(event, "step", 0)
            if message not in self.advice_steps:
                self.advice_steps[message] = []
            if step:
                self.advice_steps[message].append(int(step))
        elif kind in ("finished", "stopped", "failed"):
            self.status = kind
            self.ended = when
            self.summary = dict(event_field(event, "summary", {}) or {})
            if kind == "stopped":
                self.end_message = str(event_field(event, "reason", ""))
            elif kind == "failed":
                self.end_message = str(event_field(event, "error", ""))
            step = event_field(event, "step")
            if self.last_step is None and step is not None:
                self.last_step = {"step": step}

    def _retrain_after(self, from_step: int) -> None:
        """A resumed run retrains the steps after its checkpoint: what the earlier attempt logged there goes."""
        kept = [i for i, s in enumerate(self.steps) if s <= from_step]
        self.steps = [self.steps[i] for i in kept]
        self.train_loss = [self.train_loss[i] for i in kept]
        self.learning_rate = [self.learning_rate[i] for i in kept]
        self.evals = [e for e in self.evals if e["step"] <= from_step]
        self.summary, self.end_message, self.ended = {}, "", None

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

    # -- progress ---------------------------------------------------------------------------------

    def elapsed(self, now: float) -> float | None:
        """Seconds since the run began, up to `now` while it runs (so the clock keeps ticking)."""
        if self.began is None:
            return (self.last_step or {}).get("elapsed")
        return (self.ended if self.done and self.ended else now) - self.began

    def eval_seconds(self) -> float | None:
        """The mean seconds of one evaluation so far."""
        seconds = [e["seconds"] for e in self.evals if e.get("seconds")]
        return sum(seconds) / len(seconds) if seconds else None

    def step_seconds(self) -> float | None:
        """Mean seconds of one optimiser step, evaluations left out."""
        last = self.last_step or {}
        step, at = int(last.get("step") or 0), last.get("time")
        base = next((e for e in self.evals if e["step"] == 0), None)
        if not step or at is None or base is None or base.get("time") is None:
            return last["elapsed"] / step if step and last.get("elapsed") else None
        during = sum(e["seconds"] for e in self.evals if 0 < e["step"] <= step)
        return max(at - base["time"] - during, 0.0) / step

    def evals_left(self) -> int:
        """Evaluations still to come: one every `eval_interval` steps, and one at the last step."""
        step, total = int((self.last_step or {}).get("step") or 0), self.total_steps
        if not total:
            return 0
        due = {s for s in range(step + 1, total + 1) if self.eval_interval and s % self.eval_interval == 0} | {total}
        if self.phase in ("evaluating", "final evaluation"):
            due.discard(self.phase_step)
        return len(due - {e["step"] for e in self.evals})

    def eta(self, now: float) -> float | None:
        """Seconds until training and its evaluations are done (the comparison after them is not included)."""
        if self.done or self.phase == "comparing":
            return None
        per_step, per_eval = self.step_seconds(), self.eval_seconds()
        if per_step is None or per_eval is None:
            return None
        step = int((self.last_step or {}).get("step") or 0)
        left = max(self.total_steps - step, 0) * per_step + self.evals_left() * per_eval
        if self.phase in ("evaluating", "final evaluation") and self.phase_since is not None:
            left += max(per_eval - (now - self.phase_since), 0.0)
        return left

    def phase_progress(self, now: float) -> tuple[str, float | None]:
        """What the run is doing in words, and how far through that phase it is (None: unknown)."""
        since = now - self.phase_since if self.phase_since is not None else None
        per_eval = self.eval_seconds()
        if self.phase == "loading":
            return "loading the model and the data", None
        if self.phase in ("evaluating", "final evaluation"):
            what = (
                "evaluating the base model (step 0)"
                if self.phase_step == 0 and self.phase == "evaluating"
                else f"{self.phase} at step {self.phase_step}"
            )
            return what, (min(since / per_eval, 0.99) if since is not None and per_eval else None)
        if self.phase == "training":
            step = int((self.last_step or {}).get("step") or 0)
            return "training", (min(step / self.total_steps, 1.0) if self.total_steps else None)
        if self.phase == "comparing":
            return "comparing adapter on and off (generations and forgetting probe)", None
        return "", None

    def metric_series(self, name: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for e in self.evals:
            value = e["metrics"].get(name)
            if value is not None and value == value:
                xs.append(e["step"])
                ys.append(float(value))
        return xs, ys

    def interval_series(self, name: str) -> tuple[list[int], list[float], list[float]]:
        """Steps with the 95% interval of metric `name` (its registry `interval` key): lows and highs."""
        key = METRICS[name].interval
        xs, lows, highs = [], [], []
        for e in self.evals:
            bounds = e["metrics"].get(key) if key else None
            if bounds and all(b is not None and b == b for b in bounds):
                xs.append(e["step"])
                lows.append(float(bounds[0]))
                highs.append(float(bounds[1]))
        return xs, lows, highs

    def best(self, name: str) -> tuple[int, float] | None:
        xs, ys = self.metric_series(name)
        if not ys:
            return None
        pick = max if METRICS[name].higher_is_better else min
        value = pick(ys)
        return xs[ys.index(value)], value
