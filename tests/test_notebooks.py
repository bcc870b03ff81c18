"""The teaching notebooks: each runs top to bottom in tiny mode, and is committed without outputs.

The execution test starts a real Jupyter kernel per notebook (nbclient, kernel `python3`) with
PLW_LAB_NOTEBOOK_MODE=tiny, so the notebooks use the 2-layer random model and a few steps, and
runs them in a temporary folder, where their run folders are written.
"""

import ast
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ("01_masks_and_weights.ipynb", "02_prompt_loss_weight.ipynb", "03_forgetting_and_adapters.ipynb")


def _code(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == list(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_tiny_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PLW_LAB_NOTEBOOK_MODE", "tiny")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # One thread: the tiny model is all overhead, and spinning thread pools only fight a shared CPU.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    errors = [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.get("output_type") == "error"
    ]
    assert not errors
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code" and cell.source.strip())
    # A run folder directly under runs/, or inside a sweep's folder (notebook 02's PLW x seed sweep).
    runs = [p.parent for p in (tmp_path / "runs").rglob("summary.json")]
    assert runs, "every notebook trains at least once, writing its runs next to itself"
    assert all(json.loads((p / "summary.json").read_text())["status"] in ("finished", "stopped") for p in runs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_carries_no_outputs_or_execution_counts(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: run scripts/strip_notebooks.py"
            assert cell.execution_count is None, f"cell {i} has an execution count: run scripts/strip_notebooks.py"
    assert "widgets" not in nb.metadata, "saved widget state: run scripts/strip_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_a_thin_client_with_goals_exercises_and_one_mode_switch(path):
    nb = nbformat.read(path, as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and "What you will learn" in first.source
    assert last.cell_type == "markdown" and "## Exercises" in last.source
    code = _code(nb)
    for source in code:
        tree = ast.parse(source)
        defined = [
            n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        ]
        assert not defined, f"define {defined} in plw_lab/, not in the notebook"
        lab_imports = [
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and "plw_lab" in node.module
        ]
        deep = [m for m in lab_imports if m not in ("plw_lab", "plw_lab.notebook")]
        assert not deep, f"import {deep} through plw_lab or plw_lab.notebook, the notebooks' stable surface"
    switches = [s for s in code if "PLW_LAB_NOTEBOOK_MODE" in s]
    assert len(switches) == 1 and '"tiny"' in switches[0] and '"full"' in switches[0]


def test_only_lab_widgets_imports_ipywidgets():
    importers = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "plw_lab").rglob("*.py")
        if re.search(r"^\s*(import|from)\s+ipywidgets", p.read_text(), re.M)
    ]
    assert importers == ["plw_lab/notebook/widgets.py"]


# -- the helpers the notebooks call (plw_lab/notebook/widgets.py), without a kernel ---------------------------


def test_live_curves_update_the_figure_widget_from_events():
    from plw_lab.core import events as ev
    from plw_lab.notebook.widgets import LiveCurves

    curves = LiveCurves("test")
    metrics = lambda acc, cl, fl: {
        "prompt_loss": 2.0,
        "completion_loss": cl,
        "full_loss": fl,
        "answer_accuracy": acc,
        "majority_baseline": 0.5,
        "predicted": {"A": 3, "B": 1},
        "answers": {"A": 2, "B": 2},
    }
    stream = [
        ev.Started(run_dir="r", config={}, n_train=8, n_val=4, total_steps=4),
        ev.Eval(step=0, epoch=0.0, metrics=metrics(0.5, 3.0, 2.1)),
        ev.Step(
            step=1,
            epoch=0.5,
            learning_rate=1e-3,
            train_loss=2.5,
            grad_norm=1.0,
            tokens_per_second=100.0,
            tokens_seen=80,
            elapsed=1.0,
            total_steps=4,
        ),
        ev.Step(
            step=2,
            epoch=1.0,
            learning_rate=1e-3,
            train_loss=1.5,
            grad_norm=1.0,
            tokens_per_second=100.0,
            tokens_seen=160,
            elapsed=2.0,
            total_steps=4,
        ),
        ev.Eval(step=2, epoch=1.0, metrics=metrics(0.75, 1.0, 2.0)),
        ev.Advice(message="predictions collapsed", step=2),
        ev.Eval(step=4, epoch=2.0, metrics=metrics(0.5, 1.2, 2.3)),
        ev.Finished(step=4, summary={}),
    ]
    for event in stream:
        curves(event)
    # the Train tab's figures, drawn from the same history
    from plw_lab.views import charts

    for name, draw in (
        ("loss", charts.loss_figure),
        ("accuracy", charts.accuracy_figure),
        ("predicted", charts.predicted_distribution_figure),
    ):
        expected = draw(curves.history)
        assert [t.name for t in curves.figures[name].data] == [t.name for t in expected.data]
        assert curves.figures[name].layout.title.text == expected.layout.title.text
    shown = [t for f in curves.figures.values() for t in f.data]
    trace = {t.name: t for t in shown}
    assert list(trace["train loss (weighted)"].y) == [2.5, 1.5]
    assert list(trace["val completion loss"].x) == [0, 2, 4]
    assert list(trace["val answer accuracy"].y) == [0.5, 0.75, 0.5]
    best = {t.name: (list(t.x), list(t.y)) for t in shown if t.name.startswith("best")}
    assert best["best val completion loss"] == ([2], [1.0])
    assert best["best val full-sequence loss"] == ([2], [2.0])
    assert best["best val answer accuracy"] == ([2], [0.75])
    assert 'data-status="finished"' in curves.status.value and "collapsed" in curves.notes.value


def test_live_curves_fall_back_to_a_redrawn_figure_without_anywidget(monkeypatch):
    import plotly.graph_objects as go

    from plw_lab.core import events as ev
    from plw_lab.notebook.widgets import LiveCurves

    def no_anywidget(*args, **kwargs):
        raise ImportError("Please install anywidget to use the FigureWidget class")

    monkeypatch.setattr(go, "FigureWidget", no_anywidget)
    with pytest.warns(UserWarning, match="anywidget"):
        curves = LiveCurves("fallback")
    curves(ev.Started(run_dir="r", config={}, n_train=8, n_val=4, total_steps=2))
    curves(
        ev.Step(
            step=1,
            epoch=0.5,
            learning_rate=1e-3,
            train_loss=2.5,
            grad_norm=1.0,
            tokens_per_second=100.0,
            tokens_seen=80,
            elapsed=1.0,
            total_steps=2,
        )
    )
    curves(ev.Eval(step=1, epoch=0.5, metrics={"completion_loss": 1.0, "prompt_loss": 2.0, "full_loss": 1.9}))
    trace = {t.name: t for t in curves.figure.data}
    assert list(trace["train loss (weighted)"].y) == [2.5] and list(trace["val completion loss"].y) == [1.0]
    assert curves.figure.output.outputs, "the figure is shown again after each update"


def test_token_view_recolours_when_the_plw_slider_moves(tokenizer):
    from plw_lab.core.data import Example
    from plw_lab.core.masks import encode
    from plw_lab.notebook.widgets import token_view

    enc = encode(
        tokenizer, Example([{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]), 64
    )
    view = token_view([enc, enc], plw=0.0, tokenizer=tokenizer)
    assert 'data-plw="0"' in view.html.value
    view.plw.value = 0.5
    assert 'data-plw="0.5"' in view.html.value and 'data-weight="0.5"' in view.html.value
    preset = next(b for b in view.children[0].children[1:] if b.description == "0.1")
    preset.click()
    assert view.plw.value == 0.1 and 'data-plw="0.1"' in view.html.value


def test_batch_frame_labels_and_weights_follow_the_masks(tokenizer):
    from plw_lab.core.collate import collate
    from plw_lab.core.data import Example
    from plw_lab.core.masks import encode
    from plw_lab.notebook.widgets import batch_frame

    encs = [
        encode(tokenizer, Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}]), 64)
        for q, a in (("Add 2 and 3.", "5"), ("Add 20 and 30, please, and explain.", "50"))
    ]
    batch = collate(encs, tokenizer.pad_token_id)
    table = batch_frame(tokenizer, batch, row=0, plw=0.1)
    assert len(table) == batch["input_ids"].shape[1]
    pad = table.attention == 0
    assert pad.any() and (table.weight[pad] == 0).all() and (table.label[pad] == -100).all()
    completion = table.completion_mask == 1
    assert tokenizer.decode(table.input_id[completion].tolist()) == "5<|im_end|>"
    assert (table.weight[completion] == 1).all() and (table.weight[(table.prompt_mask == 1)].iloc[1:] == 0.1).all()


def test_strip_script_cleans_an_executed_notebook(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", text="hi")]
    cell.execution_count = 3
    nb.metadata["widgets"] = {"state": {}}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert script.main(["--check", str(path)]) == 1
    assert script.main([str(path)]) == 0
    assert script.main(["--check", str(path)]) == 0
    assert nbformat.read(path, as_version=4).cells == nbformat.read(NOTEBOOKS[0], as_version=4).cells
