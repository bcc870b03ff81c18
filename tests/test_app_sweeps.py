"""A runs folder holding a sweep, through the app's handlers: the sweep's runs in every run list, grouped under
its name, overlaid in one click, deleted and compared by that name; no name reaches outside the runs folder."""

import pytest
from conftest import fake_sweep

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
    picked = runs.sweep_choices()
    assert picked[0]["value"] == "sweep-grid"
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
