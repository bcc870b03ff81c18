"""The app through its public Gradio API (what a script can call without the page): the hub box
never reads a folder on the server, whatever the visitor types."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180
gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """`python app.py` with the tiny model on a free port of 127.0.0.1, as in test_app_browser.py."""
    tmp = tmp_path_factory.mktemp("api")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--model", "tiny-random", "--runs-dir", str(tmp / "runs"), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    address = f"http://127.0.0.1:{port}/"
    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not start:\n{(tmp / 'server.log').read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(address, timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    yield address
    proc.terminate()
    proc.wait(timeout=15)
    log.close()


def _by_label(endpoint: dict, label: str) -> str:
    return next(p["parameter_name"] for p in endpoint["parameters"] if p["label"] == label)


@pytest.mark.parametrize("typed", ["/etc", "../..", "/etc/passwd", "tests/e2e", "hf:../../etc"])
def test_the_hub_box_refuses_server_folders_through_the_api(url, typed):
    client = gradio_client.Client(url, verbose=False)
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/on_load_hub"]
    result = client.predict(**{_by_label(endpoint, "Hugging Face dataset id"): typed}, api_name="/on_load_hub")
    outputs = dict(zip([r["label"] for r in endpoint["returns"]], result))
    message = next(v for v in result if isinstance(v, str) and "plw-msg" in v)
    assert 'data-kind="error"' in message
    assert "not a Hugging Face dataset id" in message or "names a folder on this server" in message
    assert outputs["First examples"] == {"__type__": "update"}  # no record reached the preview table
