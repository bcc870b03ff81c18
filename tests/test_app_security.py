"""The app's defences, driven through its handlers without a browser: run names go through the run
registry, errors show no server paths, remote code needs the owner's flag, a visitor's data state is
bounded, a starting run cannot be deleted, and a stopped run resumes from the Runs tab."""

import json
import threading
import time

import pytest
from conftest import sum_examples

from plw_lab.app.data import STATE_TTL_SECONDS, VIEW_LIMIT
from plw_lab.app.jobs import JobRegistry, RunModels, hide_paths
from plw_lab.app.main import build_app
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.runs import delete_run, load_run

CFG = {
    "model.name": "tiny-random",
    "train.batch_size": 4,
    "train.max_steps": 2,
    "train.eval_interval": 100,
    "lora.layers": "all",
    "eval.generations": 0,
    "eval.probe_texts": 0,
    "data.val_size": 4,
}


@pytest.fixture
def app(tmp_path):
    return build_app(LabConfig().override(CFG), runs_dir=tmp_path / "runs")


def _wait(job, timeout=120):
    deadline = time.time() + timeout
    while job.running and time.time() < deadline:
        time.sleep(0.1)
    assert not job.running


def _data_file(path, n):
    path.write_text(
        "".join(json.dumps({"prompt": f"Add {i} and {i + 1}.", "completion": str(2 * i + 1)}) + "\n" for i in range(n))
    )
    return path


def _values(components, chosen=None):
    """A handler's input dict: each component's starting value, then the `chosen` ones."""
    return {c: c.value for c in components} | (chosen or {})


def _load_file(app, path):
    """The Data tab's Load file handler on `path`; returns (the visitor's DataView, the message)."""
    data = app.plw_tabs["data"]
    out = data.on_load_file(_values(data.load_inputs(data.upload), {data.upload: str(path)}))
    return out.get(data.shared.data_state), out[data.msg]


def test_run_names_are_resolved_through_the_run_registry(app, monkeypatch):
    ctx_models = app.plw_tabs["compare"].ctx.models
    asked = []
    monkeypatch.setattr(ctx_models, "get", lambda path: asked.append(path))
    compare = app.plw_tabs["compare"]
    for name in ("../..", "/etc", "..", "runs/../../etc"):
        compare.on_own_prompt({compare.run: name, compare.own_prompt: "hello"})
        compare.on_val_example({compare.run: name, compare.val_idx: 0, compare.loss_mode: "diff"})
        message = compare.on_compare({compare.run: name}, progress_=lambda *a, **k: None)[compare.msg]
        assert "no run named" in message and str(app.plw_runs_dir) not in message
    assert asked == []  # no visitor text ever became a path the models were loaded from


def test_an_upload_error_shows_the_file_name_not_the_server_path(app, tmp_path):
    bad = tmp_path / "uploads" / "abc123" / "mine.parquet"  # like Gradio's temporary upload folder
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    message = _load_file(app, bad)[1]
    assert "mine.parquet" in message and "Parquet" in message
    assert "uploads" not in message and "abc123" not in message


def test_hide_paths_keeps_file_names_and_urls():
    assert hide_paths("cannot read /tmp/gradio/0f3a/data.csv: bad row") == "cannot read data.csv: bad row"
    assert hide_paths("see https://huggingface.co/docs/datasets") == "see https://huggingface.co/docs/datasets"
    assert hide_paths("[Errno 2] No such file: '/srv/runs/a/config.yaml'") == "[Errno 2] No such file: 'config.yaml'"


def test_remote_code_needs_the_owners_flag(tmp_path):
    cfg = LabConfig().override({**CFG, "model.trust_remote_code": True})
    with pytest.raises(ConfigError, match="--allow-remote-code"):
        JobRegistry().start(cfg)
    with pytest.raises(ConfigError, match="--allow-remote-code"):
        build_app(cfg, runs_dir=tmp_path / "runs")
    # A run folder whose config.yaml asks for it is not loaded for comparison either.
    run_dir = tmp_path / "runs" / "remote"
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="--allow-remote-code"):
        RunModels(JobRegistry()).get(run_dir)


def test_a_visitors_data_state_is_bounded_and_expires(app, tmp_path):
    dv = _load_file(app, _data_file(tmp_path / "big.jsonl", 600))[0]
    data = app.plw_tabs["data"]
    assert dv.total == 600 and len(dv.encoded) == VIEW_LIMIT and not hasattr(dv, "examples")
    assert len(dv.stats.prompt) == 600  # the statistics cover the whole set, kept as numbers
    # The PLW slider redraws the statistics from what the state keeps.
    values = _values(data.token_inputs()) | {
        data.shared.data_state: dv,
        data.shared.plw: 0.5,
        data.colour_by: "loss weight",
    }
    assert "600" in data.on_plw(values)[data.stats_md]
    assert data.shared.data_state.time_to_live == STATE_TTL_SECONDS


def test_a_run_cannot_be_deleted_while_it_starts(app, monkeypatch):
    import plw_lab.core.training as training_module

    release = threading.Event()
    real = training_module.load_tokenizer

    def slow_tokenizer(cfg):  # holds the job before its first event, while its folder already exists
        release.wait(60)
        return real(cfg)

    monkeypatch.setattr(training_module, "load_tokenizer", slow_tokenizer)
    registry = app.plw_registry
    job = registry.start(
        app.plw_tabs["train"].ctx.base.override({"train.run_name": "starting"}), examples=sum_examples(16)
    )
    deadline = time.time() + 30
    while job.run_path is None and time.time() < deadline:
        time.sleep(0.02)
    assert job.run_path is not None and not any(e.kind == "started" for e in job.events_since(0))
    runs = app.plw_tabs["runs"]
    delete = _values(runs.inputs) | {runs.run_pick: "starting", runs.confirm_delete: True}
    message = runs.on_delete(delete)[runs.msg]
    assert "still training" in message and job.run_path.exists()
    with pytest.raises(ValueError, match="still training"):
        delete_run(job.run_path)  # the same refusal for anyone outside the app's registry
    release.set()
    _wait(job)
    assert (job.run_path / "config.yaml").exists() and load_run(job.run_path).status == "finished"
    assert "Deleted" in runs.on_delete(delete)[runs.msg]
    assert not job.run_path.exists()


def test_the_runs_tab_resumes_a_stopped_run(app):
    registry = app.plw_registry
    cfg = app.plw_tabs["train"].ctx.base.override(
        {"train.run_name": "halted", "train.max_steps": 4, "train.save_interval_steps": 1}
    )
    job = registry.start(cfg)

    def stop_after_first_step():
        while job.running and not any(e.kind == "step" for e in job.events_since(0)):
            time.sleep(0.02)
        job.stop.set()

    threading.Thread(target=stop_after_first_step, daemon=True).start()
    _wait(job)
    assert load_run(job.run_path).status == "stopped"
    runs = app.plw_tabs["runs"]
    out = runs.on_resume({runs.run_pick: "halted", runs.shared.visitor: "visitor-1"})
    message, job_id = out[runs.msg], out[runs.shared.seen_job]
    resumed = registry.current
    assert "Resuming halted" in message and job_id == resumed.id
    assert resumed.owner == "visitor-1"  # whoever resumed it may stop it
    assert resumed.run_dir == str(job.run_path)  # watchers know the folder before its first event
    _wait(resumed)
    run = load_run(job.run_path)
    assert run.status == "finished" and run.summary["steps"] == 4 and run.summary["resumed_from"] >= 1
    message = runs.on_resume({runs.run_pick: "halted", runs.shared.visitor: "visitor-1"})[runs.msg]
    assert "finished" in message and "nothing to resume" in message
