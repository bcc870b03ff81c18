"""The app's defences, driven through its handlers without a browser: run names go through the run
registry, errors show no server paths, remote code needs the owner's flag, no setting a visitor sends
reads, lists or probes a file of the server, messages built from a visitor's file are escaped, a
visitor's data state is bounded, a starting run cannot be deleted, and a stopped run resumes from the
Runs tab."""

import dataclasses
import html
import json
import threading
import time

import gradio as gr
import pytest
from conftest import TINY_APP_SETTINGS, sum_examples

from plw_lab.app.data import NOT_AN_UPLOAD, STATE_TTL_SECONDS, VIEW_LIMIT
from plw_lab.app.jobs import JobRegistry, RunModels, hide_paths
from plw_lab.app.main import build_app, parse_args
from plw_lab.app.train import MEMORY_SETTINGS
from plw_lab.app.visitors import MODEL_REFUSED, OUTPUT_DIR_REFUSED
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.runs import delete_run, load_run

CFG = TINY_APP_SETTINGS


#: What the server's private files hold: it must never reach a visitor.
SECRET = "plw-secret-5e1f9c"
VISITOR = "a" * 32


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Gradio's upload folder for the test: files under it stand for a visitor's uploads."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture
def app(tmp_path, uploads):
    return build_app(LabConfig().override(CFG), runs_dir=tmp_path / "runs")


@pytest.fixture
def server_paths(tmp_path):
    """What a hostile visitor names: a readable secret file, a secrets folder that looks like a saved
    model, a system file and a path that does not exist, all outside the upload folder."""
    server = tmp_path / "server"
    (server / "secrets").mkdir(parents=True)
    secret = server / "secret.jsonl"
    secret.write_text("".join(json.dumps({"prompt": f"{SECRET} {i}", "completion": SECRET}) + "\n" for i in range(8)))
    (server / "secrets" / "config.json").write_text(json.dumps({"model_type": "llama", SECRET: SECRET}))
    (server / "secrets" / "data.json").write_text(json.dumps([{SECRET: SECRET}]))
    return {
        "secret file": str(secret),
        "secret folder": str(server / "secrets"),
        "secret json": str(server / "secrets" / "data.json"),
        "system file": "/etc/passwd",
        "missing path": str(server / "missing.jsonl"),
    }


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


def _upload(uploads, name, n=8):
    """A prompt/completion file as Gradio's upload box leaves it."""
    return _data_file(uploads / name, n)


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


def test_an_upload_error_shows_the_file_name_not_the_server_path(app, uploads):
    bad = uploads / "abc123" / "mine.parquet"  # like Gradio's temporary upload folder
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


def test_a_visitors_data_state_is_bounded_and_expires(app, uploads):
    dv = _load_file(app, _upload(uploads, "big.jsonl", 600))[0]
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
    real = training_module.training_arguments

    def slow_arguments(*args):  # holds the job after its folder exists, before its `started` event
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(training_module, "training_arguments", slow_arguments)
    registry = app.plw_registry
    job = registry.start(
        app.plw_tabs["train"].ctx.base.override({"train.run_name": "starting"}),
        examples=sum_examples(16),
        owner=VISITOR,
    )
    deadline = time.time() + 30
    while job.run_path is None and time.time() < deadline:
        time.sleep(0.02)
    assert job.run_path is not None and not any(e.kind == "started" for e in job.events_since(0))
    runs = app.plw_tabs["runs"]
    delete = _values(runs.inputs) | {runs.run_pick: "starting", runs.confirm_delete: True, runs.shared.visitor: VISITOR}
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
    job = registry.start(cfg, owner="visitor-1")

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
    assert resumed.owner == "visitor-1"  # its owner resumed it, and may stop it
    assert resumed.run_dir == str(job.run_path)  # watchers know the folder before its first event
    _wait(resumed)
    run = load_run(job.run_path)
    assert run.status == "finished" and run.summary["steps"] == 4 and run.summary["resumed_from"] >= 1
    message = runs.on_resume({runs.run_pick: "halted", runs.shared.visitor: "visitor-1"})[runs.msg]
    assert "finished" in message and "nothing to resume" in message


# -- no setting a visitor sends names a file of the server ------------------------------------------


def _texts(out) -> str:
    """Everything a handler's answer shows, as one string (messages, updates, tables)."""
    if isinstance(out, dict):
        return "\n".join(_texts(v) for v in out.values())
    return str(out)


@pytest.fixture
def toasts(monkeypatch):
    """The warning toasts the handlers raise, as the text Gradio receives (it renders it as HTML)."""
    shown = []
    monkeypatch.setattr(gr, "Warning", lambda text, *args, **kwargs: shown.append(text))
    return shown


def _start_values(app, visitor=VISITOR, **settings):
    """The Train tab's Start inputs with the page's starting values and `settings` (config key -> control value)."""
    shared = app.plw_tabs["train"].shared
    values = {control: control.value for control in shared.settings.values()}
    values |= {shared.plw: 0.0, shared.data_state: None, shared.seen_job: None, shared.visitor: visitor}
    for key, value in settings.items():
        values[shared.settings[key]] = value
    return values


def _refusals(handler, probes) -> dict[str, str]:
    """The answer of `handler(probe)` for each named probe, as the text a visitor sees."""
    return {name: handler(path) for name, path in probes.items()}


def _assert_one_refusal(answers: dict[str, str], toasts: list[str], expected: str) -> None:
    """Every probe got the same answer, it is the refusal, and nothing of the server's files shows."""
    assert len(set(answers.values())) == 1, answers
    shown = "\n".join([*answers.values(), *toasts])
    assert expected in next(iter(answers.values()))
    assert SECRET not in shown and "root:" not in shown


@pytest.mark.parametrize(
    ("key", "control_value", "refusal"),
    [
        ("data.val_source", lambda path: path, "is neither a built-in set"),
        ("data.mix", lambda path: json.dumps({path: 1}), "is neither a built-in set"),
        ("model.name", lambda path: path, "this app loads no folder or file of the server"),
    ],
    ids=["val_source", "mix", "model"],
)
def test_start_refuses_a_setting_that_names_a_server_path(app, server_paths, toasts, key, control_value, refusal):
    train = app.plw_tabs["train"]

    def start(path):
        out = train.on_start(_start_values(app, **{key: control_value(path)}))
        assert train.shared.seen_job not in out  # no job started
        return _texts(out)

    _assert_one_refusal(_refusals(start, server_paths), toasts, refusal)
    assert app.plw_registry.current is None and train.ctx.list_runs() == []
    # the same settings with what a visitor may name build a config
    allowed = {"data.val_source": "builtin:bbb", "data.mix": '{"builtin:bbb": 1}', "model.name": "someone/a-model"}
    assert train.build_config(_start_values(app, **{key: allowed[key]}))


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("data.mix", '{"builtin:../../secret/creds.jsonl": 1}', "Mix\": unknown built-in set '../../secret/creds"),
        ("data.val_source", "builtin:../secret/creds", "Val source\": unknown built-in set '../secret/creds'"),
    ],
    ids=["mix", "val_source"],
)
def test_start_refuses_a_built_in_set_that_does_not_exist(app, toasts, key, value, said):
    train = app.plw_tabs["train"]
    out = train.on_start(_start_values(app, **{key: value}))
    assert train.shared.seen_job not in out and app.plw_registry.current is None  # no job started
    assert "Cannot start" in _texts(out) and said in html.unescape(_texts(out))


def test_the_model_box_is_no_path_oracle(app, server_paths, toasts, tmp_path, monkeypatch):
    """The Data tab's load (the model's tokenizer) and the memory line answer every path alike (a name
    spelt like a hub id is one: see the next test)."""
    monkeypatch.chdir(tmp_path / "server")
    probes = server_paths
    data, train = app.plw_tabs["data"], app.plw_tabs["train"]
    model_box = data.shared.settings["model.name"]

    def load(path):
        values = _values(data.load_inputs(data.builtin_dd)) | {model_box: path}
        out = data.on_load_builtin(values)
        assert data.shared.data_state not in out
        return _texts(out)

    _assert_one_refusal(_refusals(load, probes), toasts, "this app loads no folder or file of the server")
    sizing = [key for key in train.controls if key in MEMORY_SETTINGS]  # on_sizing's inputs, in its order

    def memory_line(path):
        return train.on_sizing(*[path if key == "model.name" else train.controls[key].value for key in sizing])

    answers = _refusals(memory_line, probes)
    _assert_one_refusal(answers, [], MODEL_REFUSED)
    assert "Memory estimate" in memory_line("tiny-random") and "not available" not in memory_line("tiny-random")


def test_a_hub_shaped_model_name_answers_alike_whether_a_folder_of_that_name_exists(app, toasts, tmp_path, monkeypatch):
    """A visitor's owner/name is always a hub id ('hf:owner/name'): the model box never looks at the
    server's folders, so `secret/creds` (a saved model in the app's working folder) and `nosuchdir/x`
    get the same answer, and the folder is never read."""
    server = tmp_path / "server"
    (server / "secret" / "creds").mkdir(parents=True)
    (server / "secret" / "creds" / "config.json").write_text(json.dumps({"model_type": "llama", SECRET: SECRET}))
    monkeypatch.chdir(server)
    data, train = app.plw_tabs["data"], app.plw_tabs["train"]
    model_box = data.shared.settings["model.name"]
    sizing = [key for key in train.controls if key in MEMORY_SETTINGS]

    def answers(name):
        values = _values(data.load_inputs(data.builtin_dd)) | {model_box: name}
        loaded = _texts(data.on_load_builtin(values))
        memory = train.on_sizing(*[name if key == "model.name" else train.controls[key].value for key in sizing])
        return (loaded + memory).replace(name.removeprefix("hf:"), "NAME")

    assert answers("secret/creds") == answers("nosuchdir/x") == answers("hf:nosuchdir/x")
    assert "not in the local cache" in answers("secret/creds") and SECRET not in answers("secret/creds")
    cfg = train.build_config(_start_values(app, **{"model.name": "secret/creds"}))
    assert cfg.model.name == "hf:secret/creds"  # what the job loads: the hub's, never the folder


def test_a_hub_shaped_dataset_name_answers_alike_whether_a_folder_of_that_name_exists(
    app, toasts, tmp_path, monkeypatch
):
    """The hub box and the validation source: `secret/creds` (a dataset folder in the app's working
    folder) and `nosuchdir/x` get the same answers, at load, at Start and when the run reads its data,
    and `datasets` is never handed a name that is a folder of the server."""
    server = tmp_path / "server"
    (server / "secret" / "creds").mkdir(parents=True)
    (server / "secret" / "creds" / "data.json").write_text(json.dumps([{"prompt": SECRET, "completion": SECRET}]))
    monkeypatch.chdir(server)
    import os

    import datasets

    def offline(path, *args, **kwargs):
        assert not os.path.lexists(path), f"datasets was handed the server's folder {path}"
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    data, train = app.plw_tabs["data"], app.plw_tabs["train"]

    def answers(name):
        inputs = data.load_inputs(data.hub_id, data.hub_config, data.hub_split)
        loaded = data.on_load_hub(_values(inputs, {data.hub_id: name}))[data.msg]
        started = train.on_start(_start_values(app, **{"data.val_source": f"hf:{name}"}))[train.msg]
        job = app.plw_registry.current
        _wait(job)
        app.plw_registry.current = None
        return "\n".join([loaded, started, job.error]).replace(name, "NAME")

    secret, nowhere = answers("secret/creds"), answers("nosuchdir/x")
    assert secret == nowhere
    assert "Could not load hub dataset 'NAME'" in secret and SECRET not in secret + "".join(toasts)


def test_the_data_source_is_an_upload_a_built_in_set_or_a_hub_id(app, server_paths, toasts, uploads):
    data, train = app.plw_tabs["data"], app.plw_tabs["train"]

    def load_file(path):  # the upload box handed a path Gradio did not receive as an upload
        out = data.on_load_file(_values(data.load_inputs(data.upload), {data.upload: path}))
        assert data.shared.data_state not in out
        return _texts(out)

    _assert_one_refusal(_refusals(load_file, server_paths), toasts, NOT_AN_UPLOAD)

    def load_source(path):  # any load that names a local file other than the upload
        out = data.load_data(path, _values(data.load_inputs(data.builtin_dd)))
        assert data.shared.data_state not in out
        return _texts(out)

    toasts.clear()
    _assert_one_refusal(_refusals(load_source, server_paths), toasts, "is neither an upload (Data tab)")
    # Start trains on the visitor's upload, and on no other local file.
    dv, message = _load_file(app, _upload(uploads, "mine.jsonl"))
    assert dv is not None and dv.uploaded, message
    values = _start_values(app) | {train.shared.data_state: dv}
    assert train.build_config(values).data.source == dv.data["source"]
    forged = dataclasses.replace(dv, data={**dv.data, "source": server_paths["secret file"]}, uploaded=False)
    with pytest.raises(ConfigError, match="is neither an upload"):
        train.build_config(values | {train.shared.data_state: forged})


def test_the_runs_folder_is_the_apps(app, server_paths):
    train = app.plw_tabs["train"]
    assert train.build_config(_start_values(app)).train.output_dir == str(app.plw_runs_dir)
    for path in server_paths.values():
        with pytest.raises(ConfigError, match=OUTPUT_DIR_REFUSED):
            train.ctx.visitor_config({"train.output_dir": path})


def test_a_chat_template_reads_no_file(app, server_paths, toasts):
    """A chat template is Jinja text, never a path; one that includes a server file reads nothing."""
    data = app.plw_tabs["data"]
    template = data.shared.settings["model.chat_template"]
    for path in server_paths.values():
        values = _values(data.load_inputs(data.builtin_dd)) | {template: "{% include '" + path + "' %}"}
        out = data.on_load_builtin(values)
        assert data.shared.data_state not in out
        assert SECRET not in _texts(out) + "".join(toasts) and "root:" not in _texts(out)


def test_allow_local_paths_lifts_the_rule_for_a_single_user_app(tmp_path, server_paths):
    assert parse_args([]).allow_local_paths is False and parse_args(["--allow-local-paths"]).allow_local_paths
    app = build_app(LabConfig().override(CFG), runs_dir=tmp_path / "runs", allow_local_paths=True)
    cfg = app.plw_tabs["train"].build_config(_start_values(app, **{"data.val_source": server_paths["secret file"]}))
    assert cfg.data.val_source == server_paths["secret file"]
    dv, message = _load_file(app, server_paths["secret file"])
    assert dv is not None and dv.total == 8, message


def test_column_names_from_a_visitors_file_show_as_text(app, uploads, toasts):
    hostile = {"<img src=x onerror=alert(1)>": "a", "<b>bold</b>": "b", '<a href="https://x.example">link</a>': "c"}
    path = uploads / "hostile.jsonl"
    path.write_text("\n".join(json.dumps(hostile) for _ in range(4)))
    message = _load_file(app, path)[1]
    assert toasts and "Columns in hostile.jsonl" in toasts[0]
    for shown in (message, *toasts):
        assert "<img" not in shown and "<b>" not in shown and "<a " not in shown
        assert "&lt;img src=x onerror=alert(1)&gt;" in shown and "&lt;b&gt;bold&lt;/b&gt;" in shown


def test_the_own_prompt_handler_answers_with_its_message(app, tmp_path, toasts):
    """An empty prompt and a run that needs remote code get a message, never an empty answer."""
    compare = app.plw_tabs["compare"]
    run_dir = app.plw_runs_dir / "remote"
    run_dir.mkdir(parents=True)
    LabConfig().override({**CFG, "model.trust_remote_code": True}).save(run_dir / "config.yaml")
    empty = compare.on_own_prompt({compare.run: "remote", compare.own_prompt: "  "})
    assert "type a prompt first" in empty[compare.msg]
    remote = compare.on_own_prompt({compare.run: "remote", compare.own_prompt: "hello"})
    assert "--allow-remote-code" in remote[compare.msg]
