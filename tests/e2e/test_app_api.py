"""The app through its public Gradio API (what a script can call without the page): the hub box
never reads a folder on the server, whatever the visitor types."""

from __future__ import annotations

import pytest

from e2e.e2e_support import app_server

pytestmark = pytest.mark.e2e

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with app_server(tmp_path_factory.mktemp("api")) as (address, *_):
        yield address


def _by_label(endpoint: dict, label: str) -> str:
    return next(p["parameter_name"] for p in endpoint["parameters"] if p["label"] == label)


@pytest.mark.parametrize("typed", ["/etc", "../..", "/etc/passwd", "tests/e2e", "hf:../../etc"])
def test_the_hub_box_refuses_server_folders_through_the_api(url, typed):
    client = gradio_client.Client(url, verbose=False)
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/load_hub"]
    result = client.predict(**{_by_label(endpoint, "Hugging Face dataset id"): typed}, api_name="/load_hub")
    outputs = dict(zip([r["label"] for r in endpoint["returns"]], result))
    message = next(v for v in result if isinstance(v, str) and "plw-msg" in v)
    assert 'data-kind="error"' in message
    # A folder of the server that is spelt like a hub id gets the words of a dataset the hub cannot give.
    assert "not a Hugging Face dataset id" in message or "Could not load hub dataset" in message
    assert outputs["First examples"] == {"__type__": "update"}  # no record reached the preview table


def test_the_api_lists_named_endpoints_only_and_the_docs_example_runs(url, capsys):
    from pathlib import Path

    from plw_lab.app.main import PUBLIC_API

    client = gradio_client.Client(url, verbose=False)
    named = client.view_api(return_format="dict", print_info=False)
    assert {name.lstrip("/") for name in named["named_endpoints"]} == PUBLIC_API
    assert not named["unnamed_endpoints"]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "app.md").read_text()
    example = docs.split("## Scripts")[1].split("```python\n")[1].split("```")[0]
    exec(example.replace("http://127.0.0.1:7860/", url), {})
    printed = capsys.readouterr().out
    assert "finished" in printed and "0.1" in printed  # the run the example started, in the runs table
