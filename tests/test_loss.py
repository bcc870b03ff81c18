"""The weighted loss against oracles, on hand-built tensors with distinct sentinel values."""

import pytest
import torch
import torch.nn.functional as F

from plw_lab.core.compat import output_layer
from plw_lab.core.forward import final_hidden
from plw_lab.core.loss import normalizer, shift_for_targets, token_weights, weighted_ce, weighted_ce_from_logits


def test_token_weights_are_plw_on_prompt_and_one_on_completion():
    prompt = torch.tensor([[1, 1, 0, 0, 0]])
    completion = torch.tensor([[0, 0, 1, 1, 0]])  # last column: padding, neither
    assert token_weights(prompt, completion, 0.25).tolist() == [[0.25, 0.25, 1.0, 1.0, 0.0]]
    assert shift_for_targets(token_weights(prompt, completion, 0.25)).tolist() == [[0.25, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("plw", [-0.1, 1.5, float("nan")])
def test_plw_outside_unit_interval_is_refused(plw):
    with pytest.raises(ValueError, match="prompt_loss_weight"):
        token_weights(torch.ones(1, 2), torch.zeros(1, 2), plw)


def test_normalizers_agree_at_zero_and_one_and_differ_between():
    prompt = torch.tensor([[1, 1, 1, 0, 0]])
    completion = torch.tensor([[0, 0, 0, 1, 1]])
    for plw in (0.0, 1.0):
        w = token_weights(prompt, completion, plw)
        assert normalizer(w, "sum_weights") == normalizer(w, "count_nonzero")
    w = token_weights(prompt, completion, 0.1)
    assert normalizer(w, "sum_weights").item() == pytest.approx(2.3)
    assert normalizer(w, "count_nonzero").item() == 5


def _problem(seed=0, n=37, hidden=16, vocab=53):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    W = torch.randn(vocab, hidden, generator=g)
    b = torch.randn(vocab, generator=g)
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, W, b, y


@pytest.mark.parametrize("plw", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_loss_and_gradients_equal_the_naive_logits_path(plw, chunk):
    h, W, b, y = _problem()
    prompt = (torch.arange(37) < 20).long()
    weights = token_weights(prompt, 1 - prompt, plw)
    h1, W1, b1 = (t.clone().requires_grad_(True) for t in (h, W, b))
    h2, W2, b2 = (t.clone().requires_grad_(True) for t in (h, W, b))
    chunked = weighted_ce(h1, W1, y, weights, chunk, b1)
    naive = weighted_ce_from_logits(h2 @ W2.T + b2, y, weights)
    chunked.backward()
    naive.backward()
    torch.testing.assert_close(chunked, naive)
    for got, want in ((h1, h2), (W1, W2), (b1, b2)):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_positions_with_zero_weight_never_reach_the_output_layer():
    h, W, _, y = _problem()
    weights = torch.zeros(37)
    weights[30:] = 1.0
    poisoned = h.clone()
    poisoned[:30] = float("nan")  # would poison the loss if these rows were projected
    assert torch.isfinite(weighted_ce(poisoned, W, y, weights))
    torch.testing.assert_close(weighted_ce(poisoned, W, y, weights), weighted_ce(h, W, y, weights))


def _batch(tokenizer_vocab=49152, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (3, 11), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0  # a padded row
    prompt = torch.zeros_like(ids)
    prompt[:, :6] = 1
    completion = (1 - prompt) * attention
    prompt = prompt * attention
    return ids, attention, prompt, completion


def _lab_loss(model, ids, attention, prompt, completion, plw, mode="sum_weights"):
    w = shift_for_targets(token_weights(prompt, completion, plw))
    hidden = final_hidden(model, ids, attention)
    weight, bias = output_layer(model)
    return weighted_ce(hidden[:, :-1], weight, ids[:, 1:], w, 4, bias) / normalizer(w, mode)


@pytest.mark.parametrize("mode", ["sum_weights", "count_nonzero"])
def test_plw_one_equals_the_models_own_full_sequence_loss(tiny_model, mode):
    ids, attention, prompt, completion = _batch()
    labels = ids.masked_fill(attention == 0, -100)
    oracle = tiny_model(input_ids=ids, attention_mask=attention, labels=labels).loss
    torch.testing.assert_close(_lab_loss(tiny_model, ids, attention, prompt, completion, 1.0, mode), oracle)


def test_plw_zero_equals_completion_only_loss_with_masked_labels(tiny_model):
    ids, attention, prompt, completion = _batch()
    labels = ids.masked_fill(completion == 0, -100)
    oracle = tiny_model(input_ids=ids, attention_mask=attention, labels=labels).loss
    torch.testing.assert_close(_lab_loss(tiny_model, ids, attention, prompt, completion, 0.0), oracle)


def test_fractional_plw_matches_a_hand_computed_weighted_mean(tiny_model):
    ids, attention, prompt, completion = _batch()
    logits = tiny_model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view(3, 10)
    w = 0.1 * prompt[:, 1:] + completion[:, 1:]
    oracle = (ce * w).sum() / w.sum()
    torch.testing.assert_close(_lab_loss(tiny_model, ids, attention, prompt, completion, 0.1), oracle)
