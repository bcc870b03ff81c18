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
