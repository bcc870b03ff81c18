"""The documentation: the site builds with `mkdocs build --strict` (no broken link, no page left out of the
navigation), its reference pages are the code's own help, and the README stays a short front door whose
links lead into it."""

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs need mkdocs-material (`pip install -e '.[docs]'`)")

ROOT = Path(__file__).resolve().parents[1]
#: A path that exists only on the machine a page was written on.
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|root|home|Users|tmp|mnt)/")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # --strict already fails on warnings; mkdocs' own log lines start with their level.
    assert not re.search(r"^WARNING\s+-", result.stderr, re.MULTILINE), result.stderr
    return out


def page_text(site: Path, page: str) -> str:
    markup = (site / page / "index.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_the_config_reference_is_every_fields_own_help(site):
    from plw_lab.core.config import field_specs

    text = page_text(site, "reference/config")
    for section in ("model", "data", "lora", "train", "eval"):
        for spec in field_specs(section):
            assert f"{section}.{spec['name']}" in text
            assert " ".join(spec["help"].replace("`", "").split()[:6]) in text, (section, spec["name"])


def test_the_metrics_and_cli_references_come_from_the_code(site):
    from plw_lab.cli import EXAMPLES
    from plw_lab.core.metrics import METRICS

    metrics = page_text(site, "reference/metrics")
    assert all(name in metrics for name in METRICS)
    cli = page_text(site, "reference/cli")
    assert all(f"lab {command}" in cli for command in EXAMPLES)
    assert "--allow-remote-code" in cli  # the app's own parser


def test_the_readme_is_a_short_front_door_into_the_docs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    for command in ("make app", "make test", "lab app", "lab train", "jupyter lab notebooks/"):
        assert command in text
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links, "the README links to the documentation"
    for link in links:
        assert (ROOT / link).exists(), link


def test_no_page_names_a_path_of_one_machine():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not MACHINE_PATH.search(line), f"{page.name}:{number}: {line}"
