"""What `pip install plw-lab` gives: a core install that trains and runs the CLI without the app's,
the notebooks' or the probe's packages, and a wheel that carries the recipes and the app."""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from plw_lab.core.version import __version__

ROOT = Path(__file__).resolve().parents[1]
#: The packages of the extras ([app], [notebooks], [probe], [demo], [gpu], [tensorboard], [ray]).
EXTRAS_ONLY = (
    "gradio",
    "plotly",
    "ipywidgets",
    "IPython",
    "anywidget",
    "jupyterlab",
    "sklearn",
    "B3DB",
    "bitsandbytes",
    "tensorboardX",
    "ray",
)


def run_without_extras(tmp_path, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing any extra's package fails, as on a core install."""
    shim = textwrap.dedent(
        f"""
        import sys
        for name in {EXTRAS_ONLY!r}:
            sys.modules[name] = None  # `import name` now raises ModuleNotFoundError
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", shim + textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_the_cli_and_the_engine_import_without_any_extra(tmp_path):
    result = run_without_extras(
        tmp_path,
        """
        import importlib, pkgutil
        import plw_lab.core
        for module in pkgutil.iter_modules(plw_lab.core.__path__):
            if module.name != "sweep_ray":  # the [ray] extra's backend, imported only when a sweep asks for it
                importlib.import_module(f"plw_lab.core.{module.name}")
        # the views `lab` prints with (progress, tables, token colours); only charts need plotly
        import plw_lab.cli, plw_lab.views.history, plw_lab.views.text_views, plw_lab.views.tokens_view
        from plw_lab.cli import main
        assert main(["config", "--config", "bbb-demo", "--plw", "0.1"]) == 0
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "prompt_loss_weight: 0.1" in result.stdout and "source: builtin:bbb" in result.stdout


def test_lab_app_without_the_app_extra_says_what_to_install(tmp_path):
    result = run_without_extras(tmp_path, "import sys\nfrom plw_lab.cli import main\nsys.exit(main(['app']))")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == 'error: lab app needs gradio, which is not installed here: pip install "plw-lab[app]"'
    )


def test_the_bbb_demo_without_the_demo_extra_says_what_to_install(tmp_path):
    result = run_without_extras(
        tmp_path,
        "import sys\nfrom plw_lab.cli import main\n"
        "sys.exit(main(['train', '--config', 'bbb-demo', '--model', 'tiny-random', '--output-dir', 'runs']))",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the built-in set 'bbb' (builtin:bbb) needs B3DB, which is not installed here: "
        'pip install "plw-lab[demo]"'
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_wheel_ships_the_recipes_and_the_app(tmp_path):
    # Built from a copy, so the build leaves no build/ or egg-info behind in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "plw_lab", source / "plw_lab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    offline = ["--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run([*pip, "wheel", *offline, "-w", str(tmp_path / "dist"), str(source)], check=True)
    (wheel,) = (tmp_path / "dist").glob("plw_lab-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"plw_lab/recipes/bbb-demo.yaml", "plw_lab/recipes/accelerate/ddp.yaml", "plw_lab/app/main.py"} <= names
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) == 3 and {f"plw_lab/notebooks/{name}" for name in notebooks} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    core = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    for package in ("gradio", "plotly", "jupyterlab", "ipywidgets", "anywidget", "scikit-learn", "qc-B3DB"):
        assert not any(line.split()[1].startswith(package) for line in core), f"{package} is a core dependency"

    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    outside = tmp_path / "elsewhere"  # no recipe file and no checkout here
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "NO_COLOR": "1"}

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, *args], cwd=outside, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert run("-m", "plw_lab", "--version").strip() == f"lab {__version__}"
    assert "limit: 560" in run("-m", "plw_lab", "config", "--config", "bbb-demo")
    # The measured real-data lesson and the recipe that reruns it, from the wheel alone.
    lesson = run("-m", "plw_lab", "verdict")
    assert "lab sweep --config plw-lesson --name plw-lesson" in lesson and "what 12 finished run(s) support" in lesson
    assert "arms:" in run("-m", "plw_lab", "config", "--config", "plw-lesson")
    run("-m", "plw_lab", "notebooks", "lessons")
    assert sorted(p.name for p in (outside / "lessons").iterdir()) == notebooks
    imported = run("-c", "import plw_lab.app.main, plw_lab; print(plw_lab.__file__)")
    assert Path(imported.strip()).is_relative_to(target)
