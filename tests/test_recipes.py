"""The recipes shipped in plw_lab/recipes/: every lab config loads with `lab config --config NAME` (by its
bare name, from any folder) and is headed by the command that runs it; the accelerate configs
(recipes/accelerate/*.yaml) load with accelerate's own reader; the RACE recipe fits the 24 GB GPU it promises."""

from pathlib import Path

import pytest
import yaml

from plw_lab.cli import main
from plw_lab.core.config import RECIPES, ConfigError, LabConfig, recipe_names

LAB_CONFIGS = sorted(RECIPES.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))


def header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def test_the_recipes_are_there():
    assert {"bbb-demo", "plw-lesson", "plw-lesson-race-gpu", "race-plw-1b-24gb", "space-cpu"} <= set(recipe_names())
    assert {p.name for p in ACCELERATE_CONFIGS} == {"ddp.yaml", "fsdp.yaml", "deepspeed.yaml"}


@pytest.mark.parametrize("path", LAB_CONFIGS, ids=lambda p: p.stem)
def test_each_lab_config_loads_by_name_and_is_headed_by_its_command(path, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipe file here: the name alone must find the shipped one
    assert main(["config", "--config", path.stem]) == 0
    printed = capsys.readouterr().out
    assert LabConfig.from_dict(yaml.safe_load(printed)) == LabConfig.load(path) == LabConfig.load(f"{path.stem}.yaml")
    assert f"--config {path.stem}" in header(path), f"{path.name} must start with the command that runs it"


def test_a_file_of_the_recipes_name_wins_over_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bbb-demo.yaml").write_text("train:\n  max_steps: 7\n")
    assert LabConfig.load("bbb-demo.yaml").train.max_steps == 7
    assert LabConfig.load("bbb-demo").train.max_steps == 120  # no file named exactly 'bbb-demo': the recipe


def test_an_unknown_name_lists_the_shipped_recipes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shipped = "bbb-demo, plw-lesson, plw-lesson-race-gpu, race-plw-1b-24gb, space-cpu"
    with pytest.raises(ConfigError, match=f"is not a shipped recipe \\({shipped}\\)"):
        LabConfig.load("bbb-dmeo")
    with pytest.raises(ConfigError, match="does not exist"):  # a path is a path: no recipe lookup in a folder
        LabConfig.load(tmp_path / "sub" / "bbb-demo")
    assert main(["config", "--config", "bbb-dmeo"]) == 2
    assert capsys.readouterr().err.startswith("error: config file 'bbb-dmeo' does not exist")


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_each_accelerate_config_is_valid_and_says_how_to_launch(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 2 and config.mixed_precision == "bf16"
    assert f"accelerate launch --config_file plw_lab/recipes/accelerate/{path.name} -m plw_lab train" in header(path)


@pytest.mark.parametrize("name", ["race-plw-1b-24gb", "plw-lesson-race-gpu"])
def test_the_race_recipes_fit_one_24_gb_gpu(name):
    from plw_lab.core.memory import Architecture, estimate
    from plw_lab.core.presets import find_preset

    cfg = LabConfig.load(name)
    assert cfg.data.source == "hf:ehovy/race" and cfg.train.eval_interval <= 50
    e = estimate(cfg, Architecture.from_config(find_preset(cfg.model.name).config), device="cuda")
    assert 0.9e9 < e.parameters < 1.6e9  # a ~1B model
    assert e.total + 0.5 * 2**30 < 22 * 2**30  # with the CUDA context, inside a 24 GB card with room to spare
    assert f"estimates about {e.total / 2**30:.0f} GiB" in header(RECIPES / f"{name}.yaml")


def test_the_space_recipe_runs_on_the_cpu_with_the_apps_starting_values():
    cfg = LabConfig.load("space-cpu")
    assert cfg.model.device == "cpu" and cfg.model.quantization == "none" and cfg.model.name == "embedded"
    # Its header says `lab app` with no options starts from these values: LabConfig() as a CPU resolves it.
    assert cfg == LabConfig().override({"model.device": "cpu", "model.dtype": "float32"})


def test_lab_app_starts_from_a_recipe_by_name(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio")
    from plw_lab.app import main as app_main
    from plw_lab.app.jobs import JobRegistry

    served = {}

    class App:
        plw_registry = JobRegistry()

        def launch(self, **kwargs):
            served["launch"] = kwargs

    def build_app(config, runs_dir, allow_remote_code, allow_local_paths, limits):
        served.update(config=config, runs_dir=runs_dir, limits=limits)
        return App()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)  # a Space sets it to 0.0.0.0
    monkeypatch.setattr(app_main, "build_app", build_app)
    argv = ["app", "--config", "space-cpu", "--set", "train.max_steps=5", "--port", "7999", "--runs-dir", "r"]
    assert main(argv) == 0
    assert served["config"] == LabConfig.load("space-cpu").override({"train.max_steps": 5})
    assert served["runs_dir"] == "r"
    assert served["launch"]["server_port"] == 7999 and served["launch"]["server_name"] == "127.0.0.1"
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--config", "space-cpuu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: config file 'space-cpuu' does not exist")
