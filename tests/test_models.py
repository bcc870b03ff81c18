"""Model loading: the embedded default works offline and answers; hub ids fail clearly offline."""

import pytest
import torch

from plw_lab.core.config import LoraConfig, ModelConfig
from plw_lab.core.evaluation import generate_texts
from plw_lab.core.masks import render
from plw_lab.core.models import ModelError, attach_lora, load, load_model, pick_dtype


@pytest.mark.slow
def test_embedded_model_loads_from_its_cache_and_knows_the_capital_of_france():
    loaded = load(ModelConfig())  # converts the GGUF on first use, then reads the safetensors cache
    prompt = render(
        loaded.tokenizer, [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    answer = generate_texts(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=12)[0]
    assert "Paris" in answer


def test_unknown_hub_model_offline_gets_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelError, match="Without internet access only 'embedded', 'tiny-random' and local folders work"
    ):
        load_model(ModelConfig(name="someone/no-such-model-here"))


def test_missing_local_folder_is_named():
    with pytest.raises(ModelError, match="looks like a folder but does not exist"):
        load_model(ModelConfig(name="./no/such/folder"))


def test_lora_on_top_layers_only_trains_those(tiny_model):
    model = attach_lora(tiny_model, LoraConfig(layers="top:1", target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n for n in trainable)


def test_cpu_defaults_to_float32():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_the_chat_template_can_be_replaced_and_masks_follow_it():
    from plw_lab.core.data import Example
    from plw_lab.core.masks import encode
    from plw_lab.core.models import load_tokenizer

    chat = [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four"}]
    own = load_tokenizer(ModelConfig(name="tiny-random"))
    assert "<|im_start|>assistant" in render(own, chat)
    plain = load_tokenizer(ModelConfig(name="tiny-random", chat_template="plain"))
    assert render(plain, chat) == f"Two plus two?\nFour{plain.eos_token}\n"
    custom = load_tokenizer(
        ModelConfig(
            name="tiny-random", chat_template="{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        )
    )
    assert render(custom, chat) == "user: Two plus two?\nassistant: Four\n"
    enc = encode(plain, Example(chat, source_index=0), 64)
    trained = plain.decode([t for t, m in zip(enc.input_ids, enc.completion_mask) if m])
    assert trained == f"Four{plain.eos_token}"


# -- a damaged model folder -------------------------------------------------------------------------


def _cut_to_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weights(path):
    from safetensors.torch import load_file, save_file

    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(path).items()}, path, {"format": "pt"})


#: Each way a model folder was found damaged: the file, what was done to it, what the refusal names.
DAMAGE = {
    "weights cut to half": ("model.safetensors", _cut_to_half, "model.safetensors is damaged"),
    "weights cut to 8 bytes": ("model.safetensors", lambda p: p.write_bytes(b"\x10" * 8), "model.safetensors is"),
    "weights overwritten": ("model.safetensors", lambda p: p.write_bytes(b"not weights" * 99), "model.safetensors"),
    "weights all NaN": ("model.safetensors", _nan_weights, "model.safetensors are not finite"),
    "tokenizer.json cut short": ("tokenizer.json", lambda p: p.write_text(p.read_text()[:1000]), "tokenizer.json"),
    "tokenizer_config.json empty": ("tokenizer_config.json", lambda p: p.write_text(""), "tokenizer_config.json"),
}


@pytest.fixture
def lab_home(tmp_path, monkeypatch):
    """A lab home of its own holding the embedded tokenizer (converting it again takes seconds)."""
    import shutil

    from plw_lab.core.models import embedded_tokenizer_dir

    home = tmp_path / "home"
    shutil.copytree(embedded_tokenizer_dir(), home / "tokenizers" / "SmolLM2-135M-Instruct")
    monkeypatch.setenv("PLW_LAB_HOME", str(home))
    return home


@pytest.mark.parametrize("damage", DAMAGE)
def test_the_labs_own_damaged_cache_is_built_again(lab_home, damage):
    from plw_lab.core.models import load_tokenizer, non_finite_parameter, tiny_model_dir

    name, harm, _ = DAMAGE[damage]
    folder = tiny_model_dir()
    harm(folder / name)
    cfg = ModelConfig(name="tiny-random")
    assert len(load_tokenizer(cfg)) > 1000
    assert non_finite_parameter(load_model(cfg)) == ""
    assert tiny_model_dir() == folder and (folder / "plw_lab_cache.json").exists()


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_model_folder_is_refused_naming_the_file(tmp_path, capsys, damage):
    import shutil

    from plw_lab.cli import main
    from plw_lab.core.models import tiny_model_dir

    name, harm, said = DAMAGE[damage]
    folder = tmp_path / "mine"
    shutil.copytree(tiny_model_dir(), folder, ignore=shutil.ignore_patterns("plw_lab_cache.json"))
    harm(folder / name)
    runs = tmp_path / "runs"
    assert main(["train", "--model", str(folder), "--output-dir", str(runs), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert f"{folder / name}" in line and said in line and "Traceback" not in err, err
    assert not runs.exists()


def test_a_lab_home_that_is_a_file_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("PLW_LAB_HOME", str(home))
    with pytest.raises(ModelError, match=f"PLW_LAB_HOME \\({home}\\) is a file, not a folder"):
        load_model(ModelConfig(name="tiny-random"))


def test_an_hf_model_name_never_loads_a_folder_of_that_name(tmp_path, monkeypatch):
    import shutil

    from plw_lab.core.models import base_model_id, tiny_model_dir

    shutil.copytree(tiny_model_dir(), tmp_path / "someone" / "model")  # a loadable model, shadowing the id
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="Could not load model 'hf:someone/model': it is not in the local cache"):
        load_model(ModelConfig(name="hf:someone/model"))
    assert base_model_id("hf:someone/model") == "someone/model"
