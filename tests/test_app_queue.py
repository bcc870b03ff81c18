"""The app's queue without a page: a run started while another trains waits, checked now, one per
visitor, and starts by itself when the one before it ends; the operator's limits; a shutdown."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from plw_lab import api
from plw_lab.app.jobs import NOT_STARTED, JobBusy, JobRegistry, Limits
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.data import DataError


def _cfg(tmp_path, seed=0, **overrides):
    return LabConfig().override(
        {"model.name": "tiny-random", "train.output_dir": str(tmp_path), "train.seed": seed, **overrides}
    )


@pytest.fixture
def gates(monkeypatch):
    """`api.train` replaced by one that trains until its seed's gate opens or it is asked to stop."""
    gates: dict[int, threading.Event] = {}

    def train(cfg, subscribers=(), stop=None, **_):
        gate = gates.setdefault(cfg.train.seed, threading.Event())
        while not gate.is_set() and not stop.is_set():
            time.sleep(0.01)

    monkeypatch.setattr(api, "train", train)
    monkeypatch.setattr(api, "check_run", lambda cfg, examples=None: cfg.train.max_steps)
    return gates


def _until(test, timeout=10.0):
    deadline = time.time() + timeout
    while not test():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_a_run_started_while_another_trains_waits_its_turn(tmp_path, gates):
    registry = JobRegistry()
    first = registry.start(_cfg(tmp_path, 0), owner="a")
    assert first.running and not first.queued
    second = registry.start(_cfg(tmp_path, 1), owner="b")
    assert second.queued and registry.queued("b") == (1, second) and registry.current is first
    with pytest.raises(JobBusy, match="already have a run waiting"):
        registry.start(_cfg(tmp_path, 1), owner="b")
    third = registry.start(_cfg(tmp_path, 2), owner="c")
    assert registry.queued("c") == (2, third)
    assert registry.cancel("c") and third.not_started == "cancelled by its owner" and not third.queued
    assert registry.queued("c") is None and not registry.cancel("c")
    assert not registry.cancel("a")  # a running run is stopped, not cancelled

    gates.setdefault(0, threading.Event()).set()
    _until(lambda: second.running)
    assert registry.current is second and registry.queue == [] and not third.running
    registry.shutdown(signal.SIGTERM)


def test_the_queue_has_the_operators_length(tmp_path, gates):
    registry = JobRegistry(limits=Limits(max_queue=1))
    registry.start(_cfg(tmp_path, 0), owner="a")
    registry.start(_cfg(tmp_path, 1), owner="b")
    with pytest.raises(JobBusy, match=r"queue is full \(1 runs wait\)"):
        registry.start(_cfg(tmp_path, 2), owner="c")
    no_queue = JobRegistry(limits=Limits(max_queue=0))
    no_queue.start(_cfg(tmp_path, 3), owner="a")
    with pytest.raises(JobBusy, match="already running"):
        no_queue.start(_cfg(tmp_path, 4), owner="b")
    for each in (registry, no_queue):
        each.shutdown(signal.SIGTERM)


def test_a_queued_run_is_refused_now_as_a_start_would_refuse_it(tmp_path, gates, monkeypatch):
    monkeypatch.undo()  # the real check; the running job below needs no real training
    monkeypatch.setattr(api, "train", lambda cfg, stop=None, **_: stop.wait(10))
    registry = JobRegistry()
    running = registry.start(_cfg(tmp_path, 0), owner="a")
    with pytest.raises(DataError):
        registry.start(_cfg(tmp_path, 1, **{"data.source": str(tmp_path / "missing.jsonl")}), owner="b")
    assert registry.queue == []
    steps = registry.start(_cfg(tmp_path, 1, **{"train.max_steps": 3}), owner="b").steps
    assert steps == 3
    registry.shutdown(signal.SIGTERM)
    _until(lambda: not running.running)


def test_estimated_waits_add_the_running_eta_and_each_queued_runs_own(tmp_path, gates):
    registry = JobRegistry(limits=Limits(max_minutes=0.5))
    running = registry.start(_cfg(tmp_path, 0), owner="a")
    running.eta = lambda now: 30.0
    running.step_seconds = lambda: 0.5
    short = registry.start(_cfg(tmp_path, 1, **{"train.max_steps": 10}), owner="b")
    long = registry.start(_cfg(tmp_path, 2, **{"train.max_steps": 200}), owner="c")  # capped at 30 s
    last = registry.start(_cfg(tmp_path, 3), owner="d")
    assert registry.waits() == [(short, 30.0), (long, 35.0), (last, 65.0)]
    running.eta = lambda now: None  # still loading: nothing after it is known
    assert [wait for _, wait in registry.waits()] == [None, None, None]
    registry.shutdown(signal.SIGTERM)


def test_the_step_limit_refuses_a_longer_run_and_the_time_limit_stops_one(tmp_path, gates):
    registry = JobRegistry(limits=Limits(max_steps=5, max_minutes=0.002))
    for steps in (0, 6):
        with pytest.raises(ConfigError, match="at most 5 optimiser steps"):
            registry.start(_cfg(tmp_path, 0, **{"train.max_steps": steps}), owner="a")
    job = registry.start(_cfg(tmp_path, 0, **{"train.max_steps": 5}), owner="a")
    _until(lambda: not job.running)
    assert job.stop.reason == "stopped by the app's limit of 0.002 minutes"


def test_a_shutdown_stops_the_running_run_and_starts_no_queued_one(tmp_path, gates, capsys):
    registry = JobRegistry()
    running = registry.start(_cfg(tmp_path, 0), owner="a")
    queued = registry.start(_cfg(tmp_path, 1, **{"train.run_name": "waiting"}), owner="b")
    assert registry.shutdown(signal.SIGTERM) is running
    assert running.stop.reason == "stopped by SIGTERM" and running.stop.signal == signal.SIGTERM
    _until(lambda: not running.running)
    assert not queued.running and queued.not_started == "the app was stopped by SIGTERM before its turn"
    assert f"queued run {queued.id} not started" in capsys.readouterr().err
    with pytest.raises(JobBusy, match="shutting down"):
        registry.start(_cfg(tmp_path, 2), owner="c")
    # Recorded on disk for its owner's next visit (the app after a restart), and told once, to them only.
    assert JobRegistry.not_started(tmp_path, "a") == []
    [(reason, cfg)] = JobRegistry.not_started(tmp_path, "b")
    assert reason == "the app was stopped by SIGTERM before its turn"
    assert cfg.train.seed == 1 and cfg.train.run_name == "waiting"
    assert JobRegistry.not_started(tmp_path, "b") == [] and not any((tmp_path / NOT_STARTED).iterdir())
