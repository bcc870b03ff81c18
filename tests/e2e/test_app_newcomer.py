"""What a newcomer relies on in the app, in a real headless Chromium: the Train tab says what the
watched run is and what the next run will be, progress names its phases and keeps its clock
running, a run belongs to the visitor who started it, stale runs disappear, and a failed data
load keeps the data loaded before and says what to do in the page's words.

One app process serves the module (tiny model, temporary runs folder); the tests run in order."""

from __future__ import annotations

import json
import time

import pytest

from e2e.e2e_support import (
    SHOTS,
    UI_TIMEOUT,
    choose,
    click,
    close_toasts,
    new_page,
    open_tab,
    progress,
    set_number,
    train_briefly,
    upload,
)
from plw_lab.core.config import LabConfig
from plw_lab.core.data import split_sizes

pytestmark = pytest.mark.e2e
LIMIT = 60  # the server's data.limit (see the `server` fixture in conftest.py)


@pytest.fixture(scope="module")
def page(browser, server):
    context, pg = new_page(browser, server.url)
    pg.wait_for_function("() => document.querySelector('#load-builtin')?.disabled === false")
    yield pg
    context.close()


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_text(page, selector: str, needle: str, timeout: int = UI_TIMEOUT) -> None:
    try:
        page.wait_for_function(
            "([s, n]) => (document.querySelector(s)?.innerText || '').includes(n)",
            arg=[selector, needle],
            timeout=timeout,
        )
    except Exception:
        raise AssertionError(f"{needle!r} never appeared in {selector}, which reads {text(page, selector)!r}") from None


def record_statuses(page) -> None:
    """Record every status the progress box shows (in window.plwStatuses), to prove "stopping" never
    flips back to "training"."""
    page.evaluate("""() => { window.plwStatuses = []; const seen = () => {
        const p = document.querySelector('#progress .plw-progress'); const s = p && p.dataset.status;
        if (s && window.plwStatuses[window.plwStatuses.length - 1] !== s) window.plwStatuses.push(s); };
        new MutationObserver(seen).observe(document.querySelector('#progress'),
            {subtree: true, childList: true, attributes: true}); }""")


def test_the_train_tab_says_what_the_next_run_trains_on(page):
    cfg = LabConfig()
    n_train, n_val = split_sizes(LIMIT, cfg.data.val_size, cfg.data.val_max)
    open_tab(page, "Train")
    wait_text(page, "#next-run", "train /")
    assert f"data: {cfg.data.source}, {n_train:,} train / {n_val:,} validation" in text(page, "#next-run")
    assert "Settings for the next run" in text(page, "#next-run-settings")
    assert "No run yet" in text(page, "#watched-run")
    click(page, "#plw-preset-0_5")
    wait_text(page, "#next-run", "PLW 0.5")
    open_tab(page, "Compare")
    assert not page.locator("#compare-table").is_visible()  # no placeholder table before a comparison
    assert not page.locator("#own-lp").is_visible()


def test_a_run_belongs_to_its_visitor_and_shows_its_settings_and_phases(page, browser, server):
    open_tab(page, "Train")
    click(page, "#plw-preset-1")
    set_number(page, "cfg-train-max-steps", 400)
    set_number(page, "cfg-train-eval-interval", 3)
    set_number(page, "cfg-train-batch-size", 4)
    record_statuses(page)
    click(page, "#start")
    # the base model's evaluation is a phase of its own, named while it runs or just after
    page.wait_for_function(
        "() => ['evaluating', 'training'].includes(document.querySelector('#progress .plw-progress')?.dataset.phase)",
        timeout=120_000,
    )
    page.wait_for_function(
        "() => Number(document.querySelector('#progress .plw-progress')?.dataset.step || 0) >= 1", timeout=120_000
    )
    watched = text(page, "#watched-run")
    assert "PLW 1" in watched and "400 steps" in watched and "train /" in watched and "LoRA r" in watched
    assert "plw1" in watched  # the run folder's name
    # the clock ticks between events
    elapsed = page.locator("#progress").inner_text().split("elapsed ")[1].split(" ")[0]
    page.wait_for_function(
        "(e) => !(document.querySelector('#progress')?.innerText || '').includes('elapsed ' + e + ' ')",
        arg=elapsed,
        timeout=10_000,
    )

    # a second visitor sees the watched run's settings (not their own PLW 0) and that Start would queue
    context, other = new_page(browser, server.url)
    try:
        open_tab(other, "Train")
        other.wait_for_function("() => document.querySelector('#progress .plw-progress')?.dataset.status === 'running'")
        assert "PLW 1" in text(other, "#watched-run")
        wait_text(other, "#next-run", "PLW 0 ")
        assert "started by another visitor" in text(other, "#progress")
        # Start queues the visitor's run behind the running one; Stop is the owner's alone.
        assert other.locator("#start").is_enabled() and "Queue this run" in text(other, "#start")
        assert other.locator("#stop").is_disabled()
        other.screenshot(path=str(SHOTS / "11-second-visitor.png"), full_page=True)
    finally:
        context.close()

    # the owner's reload is still the owner: Stop works, and "stopping" stays until stopped
    page.reload()
    page.wait_for_selector("#tab-data")
    open_tab(page, "Train")
    page.wait_for_function("() => document.querySelector('button#stop')?.disabled === false")
    record_statuses(page)
    click(page, "#stop")
    page.wait_for_function(
        "() => document.querySelector('#progress .plw-progress')?.dataset.status === 'stopped'", timeout=120_000
    )
    statuses = page.evaluate("() => window.plwStatuses")
    assert "stopping" in statuses, statuses
    assert "running" not in statuses[statuses.index("stopping") :], statuses


def test_a_deleted_run_is_not_shown_on_a_fresh_visit(page, browser, server):
    run_dir = next(server.runs.glob("*plw1*"))
    open_tab(page, "Runs")
    click(page, "#runs-refresh")
    choose(page, "run-pick", run_dir.name)
    page.locator("#confirm-delete input").check()
    click(page, "#delete-btn")
    wait_text(page, "#runs-msg", f"Deleted {run_dir.name}")
    context, fresh = new_page(browser, server.url)
    try:
        open_tab(fresh, "Train")
        time.sleep(1.5)  # the page-load events have run
        assert "No run yet" in text(fresh, "#watched-run")
        assert progress(fresh)["status"] == "idle"
    finally:
        context.close()


def test_a_failed_load_keeps_the_data_and_opens_the_column_mapping(page, tmp_path):
    open_tab(page, "Data")
    before = text(page, "#data-stats")
    slider = page.locator("#example-idx input[type=number]").input_value()
    odd = tmp_path / "odd_columns.jsonl"
    odd.write_text("\n".join(json.dumps({"question": f"q{i}", "reply": f"a{i}"}) for i in range(5)))
    page.get_by_role("tab", name="Upload file", exact=True).click()
    upload(page, odd)
    click(page, "#load-file")
    wait_text(page, "#data-msg", "Column mapping")
    message = text(page, "#data-msg")
    assert "is still loaded" in message and "question, reply" in message
    assert "data.column_map" not in message and "ValueError" not in message
    assert text(page, "#data-stats") == before
    assert page.locator("#example-idx input[type=number]").input_value() == slider
    assert page.locator("#token-view .plw-tok").count() > 0
    assert page.locator("#map-prompt").is_visible()  # the section is open
    # answers longer than "Max length": named as the page names it, data kept
    long = tmp_path / "long_answers.jsonl"
    long.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": "word " * 60}) for i in range(5)))
    open_tab(page, "Train")
    set_number(page, "cfg-data-max-length", 16)
    open_tab(page, "Data")
    upload(page, long)
    click(page, "#load-file")
    wait_text(page, "#data-msg", "too small")
    message = text(page, "#data-msg")
    assert '"Max length"' in message and "max_length" not in message and "is still loaded" in message
    assert text(page, "#data-stats") == before
    close_toasts(page)
    open_tab(page, "Train")
    set_number(page, "cfg-data-max-length", LabConfig().data.max_length)


def test_a_finished_run_shows_its_saved_comparison_and_free_form_prompts_get_no_answer_chart(page, server):
    assert train_briefly(page) == "finished", text(page, "#train-msg")
    for plot in ("loss-plot", "acc-plot", "dist-plot"):  # the chart's own title names it; no panel label repeats it
        assert not page.locator(f"#{plot} [data-testid=block-label]").first.is_visible()
    open_tab(page, "Compare")
    # the newest run is chosen, and its saved comparison shows without pressing Compare
    wait_text(page, "#compare-msg", "the comparison saved when it finished")
    assert page.locator("#compare-table").is_visible()
    assert "adapter off" in text(page, "#compare-table") and "1\n2\n3" not in text(page, "#compare-table")
    page.locator("#own-prompt textarea").fill("Write one sentence about autumn.")
    click(page, "#own-btn")
    page.wait_for_function("() => document.querySelector('#own-on textarea')?.value.length > 0", timeout=120_000)
    assert not page.locator("#own-lp").is_visible()
    page.locator("#own-prompt textarea").fill("Which colour is the sky?\nA. blue\nB. green")
    click(page, "#own-btn")
    page.wait_for_selector("#own-lp .js-plotly-plot")
    screenshot_path = SHOTS / "12-compare-saved.png"
    page.screenshot(path=str(screenshot_path), full_page=True)


def test_cosmetics_a_newcomer_noticed(page):
    open_tab(page, "Data")
    # the 0.01 preset shows its whole label
    preset = page.locator("#plw-preset-0_01")
    assert preset.inner_text().strip() == "0.01"
    assert page.evaluate(
        "() => { const b = document.querySelector('#plw-preset-0_01'); return b.scrollWidth <= b.clientWidth + 1; }"
    )
    # a typed PLW of 5 becomes 1, in the box and in the views
    set_number(page, "plw", 5)
    page.wait_for_function("() => document.querySelector('#plw input[type=number]')?.value === '1'")
    page.wait_for_function("() => document.querySelector('#token-view .plw-tokens')?.dataset.plw === '1'")
    # white text on the saturated blue of PLW 1
    style = page.locator("#token-view .plw-tok.plw-p:not(.plw-special)").nth(3).get_attribute("style")
    assert "color:#ffffff" in style.replace(" ", "")
    # help texts: the model's in full, the learning rate's agreeing with its default
    open_tab(page, "Train")
    assert "Hugging Face model id" in text(page, "#cfg-model-name")
    assert "1e-4 to 1e-3" not in text(page, "#cfg-train-learning-rate") and "2e-3" in text(
        page, "#cfg-train-learning-rate"
    )
    # table headers never break inside a word
    open_tab(page, "Runs")
    click(page, "#runs-refresh")
    page.wait_for_selector("#runs-table th")
    broken = page.evaluate(r"""() => {
        const out = [];
        for (const th of document.querySelectorAll('#runs-table th')) {
          const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
          for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const re = /\S+/g; let m;
            while ((m = re.exec(node.textContent))) {
              const r = document.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
              const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
              if (tops.size > 1) out.push(m[0]);
            } } }
        return out; }""")
    assert broken == [], broken
