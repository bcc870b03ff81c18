"""Hugging Face names: every setting with a transformers/TRL/peft name answers to it, in a config file
(in its section or bare, as a TRL config is written) and in --set; a name that is neither the lab's
nor an alias gets the nearest known one; two names of one setting in one config are refused."""

import dataclasses

import pytest
import yaml

from plw_lab.cli import main
from plw_lab.core.config import _SECTIONS, ConfigError, LabConfig, field_specs

#: Each alias with a value to write under it and the setting and value the lab should read: the oracle.
ALIASES = [
    ("model_name_or_path", "tiny-random", "model.name", "tiny-random"),
    ("use_cpu", True, "model.device", "cpu"),
    ("bf16", True, "model.dtype", "bfloat16"),
    ("fp16", True, "model.dtype", "float16"),
    ("torch_dtype", "float32", "model.dtype", "float32"),
    ("load_in_4bit", True, "model.quantization", "4bit"),
    ("load_in_8bit", True, "model.quantization", "8bit"),
    ("dataset_name", "trl-lib/Capybara", "data.source", "hf:trl-lib/Capybara"),
    ("dataset_config", "middle", "data.hf_config", "middle"),
    ("dataset_train_split", "validation", "data.hf_split", "validation"),
    ("max_train_samples", 50, "data.limit", 50),
    ("max_seq_length", 256, "data.max_length", 256),
    ("lora_r", 4, "lora.r", 4),
    ("lora_alpha", 32, "lora.alpha", 32),
    ("lora_dropout", 0.05, "lora.dropout", 0.05),
    ("lora_target_modules", ["q_proj", "v_proj"], "lora.target_modules", ["q_proj", "v_proj"]),
    ("layers_to_transform", [2, 3], "lora.layers", "2,3"),
    ("completion_only_loss", False, "train.prompt_loss_weight", 1.0),
    ("lr_scheduler_type", "linear", "train.lr_scheduler", "linear"),
    ("warmup_steps", 0.05, "train.warmup_ratio", 0.05),
    ("num_train_epochs", 3, "train.epochs", 3.0),
    ("per_device_train_batch_size", 4, "train.batch_size", 4),
    ("gradient_accumulation_steps", 2, "train.grad_accum", 2),
    ("eval_steps", 5, "train.eval_interval", 5),
    ("early_stopping_patience", 3, "train.patience", 3),
    ("load_best_model_at_end", False, "train.restore_best", False),
    ("save_steps", 20, "train.save_interval_steps", 20),
    ("per_device_eval_batch_size", 2, "eval.batch_size", 2),
]


def test_the_oracle_covers_every_alias_the_config_declares():
    declared = {
        alias.name
        for cls in _SECTIONS.values()
        for f in dataclasses.fields(cls)
        for alias in f.metadata.get("aliases", ())
    }
    assert declared == {alias for alias, *_ in ALIASES}


@pytest.mark.parametrize("alias, value, key, expected", ALIASES)
def test_every_alias_sets_its_setting_bare_in_its_section_and_in_set(tmp_path, alias, value, key, expected):
    section = key.split(".")[0]
    for data in ({alias: value}, {section: {alias: value}}):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        cfg = LabConfig.load(path)
        assert cfg.value(key) == expected, data
        assert cfg.value(key) != LabConfig().value(key)  # the sentinel differs from the default
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    for spelled in (alias, f"{section}.{alias}"):
        assert LabConfig().override({spelled: text}).value(key) == expected, spelled


def test_the_aliases_are_in_field_specs_and_lab_config_help(capsys):
    specs = {spec["name"]: spec for spec in field_specs("train")}
    assert specs["batch_size"]["aliases"] == ["per_device_train_batch_size"]
    assert specs["prompt_loss_weight"]["aliases"] == ["completion_only_loss (true: 0, false: 1)"]
    assert specs["learning_rate"]["aliases"] == []
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    out = capsys.readouterr().out
    assert "  train.batch_size           per_device_train_batch_size\n" in out
    assert "model.dtype                bf16 (true: bfloat16), fp16 (true: float16), torch_dtype" in out


def test_a_flat_trl_config_loads(tmp_path):
    path = tmp_path / "sft.yaml"
    # The shape of TRL's example SFT configs: flat, transformers' and TRL's own names.
    path.write_text(
        """\
model_name_or_path: tiny-random
dataset_name: builtin:bbb
learning_rate: 2.0e-4
num_train_epochs: 1
max_steps: 3
packing: true
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
gradient_checkpointing: true
logging_steps: 25
eval_strategy: steps
eval_steps: 100
use_peft: true
lora_r: 32
lora_alpha: 16
lora_target_modules: [q_proj, v_proj]
output_dir: out
report_to: none
bf16: true
fp16: false
completion_only_loss: false
max_length: 512
seed: 3
"""
    )
    cfg = LabConfig.load(path)
    assert (cfg.model.name, cfg.model.dtype, cfg.data.source, cfg.data.max_length) == (
        "tiny-random",
        "bfloat16",
        "builtin:bbb",
        512,
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (32, 16, ["q_proj", "v_proj"])
    t = cfg.train
    assert (t.learning_rate, t.epochs, t.max_steps, t.batch_size, t.grad_accum, t.eval_interval) == (
        2e-4,
        1.0,
        3,
        2,
        8,
        100,
    )
    assert (t.packing, t.gradient_checkpointing, t.output_dir, t.report_to, t.seed) == (True, True, "out", [], 3)
    assert t.prompt_loss_weight == 1.0  # completion_only_loss false: the full-sequence loss
    # The lab's own sections beside bare names, as a user adds the lab's settings to a TRL config.
    path.write_text("learning_rate: 1.0e-3\ntrain:\n  prompt_loss_weight: 0.1\n")
    assert (LabConfig.load(path).train.learning_rate, LabConfig.load(path).train.prompt_loss_weight) == (1e-3, 0.1)


def test_lab_config_reads_a_trl_config_and_set_takes_hf_names(tmp_path, capsys):
    path = tmp_path / "sft.yaml"
    path.write_text("per_device_train_batch_size: 4\nnum_train_epochs: 2\n")
    assert main(["config", "--config", str(path), "--set", "train.gradient_accumulation_steps=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["train"]["batch_size"], printed["train"]["epochs"], printed["train"]["grad_accum"]) == (4, 2.0, 3)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"train": {"prompt_los_weight": 0.1}},
            "unknown setting 'train.prompt_los_weight'; did you mean train.prompt_loss_weight?",
        ),
        ({"learning_rat": 1e-3}, "unknown setting 'learning_rat'; did you mean learning_rate?"),
        (
            {"per_device_batch_size": 4},
            "did you mean per_device_eval_batch_size (eval.batch_size) or per_device_train_batch_size "
            "(train.batch_size)?",
        ),
        ({"lora": {"lora_apha": 8}}, "unknown setting 'lora.lora_apha'; did you mean lora.lora_alpha?"),
        (
            {"train": {"model_name_or_path": "x"}},
            "unknown setting 'train.model_name_or_path'; did you mean model.name?",
        ),
        ({"trian": {"seed": 1}}, "unknown setting 'trian'; did you mean the section train?"),
        ({"batch_size": 4}, "'batch_size' is a setting of several sections; write train.batch_size or eval.batch_size"),
        ({"use_peft": False}, "use_peft False is not something the lab can do: the lab always trains a LoRA adapter"),
        ({"warmup_steps": 100}, "warmup_steps 100: the lab warms up over a share of the optimiser steps"),
    ],
)
def test_an_unknown_name_gets_the_nearest_known_one(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        LabConfig.load(path)
    assert message in str(caught.value)


def test_an_unknown_name_in_set_exits_2_with_the_suggestion(capsys):
    assert main(["config", "--set", "train.per_device_train_batch_sz=4"]) == 2
    assert (
        "error: unknown setting 'train.per_device_train_batch_sz'; did you mean train.per_device_train_batch_size?"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "data",
    [
        {"train": {"batch_size": 4, "per_device_train_batch_size": 4}},
        {"per_device_train_batch_size": 4, "train": {"batch_size": 8}},
        {"bf16": True, "fp16": True},
        {"bf16": True, "model": {"dtype": "float32"}},
        {"max_length": 128, "max_seq_length": 256},
    ],
)
def test_two_names_of_one_setting_are_refused(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"is given twice, as .* and .*; keep one of them"):
        LabConfig.load(path)
    with pytest.raises(ConfigError, match="train.batch_size is given twice"):
        LabConfig().override({"train.batch_size": "4", "per_device_train_batch_size": "8"})


def test_a_false_precision_flag_leaves_the_dtype_alone_and_completion_only_loss_true_is_plw_0(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("completion_only_loss: true\ntrain:\n  completion_loss_weight: 0.5\n")
    assert LabConfig.load(path).train.prompt_loss_weight == 0.0
    path.write_text("completion_only_loss: true\nprompt_loss_weight: 0.1\n")
    with pytest.raises(ConfigError, match="train.prompt_loss_weight is given twice"):
        LabConfig.load(path)
    path.write_text("bf16: false\nfp16: false\n")
    assert LabConfig.load(path).model.dtype == "auto"
    path.write_text("fp16: false\nmodel:\n  dtype: float32\n")
    assert LabConfig.load(path).model.dtype == "float32"


def test_a_saved_config_keeps_the_labs_own_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("per_device_train_batch_size: 4\nlora_alpha: 32\n")
    saved = LabConfig.load(path).save(tmp_path / "saved.yaml")
    data = yaml.safe_load(saved.read_text())
    assert data["train"]["batch_size"] == 4 and data["lora"]["alpha"] == 32 and set(data) == set(_SECTIONS)
