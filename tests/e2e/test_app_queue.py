"""Two visitors share the app: B's Start while A's run trains queues B's run, which B can cancel and
which starts by itself when A's run ends; A's page shows the queue."""

from __future__ import annotations

import json

import pytest

from e2e.e2e_support import click, new_page, open_tab, progress, set_number

pytestmark = pytest.mark.e2e

QUEUE = "() => document.querySelector('#run-queue .plw-queue')?.dataset.size"


def _queue_size(page, size: int) -> None:
    page.wait_for_function(f"(n) => ({QUEUE})() === String(n)", arg=size)


def test_a_run_started_while_another_trains_waits_in_the_queue(browser, server):
    context_a, a = new_page(browser, server.url)
    context_b, b = new_page(browser, server.url)
    try:
        open_tab(a, "Train")
        set_number(a, "cfg-train-max-steps", 2000)
        click(a, "#start")
        a.wait_for_function(
            "() => Number(document.querySelector('#progress .plw-progress')?.dataset.step || 0) >= 1",
            timeout=120_000,
        )

        open_tab(b, "Train")
        set_number(b, "cfg-train-max-steps", 2)
        b.wait_for_function("() => document.querySelector('button#start')?.innerText === 'Queue this run'")
        click(b, "#start")
        b.wait_for_selector("#run-queue .plw-queue-mine:has-text('queued, position 1')")
        _queue_size(a, 1)  # A sees B's run waiting, not whose it is
        assert a.locator("#run-queue li[data-mine=false]").count() == 1

        click(b, "#cancel-queued")
        _queue_size(b, 0)
        _queue_size(a, 0)
        click(b, "#start")
        b.wait_for_selector("#run-queue .plw-queue-mine:has-text('queued, position 1')")

        click(a, "#stop")  # A's run ends: B's starts by itself, and B's page follows it
        b.wait_for_function(
            "() => document.querySelector('#progress .plw-progress')?.dataset.status === 'finished'", timeout=120_000
        )
        _queue_size(b, 0)
        assert progress(b)["step"] == 2
    finally:
        context_a.close()
        context_b.close()
    summaries = {p.parent.name: json.loads(p.read_text()) for p in server.runs.glob("*/summary.json")}
    assert sorted((s["status"], s["steps"] == 2) for s in summaries.values()) == [
        ("finished", True),
        ("stopped", False),
    ]
