"""KL toward the base model and L2 toward the base weights: values and gradients against oracles."""

import math

import pytest
import torch
from conftest import sum_examples
from transformers import AutoModelForCausalLM

from plw_lab.core.collate import Collator, collate
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.evaluation import adapter
from plw_lab.core.loss import (
    base_distributions,
    lora_update_sq_norm,
    token_ce_kl,
    weighted_kl,
    weighted_kl_from_logits,
)
from plw_lab.core.masks import encode_all
from plw_lab.core.models import attach_lora, lora_factors
from plw_lab.core.training import PLWTrainer, training_arguments


def test_kl_of_a_two_token_vocabulary_by_hand():
    # p = (1/2, 1/2), p_base = (3/4, 1/4): KL(p || p_base) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    head = torch.eye(2)
    hidden = torch.tensor([[0.0, 0.0]])
    base = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.5 * math.log(4 / 3)
    assert weighted_kl(hidden, base, head, torch.tensor([1.0])).item() == pytest.approx(expected, rel=1e-6)
    assert weighted_kl(hidden, base, head, torch.tensor([0.5])).item() == pytest.approx(expected / 2, rel=1e-6)
    # Evaluation's form: from the base's log-normaliser, kept once per run.
    ce, best, kl, _, _ = token_ce_kl(hidden, head, torch.tensor([1]), base_distributions(base, head))
    assert kl.tolist() == pytest.approx([expected], rel=1e-6) and best.tolist() == [0]  # a tie: the first
    assert ce.tolist() == pytest.approx([math.log(2)], rel=1e-6)
    assert weighted_kl(base, base, head, torch.tensor([1.0])).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_kl_value_and_gradients_match_the_full_logits(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    base = torch.randn(2, 5, 8)
    weight = torch.randn(11, 8, requires_grad=True)
    bias = torch.randn(11, requires_grad=True)
    w = torch.tensor([[0.0, 0.1, 1.0, 0.0, 1.0], [1.0, 0.0, 0.5, 0.1, 0.0]])

    got = weighted_kl(hidden, base, weight, w, chunk_size=chunk, head_bias=bias)
    grads = torch.autograd.grad(got, (hidden, weight, bias))
    naive = weighted_kl_from_logits(hidden @ weight.T + bias, base @ weight.T + bias, w)
    expected = torch.autograd.grad(naive, (hidden, weight, bias))

    assert got.item() == pytest.approx(naive.item(), rel=1e-5)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert grads[0][0, 0].abs().sum() == 0, "a position without weight gets no gradient"


def _trainer(tmp_path, tokenizer, tiny_dir, **overrides):
    cfg = LabConfig().override(
        {"model.name": "tiny-random", "train.output_dir": str(tmp_path), "lora.layers": "all", **overrides}
    )
    torch.manual_seed(0)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg.lora)
    encoded, _ = encode_all(tokenizer, sum_examples(4), 64)
    trainer = PLWTrainer(
        model=model,
        args=training_arguments(cfg, tmp_path / "t", torch.device("cpu"), torch.float32),
        data_collator=Collator(tokenizer.pad_token_id),
        lab_config=cfg,
    )
    return trainer, model, collate(encoded, tokenizer.pad_token_id)


def _perturb_adapter(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for _a, b, _ in lora_factors(model):
            b.normal_(0, 0.2)


def test_beta_zero_is_the_plain_loss_and_beta_adds_the_kl_of_a_naive_two_pass_oracle(tmp_path, tokenizer, tiny_dir):
    plain, model, batch = _trainer(tmp_path, tokenizer, tiny_dir, **{"train.prompt_loss_weight": 0.1})
    _perturb_adapter(model)
    beta = 0.5
    with_kl = PLWTrainer(
        model=model,
        args=plain.args,
        data_collator=plain.data_collator,
        lab_config=plain.lab.override({"train.kl_weight": beta}),
    )
    zero_kl = PLWTrainer(
        model=model,
        args=plain.args,
        data_collator=plain.data_collator,
        lab_config=plain.lab.override({"train.kl_weight": 0.0}),
    )
    loss_plain = plain.compute_loss(model, batch)
    assert torch.equal(zero_kl.compute_loss(model, batch), loss_plain)

    # Oracle: full logits with the adapter on and off, the KL weighted by the token weights.
    weights = plain._weights(batch)
    logits_on = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    with adapter(model, False):
        logits_off = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    kl = weighted_kl_from_logits(logits_on, logits_off.detach(), weights) / weights.sum()
    assert kl.item() > 1e-4, "the perturbed adapter moves the model away from the base"

    loss_kl = with_kl.compute_loss(model, batch)
    assert loss_kl.item() == pytest.approx(loss_plain.item() + beta * kl.item(), rel=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss_kl, params)
    expected = torch.autograd.grad(plain.compute_loss(model, batch) + beta * kl, params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_kl_to_the_base_is_zero_for_a_fresh_adapter(tmp_path, tokenizer, tiny_dir):
    plain, model, batch = _trainer(tmp_path, tokenizer, tiny_dir)
    with_kl = PLWTrainer(
        model=model,
        args=plain.args,
        data_collator=plain.data_collator,
        lab_config=plain.lab.override({"train.kl_weight": 2.0}),
    )
    # LoRA starts as a zero update, so the adapted model is the base model and the KL term vanishes.
    assert with_kl.compute_loss(model, batch).item() == pytest.approx(plain.compute_loss(model, batch).item(), abs=1e-6)


# -- L2 toward the base weights ----------------------------------------------------------------


def test_l2_to_base_gradient_is_that_of_the_update_norm_and_not_weight_decay():
    torch.manual_seed(0)
    a = torch.randn(3, 7, requires_grad=True)  # r x in
    b = torch.randn(5, 3, requires_grad=True)  # out x r
    scale = 2.0
    penalty = lora_update_sq_norm([(a, b, scale)])
    naive = ((scale * b @ a) ** 2).sum()  # || s B A ||_F^2 with the full out x in update formed
    assert penalty.item() == pytest.approx(naive.item(), rel=1e-5)
    grad_a, grad_b = torch.autograd.grad(penalty, (a, b))
    naive_a, naive_b = torch.autograd.grad(naive, (a, b))
    torch.testing.assert_close(grad_a, naive_a)
    torch.testing.assert_close(grad_b, naive_b)
    # By hand: d/dA = 2 s^2 B^T B A, d/dB = 2 s^2 B A A^T.
    torch.testing.assert_close(grad_a, 2 * scale**2 * b.T @ b @ a)
    torch.testing.assert_close(grad_b, 2 * scale**2 * b @ a @ a.T)
    # Weight decay's gradient of ||A||^2 + ||B||^2 is 2A, 2B: a different direction.
    assert not torch.allclose(grad_a / grad_a.norm(), a / a.norm(), atol=1e-2)


def test_l2_to_base_leaves_a_fresh_adapter_alone_where_weight_decay_pulls_on_a():
    a = torch.randn(3, 7, requires_grad=True)
    b = torch.zeros(5, 3, requires_grad=True)  # LoRA's B starts at zero: the update is zero
    grad_a, grad_b = torch.autograd.grad(lora_update_sq_norm([(a, b, 1.0)]), (a, b))
    assert grad_a.abs().sum() == 0 and grad_b.abs().sum() == 0
    decay_a = torch.autograd.grad((a**2).sum(), a)[0]
    assert decay_a.abs().sum() > 0


def test_trainer_adds_l2_times_the_peft_update_norm(tmp_path, tokenizer, tiny_dir):
    plain, model, batch = _trainer(tmp_path, tokenizer, tiny_dir)
    _perturb_adapter(model)
    lam = 0.3
    with_l2 = PLWTrainer(
        model=model,
        args=plain.args,
        data_collator=plain.data_collator,
        lab_config=plain.lab.override({"train.l2_to_base": lam}),
    )
    # Oracle: PEFT's own delta weight of every LoRA layer.
    deltas = [
        m.get_delta_weight("default")
        for m in model.modules()
        if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")
    ]
    assert deltas
    norm = sum((d.float() ** 2).sum() for d in deltas).item()
    assert norm > 0
    assert with_l2.compute_loss(model, batch).item() == pytest.approx(
        plain.compute_loss(model, batch).item() + lam * norm, rel=1e-5
    )


def test_lora_update_norm_needs_lora_layers():
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora_update_sq_norm([])


def test_both_loss_weights_zero_is_refused():
    with pytest.raises(ConfigError, match="completion_loss_weight"):
        LabConfig().override({"train.prompt_loss_weight": 0.0, "train.completion_loss_weight": 0.0})
