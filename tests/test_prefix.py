"""The frozen-layer cache changes nothing but the work done."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lab.config import LoraConfig, layer_indices
from lab.forward import final_hidden
from lab.models import attach_lora
from lab.prefix import FrozenPrefix


def _model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return attach_lora(LlamaForCausalLM(config), LoraConfig(layers="top:2", target_modules=["q_proj", "v_proj"]))


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 1000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    mask[2, 5:] = 0
    return ids, mask


def test_cached_forward_equals_the_full_forward_and_its_gradients(tokenizer):
    model = _model(tokenizer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    prefix = FrozenPrefix.for_model(model, layer_indices("top:2", 4))
    assert prefix is not None and prefix.first_adapted == 2
    ids, mask = _batch()
    real = mask.bool()
    full = final_hidden(model, ids, mask)
    full[real].square().sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    for _ in range(2):  # the first call fills the cache, the second reads it
        cached = final_hidden(model, ids, mask, prefix=prefix)
        torch.testing.assert_close(cached[real], full[real], rtol=1e-5, atol=1e-5)
    assert prefix.misses == 3 and prefix.hits == 3
    cached[real].square().sum().backward()
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_a_cache_hit_never_runs_the_lower_layers(tokenizer):
    model = _model(tokenizer)
    prefix = FrozenPrefix.for_model(model, [2, 3])
    calls = []
    layer0 = model.get_base_model().model.layers[0]
    layer0.register_forward_hook(lambda *a: calls.append(1))
    ids, mask = _batch()
    final_hidden(model, ids, mask, prefix=prefix)
    final_hidden(model, ids[[1, 0]], mask[[1, 0]], prefix=prefix)  # another batch of the same examples
    assert len(calls) == 1


def test_no_cache_when_every_layer_is_adapted_or_the_architecture_is_unknown(tokenizer, tiny_model):
    assert FrozenPrefix.for_model(tiny_model, None) is None
    assert FrozenPrefix.for_model(tiny_model, [0, 1]) is None
    tiny_model.config.model_type = "gemma"  # scales embeddings inside its forward
    assert FrozenPrefix.for_model(tiny_model, [1]) is None
