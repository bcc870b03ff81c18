"""What the browser and server tests share: a free port, a server process started and awaited,
Chromium's settings, and the page actions a person performs in the app."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT = 180  # seconds for a server process to answer
UI_TIMEOUT = 60_000  # milliseconds for anything the page has to do
#: The hub client fails at once instead of retrying the network; no analytics calls from Gradio.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    cmd: list[str], ready_url: str, log_path: Path, *, cwd: Path, env: dict, what: str, timeout: float = START_TIMEOUT
):
    """Run `cmd` until `ready_url` answers 200, yield the process, then stop it; a process that exits
    or never answers fails the test with the end of its log."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"{what} did not answer within {timeout:.0f}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def app_server(folder: Path, *extra: str):
    """`python app.py` with the tiny model on a free port of 127.0.0.1, its runs in `folder`/runs;
    yields (url, runs folder, process, log path)."""
    port, runs, log_path = free_port(), folder / "runs", folder / "server.log"
    cmd = [sys.executable, "app.py", "--model", "tiny-random", "--runs-dir", str(runs), "--port", str(port), *extra]
    url = f"http://127.0.0.1:{port}/"
    with serving(cmd, url, log_path, cwd=ROOT, env={**os.environ, **OFFLINE_ENV}, what="the app") as proc:
        yield url, runs, proc, log_path


def new_page(browser, url: str):
    """A fresh visitor: its own browser context on the app's first tab; returns (context, page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#tab-data")
    SHOTS.mkdir(parents=True, exist_ok=True)
    return context, page


def close_toasts(page) -> None:
    """Dismiss warning toasts so they never sit on top of a button we are about to press."""
    for button in page.locator("[data-testid=toast-close]").all():
        try:
            button.click(timeout=1000)
        except Exception:
            pass


def click(page, selector: str) -> None:
    close_toasts(page)
    page.locator(selector).click()


def open_tab(page, name: str) -> None:
    close_toasts(page)
    page.get_by_role("tab", name=name, exact=True).first.click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option of a Gradio dropdown."""
    close_toasts(page)
    box = page.locator(f"#{elem_id} input")
    box.click()
    listbox = box.get_attribute("aria-controls")
    page.locator(f"[id='{listbox}'] [role=option][aria-label='{option}']").click()
    page.wait_for_function("([id, v]) => document.querySelector(`#${id} input`)?.value === v", arg=[elem_id, option])


def upload(page, path: Path) -> None:
    """Put a file into the upload box, clearing the one already there."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector(f"#upload td.filename[aria-label='{path.name}']")


def progress(page) -> dict:
    return page.evaluate(
        "() => { const p = document.querySelector('#progress .plw-progress');"
        " return p ? {status: p.dataset.status, step: Number(p.dataset.step)} : null; }"
    )


def train_briefly(page, timeout: int = 180_000) -> str:
    """Start a 2-step run at PLW 0 from the Train tab, evaluating every step; return the status it ends with."""
    open_tab(page, "Train")
    click(page, "#plw-preset-0")
    set_number(page, "cfg-train-max-steps", 2)
    set_number(page, "cfg-train-eval-interval", 1)
    click(page, "#start")
    page.wait_for_function(
        "() => ['finished', 'failed'].includes(document.querySelector('#progress .plw-progress')?.dataset.status)",
        timeout=timeout,
    )
    return progress(page)["status"]
