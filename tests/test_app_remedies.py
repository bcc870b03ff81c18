"""The remedies in the app, driven through its handlers without a browser: the settings are controls,
a visitor may mix only built-in sets and hub datasets, and the Compare tab runs the frozen-feature probe."""

import json

import pytest
from conftest import mc_records

from plw_lab.app.main import build_app
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.training import train

CFG = {
    "model.name": "tiny-random",
    "train.batch_size": 4,
    "train.max_steps": 1,
    "train.eval_interval": 100,
    "lora.layers": "all",
    "eval.generations": 0,
    "eval.probe_texts": 0,
}


@pytest.fixture
def app(tmp_path):
    return build_app(LabConfig().override(CFG), runs_dir=tmp_path / "runs")


def test_remedy_settings_are_controls_and_data_mix_is_typed_as_json(app):
    shared = app.plw_tabs["train"].shared
    for key in (
        "train.kl_weight",
        "train.l2_to_base",
        "train.completion_loss_weight",
        "train.class_weighted_loss",
        "data.mix",
        "data.mix_temperature",
        "data.replay",
        "data.balance",
        "eval.kl_to_base",
    ):
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
    cfg = LabConfig().override(
        {**CFG, "data.source": str(data), "train.output_dir": str(tmp_path / "runs"), "train.run_name": "mc"}
    )
    assert train(cfg).status == "finished"
    compare = app.plw_tabs["compare"]
    out = compare.on_probe({compare.run: "mc"}, progress_=lambda *a, **k: None)
    table = out[compare.probe_table]["value"]  # the table is hidden until it has rows
    assert out[compare.probe_table]["visible"] is True
    assert list(table["model"])[:2] == [
        "frozen base + logistic regression, mean-pooled prompt",
        "frozen base + logistic regression, last prompt token",
    ]
    assert "adapter on (fine-tuned)" in list(table["model"])
    assert all("[" in cell for cell in table["val answer accuracy"])  # every accuracy with its interval
    message = compare.on_probe({compare.run: "../.."}, progress_=lambda *a, **k: None)[compare.msg]
    assert "no run named" in message


def test_the_data_tab_weighs_completion_tokens_by_the_train_tabs_lambda_r(app, tmp_path, monkeypatch):
    """The token view and the statistics state lambda_r beside PLW, so what the page shows is what the run trains on."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the file stands for an upload
    data = app.plw_tabs["data"]
    shared = data.shared
    path = tmp_path / "sums.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Add {i} and {i + 1}.", "completion": str(2 * i + 1)}) + "\n" for i in range(8))
    )
    loaded = data.on_load_file({c: c.value for c in data.load_inputs(data.upload)} | {data.upload: str(path)})
    values = {c: c.value for c in data.token_inputs()} | {
        shared.data_state: loaded[shared.data_state],
        shared.plw: 0.0,
        data.colour_by: "loss weight",
    }
    lam = shared.settings["train.completion_loss_weight"]
    assert lam in data.token_inputs()
    plain = data.on_plw({**values, lam: 1.0})
    halved = data.on_plw({**values, lam: 0.5})
    assert "weight = λ<sub>r</sub> = 0.5" in halved[data.token_view]
    assert "weight = λ<sub>r</sub> = 1" in plain[data.token_view]
    # At PLW 0 the completion carries all the weight whatever lambda_r; at PLW 0.5 lambda_r 0.5 halves its share's odds.
    assert "λ<sub>r</sub>" not in plain[data.stats_md] and "λ<sub>r</sub> **0.5**" in halved[data.stats_md]
    both = data.on_plw({**values, shared.plw: 0.5, lam: 0.5})[data.stats_md]
    one = data.on_plw({**values, shared.plw: 0.5, lam: 1.0})[data.stats_md]
    share = lambda text: float(text.split("the completion tokens carry **")[1].split("%")[0])  # noqa: E731
    assert share(both) < share(one)
