"""A runs folder holding a sweep, through the app's handlers: the sweep's runs in every run list, grouped under
its name, overlaid in one click, deleted and compared by that name (no name reaches outside the runs folder);
the stopping report of an ended run in the Train and Compare tabs; the verdict of a chosen sweep and the
measured real-data lesson in the Runs tab, without training."""

import pytest
from conftest import fake_lesson, fake_sweep

gr = pytest.importorskip("gradio")

from plw_lab.app.main import build_app  # noqa: E402
from plw_lab.app.visitors import record_owner  # noqa: E402
from plw_lab.core.config import LabConfig  # noqa: E402

ALICE, BOB = "a1" * 16, "b2" * 16
SWEEP = ["sweep-grid/plw0-seed0", "sweep-grid/plw0-seed1", "sweep-grid/plw1-seed0", "sweep-grid/plw1-seed1"]


@pytest.fixture
def app(tmp_path):
    runs = tmp_path / "runs"
    for run in fake_sweep(runs / "sweep-grid"):
        record_owner(run, ALICE)  # as a sweep started from the page records it
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text("{}")
    return build_app(LabConfig().override({"model.name": "tiny-random"}), runs_dir=runs)


def _values(tab, **named) -> dict:
    return {c: c.value for c in tab.inputs} | {getattr(tab, k): v for k, v in named.items()}


def test_a_sweeps_runs_fill_the_run_lists_and_overlay_in_one_click(app):
    runs, compare = app.plw_tabs["runs"], app.plw_tabs["compare"]
    out = runs.refresh(_values(runs))
    assert out[runs.run_pick]["choices"] == SWEEP
    assert list(out[runs.table]["run"]) == SWEEP
    assert out[compare.run]["value"] == SWEEP[0]
    assert runs.sweep_choices()[runs.sweep_pick]["value"] == "sweep-grid"
    assert runs.on_overlay_sweep({runs.sweep_pick: "sweep-grid"})["value"] == SWEEP
    assert runs.on_overlay_sweep({runs.sweep_pick: "../runs"})["value"] == []
    figure = runs.on_overlay({runs.overlay_runs: SWEEP, runs.overlay_metric: "completion_loss"})[runs.overlay_plot]
    assert [trace.name for trace in figure.data] == [f"PLW {p} \u00b7 {n}" for p, n in zip("0011", SWEEP)]


def test_a_sweeps_run_is_compared_and_deleted_by_its_listed_name_and_no_other(app):
    runs, compare = app.plw_tabs["runs"], app.plw_tabs["compare"]
    folder = runs.ctx.runs_path / "sweep-grid" / "plw1-seed1"
    assert "sweep-grid/plw1-seed1 has no saved comparison" in compare.on_choose({compare.run: SWEEP[3]})[compare.msg]
    outside = runs.ctx.runs_path.parent / "outside"
    fake_sweep(outside, plws=(0.0,), seeds=(0,))
    for escaping in ("../outside/plw0-seed0", "sweep-grid/../../outside/plw0-seed0", str(outside / "plw0-seed0")):
        assert "no run named" in compare.on_choose({compare.run: escaping})[compare.msg]
        values = _values(runs, run_pick=escaping, confirm_delete=True) | {runs.shared.visitor: ALICE}
        assert "no run named" in runs.on_delete(values)[runs.msg]
    assert (outside / "plw0-seed0" / "config.yaml").exists()
    bob = _values(runs, run_pick=SWEEP[3], confirm_delete=True) | {runs.shared.visitor: BOB}
    assert "only they can delete it" in runs.on_delete(bob)[runs.msg] and folder.exists()
    out = runs.on_delete(bob | {runs.shared.visitor: ALICE})
    assert "Deleted sweep-grid/plw1-seed1" in out[runs.msg] and not folder.exists()
    assert out[runs.run_pick]["choices"] == SWEEP[:3]


def test_the_stopping_report_shows_when_a_watched_run_ends_and_for_the_compared_run(app):
    from plw_lab.core.events import Finished, read_events
    from plw_lab.core.runs import read_run_json, write_json
    from plw_lab.views.history import History

    train, compare = app.plw_tabs["train"], app.plw_tabs["compare"]
    folder = compare.ctx.runs_path / "sweep-grid" / "plw0-seed0"
    events = read_events(folder / "events.jsonl")
    summary = read_run_json(folder / "summary.json")
    sentence = "Stopping on full-sequence loss keeps step 0: 50.0%"
    running = train.render_job(History().extend(events), None, ALICE)
    assert running[train.stopping.text] == "" and running[train.stopping.table]["visible"] is False
    ended = train.render_job(History().extend([*events, Finished(step=20, summary=summary)]), None, ALICE)
    assert (
        sentence in ended[train.stopping.text] and "Stopping on answer loss keeps step 20" in ended[train.stopping.text]
    )
    table = ended[train.stopping.table]
    assert table["visible"] is True and list(table["value"]["kept step"]) == [0, 0, 20, 20, 20]
    shown = compare.on_choose({compare.run: SWEEP[0]})
    assert sentence in shown[compare.stopping.text] and shown[compare.stopping.table]["visible"] is True
    # A run whose summary predates the report: computed from its evaluations, the same paragraph.
    write_json(folder / "summary.json", {k: v for k, v in summary.items() if k != "stopping"})
    assert compare.on_choose({compare.run: SWEEP[0]})[compare.stopping.text] == shown[compare.stopping.text]
    assert compare.on_choose({compare.run: None})[compare.stopping.text] == ""


def test_the_sweep_picker_shows_the_verdict_of_the_chosen_sweep(app):
    runs = app.plw_tabs["runs"]
    shown = runs.sweep_choices()
    assert shown[runs.sweep_pick]["value"] == "sweep-grid"
    assert "What its 4 finished runs support:" in shown[runs.sweep_verdict]
    assert "PLW 0 vs PLW 1: " in shown[runs.sweep_verdict]
    plot = shown[runs.sweep_verdict_plot]
    assert plot["visible"] is True and [t.name for t in plot["value"].data][0] == "stopping on answer loss: one seed"
    fake_sweep(runs.ctx.runs_path / "sweep-empty", plws=(), seeds=())
    empty = runs.on_sweep_pick({runs.sweep_pick: "sweep-empty", runs.sweep_x: None})
    assert "no finished runs in sweep-empty yet" in empty[runs.sweep_verdict]
    assert (
        empty[runs.sweep_verdict_plot]["visible"] is False and str(runs.ctx.runs_path) not in empty[runs.sweep_verdict]
    )


def test_the_runs_tab_shows_the_measured_lesson_or_says_there_is_none(app, tmp_path, monkeypatch):
    from plw_lab import api

    runs = app.plw_tabs["runs"]
    monkeypatch.setattr(api, "SHIPPED_LESSON", tmp_path / "absent")
    assert runs.lesson_view() == {
        runs.lesson_label: "No measured lesson to show: this installation holds no measured real-data lesson "
        "(absent/measured.json is missing)."
    }
    monkeypatch.setattr(api, "SHIPPED_LESSON", fake_lesson(tmp_path / "plw-lesson"))
    shown = runs.lesson_view()
    label = shown[runs.lesson_label]
    assert label.startswith("**measured on real data (B3DB molecules), 2025-01-02, commit abc1234, 2-core test CPU**")
    assert "lab sweep --config plw-lesson --plws 0,1 --seeds 0,1\nlab verdict runs/sweep-plw-lesson" in label
    assert all(shown[plot]["visible"] for plot in (runs.lesson_plot, runs.lesson_prompt, runs.lesson_answer))
    assert shown[runs.lesson_prompt]["value"].layout.yaxis.title.text == "val prompt loss"
    assert shown[runs.lesson_answer]["value"].layout.yaxis.title.text == "val answer loss"
    assert "PLW 0: stopping on answer loss keeps an adapter at" in shown[runs.lesson_verdict]
