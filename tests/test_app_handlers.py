"""The app's handlers called directly (no browser): they take a dict of component values and
return a dict of updates. A failed load keeps the data loaded before and names the page's
controls; the Train tab says what the next run trains on; a run belongs to its visitor."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from plw_lab.app.common import page_message, spec_index  # noqa: E402
from plw_lab.app.jobs import JobRegistry, TrainingJob, error_text  # noqa: E402
from plw_lab.app.main import build_app  # noqa: E402
from plw_lab.core.config import LabConfig  # noqa: E402
from plw_lab.core.data import DataError, split_sizes  # noqa: E402
from plw_lab.core.events import Started  # noqa: E402

LIMIT = 60


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return build_app(LabConfig().override({"model.name": "tiny-random", "data.limit": LIMIT}), runs_dir=runs)


@pytest.fixture(autouse=True)
def uploads_in_tmp_path(tmp_path, monkeypatch):
    """The files these tests load stand for uploads: Gradio's upload folder is the test's tmp_path."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))


def values_for(inputs, **changes) -> dict:
    """Every input at the value the page starts with."""
    return {component: getattr(component, "value", None) for component in inputs}


@pytest.fixture(scope="module")
def loaded(app):
    """The default built-in set, loaded as the page does on its first visit."""
    data = app.plw_tabs["data"]
    out = data.on_page_load(values_for(data.load_inputs(data.builtin_dd)))
    return out[data.shared.data_state]


def load_file(app, path, previous, **settings):
    data = app.plw_tabs["data"]
    values = values_for(data.load_inputs(data.upload))
    values[data.upload], values[data.shared.data_state] = str(path), previous
    for key, value in settings.items():
        values[data.shared.settings[key]] = value
    return data.on_load_file(values)


def test_a_file_that_needs_mapping_keeps_the_data_and_opens_the_mapping(app, loaded, tmp_path):
    data = app.plw_tabs["data"]
    odd = tmp_path / "odd.jsonl"
    odd.write_text("\n".join(json.dumps({"question": f"q{i}", "reply": f"a{i}"}) for i in range(5)))
    out = load_file(app, odd, loaded)
    # nothing the previous data shows is touched: data, statistics, charts, example slider, preview
    for kept in (data.shared.data_state, data.stats_md, data.rg_plot, data.example_idx, data.preview):
        assert kept not in out
    assert out[data.mapping_acc]["open"] is True
    assert out[data.mapping["prompt"]]["choices"] == ["(same name)", "question", "reply"]
    message = out[data.msg]
    assert "Column mapping" in message and "data.column_map" not in message
    assert f"builtin:reading-mc, {LIMIT} examples) is still loaded" in message


def test_completions_longer_than_max_length_are_named_as_the_page_names_them(app, loaded, tmp_path):
    data = app.plw_tabs["data"]
    long = tmp_path / "long.jsonl"
    long.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": "word " * 60}) for i in range(4)))
    out = load_file(app, long, loaded, **{"data.max_length": 16})
    assert data.shared.data_state not in out and data.example_idx not in out
    message = out[data.msg]
    assert "&quot;Max length&quot;" in message and "max_length" not in message and "is still loaded" in message


def test_the_format_is_read_from_every_record_not_the_first(app, loaded, tmp_path):
    data = app.plw_tabs["data"]
    path = tmp_path / "first_incomplete.jsonl"
    rows = [{"prompt": "q0"}] + [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(1, 4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    message = load_file(app, path, loaded)[data.msg]
    # the truth about record 0, not "cannot tell the format from the fields ['prompt']"
    assert "record 0: missing field(s) completion for format prompt_completion" in message


def test_the_next_run_line_counts_the_split(app, loaded):
    train, shared = app.plw_tabs["train"], app.plw_tabs["train"].shared
    values = values_for(train.next_inputs)
    values[shared.data_state], values[shared.plw] = loaded, 0.5
    n_train, n_val = split_sizes(LIMIT, LabConfig().data.val_size, LabConfig().data.val_max)
    assert n_train + n_val == LIMIT and n_val > 0
    html = train.next_run_html(values)
    assert f"data: <b>builtin:reading-mc</b>, {n_train} train / {n_val} validation" in html and "PLW <b>0.5</b>" in html
    values[shared.settings["data.val_size"]] = 10  # a count, not a share
    assert f"{LIMIT - 10} train / 10 validation" in train.next_run_html(values)


def test_split_sizes_match_the_split():
    from plw_lab.core.data import split

    for n, val_size, val_max in ((100, 0.1, 0), (100, 0.25, 20), (7, 3, 0), (2, 0.9, 0)):
        train, val = split(list(range(n)), val_size, seed=1, val_max=val_max)
        assert split_sizes(n, val_size, val_max) == (len(train), len(val))


def test_only_the_visitor_who_started_a_run_can_stop_it():
    registry = JobRegistry()
    job = TrainingJob(LabConfig(), owner="alice")
    job.thread = threading.Thread(target=lambda: job.stop.wait(5))  # a job that runs until told to stop
    job.thread.start()
    registry.current = job
    with pytest.raises(PermissionError, match="another visitor"):
        registry.stop("bob")
    assert not job.stop.is_set()
    assert registry.stop("alice") is True and job.stop.is_set()
    job.thread.join()


def test_a_deleted_runs_job_is_forgotten(app, tmp_path):
    train = app.plw_tabs["train"]
    registry = app.plw_registry
    run_dir = tmp_path / "gone-plw1"
    run_dir.mkdir()
    job = TrainingJob(LabConfig())
    job.events.append(Started(run_dir=str(run_dir), config={}, n_train=1, n_val=1, total_steps=1))
    registry.current = job  # finished: its thread never ran
    assert train.current_job_id() == job.id
    run_dir.rmdir()
    assert train.current_job_id() is None  # a fresh visit shows no deleted run
    registry.forget(run_dir)
    assert registry.current is None


def test_messages_use_the_page_words():
    specs = spec_index()
    assert (
        page_message("raise data.max_length or lower train.learning_rate", specs)
        == 'raise "Max length" or lower "Learning rate"'
    )
    assert (
        page_message("map columns with data.column_map in my data.jsonl", specs)
        == 'map columns with the "Column mapping" section (Data tab) in my data.jsonl'
    )
    assert error_text(ValueError("choose a run first")) == "choose a run first"
    assert error_text(DataError("bad record")) == "bad record"
    assert error_text(KeyError("x")) == "KeyError: 'x'"


def test_only_a_prompt_that_lists_options_gets_answer_log_probabilities():
    from plw_lab.core.data import offered_choices

    assert offered_choices("Which colour is the sky? A. blue B. green", ["A", "B", "C", "D"]) == ["A", "B"]
    assert offered_choices("Q?\nA. one\nB. two\nC. three\nD. four", ["A", "B", "C", "D"]) == ["A", "B", "C", "D"]
    assert offered_choices("Which label fits? (A) positive (B) negative", ["(A)", "(B)"]) == ["(A)", "(B)"]
    assert offered_choices("Write a haiku about autumn.", ["A", "B", "C", "D"]) == []
    assert offered_choices("A cat sat. Is that a sentence?", ["A", "B"]) == []  # one capital A is not a list


def test_the_first_action_on_a_run_says_it_is_loading_the_model(app, monkeypatch):
    compare = app.plw_tabs["compare"]
    notes = []
    monkeypatch.setattr(compare.ctx, "find_run", lambda name: SimpleNamespace(path=compare.ctx.runs_path / name))
    monkeypatch.setattr(compare.ctx.models, "is_loaded", lambda path: False)
    monkeypatch.setattr(compare.ctx.models, "get", lambda path: "the model")
    (app.plw_runs_dir / "run-a").mkdir()
    LabConfig().save(app.plw_runs_dir / "run-a" / "config.yaml")
    assert compare._load("run-a", lambda fraction, desc: notes.append(desc)) == "the model"
    assert notes == ["loading run-a's model and adapter (once per run)"]
    monkeypatch.setattr(compare.ctx.models, "is_loaded", lambda path: True)
    compare._load("run-a", lambda fraction, desc: notes.append(desc))
    assert len(notes) == 1  # loaded already: no note


def test_a_chosen_run_without_a_saved_comparison_says_so(app):
    compare = app.plw_tabs["compare"]
    run = app.plw_runs_dir / "stopped-early"
    run.mkdir()
    LabConfig().save(run / "config.yaml")
    out = compare.on_choose({compare.run: "stopped-early"})
    assert "no saved comparison" in out[compare.msg] and out[compare.table]["visible"] is False
