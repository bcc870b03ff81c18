"""The frozen-feature probe: logistic regression on the base model's hidden states."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import mc_records

from plw_lab.core.data import DataError, Example


def _val_item(answer: str) -> SimpleNamespace:
    return SimpleNamespace(
        example=Example(
            [], choices=("A", "B"), answer_index="AB".index(answer), meta={"label": {"A": "yes", "B": "no"}[answer]}
        )
    )


def test_the_probe_separates_a_linearly_separable_toy_set():
    from plw_lab.core.probe import fit_and_score

    rng = np.random.default_rng(0)
    # Class A where x0 + x1 > 0, with a margin; the other 6 dimensions are noise.
    points = rng.normal(size=(160, 8))
    points = points[np.abs(points[:, 0] + points[:, 1]) > 0.5][:120]
    labels = ["A" if x[0] + x[1] > 0 else "B" for x in points]
    train_x, train_y, val_x, val_y = points[:80], labels[:80], points[80:], labels[80:]
    result = fit_and_score(train_x, train_y, val_x, [_val_item(y) for y in val_y])
    n = len(val_y)
    assert result["answer_accuracy"] == 1.0
    low, high = result["answer_accuracy_ci"]
    # Wilson interval of n out of n: low = n / (n + z^2).
    assert low == pytest.approx(n / (n + 1.959964**2), rel=1e-4) and high == pytest.approx(1.0)
    assert result["balanced_accuracy"] == 1.0 and result["auc"] == 1.0
    assert [ex["predicted"] for ex in result["examples"]] == val_y


def test_noise_features_score_near_chance_not_perfect():
    from plw_lab.core.probe import fit_and_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    y = ["A" if v > 0.5 else "B" for v in rng.random(200)]
    result = fit_and_score(x[:100], y[:100], x[100:], [_val_item(v) for v in y[100:]])
    assert 0.3 < result["answer_accuracy"] < 0.75


def test_one_answer_in_training_is_refused():
    from plw_lab.core.probe import fit_and_score

    with pytest.raises(DataError, match="two different answers"):
        fit_and_score(np.zeros((3, 2)), ["A"] * 3, np.zeros((1, 2)), [_val_item("A")])


def test_probe_features_of_a_real_model_and_split(tokenizer, tiny_model):
    from plw_lab.core.config import DataConfig, LabConfig
    from plw_lab.core.data import to_examples
    from plw_lab.core.masks import encode_all
    from plw_lab.core.models import attach_lora
    from plw_lab.core.probe import frozen_feature_probe, prompt_features

    encoded, _ = encode_all(tokenizer, to_examples(mc_records(20), DataConfig()), 128)
    model = attach_lora(tiny_model, LabConfig().lora)
    features = prompt_features(model, encoded[:5], tokenizer.pad_token_id, batch_size=2)
    hidden = tiny_model.config.hidden_size
    assert features["mean"].shape == (5, hidden) and features["last"].shape == (5, hidden)
    one = prompt_features(model, encoded[:1], tokenizer.pad_token_id)
    np.testing.assert_allclose(one["last"][0], features["last"][0], rtol=1e-4, atol=1e-5)  # padding changes nothing
    assert len(encoded) >= 16  # exact duplicates among the generated records are dropped on reading
    result = frozen_feature_probe(model, encoded[:14], encoded[14:], tokenizer.pad_token_id)
    assert result["n_train"] == 14 and result["n_val"] == len(encoded) - 14
    for pooling in ("mean", "last"):
        assert 0 <= result[pooling]["answer_accuracy"] <= 1 and len(result[pooling]["answer_accuracy_ci"]) == 2
    with pytest.raises(DataError, match="multiple-choice or classification"):
        from conftest import sum_examples

        free, _ = encode_all(tokenizer, sum_examples(4), 64)
        frozen_feature_probe(model, free, free, tokenizer.pad_token_id)


def test_cli_probe_prints_the_probe_beside_the_adapter(tmp_path, capsys, monkeypatch):
    from plw_lab.cli import main

    data = tmp_path / "mc.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in mc_records(24)))
    code = main(
        [
            "train",
            "--model",
            "tiny-random",
            "--data",
            str(data),
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "runs"),
            "--set",
            "train.run_name=p",
            "--set",
            "train.batch_size=4",
            "--set",
            "eval.generations=1",
            "--set",
            "eval.probe_texts=1",
        ]
    )
    assert code == 0, capsys.readouterr().out
    capsys.readouterr()
    with monkeypatch.context() as without:
        without.setitem(sys.modules, "sklearn", None)  # as where the [probe] extra is not installed
        assert main(["probe", str(tmp_path / "runs" / "p")]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == (
            'error: the frozen-feature probe needs sklearn, which is not installed here: pip install "plw-lab[probe]"'
        )
    assert main(["probe", str(tmp_path / "runs" / "p")]) == 0
    out = capsys.readouterr().out
    assert "mean-pooled prompt" in out and "last prompt token" in out and "adapter on (fine-tuned)" in out
    assert "val answer accuracy" in out and "[" in out  # accuracy with its interval
    saved = json.loads((tmp_path / "runs" / "p" / "probe.json").read_text())
    assert saved["n_val"] > 0 and "answer_accuracy" in saved["mean"]
    assert main(["probe", str(tmp_path / "nowhere")]) == 2
