"""Notebook 01 in a real JupyterLab, driven by Playwright in headless Chromium.

JupyterLab serves a copy of the notebook from a temporary folder (token-protected, 127.0.0.1);
the test runs every cell in tiny mode (`PLW_LAB_NOTEBOOK_MODE=tiny`) and checks what a reader
sees: the token view widget with its PLW slider, and the live training charts drawn by plotly
inside the widget area, with no cell raising an error.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from e2e.e2e_support import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port, serving

pytestmark = pytest.mark.e2e

NOTEBOOK = ROOT / "notebooks" / "01_masks_and_weights.ipynb"
START_TIMEOUT = 120  # seconds for JupyterLab to answer
RUN_TIMEOUT = 240_000  # milliseconds for every cell to run in tiny mode

pytest.importorskip("jupyterlab")
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing (apt-get install chromium); skipping the browser tests", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jupyterlab")
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PLW_LAB_NOTEBOOK_MODE": "tiny",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "JUPYTER_CONFIG_DIR": str(folder / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(folder / ".runtime"),
    }
    # every cell rendered (no windowing), so the page holds every output the test reads
    settings = folder / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    log_path = folder / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={folder}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={folder / 'user-settings'}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        cmd.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    with serving(
        cmd,
        f"{base}/api/status?token={token}",
        log_path,
        cwd=folder,
        env=env,
        what="jupyter lab",
        timeout=START_TIMEOUT,
    ):
        yield {"url": f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", "folder": folder, "log": log_path}


def test_notebook_01_runs_in_jupyterlab_with_its_token_widget_and_live_charts(lab_server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        try:
            page.goto(lab_server["url"])
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.isReady; }"
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # done when every code cell has run (an execution count) and the kernel is idle; read from the
            # notebook's model, which holds every cell whether or not it is on screen
            state = """() => { const w = window.jupyterapp.shell.currentWidget; const cells = w.content.model.cells;
                let run = 0, code = 0, errors = [];
                for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type !== 'code') continue;
                  code++; if (c.executionCount) run++;
                  for (const o of c.outputs.toJSON())
                    if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue); }
                return {run, code, errors, idle: w.sessionContext.session.kernel.status === 'idle'}; }"""
            try:
                page.wait_for_function(
                    f"() => {{ const s = ({state})(); return s.errors.length || (s.run === s.code && s.idle); }}",
                    timeout=RUN_TIMEOUT,
                )
            except Exception:
                page.screenshot(path=str(lab_server["folder"] / "timeout.png"), full_page=True)
                raise AssertionError(f"the notebook did not finish: {page.evaluate(state)}") from None
            assert page.evaluate(state)["errors"] == []

            # the token view: an ipywidgets box with a PLW slider and coloured tokens
            tokens = page.locator(".jupyter-widgets .plw-tokens").first
            tokens.scroll_into_view_if_needed()
            assert tokens.is_visible()
            assert page.locator(".jupyter-widgets .plw-tok.plw-c").count() > 0
            assert page.locator(".widget-slider, .jupyter-widget-slider").count() > 0
            first_token = page.locator(".jupyter-widgets .plw-tokens").first.locator(".plw-tok").first
            assert first_token.get_attribute("data-weight") == "0"  # the first token is never a target

            # the live charts: the Train tab's plotly figures inside the LiveCurves widget
            charts = (
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".map(el => (el.data || []).map(t => [t.name, (t.x || []).length]))"
            )
            try:
                page.wait_for_function(
                    f"() => ({charts})().some(traces => traces.some(([name, n]) =>"
                    " name === 'train loss (weighted)' && n >= 1))",
                    timeout=60_000,
                )
            except Exception:
                page.screenshot(path=str(ROOT / "artifacts" / "jupyterlab-charts-missing.png"), full_page=True)
                widgets = page.evaluate(
                    "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                    ".map(o => o.className + ' ' + o.innerText.slice(0, 80))"
                )
                raise AssertionError(
                    f"no live loss chart; plotly charts {page.evaluate(charts)}; outputs {widgets}"
                ) from None
            titles = page.evaluate(
                "() => [...document.querySelectorAll('.js-plotly-plot')]"
                ".map(el => el.layout && el.layout.title && el.layout.title.text).filter(Boolean)"
            )
            assert any(t.startswith("Loss") for t in titles), titles
            assert (
                page.locator(".plw-progress[data-status='finished'], .plw-progress[data-status='stopped']").count() >= 1
            )
            shots = ROOT / "artifacts" / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "21-jupyterlab-notebook-01.png"))
        finally:
            browser.close()
    assert any((lab_server["folder"] / "runs").glob("*/summary.json")), "the notebook's run wrote its folder"
