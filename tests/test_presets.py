"""Model presets: what the picker offers, their sizes, and the message a gated model gets without a token."""

import httpx
import pytest

from plw_lab.cli import main
from plw_lab.core.config import LabConfig, ModelConfig
from plw_lab.core.models import ModelError, load_model, load_tokenizer
from plw_lab.core.presets import EMBEDDED_PRESET, PRESETS, find_preset


def _gated_error(repo: str) -> OSError:
    from huggingface_hub.errors import GatedRepoError

    response = httpx.Response(
        403, request=httpx.Request("GET", f"https://huggingface.co/{repo}/resolve/main/config.json")
    )
    cause = GatedRepoError(f"Cannot access gated repo for url https://huggingface.co/{repo}.", response=response)
    # transformers wraps the hub's error in an OSError, as its `cached_file` does.
    wrapped = OSError(
        f"You are trying to access a gated repo.\nMake sure to have access to it at https://huggingface.co/{repo}."
    )
    wrapped.__cause__ = cause
    return wrapped


@pytest.mark.parametrize("loader,target", [(load_model, "AutoModelForCausalLM"), (load_tokenizer, "AutoTokenizer")])
def test_a_gated_model_without_a_token_says_to_set_hf_token(monkeypatch, loader, target):
    import transformers

    repo = "meta-llama/Llama-3.2-1B-Instruct"

    def refuse(*args, **kwargs):
        raise _gated_error(repo)

    monkeypatch.setattr(getattr(transformers, target), "from_pretrained", refuse)
    monkeypatch.setattr(
        "plw_lab.core.models._hub_options", lambda name, path: {}
    )  # as if online: the hub answers "gated"
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ModelError) as info:
        loader(ModelConfig(name=repo, device="cpu")) if loader is load_model else loader(ModelConfig(name=repo))
    message = str(info.value)
    assert message.startswith(f"{repo} is a gated model on the Hugging Face hub and no token is set")
    assert f"https://huggingface.co/{repo}" in message and "HF_TOKEN" in message


def test_a_gated_model_with_a_token_without_access_says_so(monkeypatch):
    import transformers

    repo = "google/gemma-3-1b-it"
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(_gated_error(repo))
    )
    monkeypatch.setattr("plw_lab.core.models._hub_options", lambda name, path: {})
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_token_without_access")
    with pytest.raises(ModelError, match="the token in use has no access yet: accept its licence"):
        load_tokenizer(ModelConfig(name=repo))


def test_presets_are_found_by_id_short_name_and_embedded():
    assert (
        find_preset("embedded") is EMBEDDED_PRESET and EMBEDDED_PRESET.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert find_preset("Qwen3-0.6B").hub_id == "Qwen/Qwen3-0.6B"
    assert find_preset("someone/else") is None
    assert {p.short_name for p in PRESETS if p.gated} == {"Llama-3.2-1B-Instruct", "gemma-3-1b-it"}


def test_the_model_picker_offers_every_preset_with_its_size():
    from plw_lab.app.common import MODEL_CHOICES

    values = [value for _, value in MODEL_CHOICES]
    assert values[:2] == ["embedded", "tiny-random"]
    assert values[2:] == [p.hub_id for p in PRESETS]
    labels = dict((value, label) for label, value in MODEL_CHOICES)
    assert labels["Qwen/Qwen2.5-0.5B-Instruct"].startswith("Qwen/Qwen2.5-0.5B-Instruct (494M, ~")
    assert labels["google/gemma-3-1b-it"].endswith("on a GPU, gated: needs HF_TOKEN)")


def test_lab_memory_prints_the_estimate_and_the_presets(capsys):
    assert main(["memory", "--presets", "--device", "cuda", "--set", "train.batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Memory estimate (cuda, bfloat16): about ")
    assert "4,096 tokens a micro-batch" in out  # batch 4 x max_length 1,024 (auto: at most data.max_length_cap)
    rows = {line.split()[0]: line for line in out.splitlines() if "/" in line.split(" ")[0]}
    assert set(rows) == {p.hub_id for p in PRESETS}
    assert (
        "1.2B" in rows["meta-llama/Llama-3.2-1B-Instruct"]
        and "gated: needs HF_TOKEN" in rows["meta-llama/Llama-3.2-1B-Instruct"]
    )


def test_lab_train_prints_the_estimate_before_training(tmp_path, capsys):
    from plw_lab.core.memory import describe

    cfg = [
        "--model",
        "tiny-random",
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path),
        "--set",
        "data.limit=16",
        "--set",
        "eval.generations=0",
        "--set",
        "eval.probe_texts=0",
    ]
    assert main(["train", *cfg]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    expected = describe(LabConfig().override({"model.name": "tiny-random", "train.max_steps": 1, "data.limit": 16}))
    assert first == expected and first.startswith("Memory estimate (cpu, float32)")


def test_a_local_folder_given_by_its_absolute_path_loads(tiny_dir):
    # The folder's path is the name as written: it must not be mistaken for a hub id.
    model = load_model(ModelConfig(name=str(tiny_dir), device="cpu"))
    assert load_tokenizer(ModelConfig(name=str(tiny_dir))).pad_token is not None and model.config.num_hidden_layers == 2


@pytest.mark.parametrize("token", [None, "hf_test"])
def test_the_app_shows_the_estimate_the_weights_and_push_only_with_a_token(tmp_path, monkeypatch, token):
    import plw_lab.app.runs
    from plw_lab.app.main import build_app
    from plw_lab.core.memory import describe
    from plw_lab.core.models import weights_note

    monkeypatch.setattr(plw_lab.app.runs, "hub_token", lambda: token)
    cfg = LabConfig().override({"model.name": "tiny-random"})
    demo = build_app(cfg, runs_dir=tmp_path)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert by_id["memory-estimate"].value == describe(cfg) and by_id["memory-estimate"].value.startswith(
        "Memory estimate ("
    )
    assert by_id["push-btn"].parent.visible is (token is not None)
    header = next(
        b.value for b in demo.blocks.values() if type(b).__name__ == "Markdown" and "Starting model" in str(b.value)
    )
    assert f"Starting model: {weights_note('tiny-random')}." in header
