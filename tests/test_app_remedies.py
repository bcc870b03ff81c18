"""The remedies in the app, driven through its handlers without a browser: the settings are controls,
a visitor may mix only built-in sets and hub datasets, and the Compare tab runs the frozen-feature probe."""

import json

import pytest

from lab.app import build_app
from lab.config import ConfigError, LabConfig
from lab.training import train

from conftest import mc_records

CFG = {"model.name": "tiny-random", "train.batch_size": 4, "train.max_steps": 1, "train.eval_interval": 100,
       "lora.layers": "all", "eval.generations": 0, "eval.probe_texts": 0}


@pytest.fixture
def app(tmp_path):
    return build_app(LabConfig().override(CFG), runs_dir=tmp_path / "runs")


def test_remedy_settings_are_controls_and_data_mix_is_typed_as_json(app):
    shared = app.plw_tabs["train"].shared
    for key in ("train.kl_weight", "train.l2_to_base", "train.completion_loss_weight", "train.class_weighted_loss",
                "data.mix", "data.mix_temperature", "data.replay", "data.balance", "eval.kl_to_base"):
        assert key in shared.settings, key
    assert shared.settings["data.mix"].value == "{}"


def _values(app, mix: str) -> dict:
    train = app.plw_tabs["train"]
    shared = train.shared
    values = {control: control.value for control in shared.settings.values()}
    values[shared.plw] = 0.0
    values[shared.settings["data.mix"]] = mix
    return values


def test_a_visitor_mixes_built_in_sets_but_never_a_server_file(app):
    train = app.plw_tabs["train"]
    cfg = train.build_config(_values(app, '{"builtin:bbb": 2}'))
    assert cfg.data.mix == {"builtin:bbb": 2}
    with pytest.raises(ConfigError, match="neither a built-in set"):
        train.build_config(_values(app, '{"/etc/passwd.jsonl": 1}'))
    with pytest.raises(ConfigError, match="not valid JSON"):
        train.build_config(_values(app, "{builtin:bbb: 2"))


def test_the_compare_tab_runs_the_frozen_feature_probe(app, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in mc_records(24)))
    cfg = LabConfig().override({**CFG, "data.source": str(data), "train.output_dir": str(tmp_path / "runs"), "train.run_name": "mc"})
    assert train(cfg).status == "finished"
    compare = app.plw_tabs["compare"]
    out = compare.on_probe({compare.run: "mc"}, progress_=lambda *a, **k: None)
    table = out[compare.probe_table]["value"]  # the table is hidden until it has rows
    assert out[compare.probe_table]["visible"] is True
    assert list(table["model"])[:2] == ["frozen base + logistic regression, mean-pooled prompt",
                                        "frozen base + logistic regression, last prompt token"]
    assert "adapter on (fine-tuned)" in list(table["model"])
    assert all("[" in cell for cell in table["val answer accuracy"])  # every accuracy with its interval
    message = compare.on_probe({compare.run: "../.."}, progress_=lambda *a, **k: None)[compare.msg]
    assert "no run named" in message
