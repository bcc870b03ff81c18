"""Every architecture the lab's fast paths accept, proven on a tiny random model of that family.

For each of `plw_lab.core.compat.PROVEN_DECODERS`: the frozen-layer cache gives the uncached loss and
gradients, the shared head gives the plain forward's hidden states, packed rows give each
example's own logits, and the lab's hidden-state loss equals the model's own `labels=` loss.
Sliding-window families get a window shorter than the sequences, so the layer types stay
aligned with the layers when the cache runs only part of the decoder.
"""

import json

import pytest
import torch
from conftest import tiny_decoder

from plw_lab.core import compat
from plw_lab.core.collate import collate
from plw_lab.core.compat import output_layer
from plw_lab.core.config import LoraConfig
from plw_lab.core.forward import SharedHead, final_hidden
from plw_lab.core.loss import normalizer, shift_for_targets, token_weights, weighted_ce
from plw_lab.core.masks import Encoded
from plw_lab.core.models import attach_lora, linear_layer_names
from plw_lab.core.packing import collate_packed
from plw_lab.core.prefix import FrozenPrefix

WINDOW = 9  # shorter than the longer test sequences, longer than the shared-head ones

ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2}),
    "qwen3": ("Qwen3Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),
    "gemma3_text": (
        "Gemma3TextConfig",
        {
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        },
    ),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
    "smollm3": ("SmolLM3Config", {"no_rope_layers": [1, 1, 0, 1]}),  # layer 2 without rotary positions
}


def test_every_proven_architecture_is_tested():
    assert set(ARCHITECTURES) == set(compat.PROVEN_DECODERS)


def _model(tokenizer, arch, impl="sdpa", lora=True):
    name, extra = ARCHITECTURES[arch]
    model = tiny_decoder(tokenizer, name, impl=impl, **extra)
    assert compat.model_type(model) == arch
    if not lora:
        return model.eval()
    model = attach_lora(model, LoraConfig(layers="top:2", target_modules=["all-linear"]))
    with torch.no_grad():  # a trained adapter, so its layers really change the states
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return model


def _batch(lengths=(17, 12, 6), head=()):
    g = torch.Generator().manual_seed(3)
    width = max(lengths) + len(head)
    ids = torch.randint(10, 1000, (len(lengths), width), generator=g)
    ids[:, : len(head)] = torch.tensor(head, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, : n + len(head)] = 1
    return ids, mask


def _loss(model, ids, mask, prefix=None):
    weights = shift_for_targets(token_weights(torch.zeros_like(mask), mask, 0.0))
    hidden = final_hidden(model, ids, mask, prefix=prefix)
    weight, bias = output_layer(model)
    return weighted_ce(hidden[:, :-1], weight, ids[:, 1:], weights, 8, bias) / normalizer(weights)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hidden_state_loss_equals_the_models_own_loss(tokenizer, arch):
    model = _model(tokenizer, arch)
    ids, mask = _batch()
    oracle = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    torch.testing.assert_close(_loss(model, ids, mask), oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_frozen_layers_give_the_uncached_loss_and_gradients(tokenizer, arch):
    model = _model(tokenizer, arch)
    model.train()
    ids, mask = _batch()
    full = _loss(model, ids, mask)
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(g.abs().sum() > 0 for g in want.values())
    model.zero_grad()
    prefix = FrozenPrefix.for_model(model, [2, 3])
    assert prefix is not None
    for _ in range(2):  # fills the cache, then reads it
        cached = _loss(model, ids, mask, prefix)
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
    assert prefix.misses == 3 and prefix.hits == 3
    cached.backward()
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_shared_head_gives_the_plain_forward(tokenizer, arch):
    model = _model(tokenizer, arch).eval()
    ids, mask = _batch(lengths=(4, 3, 2), head=(11, 12, 13, 14, 15))
    real = mask.bool()
    with torch.no_grad():
        full = final_hidden(model, ids, mask)
        head = SharedHead.build(model, [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(1))])
        assert head is not None and head.length == 5
        torch.testing.assert_close(final_hidden(model, ids, mask, head=head)[real], full[real], rtol=1e-5, atol=1e-5)
        prefix = FrozenPrefix.for_model(model, [2, 3])
        for _ in range(2):
            torch.testing.assert_close(
                final_hidden(model, ids, mask, prefix=prefix, head=head)[real], full[real], rtol=1e-5, atol=1e-5
            )


def test_no_shared_head_longer_than_a_sliding_window(tokenizer):
    model = _model(tokenizer, "mistral")
    long = [list(range(20, 20 + WINDOW + 2))] * 2
    assert SharedHead.build(model, long) is None
    assert SharedHead.build(model, [s[:WINDOW] for s in long]) is not None


def _encoded(ids, mask):
    out = []
    for row, n in zip(ids, mask.sum(1).tolist()):
        tokens = row[:n].tolist()
        out.append(
            Encoded(
                input_ids=tokens,
                prompt_mask=[1] * 2 + [0] * (n - 2),
                completion_mask=[0] * 2 + [1] * (n - 2),
                offsets=[],
                text="",
                example=None,
            )
        )
    return out


@pytest.mark.parametrize("impl,kind", [("sdpa", "bool"), ("eager", "float")])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_rows_give_each_examples_own_logits(tokenizer, arch, impl, kind):
    model = _model(tokenizer, arch, impl=impl, lora=False)
    ids, mask = _batch(lengths=(17, 9, 6, 2))
    batch = _encoded(ids, mask)
    # The windows the lab's collator passes (training.make_collator): sliding layers keep theirs.
    packed = collate_packed(batch, tokenizer.pad_token_id, kind=kind, width=18, windows=compat.attention_windows(model))
    assert packed["input_ids"].shape[0] < len(batch)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0] for e in batch]
        logits = model(
            input_ids=packed["input_ids"],
            attention_mask=packed["attention_mask"],
            position_ids=packed["position_ids"],
            use_cache=False,
        ).logits
        padded = collate(batch, tokenizer.pad_token_id)
        padded_logits = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False
        ).logits
    found = 0
    for r, c in (packed["position_ids"] == 0).nonzero().tolist():
        for e, want in zip(batch, alone):
            if (
                packed["input_ids"][r, c : c + len(e)].tolist() == e.input_ids
                and c + len(e) <= packed["input_ids"].shape[1]
            ):
                assert (logits[r, c : c + len(e)] - want).abs().max().item() <= 1e-4, (arch, impl, len(e))
                found += 1
                break
    assert found >= len(batch)
    for i, e in enumerate(batch):
        assert (padded_logits[i, : len(e)] - alone[i]).abs().max().item() <= 1e-4


def _saved(tokenizer, arch, folder):
    """A tiny model of `arch` as a local folder, the way a user passes their own model, and the names
    of its linear layers."""
    model = _model(tokenizer, arch, lora=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), set(linear_layer_names(model))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_proven_architecture_trains_with_the_default_lora_targets(tokenizer, tmp_path, arch):
    """The default adapts the attention and MLP projections whatever the architecture calls them."""
    from conftest import sum_examples

    from plw_lab.core.config import LabConfig
    from plw_lab.core.training import train

    folder, linear = _saved(tokenizer, arch, tmp_path / arch)
    cfg = LabConfig().override(
        {
            "model.name": folder,
            "train.output_dir": str(tmp_path / "runs"),
            "train.max_steps": 1,
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    result = train(cfg, examples=sum_examples(12), compare=False)
    assert result.status == "finished", result.summary
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in result.model.state_dict() if ".lora_A." in n}
    assert adapted == linear


def test_lab_train_adapts_a_phi3_model_by_default(tokenizer, tmp_path, capsys):
    from plw_lab.cli import main

    folder, _ = _saved(tokenizer, "phi3", tmp_path / "phi3")
    code = main(["train", "--model", folder, *("--set", "train.max_steps=1"), "--output-dir", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr()
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["status"] == "finished"


# -- what the lab refuses or routes elsewhere ------------------------------------------------------


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_lora_on_the_output_layer_or_the_embeddings_is_refused(tokenizer, target):
    from plw_lab.core.config import ConfigError

    model = _model(tokenizer, "llama", lora=False)
    with pytest.raises(
        ConfigError, match=f"lora.target_modules includes {target}.*not the embeddings or the output layer"
    ):
        attach_lora(model, LoraConfig(layers="all", target_modules=["q_proj", target]))


def test_all_linear_adapts_every_linear_layer_of_the_chosen_layers_but_not_the_head(tokenizer):
    model = attach_lora(
        _model(tokenizer, "phi3", lora=False), LoraConfig(layers="top:1", target_modules=["all-linear"])
    )
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {
        f"base_model.model.model.layers.3.{m}"
        for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    }


def test_target_names_the_model_lacks_are_refused_not_skipped(tokenizer):
    from plw_lab.core.config import ConfigError

    with pytest.raises(ConfigError, match="no linear layer of this model is called q_proj, v_proj .*qkv_proj"):
        attach_lora(
            _model(tokenizer, "phi3", lora=False),
            LoraConfig(layers="all", target_modules=["q_proj", "v_proj", "o_proj"]),
        )


def test_a_head_adapter_sends_the_loss_through_the_logits():
    """Should a head adapter ever reach a trainer (a loaded adapter), the base head weight is not its head."""
    from types import SimpleNamespace

    head = torch.nn.Linear(4, 4)
    head.base_layer = torch.nn.Linear(4, 4)  # what peft's wrapper keeps
    model = SimpleNamespace(config=SimpleNamespace(model_type="llama"), get_output_embeddings=lambda: head)
    assert compat.hidden_loss_blocker(model) == "the output layer carries a LoRA adapter"


def test_an_unproven_architecture_runs_the_plain_path_and_says_why(tokenizer):
    from types import SimpleNamespace

    from plw_lab.core.config import LabConfig
    from plw_lab.core.training import run_paths

    model = _model(tokenizer, "llama")
    model.get_base_model().config.model_type = "olmo3"
    assert FrozenPrefix.for_model(model, [2, 3]) is None
    assert SharedHead.build(model, [[5, 6, 7, 8, 9, 10]] * 2) is None
    trainer = SimpleNamespace(use_hidden_loss=True, prefix=None, accelerator=None)
    paths = run_paths(LabConfig(), model, trainer)
    assert paths["architecture"].startswith("olmo3: not among the proven architectures")
    assert paths["frozen_layer_cache"] == "off: the architecture is not proven"
    assert paths["shared_head"] == "off: the architecture is not proven"
    assert paths["attention"] == "sdpa" and paths["gradient_checkpointing"] == "off"


def test_a_run_says_its_paths_processes_and_global_batch(tmp_path):
    from conftest import sum_examples

    from plw_lab.core import events as ev
    from plw_lab.core.config import LabConfig
    from plw_lab.core.training import train

    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path / "runs"),
            "train.batch_size": 3,
            "train.grad_accum": 2,
            "train.max_steps": 2,
            "train.eval_interval": 2,
            "lora.layers": "top:1",
            "train.gradient_checkpointing": True,
        }
    )
    seen = []
    result = train(cfg, subscribers=[seen.append], examples=sum_examples(16), compare=False)
    assert result.status == "finished", result.summary
    started = next(e for e in seen if isinstance(e, ev.Started))
    assert started.world_size == 1 and started.global_batch == 6
    assert started.paths == {
        "architecture": "llama: proven by the lab's architecture tests",
        "loss": "hidden states; the output layer runs in chunks at weighted positions only",
        "frozen_layer_cache": "on: layers below 1 run once per example; only the validation set's are kept, "
        "as no training example is drawn twice",
        "shared_head": "on in evaluation",
        "attention": "sdpa",
        "gradient_checkpointing": "on (non-reentrant)",
    }
    logged = next(e for e in ev.read_events(result.run_dir / "events.jsonl") if e.kind == "started")
    assert logged.paths == started.paths and logged.global_batch == 6


def test_a_cpu_launch_that_starts_one_of_several_processes_is_refused(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    for name in ("WORLD_SIZE", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert "--multi_gpu --num_processes N" in compat.launcher_problem()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a real multi-process launch
    assert compat.launcher_problem() == ""
