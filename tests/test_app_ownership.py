"""Every run and sweep started from the app belongs to the visitor who started it, on disk as well as
in the running job: only they stop, delete or resume it. A run from the CLI, with no owner, is read-only
for visitors. Two visitors (two browser tokens) drive the handlers without a browser."""

import threading
import time

import pytest
from conftest import TINY_APP_SETTINGS

from plw_lab.app.jobs import TrainingJob, record_not_started
from plw_lab.app.main import build_app
from plw_lab.app.visitors import OWNER_FILE, owner_key, recorded_owner
from plw_lab.core.config import LabConfig
from plw_lab.core.runs import load_run
from plw_lab.core.training import train
from plw_lab.views.history import History

CFG = TINY_APP_SETTINGS
ALICE, BOB = "a1" * 16, "b2" * 16


@pytest.fixture
def app(tmp_path):
    return build_app(LabConfig().override(CFG), runs_dir=tmp_path / "runs")


def _wait(job, timeout=120):
    deadline = time.time() + timeout
    while job.running and time.time() < deadline:
        time.sleep(0.1)
    assert not job.running


def _start(app, visitor, run_name):
    """Press Start as `visitor` with the page's settings and a run name; returns the handler's answer."""
    train = app.plw_tabs["train"]
    shared = train.shared
    values = {control: control.value for control in shared.settings.values()}
    values |= {shared.plw: 0.0, shared.data_state: None, shared.seen_job: None, shared.visitor: visitor}
    values[shared.settings["train.run_name"]] = run_name
    return train.on_start(values)


def _delete(app, visitor, name) -> str:
    runs = app.plw_tabs["runs"]
    values = {c: c.value for c in runs.inputs} | {
        runs.run_pick: name,
        runs.confirm_delete: True,
        runs.shared.visitor: visitor,
    }
    return runs.on_delete(values)[runs.msg]


def _resume(app, visitor, name) -> str:
    runs = app.plw_tabs["runs"]
    return runs.on_resume({runs.run_pick: name, runs.shared.visitor: visitor})[runs.msg]


@pytest.fixture
def held_start(monkeypatch):
    """Holds every training job before its first event until `.set()`, so it stays running for a test."""
    import plw_lab.core.training as training_module

    release = threading.Event()
    real = training_module.load_tokenizer

    def held_tokenizer(cfg):
        release.wait(60)
        return real(cfg)

    monkeypatch.setattr(training_module, "load_tokenizer", held_tokenizer)
    yield release
    release.set()


def test_only_the_owner_deletes_or_resumes_a_finished_run_after_its_job_is_replaced(app):
    registry = app.plw_registry
    _start(app, ALICE, "alices")
    alices = registry.current
    _wait(alices)
    assert alices.owner == ALICE and load_run(alices.run_path).status == "finished"
    record = (alices.run_path / OWNER_FILE).read_text()
    assert recorded_owner(alices.run_path) == owner_key(ALICE) and ALICE not in record  # the hash, not the token
    _start(app, BOB, "bobs")  # Alice's job is no longer the app's job
    assert registry.current is not alices
    _wait(registry.current)
    assert "started by another visitor; only they can delete it" in _delete(app, BOB, "alices")
    assert "started by another visitor; only they can delete it" in _delete(app, None, "alices")
    assert "only they can resume it" in _resume(app, BOB, "alices")
    assert alices.run_path.exists()
    assert "nothing to resume" in _resume(app, ALICE, "alices")  # past the owner check, to the run's own state
    assert "Deleted alices" in _delete(app, ALICE, "alices") and not alices.run_path.exists()
    assert "Deleted bobs" in _delete(app, BOB, "bobs")


def test_only_the_owner_stops_a_run(app, held_start):
    train = app.plw_tabs["train"]
    _start(app, ALICE, "held")
    job = app.plw_registry.current
    assert job.running and job.owner == ALICE
    stop_button = train.stop_btn
    assert train.render_progress(History(), job, BOB)[stop_button]["interactive"] is False
    assert train.render_progress(History(), job, ALICE)[stop_button]["interactive"] is True
    refused = train.on_stop({train.shared.visitor: BOB})[train.msg]
    assert "only they can stop it" in refused and not job.stop.is_set()
    assert "only they can stop it" in train.on_stop({train.shared.visitor: None})[train.msg]
    assert "Stopping" in train.on_stop({train.shared.visitor: ALICE})[train.msg] and job.stop.is_set()
    held_start.set()
    _wait(job)


def test_a_run_started_without_a_visitor_token_gets_an_owner(app, held_start):
    train = app.plw_tabs["train"]
    out = _start(app, None, "tokenless")
    token = out[train.shared.visitor]  # the caller is given the token that owns its run
    job = app.plw_registry.current
    assert job.owner == token and len(token) == 32
    for someone in (None, BOB):
        assert "only they can stop it" in train.on_stop({train.shared.visitor: someone})[train.msg]
    assert not job.stop.is_set()
    held_start.set()
    _wait(job)
    assert recorded_owner(job.run_path) == owner_key(token)
    assert "only they can delete it" in _delete(app, BOB, "tokenless")
    assert "Deleted tokenless" in _delete(app, token, "tokenless")


def test_a_sweep_belongs_to_the_visitor_who_started_it(app, held_start):
    runs, train = app.plw_tabs["runs"], app.plw_tabs["train"]
    out = runs.on_sweep({runs.sweep_plws: "0", runs.sweep_seeds: "0", runs.shared.visitor: None})
    token = out[runs.shared.visitor]
    job = app.plw_registry.current
    assert job.sweep and job.owner == token
    assert "only they can stop it" in train.on_stop({train.shared.visitor: BOB})[train.msg]
    assert not job.stop.is_set()
    held_start.set()
    _wait(job)
    sweep_dir = job.sweep_dir
    run_dir = next(p for p in (app.plw_runs_dir / sweep_dir).iterdir() if p.is_dir())
    assert recorded_owner(sweep_dir) == owner_key(token) and recorded_owner(run_dir) == owner_key(token)


def test_a_run_from_the_cli_is_read_only_for_visitors(app):
    cfg = app.plw_tabs["train"].ctx.base.override({"train.run_name": "from-cli"})
    run_dir = train(cfg, compare=False).run_dir  # what `lab train` does: no visitor, no owner
    assert recorded_owner(run_dir) is None
    for visitor in (ALICE, None):
        assert "not started by a visitor of this page" in _delete(app, visitor, "from-cli")
        assert "you can read it here, not resume it" in _resume(app, visitor, "from-cli")
    assert load_run(run_dir).path.exists()
    # A job started in the app's process without an owner (a script embedding the app) is watched, never stopped.
    job = TrainingJob(cfg)
    job.thread = threading.Thread(target=lambda: job.stop.wait(30))
    job.thread.start()
    app.plw_registry.current = job
    try:
        train_tab = app.plw_tabs["train"]
        answer = train_tab.on_stop({train_tab.shared.visitor: ALICE})[train_tab.msg]
        assert "not started by a visitor of this page" in answer and not job.stop.is_set()
        progress = train_tab.render_progress(History(), job, ALICE)
        assert progress[train_tab.stop_btn]["interactive"] is False
        assert "started outside this page" in progress[train_tab.progress]
    finally:
        job.stop.set()
        job.thread.join()


def test_a_visitor_whose_queued_run_an_app_stop_left_unstarted_gets_its_settings_back(app, tmp_path):
    """After a restart the page tells the run's owner (and no one else) that it was not started, with its
    settings back in the controls, once."""
    train = app.plw_tabs["train"]
    shared = train.shared
    cfg = LabConfig().override({**CFG, "train.output_dir": str(tmp_path / "runs"), "train.learning_rate": 0.0123})
    job = TrainingJob(cfg.override({"train.prompt_loss_weight": 0.3}), owner=BOB)
    job.not_started = "the app was stopped by SIGTERM before its turn"
    record_not_started(job)
    assert train.on_return({shared.visitor: ALICE}) == {}
    back = train.on_return({shared.visitor: BOB})
    assert "was not started: the app was stopped by SIGTERM before its turn" in back[train.msg]
    assert back[shared.plw] == 0.3 and back[shared.settings["train.learning_rate"]] == 0.0123
    assert train.on_return({shared.visitor: BOB}) == {}
