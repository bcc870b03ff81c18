"""Fixtures of the browser tests: one headless Chromium and one app server per test module."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e.e2e_support import CHROMIUM, CHROMIUM_ARGS, app_server


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); skipping the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on the tiny model, small enough that a CPU evaluates in a blink: 60 records, 12 of them
    for validation, two probe passages, two short generations."""
    with app_server(
        tmp_path_factory.mktemp("app"),
        "--set",
        "data.limit=60",
        "--set",
        "eval.probe_texts=2",
        "--set",
        "eval.generations=2",
        "--set",
        "eval.max_new_tokens=8",
    ) as (url, runs, proc, log):
        yield SimpleNamespace(url=url, runs=runs, proc=proc, log=log)
