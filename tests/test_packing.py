"""Packing keeps examples apart and keeps their weights: packed logits, losses and gradients equal
the padded ones on the tiny random model with the real tokenizer."""

import random

import pytest
import torch
from conftest import mc_records, sum_examples
from transformers import AutoModelForCausalLM

from plw_lab.core import events as ev
from plw_lab.core.collate import collate
from plw_lab.core.config import LabConfig
from plw_lab.core.data import DataConfig, to_examples
from plw_lab.core.forward import final_hidden
from plw_lab.core.masks import encode_all
from plw_lab.core.models import attach_lora
from plw_lab.core.packing import attention_kind, best_fit_decreasing, collate_packed, packing_efficiency
from plw_lab.core.training import PLWTrainer, make_collator, train, training_arguments


@pytest.fixture(scope="module")
def mixed(tokenizer):
    """Short arithmetic and longer multiple-choice examples: lengths that differ a lot."""

    def passage(repeats):
        sentence = "The car is parked by the old mill near the river. "
        return {
            "context": sentence * repeats,
            "question": "Where is the car?",
            "options": ["mill", "bank"],
            "answer": "A",
        }

    short = sum_examples(6) + to_examples(mc_records(3) + [passage(2)], DataConfig(format="multiple_choice"))
    random.Random(0).shuffle(short)
    examples = to_examples([passage(8)], DataConfig(format="multiple_choice")) + short
    encoded, skipped = encode_all(tokenizer, examples, 256)
    assert not skipped and len({len(e) for e in encoded}) > 3
    return encoded


def _model(tiny_dir, impl="sdpa"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=impl, dtype=torch.float32).eval()


# -- layout ---------------------------------------------------------------------------------------


def test_best_fit_decreasing_places_every_item_once_within_capacity():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(200)]
    bins = best_fit_decreasing(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) <= -(-sum(lengths) // 100) * 1.25  # BFD is within 11/9 OPT + 1 of the lower bound
    assert sorted(map(sorted, best_fit_decreasing([60, 40, 30, 70], 100))) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing([5, 101], 100)


def test_packed_layout_restarts_positions_and_zeroes_every_boundary(mixed):
    batch = mixed[:8]
    packed = collate_packed(batch, pad_id=7)
    rows, width = packed["input_ids"].shape
    assert width == max(len(e) for e in batch) and rows < len(batch)
    assert int(packed["num_tokens"]) == sum(len(e) for e in batch) == int(packed["seq_lens"].sum())
    # Every example appears once, token for token, starting at position 0.
    starts = (packed["position_ids"] == 0).nonzero().tolist()
    found = []
    for r, c in starts:
        ids = packed["input_ids"][r, c:].tolist()
        match = [
            e for e in batch if ids[: len(e)] == e.input_ids and packed["position_ids"][r, c + len(e) - 1] == len(e) - 1
        ]
        if match:
            found.append(id(match[0]))
            e = match[0]
            # The example's first token carries no weight (the boundary position predicts it), the rest keep theirs.
            assert (
                packed["prompt_mask"][r, c] == 0
                and packed["completion_mask"][r, c] == 0
                and packed["labels"][r, c] == -100
            )
            assert packed["prompt_mask"][r, c + 1 : c + len(e)].tolist() == e.prompt_mask[1:]
            assert packed["completion_mask"][r, c + 1 : c + len(e)].tolist() == e.completion_mask[1:]
    assert sorted(found) == sorted(map(id, batch))
    # Weights (both masks) cover exactly the unpacked targets: same normaliser.
    padded = collate(batch, 7)
    for name in ("prompt_mask", "completion_mask"):
        assert int(packed[name].sum()) == int(padded[name][:, 1:].sum())
    # Block-diagonal causal: no query attends across an example boundary or into the future.
    mask = packed["attention_mask"]
    assert mask.dtype == torch.bool and mask.shape == (rows, 1, width, width)
    segment = (packed["position_ids"] == 0).cumsum(-1)
    same = segment[:, :, None] == segment[:, None, :]
    assert not (mask[:, 0] & ~same).any() and not mask[:, 0].triu(1).any()
    assert mask[:, 0].diagonal(dim1=-2, dim2=-1).all()  # no empty query row (NaN in sdpa), padding included


def test_float_mask_for_eager_and_flat_layout_for_flash(mixed, tiny_dir):
    batch = mixed[:5]
    float_mask = collate_packed(batch, 0, kind="float")["attention_mask"]
    bool_mask = collate_packed(batch, 0, kind="bool")["attention_mask"]
    assert float_mask.dtype == torch.float32 and torch.equal(float_mask == 0, bool_mask)
    flat = collate_packed(batch, 0, kind="flat")
    assert flat["input_ids"].shape == (1, sum(len(e) for e in batch)) and "attention_mask" not in flat
    assert attention_kind(_model(tiny_dir, "sdpa")) == "bool" and attention_kind(_model(tiny_dir, "eager")) == "float"


# -- isolation: logits, loss, gradients --------------------------------------------------------------


def _packed_logits_by_example(model, batch, packed):
    """Each example's logits cut out of the packed rows, in batch order."""
    logits = model(
        input_ids=packed["input_ids"],
        attention_mask=packed.get("attention_mask"),
        position_ids=packed["position_ids"],
        use_cache=False,
    ).logits
    out = {}
    for r, c in (packed["position_ids"] == 0).nonzero().tolist():
        ids = packed["input_ids"][r, c:].tolist()
        for i, e in enumerate(batch):
            if i not in out and ids[: len(e)] == e.input_ids:
                out[i] = logits[r, c : c + len(e)]
                break
    return [out[i] for i in range(len(batch))]


@pytest.mark.parametrize(
    "impl,kind", [("sdpa", "bool"), ("sdpa", "float"), ("eager", "float"), ("sdpa", "flat"), ("eager", "flat")]
)
def test_packed_logits_equal_unpacked_logits(mixed, tiny_dir, impl, kind):
    model = _model(tiny_dir, impl)
    batch = mixed[:8]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0] for e in batch]
        padded = collate(batch, 0)
        padded_logits = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False
        ).logits
        packed = _packed_logits_by_example(model, batch, collate_packed(batch, 0, kind=kind))
    for i, e in enumerate(batch):
        assert (packed[i] - alone[i]).abs().max().item() <= 1e-4, (impl, kind, i)
        assert (padded_logits[i, : len(e)] - alone[i]).abs().max().item() <= 1e-4


def test_packing_without_a_mask_mixes_examples(mixed, tiny_dir):
    """The control: restarting positions alone, with a cache in play, do not keep examples apart."""
    model = _model(tiny_dir, "sdpa")
    batch = mixed[:4]
    packed = collate_packed(batch, 0, kind="flat")
    with torch.no_grad():
        mixed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True).logits
        alone = model(input_ids=torch.tensor([batch[-1].input_ids]), use_cache=False).logits[0]
    start = packed["input_ids"].shape[1] - len(batch[-1])  # 'flat' keeps batch order
    assert (mixed_logits[0, start:] - alone).abs().max().item() > 1e-2


def _trainer(tmp_path, tiny_dir, plw, packing, mode="sum_weights", model=None):
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path / "runs"),
            "train.prompt_loss_weight": plw,
            "train.loss_normalization": mode,
            "train.packing": packing,
            "train.max_grad_norm": 0.0,
            "lora.layers": "all",
        }
    )
    if model is None:
        torch.manual_seed(0)
        model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), cfg.lora)
    args = training_arguments(cfg, tmp_path / f"t{plw}{packing}", torch.device("cpu"), torch.float32)
    return PLWTrainer(model=model, args=args, train_dataset=[], lab_config=cfg), cfg


class _Tok:
    pad_token_id = 0


@pytest.mark.parametrize("mode", ["sum_weights", "count_nonzero"])
@pytest.mark.parametrize("plw", [0.0, 0.1, 1.0])
def test_packed_loss_and_gradients_equal_unpacked(mixed, tmp_path, tiny_dir, plw, mode):
    batch = mixed[:8]
    losses, grads = {}, {}
    trainer, cfg = _trainer(tmp_path, tiny_dir, plw, False, mode)
    model = trainer.model
    for packing in (False, True):
        cfg.train.packing = packing
        inputs = make_collator(cfg, _Tok(), model)(batch)
        if packing:
            assert inputs["input_ids"].shape[0] < len(batch)
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        losses[packing] = loss.item()
        grads[packing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)
    assert any(g.abs().sum() > 0 for g in grads[False].values())
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-5 * max(g.abs().max().item(), 1e-3))


def test_packed_loss_through_the_logits_path_too(mixed, tmp_path, tiny_dir):
    """Models whose logits cannot be rebuilt from hidden states go through `logits_at`: same loss."""
    trainer, cfg = _trainer(tmp_path, tiny_dir, 0.1, False)
    trainer.use_hidden_loss = False
    batch = mixed[:6]
    values = []
    for packing in (False, True):
        cfg.train.packing = packing
        with torch.no_grad():
            values.append(trainer.compute_loss(trainer.model, make_collator(cfg, _Tok(), trainer.model)(batch)).item())
    assert values[1] == pytest.approx(values[0], rel=1e-5)


# -- what is not computed -----------------------------------------------------------------------------


def test_no_gradient_flows_below_the_lowest_adapted_layer(tokenizer, tiny_dir):
    cfg = LabConfig().override({"lora.layers": "top:1"})
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg.lora)
    model.train()
    layers = model.get_base_model().model.layers
    needs_grad = {}

    def record(index):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            needs_grad[index] = hidden.requires_grad

        return hook

    handles = [layer.register_forward_hook(record(i)) for i, layer in enumerate(layers)]
    encoded, _ = encode_all(tokenizer, sum_examples(2), 64)
    batch = collate(encoded, tokenizer.pad_token_id)
    hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])
    for h in handles:
        h.remove()
    # Layer 0 has no adapter and nothing below it trains: its output is outside the autograd graph.
    assert needs_grad == {0: False, 1: True} and hidden.requires_grad


# -- efficiency ---------------------------------------------------------------------------------------


def test_packing_efficiency_counts_real_tokens_over_computed_slots():
    eff = packing_efficiency([100, 10, 10, 10, 100, 50, 50, 10], max_length=None, batch_size=4, seed=None)
    # batch 1: [100,10,10,10] -> padded 400 slots, packed 2 rows of 100; batch 2: [100,50,50,10] -> 400, 3 rows
    assert eff["tokens"] == 340 and eff["padded_slots"] == 800 and eff["packed_slots"] == 500
    assert eff["padded"] == pytest.approx(340 / 800) and eff["packed"] == pytest.approx(340 / 500)
    assert eff["speedup"] == pytest.approx(1.6) and eff["rows"] == 5 and eff["batches"] == 2
    clipped = packing_efficiency([500, 20], max_length=100, batch_size=2, seed=None)
    assert clipped["tokens"] == 120 and clipped["packed"] == pytest.approx(120 / 200)
    same = packing_efficiency([64] * 16, batch_size=8)
    assert same["padded"] == same["packed"] == 1.0


def test_a_packed_run_trains_and_counts_real_tokens(tmp_path, tiny_dir):
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path / "runs"),
            "train.batch_size": 6,
            "train.max_steps": 3,
            "train.eval_interval": 3,
            "train.packing": True,
            "lora.layers": "all",
        }
    )
    seen = []
    result = train(cfg, subscribers=[seen.append], examples=sum_examples(24), compare=False)
    assert result.status == "finished", result.summary
    steps = [e for e in seen if isinstance(e, ev.Step)]
    assert [s.step for s in steps] == [1, 2, 3] and all(s.train_loss == s.train_loss for s in steps)
    lengths = sorted(len(e) for e in result.data.train)
    # Real tokens only: at most the 18 longest training examples, at least the 18 shortest.
    assert sum(lengths[:18]) <= steps[-1].tokens_seen <= sum(lengths[-18:])


# -- attention implementations ----------------------------------------------------------------------


def test_sdpa_stays_on_a_cpu_and_for_padded_batches(tiny_dir, monkeypatch):
    from plw_lab.core import compat

    monkeypatch.setattr(compat, "flash_implementation", lambda: "flash_attention_2")  # as if installed
    model = _model(tiny_dir, "sdpa")
    assert compat.use_fast_attention(model, torch.device("cpu"), packing=True) == "sdpa"
    assert compat.use_fast_attention(model, torch.device("cuda"), packing=False) == "sdpa"
    assert compat.use_fast_attention(model, torch.device("cuda"), packing=True) == "sdpa"  # float32 weights: no flash
    assert attention_kind(model) == "bool"


def _flash_on_cuda():
    from plw_lab.core import compat

    return torch.cuda.is_available() and compat.flash_implementation() is not None


@pytest.mark.skipif(not _flash_on_cuda(), reason="flash-attention varlen needs CUDA and flash-attn or kernels")
def test_flash_varlen_rows_without_padding_equal_unpacked_on_cuda(mixed, tiny_dir):
    from plw_lab.core import compat

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).cuda().eval()
    assert "flash" in compat.use_fast_attention(model, torch.device("cuda"), packing=True)
    assert attention_kind(model) == "flat"
    batch = mixed[:8]
    packed = {k: v.cuda() for k, v in collate_packed(batch, 0, kind="flat").items()}
    with torch.no_grad():
        alone = [
            model(input_ids=torch.tensor([e.input_ids], device="cuda"), use_cache=False).logits[0].float()
            for e in batch
        ]
        logits = (
            model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0].float()
        )
    at = 0
    for e, want in zip(batch, alone):  # 'flat' keeps batch order
        assert (logits[at : at + len(e)] - want).abs().max().item() <= 5e-2
        at += len(e)
