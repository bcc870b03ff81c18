"""The recipes in configs/: every lab config loads with `lab config --config` and is headed by the
command that runs it; the accelerate configs (accelerate-*.yaml) load with accelerate's own reader;
the RACE recipe fits the 24 GB GPU it promises."""

from pathlib import Path

import pytest
import yaml

from plw_lab.cli import main
from plw_lab.core.config import LabConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LAB_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("accelerate-"))
ACCELERATE_CONFIGS = sorted(CONFIGS.glob("accelerate-*.yaml"))


def header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def test_the_recipes_are_there():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {
        "race-plw-1b-24gb.yaml",
        "space-cpu.yaml",
        "accelerate-ddp.yaml",
        "accelerate-fsdp.yaml",
        "accelerate-deepspeed.yaml",
    } <= names


@pytest.mark.parametrize("path", LAB_CONFIGS, ids=lambda p: p.name)
def test_each_lab_config_loads_and_is_headed_by_its_command(path, capsys):
    assert main(["config", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert LabConfig.from_dict(yaml.safe_load(printed)) == LabConfig.load(path)
    assert f"--config configs/{path.name}" in header(path), f"{path.name} must start with the command that runs it"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_each_accelerate_config_is_valid_and_says_how_to_launch(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 2 and config.mixed_precision == "bf16"
    assert f"accelerate launch --config_file configs/{path.name} -m plw_lab train" in header(path)


def test_the_race_recipe_fits_one_24_gb_gpu():
    from plw_lab.core.memory import Architecture, estimate
    from plw_lab.core.presets import find_preset

    cfg = LabConfig.load(CONFIGS / "race-plw-1b-24gb.yaml")
    assert cfg.data.source == "hf:ehovy/race" and cfg.train.eval_interval <= 50
    e = estimate(cfg, Architecture.from_config(find_preset(cfg.model.name).config), device="cuda")
    assert 0.9e9 < e.parameters < 1.6e9  # a ~1B model
    assert e.total + 0.5 * 2**30 < 22 * 2**30  # with the CUDA context, inside a 24 GB card with room to spare
    assert f"estimates about {e.total / 2**30:.0f} GiB" in header(CONFIGS / "race-plw-1b-24gb.yaml")


def test_the_space_recipe_runs_on_the_cpu():
    cfg = LabConfig.load(CONFIGS / "space-cpu.yaml")
    assert cfg.model.device == "cpu" and cfg.model.quantization == "none" and cfg.model.name == "embedded"
