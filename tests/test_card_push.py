"""Adapters people can share: the model card written with every adapter, the base model's hub id in
adapter_config.json, the folder `lab push` uploads, and its errors offline or without a token."""

import json

import pytest
import yaml

from plw_lab import __version__
from plw_lab.cli import main
from plw_lab.core.card import CONFIG_NAME, ShareError, push, stage_upload, write
from plw_lab.core.config import LabConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from plw_lab.core.training import train

    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "data.limit": 30,
            "train.max_steps": 2,
            "train.eval_interval": 1,
            "train.output_dir": str(tmp_path_factory.mktemp("runs")),
            "train.run_name": "shared",
            "eval.generations": 0,
            "eval.probe_texts": 0,
            "train.prompt_loss_weight": 0.1,
        }
    )
    result = train(cfg)
    assert result.status == "finished", result.summary
    return result.run_dir


def test_every_adapter_folder_has_a_card_and_names_its_base_model(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in ("adapter", "best_adapter", "last_adapter"):
        adapter_config = json.loads((run_dir / name / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == "tiny-random"  # not the cache folder it was loaded from
        card = (run_dir / name / "README.md").read_text()
        assert card.startswith("---\nbase_model: tiny-random\nlibrary_name: peft\n")
        assert "prompt-loss weight (PLW): 0.1, normalised by `sum_weights`" in card
        assert (
            "- data: `builtin:reading-mc`: " in card
            and f"{summary['n_train']} training and {summary['n_val']} validation examples" in card
        )
        # The layers peft resolved 'all-linear' to on this (llama) model, not the setting's word.
        modules = "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
        assert f"- LoRA: r 8, alpha 16, dropout 0, modules {modules}, layers `top:8`" in card
        assert f"Trained with PLW Lab {__version__}:" in card and __version__[0].isdigit()
    kept = summary["adapter_step"]
    final = (run_dir / "adapter" / "README.md").read_text()
    assert f"- steps: 2; this folder keeps step {kept}: " in final
    assert (
        "- steps: 2; this folder keeps step 2: the last optimiser step"
        in (run_dir / "last_adapter" / "README.md").read_text()
    )
    # The validation table: base model and kept step, each accuracy with its Wilson interval, from the registry.
    from plw_lab.core.metrics import METRICS

    evals = {
        json.loads(line)["step"]: json.loads(line)["metrics"]
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "eval"
    }
    accuracy = METRICS["answer_accuracy"]
    row = (
        f"| val answer accuracy | {accuracy.format_with_interval(evals[0])} "
        f"| {accuracy.format_with_interval(evals[kept])} |"
    )
    assert row in final and "% [" in row  # "62.5% [48.3–74.8%]"
    assert (
        f"| val completion loss | {evals[0]['completion_loss']:.4f} | {evals[kept]['completion_loss']:.4f} |" in final
    )
    stopping = METRICS[summary["early_stopping_metric"]]
    if kept == 2:
        assert f"this folder keeps step 2: the last step, which is also the best {stopping.label}\n" in final
    else:
        best = summary["best"][stopping.name]["value"]
        assert (
            f"this folder keeps step {kept}: the best {stopping.label} of the evaluations ({stopping.format(best)})"
            in final
        )


def test_the_embedded_model_is_named_by_its_hub_id_with_the_gguf_note(tmp_path, tiny_model):
    from plw_lab.core.config import LoraConfig
    from plw_lab.core.models import attach_lora

    folder = tmp_path / "adapter"
    attach_lora(tiny_model, LoraConfig(layers="all")).save_pretrained(folder)
    write(folder, LabConfig(), "adapter", 0, 0, "answer_loss", None, [], 10, 2)
    assert (
        json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    card = (folder / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "trained this adapter on the weights dequantised from the Q4_1 GGUF" in card
    assert "No evaluation of this step was recorded." in card


def test_the_upload_folder_holds_adapter_card_and_config(run_dir, tmp_path):
    staged = stage_upload(run_dir, tmp_path / "up")
    names = {p.name for p in staged.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", CONFIG_NAME} <= names
    assert (staged / "README.md").read_text() == (run_dir / "adapter" / "README.md").read_text()
    assert LabConfig.load(staged / CONFIG_NAME) == LabConfig.load(run_dir / "config.yaml")


def test_a_run_from_before_cards_gets_one_when_staged(run_dir, tmp_path):
    import shutil

    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    for name in ("adapter", "best_adapter", "last_adapter"):
        (old / name / "README.md").unlink()
    staged = stage_upload(old, tmp_path / "up")
    assert (staged / "README.md").read_text() == (run_dir / "adapter" / "README.md").read_text()


def test_push_uploads_the_staged_folder(run_dir, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            from pathlib import Path

            calls.append(
                ("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs["commit_message"])
            )

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert push(run_dir, "someone/tiny-plw", token="hf_test") == "https://huggingface.co/someone/tiny-plw"
    assert calls[0] == ("token", "hf_test")
    assert calls[1] == ("create", "someone/tiny-plw", {"repo_type": "model", "private": False, "exist_ok": True})
    assert calls[2][:2] == ("upload", "someone/tiny-plw") and calls[2][3] == "PLW Lab run shared"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", CONFIG_NAME} <= set(calls[2][2])


def test_push_offline_or_without_a_token_fails_clearly_with_exit_2(run_dir, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", str(run_dir), "--repo", "someone/tiny-plw"]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err
    # With a token but offline (the tests run with HF_HUB_OFFLINE=1): the hub's reason and what pushing needs.
    with pytest.raises(
        ShareError, match="could not push to someone/tiny-plw: .*offline mode is enabled.*needs internet access"
    ):
        push(run_dir, "someone/tiny-plw", token="hf_test")


def test_the_card_header_is_valid_yaml(run_dir):
    header = yaml.safe_load((run_dir / "adapter" / "README.md").read_text().split("---\n")[1])
    assert header == {
        "base_model": "tiny-random",
        "library_name": "peft",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "sft", "prompt-loss-weight", "plw-lab"],
    }


def test_the_card_header_parses_whatever_the_paths(tmp_path):
    from huggingface_hub import ModelCard

    from plw_lab.core.card import render

    odd = tmp_path / "model: v2 #1 'quoted' \"double\" - [x]"
    odd.mkdir()
    cfg = LabConfig().override({"model.name": str(odd), "data.source": "hf:someone/data: set"})
    card = render(cfg, "adapter", 2, 2, "answer_loss", 1.5, [], 10, 2)
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("\n---\n")[0].removeprefix("---\n"))
    assert header["base_model"] == str(odd)
    assert header["datasets"] == ["someone/data: set"]
    # A base model whose licence the lab does not know: the adapter's follows it, and the card says so.
    assert (header["license"], header["license_name"]) == ("other", "base-model-license")
    assert ModelCard(card).data.base_model == str(odd)  # the hub's own reader agrees
    hub = render(
        LabConfig().override({"model.name": "Qwen/Qwen2.5-0.5B-Instruct"}), "adapter", 1, 1, "none", None, [], 1, 1
    )
    assert ModelCard(hub).data.license_link == "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct"
    assert ModelCard(render(LabConfig(), "adapter", 1, 1, "none", None, [], 1, 1)).data.license == "apache-2.0"


def test_a_card_keeping_an_earlier_step_says_both(tmp_path, monkeypatch):
    from plw_lab.core import training
    from plw_lab.core.metrics import METRICS, metric

    class FirstIsBest:
        """The stopping metric as if no evaluation after step 0 improved on it."""

        def __init__(self, name):
            self.real = metric(name)

        def better(self, new, old):
            return old is None

    monkeypatch.setattr(training, "metric", FirstIsBest)
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "data.limit": 24,
            "train.max_steps": 2,
            "train.eval_interval": 1,
            "train.output_dir": str(tmp_path),
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    result = training.train(cfg, compare=False)
    summary = result.summary
    assert (summary["steps"], summary["adapter_step"]) == (2, 0)
    stopping = METRICS[summary["early_stopping_metric"]]
    best = stopping.format(summary["first_eval"][stopping.name])  # the kept step's value
    card = (result.run_dir / "adapter" / "README.md").read_text()
    assert (
        f"- steps: 2; this folder keeps step 0: the best {stopping.label} of the evaluations ({best}); step 0 is the "
        "base model before any training, so this adapter changes nothing\n" in card
    )
    assert "| metric | base model (step 0) | this adapter (step 0) |" in card
    assert (
        "- steps: 2; this folder keeps step 2: the last optimiser step"
        in (result.run_dir / "last_adapter" / "README.md").read_text()
    )
