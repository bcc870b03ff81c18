"""The memory estimate (plw_lab/core/memory.py): hand-computed for a tiny config, exact parameter counts against
models built on the meta device, LoRA counts against peft, and the out-of-memory message of a run."""

import json

import pytest
import torch

from plw_lab.core.config import LabConfig
from plw_lab.core.memory import NF4_BYTES, Architecture, architecture, estimate
from plw_lab.core.presets import PRESETS

# hidden 8, MLP 16, 3 layers, 2 query heads and 1 key/value head of size 4, vocabulary 10, tied head.
TINY = dict(
    model_type="llama",
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=4,
    vocab_size=10,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _meta_parameter_count(spec: dict) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    return sum(p.numel() for p in model.parameters())


def tiny_config(**overrides) -> LabConfig:
    values = {
        "lora.r": 2,
        "lora.target_modules": ["q_proj", "v_proj"],
        "lora.layers": "top:2",
        "train.batch_size": 2,
        "data.max_length": 8,
        "train.chunk_size": 16,
        "model.dtype": "float32",
    }
    return LabConfig().override({**values, **overrides})


def test_the_tiny_estimate_equals_the_hand_computed_bytes():
    e = estimate(tiny_config(), Architecture.from_config(TINY), device="cpu")
    # Linear weights a layer: q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate, up, down 3 x 8x16 = 576; two norms 16.
    # 3 layers x 592 + embeddings 10x8 + final norm 8 = 1864 parameters, 4 bytes each.
    assert e.parameters == 1864 and e.weights == 1864 * 4
    # LoRA r 2 on q (8 -> 8) and v (8 -> 4) in 2 layers: 2 x (2x16 + 2x12) = 112 parameters at 16 bytes.
    assert e.lora_parameters == 112 and e.adapter == 112 * 16
    # 2 x 8 tokens through layers 1 and 2; a layer stores 4x8 + 2x8 + 2x4 + 4x16 + 2x2 = 124 values a token,
    # the final norm 2x8: 16 x (2 x 124 + 16) x 4 bytes. Checkpointed: 16 x (2 x 8 + 124 + 16) x 4.
    assert e.stored_layers == 2 and e.activations == 16 * 264 * 4 and e.activations_checkpointed == 16 * 156 * 4
    # 16 positions x vocabulary 10 x (4-byte logits + float32 copy + gradient).
    assert e.loss_chunk == 16 * 10 * 12
    assert e.total == 7456 + 1792 + 16896 + 1920


def test_quantised_weights_keep_the_rest_in_float32():
    arch = Architecture.from_config(TINY)
    four = estimate(tiny_config(**{"model.quantization": "4bit", "model.dtype": "auto"}), arch, device="cuda")
    assert four.weights == pytest.approx(1728 * NF4_BYTES + (1864 - 1728) * 4)
    assert four.dtype == "bfloat16"  # QLoRA computes in bfloat16, so activations are 2 bytes a value
    assert four.activations == 16 * 264 * 2
    eight = estimate(tiny_config(**{"model.quantization": "8bit"}), arch, device="cuda")
    # One byte a weight plus a float32 scale per output row: 3 layers x (8+4+4+8+16+16+8) rows.
    assert eight.weights == 1728 + 4 * 3 * 64 + 136 * 4


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.short_name)
def test_parameter_counts_equal_the_model_built_from_the_config(preset):
    assert Architecture.from_config(preset.config).parameters == _meta_parameter_count(preset.config)


@pytest.mark.parametrize(
    "model_type,extra",
    [
        ("qwen2", {}),
        ("qwen3", {}),
        ("mistral", {}),
        ("gemma2", {}),
        ("phi3", {}),
        ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}),
    ],
)
def test_parameter_counts_of_each_family(model_type, extra):
    spec = {**TINY, "model_type": model_type, **extra}
    assert Architecture.from_config(spec).parameters == _meta_parameter_count(spec)


def test_lora_parameters_equal_peft(tiny_model):
    from plw_lab.core.config import LoraConfig
    from plw_lab.core.models import attach_lora

    arch = Architecture.from_config(tiny_model.config)
    assert arch.parameters == sum(p.numel() for p in tiny_model.parameters())
    model = attach_lora(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], layers="top:1"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert arch.lora_parameters(4, ["q_proj", "down_proj"], 1) == trainable


def test_weights_estimate_matches_the_loaded_tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    actual = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = LabConfig().override({"model.name": "tiny-random", "model.dtype": "bfloat16"})
    assert estimate(cfg, device="cpu").weights == actual


def test_the_embedded_config_counts_its_135m_parameters():
    import math

    from safetensors import safe_open

    from plw_lab.core.models import embedded_model_dir

    folder = embedded_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert Architecture.from_config(config) == architecture("embedded")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the tied head is stored once
        stored = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    assert architecture("embedded").parameters == stored == 134_515_008
    e = estimate(LabConfig(), device="cuda")
    assert 0.2 < e.weights / 2**30 < 0.3  # 135M bfloat16 weights: about a quarter of a GiB


def test_an_unknown_offline_hub_model_says_why_there_is_no_estimate():
    from plw_lab.core.memory import describe
    from plw_lab.core.models import ModelError

    with pytest.raises(ModelError, match="Could not load model 'nobody/no-such-model': it is not in the local cache"):
        architecture("nobody/no-such-model")
    assert "not in the local cache" in describe(LabConfig().override({"model.name": "nobody/no-such-model"}))


@pytest.mark.parametrize(
    "kind, said", [("folder", "is a folder without config.json"), ("file", "is a file"), ("hub id", "local cache")]
)
def test_lab_memory_refuses_what_is_not_a_model(tmp_path, capsys, kind, said):
    from plw_lab.cli import main

    name = {"folder": str(tmp_path), "file": str(tmp_path / "f.txt"), "hub id": "nobody/no-such-model"}[kind]
    (tmp_path / "f.txt").write_text("")
    assert main(["memory", "--model", name]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.splitlines()) == 1 and said in err, err


def test_a_cuda_out_of_memory_error_becomes_the_estimate_and_what_to_lower(tmp_path, monkeypatch):
    from plw_lab.core.training import PLWTrainer, train

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(PLWTrainer, "compute_loss", out_of_memory)
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "data.limit": 24,
            "train.max_steps": 2,
            "train.output_dir": str(tmp_path),
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    result = train(cfg)
    assert result.status == "failed"
    error = result.summary["error"]
    assert error.startswith("The GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB).")
    expected = estimate(cfg, device="cuda")
    assert f"{expected.describe()} To fit, lower: {expected.what_to_lower()}." in error
    assert "train.chunk_size" in error  # tiny-random's largest part is the loss chunk (a 49,152-token vocabulary)
    # The run folder is intact: config, events with the failure, the traceback and the step-0 adapter.
    run = result.run_dir
    assert (run / "config.yaml").exists() and (run / "traceback.txt").exists()
    assert (run / "last_adapter" / "adapter_config.json").exists()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "failed" and events[-1]["error"] == error


def test_what_to_lower_names_the_largest_parts_first():
    cfg = LabConfig().override(
        {
            "model.name": "Qwen/Qwen2.5-1.5B-Instruct",
            "train.batch_size": 2,
            "data.max_length": 1024,
            "lora.layers": "all",
        }
    )
    e = estimate(cfg, device="cuda")
    assert e.activations > e.weights > e.loss_chunk > e.adapter
    tips = e.what_to_lower()
    assert tips.startswith("activations (") and "train.batch_size" in tips and "gradient checkpointing" in tips
    assert tips.index("model.quantization: 4bit") < tips.index("train.chunk_size")
    assert "lora.r" not in tips  # the adapter is under 5% of the total: not worth naming


def test_gradient_checkpointing_counts_only_layer_inputs():
    plain = estimate(tiny_config(), Architecture.from_config(TINY), device="cpu")
    checkpointed = estimate(
        tiny_config(**{"train.gradient_checkpointing": True}), Architecture.from_config(TINY), device="cpu"
    )
    assert checkpointed.total == plain.total - plain.activations + 16 * 156 * 4
    assert (
        "with gradient checkpointing" not in checkpointed.describe()
        and "without gradient checkpointing" in checkpointed.describe()
    )


def test_the_estimate_resolves_auto_dtype_as_a_run_does():
    import torch

    from plw_lab.core.models import compute_dtype

    arch = architecture("embedded")
    assert estimate(LabConfig(), arch, device="cpu").dtype == "float32"
    for quantization in ("none", "4bit"):
        cfg = LabConfig().override({"model.quantization": quantization})
        for device in ("cpu", "cuda"):  # a CUDA device this machine may not have: sizing a run for a GPU
            run_dtype = str(compute_dtype(cfg.model, torch.device(device))).removeprefix("torch.")
            assert estimate(cfg, arch, device=device).dtype == run_dtype, (quantization, device)
