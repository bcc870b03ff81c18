"""The app end to end in a real headless Chromium, driven by Playwright.

One app process (`python app.py --model tiny-random`, runs in a temporary folder) serves the
whole module; the tests run in order on one page, as a person would: load a built-in set, move
the PLW slider, train and stop, compare, browse the runs, then feed it bad input. Each tab is
saved as a screenshot under artifacts/screenshots/.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

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

pytestmark = pytest.mark.e2e

#: What the tests in this module hand on to the next ones (they run in order on one page).
CHOSEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def page(browser, server):
    context, pg = new_page(browser, server.url)
    yield pg
    context.close()


# -- helpers ------------------------------------------------------------------------------------


def screenshot(page, name: str) -> Path:
    close_toasts(page)
    page.wait_for_timeout(600)  # let plotly finish drawing
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def plot_data(page, elem_id: str):
    """The plotly traces drawn in a gr.Plot, read from the page."""
    return page.evaluate(
        "(id) => { const el = document.querySelector(`#${id} .js-plotly-plot`);"
        " return el ? {data: el.data.map(t => ({name: t.name, type: t.type, n: (t.x || []).length})),"
        " xaxis: el.layout.xaxis && el.layout.xaxis.type} : null; }",
        elem_id,
    )


def wait_plot(page, elem_id: str, condition: str = "true", timeout: int = UI_TIMEOUT) -> None:
    page.wait_for_function(
        "([id, cond]) => { const el = document.querySelector(`#${id} .js-plotly-plot`);"
        " if (!el || !el.data || !el.data.length) return false; const data = el.data; const layout = el.layout;"
        " return eval(cond); }",
        arg=[elem_id, condition],
        timeout=timeout,
    )


def token_plw(page) -> str | None:
    return page.evaluate("() => document.querySelector('#token-view .plw-tokens')?.dataset.plw ?? null")


def wait_token_plw(page, value: str) -> None:
    page.wait_for_function("(v) => document.querySelector('#token-view .plw-tokens')?.dataset.plw === v", arg=value)


def prompt_token(page, index: int = 3):
    return page.locator("#token-view .plw-tok.plw-p:not(.plw-special)").nth(index)


# -- the tests, in the order a person would go ----------------------------------------------------


def test_data_tab_loads_a_builtin_set(page):
    from plw_lab.core.builtin import BUILTIN_SETS
    from plw_lab.core.config import LabConfig

    default = LabConfig().data.source.removeprefix("builtin:")
    # a set with answers (accuracy and log-probabilities later on), other than the one the page opens with
    with_answers = [n for n, s in BUILTIN_SETS.items() if s.format in ("multiple_choice", "classification")]
    name = next((n for n in with_answers if n != default), with_answers[0] if with_answers else default)
    # the page loads the default set by itself; the Load buttons come alive when that is done
    page.wait_for_function("() => document.querySelector('#load-builtin')?.disabled === false")
    assert f"builtin:{default}" in page.locator("#data-msg").inner_text()
    page.wait_for_selector("#token-view .plw-tok")
    choose(page, "builtin-set", name)
    CHOSEN["set"] = name
    click(page, "#load-builtin")
    page.wait_for_function(
        "(n) => (document.querySelector('#data-msg')?.innerText || '').includes('builtin:' + n)", arg=name
    )
    assert "plw-msg-ok" in page.locator("#data-msg").inner_html()
    stats = page.locator("#data-stats").inner_text()
    assert "examples" in stats and "geometric mean" in stats
    wait_plot(page, "rg-plot", "layout.xaxis.type === 'log' && data.some(t => t.type === 'bar')")
    rg = plot_data(page, "rg-plot")
    assert rg["xaxis"] == "log"
    assert {t["name"].split(" ")[0] for t in rg["data"]} >= {"examples", "mean", "geometric"}
    wait_plot(page, "len-plot")
    wait_plot(page, "label-plot")
    page.wait_for_selector("#token-view .plw-tok.plw-c")
    title = prompt_token(page).get_attribute("title")
    assert " | id " in title and "prompt" in title and "weight" in title
    # hovering shows the same title as a tooltip; it must at least be hoverable
    prompt_token(page).hover()
    screenshot(page, "01-data")


def test_plw_slider_recolours_tokens(page):
    open_tab(page, "Data")
    click(page, "#plw-preset-0")
    wait_token_plw(page, "0")
    token = prompt_token(page)
    completion = page.locator("#token-view .plw-tok.plw-c").first
    at_zero = token.get_attribute("style")
    completion_style = completion.get_attribute("style")
    assert "plw-zero" in token.get_attribute("class")
    assert token.get_attribute("data-weight") == "0"

    # drag the slider itself (its range input) to 0.5
    page.locator("#plw input[type=range]").fill("0.5")
    wait_token_plw(page, "0.5")
    token = prompt_token(page)
    assert token.get_attribute("style") != at_zero
    assert token.get_attribute("data-weight") == "0.5"
    assert "weight 0.5" in token.get_attribute("title")
    assert page.locator("#token-view .plw-tok.plw-c").first.get_attribute("style") == completion_style
    assert "PLW = 0.5" in page.locator("#token-view .plw-legend").first.inner_text()

    # a preset button sets it in one click
    click(page, "#plw-preset-1")
    wait_token_plw(page, "1")
    assert prompt_token(page).get_attribute("data-weight") == "1"
    assert "PLW **1**" not in page.locator("#data-stats").inner_text()  # rendered, not raw markdown
    assert "At PLW 1" in page.locator("#data-stats").inner_text()
    click(page, "#plw-preset-0_1")
    wait_token_plw(page, "0.1")
    close_toasts(page)
    page.locator("#token-view").screenshot(path=str(SHOTS / "02-token-view-plw-0.1.png"))


def test_training_streams_charts_to_every_visitor_and_stops(page, browser, server):
    # a second visitor opens the app before the job exists
    other, visitor = new_page(browser, server.url)
    visitor.get_by_role("tab", name="Train", exact=True).click()
    assert progress(visitor)["status"] == "idle"

    open_tab(page, "Train")
    set_number(page, "cfg-train-max-steps", 400)
    set_number(page, "cfg-train-eval-interval", 2)
    set_number(page, "cfg-train-batch-size", 4)
    click(page, "#start")
    page.wait_for_function(
        "() => { const p = document.querySelector('#progress .plw-progress');"
        " return p && (Number(p.dataset.step) >= 2 || p.dataset.status === 'failed'); }",
        timeout=120_000,
    )
    state = progress(page)
    assert state["status"] == "running", f"{state}: {page.locator('#train-msg').inner_text()}"
    assert "tokens/s" in page.locator("#progress").inner_text() and "ETA" in page.locator("#progress").inner_text()
    wait_plot(page, "loss-plot", "data[0].x.length >= 2")
    first_points = plot_data(page, "loss-plot")["data"][0]["n"]
    # the charts keep growing as events arrive
    wait_plot(page, "loss-plot", f"data[0].x.length > {first_points}")
    wait_plot(
        page,
        "loss-plot",
        "data.some(t => (t.name || '').startsWith('val completion'))"
        " && data.some(t => (t.name || '').startsWith('best '))",
    )
    wait_plot(page, "acc-plot", "data.some(t => t.name === 'majority-class baseline')")
    assert page.locator("#start").inner_text() == "Queue this run"  # a run started now waits for this one

    # the second visitor notices the job by itself and watches it; a reload re-attaches
    try:
        visitor.wait_for_selector("#job-badge [data-status=running]")
        visitor.wait_for_function(
            "() => document.querySelector('#progress .plw-progress')?.dataset.status === 'running'"
        )
        assert visitor.locator("#start").inner_text() == "Queue this run"
        step_seen = progress(visitor)["step"]
        visitor.wait_for_function(
            "(s) => Number(document.querySelector('#progress .plw-progress')?.dataset.step || 0) > s", arg=step_seen
        )
        visitor.reload()
        visitor.wait_for_selector("#job-badge [data-status=running]")
        visitor.get_by_role("tab", name="Train", exact=True).click()
        visitor.wait_for_function(
            "() => document.querySelector('#progress .plw-progress')?.dataset.status === 'running'"
        )
        wait_plot(visitor, "loss-plot", "data[0].x.length >= 2")
    finally:
        other.close()

    page.wait_for_function(
        "() => Number(document.querySelector('#progress .plw-progress')?.dataset.step || 0) >= 4", timeout=120_000
    )
    wait_plot(page, "loss-plot", "data.filter(t => (t.name || '').startsWith('val')).every(t => t.x.length >= 3)")
    screenshot(page, "03-train-running")
    click(page, "#stop")
    page.wait_for_function(
        "() => document.querySelector('#progress .plw-progress')?.dataset.status === 'stopped'", timeout=120_000
    )
    assert "stopped by the user" in page.locator("#progress").inner_text()
    page.wait_for_function("() => document.querySelector('button#start')?.disabled === false")
    summaries = list(server.runs.glob("*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "stopped" and summary["steps"] >= 2
    assert (summaries[0].parent / "adapter" / "adapter_config.json").exists()
    assert "plw0.1" in summaries[0].parent.name
    # the run trained on the set this visitor loaded, not the default the page opened with
    assert f"source: builtin:{CHOSEN['set']}" in (summaries[0].parent / "config.yaml").read_text()
    screenshot(page, "04-train-stopped")


def test_compare_shows_adapter_on_and_off_side_by_side(page, server):
    open_tab(page, "Compare")
    run_name = next(server.runs.glob("*/summary.json")).parent.name
    page.wait_for_function("(n) => document.querySelector('#compare-run input')?.value === n", arg=run_name)
    click(page, "#compare-btn")
    page.wait_for_selector("#compare-gens table")
    page.wait_for_function("() => document.querySelector('#compare-msg .plw-msg-ok') !== null")
    table = page.locator("#compare-table").inner_text()
    assert "adapter off" in table and "adapter on" in table
    assert "val completion loss" in table and "forgetting probe" in table
    headers = page.locator("#compare-gens th").all_inner_texts()
    assert any("adapter off" in h for h in headers) and any("adapter on" in h for h in headers)
    wait_plot(page, "compare-dist", "data.length >= 2")
    # one validation example: both generations, answer log-probabilities, per-token loss difference
    page.wait_for_function(
        "() => document.querySelector('#gen-on textarea')?.value.length > 0"
        " && document.querySelector('#gen-off textarea')?.value.length > 0"
    )
    wait_plot(page, "lp-plot", "data.length === 2 && data.every(t => t.type === 'bar')")
    names = [t["name"] for t in plot_data(page, "lp-plot")["data"]]
    assert names == ["adapter off (base)", "adapter on"]
    page.wait_for_selector("#val-tokens .plw-tokens[data-mode=loss-diff] .plw-tok")
    assert "loss on" in page.locator("#val-tokens .plw-tok").nth(3).get_attribute("title")
    # a prompt of one's own
    page.locator("#own-prompt textarea").fill("Which colour is the sky? A. blue B. green")
    click(page, "#own-btn")
    page.wait_for_function(
        "() => document.querySelector('#own-on textarea')?.value.length > 0"
        " && document.querySelector('#own-off textarea')?.value.length > 0"
    )
    wait_plot(page, "own-lp", "data.length === 2")
    screenshot(page, "05-compare")


def test_token_view_colours_by_loss_after_training(page):
    open_tab(page, "Data")
    page.get_by_label("loss: on \u2212 off", exact=True).check()
    page.wait_for_selector("#token-view .plw-tokens[data-mode=loss-diff] .plw-tok")
    title = page.locator("#token-view .plw-tok").nth(2).get_attribute("title")
    assert "loss on" in title and "| off " in title and "\u0394" in title
    page.get_by_label("loss weight", exact=True).check()
    page.wait_for_selector("#token-view .plw-tokens[data-mode=weights]")


def test_a_second_run_at_plw_0_finishes(page, server):
    assert train_briefly(page, timeout=120_000) == "finished", page.locator("#train-msg").inner_text()
    assert "Finished" in page.locator("#train-msg").inner_text()
    runs = sorted(p.parent.name for p in server.runs.glob("*/summary.json"))
    assert len(runs) == 2 and any("plw0" in r and "plw0.1" not in r for r in runs)
    # the finished run compared itself: the Compare tab shows it at once
    finished = next(
        p.parent for p in server.runs.glob("*/summary.json") if json.loads(p.read_text())["status"] == "finished"
    )
    assert (finished / "compare.json").exists()
    open_tab(page, "Compare")
    page.wait_for_function("(n) => document.querySelector('#compare-run input')?.value === n", arg=finished.name)
    click(page, "#compare-btn")
    page.wait_for_function(
        "(n) => (document.querySelector('#compare-msg')?.innerText || '').includes(n + ': PLW 0,')", arg=finished.name
    )


def test_runs_tab_overlays_zips_and_deletes_runs(page, server):
    open_tab(page, "Runs")
    click(page, "#runs-refresh")
    names = sorted(p.parent.name for p in server.runs.glob("*/summary.json"))
    page.wait_for_function(
        "(ns) => ns.every(n => (document.querySelector('#runs-table')?.innerText || '').includes(n))", arg=names
    )
    table = page.locator("#runs-table").inner_text()
    assert "stopped" in table and "finished" in table and "tiny-random" in table
    assert "@" in table  # best values come with the step where they were reached
    wait_plot(page, "overlay-plot", "data.length === 2")
    # PLW 0 sits on the log axis at a small value labelled 0; the stopped run differs from the finished
    # one, so it is drawn hollow, off the line
    wait_plot(
        page,
        "sweep-plot",
        "layout.xaxis.type === 'log' && layout.xaxis.ticktext.includes('0')"
        " && data.some(t => t.name.includes('differs') && t.marker.symbol.endsWith('-open') && t.x.length === 1)",
    )
    choose(page, "overlay-metric", "val answer accuracy")
    wait_plot(page, "overlay-plot", "layout.yaxis.title.text === 'val answer accuracy'")
    choose(page, "overlay-metric", "val completion loss")
    wait_plot(page, "overlay-plot", "layout.yaxis.title.text === 'val completion loss'")
    click(page, "#zip-btn")
    page.wait_for_function("() => (document.querySelector('#runs-msg')?.innerText || '').includes('ready')")
    page.wait_for_selector("#zip-file a")
    assert ".zip" in page.locator("#zip-file").inner_text()
    screenshot(page, "06-runs")

    # delete the stopped run: refused without the confirmation, done with it
    stopped = next(
        p.parent.name for p in server.runs.glob("*/summary.json") if json.loads(p.read_text())["status"] == "stopped"
    )
    choose(page, "run-pick", stopped)
    click(page, "#delete-btn")
    page.wait_for_function("() => (document.querySelector('#runs-msg')?.innerText || '').includes('confirm')")
    assert (server.runs / stopped).exists()
    page.locator("#confirm-delete input").check()
    click(page, "#delete-btn")
    page.wait_for_function(
        "(n) => (document.querySelector('#runs-msg')?.innerText || '').includes('Deleted ' + n)", arg=stopped
    )
    assert not (server.runs / stopped).exists()
    page.wait_for_function("(n) => !(document.querySelector('#runs-table')?.innerText || '').includes(n)", arg=stopped)


def test_bad_input_shows_clear_messages_and_the_app_keeps_working(page, server, tmp_path):
    open_tab(page, "Data")
    page.get_by_role("tab", name="Upload file", exact=True).click()

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    upload(page, broken)
    click(page, "#load-file")
    page.wait_for_function("() => (document.querySelector('#data-msg')?.innerText || '').includes('invalid JSON')")
    assert "line 2" in page.locator("#data-msg").inner_text()

    # columns with other names: the error names the fields, then a column mapping fixes it
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("instruction,output\n" + "".join(f"Add {i} and {i}.,{2 * i}\n" for i in range(12)))
    upload(page, renamed)
    click(page, "#load-file")
    page.wait_for_function(
        "() => (document.querySelector('#data-msg')?.innerText || '').includes('cannot tell the format')"
    )
    assert "instruction" in page.locator("#data-msg").inner_text()
    page.wait_for_selector("#map-prompt")  # the failed load opened the Column mapping section
    choose(page, "map-prompt", "instruction")
    choose(page, "map-completion", "output")
    click(page, "#load-file")
    page.wait_for_function("() => (document.querySelector('#data-msg')?.innerText || '').includes('12 examples')")
    assert "prompt completion" in page.locator("#data-msg").inner_text()
    page.wait_for_selector("#token-view .plw-tok.plw-c")

    # a hub dataset offline
    page.get_by_role("tab", name="Hub dataset", exact=True).click()
    page.locator("#hub-id textarea, #hub-id input").first.fill("someone/some-dataset")
    click(page, "#load-hub")
    page.wait_for_function("() => (document.querySelector('#data-msg')?.innerText || '').includes('internet')")

    # an impossible setting
    open_tab(page, "Train")
    set_number(page, "cfg-train-batch-size", 0)
    click(page, "#start")
    page.wait_for_function(
        "() => (document.querySelector('#train-msg')?.innerText || '').includes('\"Train batch size\"')"
    )
    assert "at least 1" in page.locator("#train-msg").inner_text()
    set_number(page, "cfg-train-batch-size", 4)

    # a folder of the server as the model is refused before anything starts, without saying what is there
    model_box = page.locator("#cfg-model-name input")
    model_box.click()
    model_box.fill("./no-such-model-folder")
    model_box.press("Enter")
    page.locator("body").click(position={"x": 5, "y": 5})
    click(page, "#start")
    page.wait_for_function(
        "() => (document.querySelector('#train-msg')?.innerText || '')"
        ".includes('loads no folder or file of the server')"
    )
    assert "no-such-model-folder" not in page.locator("#train-msg").inner_text()
    choose(page, "cfg-model-name", "tiny-random")

    # still alive: the slider still recolours the (mapped CSV) tokens
    open_tab(page, "Data")
    click(page, "#plw-preset-0_5")
    wait_token_plw(page, "0.5")
    click(page, "#plw-preset-0")
    wait_token_plw(page, "0")
    assert server.proc.poll() is None


def test_uploads_over_the_size_limit_are_refused(server):
    """The app caps uploads (50 MB by default); the server refuses a bigger file before the lab sees it."""
    boundary = "plwlabboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + b"0" * (50 * 1024 * 1024 + 1024) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        server.url + "gradio_api/upload?upload_id=e2e-size-limit",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413
    assert server.proc.poll() is None
