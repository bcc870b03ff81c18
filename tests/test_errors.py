"""Bad input ends the CLI with exit code 2 and one message that names the setting and the fix.

Every case goes through `plw_lab.cli.main` as a user would meet it, and checks that no traceback
reaches the terminal.
"""

import json
import time

import pytest

from plw_lab.cli import main
from plw_lab.core import advice
from plw_lab.core.config import ConfigError, LabConfig


def fails_cleanly(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("error:") == 1
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    "setting, fragments",
    [
        ("train.max_steps=inf", ("train.max_steps must be a finite whole number",)),
        ("data.val_size=inf", ("data.val_size must be a finite number",)),
        ("train.epochs=inf", ("train.epochs must be a finite number",)),
        ("train.seed=-1", ("train.seed must be at least 0",)),
        (f"train.seed={2**32}", ("train.seed must be at most 4294967295",)),
        ("train.batch_size=1.9", ("train.batch_size must be a whole number; got 1.9",)),
        ("data.mc_template={bogus} {options}", ("data.mc_template names {bogus}", "{context}, {question}, {options}")),
        (
            "data.classification_template={text} {labels}",
            ("data.classification_template names {labels}", "{text}, {options}"),
        ),
        ("data.answer_format=({answer})", ("data.answer_format names {answer}", "it may use {letter}")),
        ("data.answer_format={letter", ("data.answer_format: not a valid template",)),
        ("data.on_error=ignore", ("data.on_error must be one of fail, skip",)),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(capsys, setting, fragments):
    fails_cleanly(capsys, ["config", "--set", setting], *fragments)


def test_a_whole_float_is_read_as_an_int_but_a_fraction_is_refused():
    assert LabConfig().override({"train.batch_size": "8.0"}).train.batch_size == 8
    assert LabConfig().override({"train.batch_size": 4.0}).train.batch_size == 4
    with pytest.raises(ConfigError, match="whole number"):
        LabConfig().override({"train.batch_size": 1.9})


def test_a_negative_learning_rate_parses_and_the_range_check_answers(capsys):
    fails_cleanly(capsys, ["config", "--lr", "-1e-3"], "train.learning_rate must be at least 0.0; got -0.001")
    assert main(["config", "--lr", "1e-4", "--plw", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 0.0001" in out and "prompt_loss_weight: 0.5" in out


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("train:\n  prompt_loss_weight: [0.1\n", ("invalid YAML at line",)),
        ("- train\n- data\n", ("must be a mapping of sections", "got list")),
        ("train: 0.1\n", ("config section 'train' must be a mapping", "got float")),
        ("train:\n  max_steps: .inf\n", ("train.max_steps must be a finite whole number",)),
        ("train:\n  epochs: .inf\n", ("train.epochs must be a finite number",)),
        ("train:\n  batch_size: 1.9\n", ("train.batch_size must be a whole number",)),
        ("train:\n  learning_rate: abc\n", ("train.learning_rate: cannot read 'abc' as a number",)),
    ],
)
def test_bad_config_files_exit_2_naming_the_file(tmp_path, capsys, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    fails_cleanly(capsys, ["config", "--config", str(path)], repr(str(path)), *fragments)


def test_unquoted_exponent_and_whole_floats_in_yaml_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n  batch_size: 4.0\n  max_steps: 1e2\n")
    cfg = LabConfig.load(path)
    assert cfg.train.max_steps == 100
    assert cfg.train.learning_rate == 0.001 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.batch_size == 4 and isinstance(cfg.train.batch_size, int)


def test_missing_or_folder_or_bad_json_config(tmp_path, capsys):
    fails_cleanly(capsys, ["config", "--config", str(tmp_path / "nope.yaml")], "does not exist", "lab config > my.yaml")
    fails_cleanly(capsys, ["config", "--config", str(tmp_path)], "is a folder, not a YAML or JSON file")
    bad = tmp_path / "c.json"
    bad.write_text('{"train": {"max_steps": Infinity}}')
    fails_cleanly(capsys, ["config", "--config", str(bad)], "train.max_steps must be a finite whole number")
    bad.write_text('{"train": ')
    fails_cleanly(capsys, ["config", "--config", str(bad)], "invalid JSON at line 1")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Say {i}", "completion": f"{i} " * 30}) for i in range(6)))
    return path


def test_output_dir_that_is_a_file(tmp_path, data_file, capsys):
    taken = tmp_path / "runs"
    taken.write_text("not a folder")
    fails_cleanly(
        capsys,
        ["train", "--model", "tiny-random", "--data", str(data_file), "--output-dir", str(taken)],
        "train.output_dir",
        "is a file, not a folder",
    )


def test_inspect_when_nothing_fits(data_file, capsys):
    fails_cleanly(
        capsys,
        ["inspect", "--model", "tiny-random", "--data", str(data_file), "--set", "data.max_length=16"],
        "data.max_length 16 is too small for the template head plus the answer: "
        "the smallest value that keeps every example is",
        "raise data.max_length or set it to 0 (auto)",
    )


def test_a_folder_that_is_not_a_model(tmp_path, data_file, capsys):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    fails_cleanly(
        capsys,
        ["inspect", "--model", str(folder), "--data", str(data_file)],
        "is a folder without config.json",
        "LoRA adapter",
    )


def test_an_unknown_hub_model_offline_fails_at_once(data_file, capsys, monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1
    fails_cleanly(
        capsys,
        ["inspect", "--model", "someone/no-such-model", "--data", str(data_file)],
        "it is not in the local cache and HF_HUB_OFFLINE is set",
    )
    # With the variable unset and no network, the hub client would retry for most of a minute.
    from huggingface_hub import constants

    import plw_lab.core.models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(plw_lab.core.models, "_hub_reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    fails_cleanly(
        capsys, ["inspect", "--model", "someone/no-such-model", "--data", str(data_file)], "cannot be reached"
    )
    assert time.perf_counter() - started < 20


def test_zero_learning_rate_and_zero_epochs_get_advice():
    cfg = LabConfig().override({"train.learning_rate": 0, "train.max_steps": 0, "train.epochs": 0})
    notes = advice.before_training(cfg, n_train=100, total_steps=1)
    assert any("learning_rate is 0" in n for n in notes)
    assert any("train.epochs and train.max_steps are both 0" in n for n in notes)
    assert not any("is 0" in n or "both 0" in n for n in advice.before_training(LabConfig(), 100, 40))


def test_train_refuses_bad_data_and_models_before_a_run_folder_exists(tmp_path, data_file, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": null, "completion": "c"}\n')
    runs = tmp_path / "runs"
    fails_cleanly(
        capsys,
        ["train", "--model", "tiny-random", "--data", str(bad), "--output-dir", str(runs)],
        f"{bad}: record 1: field(s) prompt empty (null",
    )
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    fails_cleanly(
        capsys,
        ["train", "--model", str(not_a_model), "--data", str(data_file), "--output-dir", str(runs)],
        "is a folder without config.json",
    )
    assert not runs.exists()
