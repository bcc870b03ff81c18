"""The one config: validation names the setting, files round-trip, overrides parse."""

import pytest

from plw_lab.core.config import ConfigError, LabConfig, field_specs, layer_indices


def test_defaults_are_valid_and_documented():
    cfg = LabConfig()
    assert cfg.model.name == "embedded" and cfg.train.early_stopping_metric != "full_loss"
    for section in ("model", "data", "lora", "train", "eval"):
        for spec in field_specs(section):
            assert len(spec["help"]) > 20, f"{section}.{spec['name']} needs documentation"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_a_file(tmp_path, suffix):
    cfg = LabConfig().override(
        {
            "train.prompt_loss_weight": 0.01,
            "lora.target_modules": ["q_proj", "v_proj"],
            "data.column_map": {"prompt": "q"},
        }
    )
    assert LabConfig.load(cfg.save(tmp_path / f"c{suffix}")) == cfg


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.prompt_loss_weight", "1.5", "train.prompt_loss_weight must be at most 1.0"),
        ("train.prompt_loss_weight", "-0.1", "train.prompt_loss_weight must be at least 0.0"),
        ("train.prompt_loss_weight", "nan", "train.prompt_loss_weight is NaN"),
        ("train.loss_normalization", "mean", "must be one of sum_weights, count_nonzero"),
        ("train.batch_size", "0", "train.batch_size must be at least 1"),
        ("train.batch_size", "eight", "cannot read 'eight' as int"),
        ("lora.layers", "top:x", "'top:N' needs a positive whole N"),
        ("train.prompt_weight", "0.1", "unknown setting 'train.prompt_weight'"),
        (
            "model.chat_template",
            "{% for m in messages %}{{ m }}",
            "model.chat_template: not a valid Jinja template (line 1",
        ),
    ],
)
def test_bad_settings_name_the_setting(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LabConfig().override({key: value})


def test_unknown_keys_in_a_file_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  prompt_los_weight: 0.1\n")
    with pytest.raises(ConfigError, match="train.prompt_los_weight"):
        LabConfig.load(path)


def test_layer_specs_select_layers():
    assert layer_indices("all", 30) is None
    assert layer_indices("top:4", 30) == [26, 27, 28, 29]
    assert layer_indices("top:40", 30) == list(range(30))
    assert layer_indices("3,1", 30) == [1, 3]
    with pytest.raises(ConfigError, match="out of range"):
        layer_indices("31", 30)
