"""The frozen-layer cache and the shared head change nothing but the work done."""

import torch
from conftest import lora_llama

from plw_lab.core.config import layer_indices
from plw_lab.core.forward import SharedHead, final_hidden
from plw_lab.core.prefix import FrozenPrefix


def _model(tokenizer):
    return lora_llama(tokenizer)


def _trained(model):
    """The adapter as after training (LoRA starts as a zero update, which would prove nothing)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 1000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    mask[2, 5:] = 0
    return ids, mask


def test_cached_forward_equals_the_full_forward_and_its_gradients(tokenizer):
    model = _trained(_model(tokenizer))
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


def test_rows_outside_keep_only_are_computed_exactly_but_not_kept(tokenizer):
    model = _trained(_model(tokenizer))
    prefix = FrozenPrefix.for_model(model, [2, 3])
    ids, mask = _batch()
    prefix.keep_only([ids[1].tolist()])  # row 1 is whole (no padding): its tokens are its key
    full = final_hidden(model, ids, mask)
    for _ in range(2):
        torch.testing.assert_close(final_hidden(model, ids, mask, prefix=prefix)[mask.bool()], full[mask.bool()])
    assert list(prefix.cache) == [tuple(ids[1].tolist())]
    assert prefix.misses == 5 and prefix.hits == 1, "rows 0 and 2 are computed again, row 1 is read"


def test_no_cache_when_every_layer_is_adapted_or_the_architecture_is_unknown(tokenizer, tiny_model):
    assert FrozenPrefix.for_model(tiny_model, None) is None
    assert FrozenPrefix.for_model(tiny_model, [0, 1]) is None
    tiny_model.config.model_type = "gemma"  # scales embeddings inside its forward
    assert FrozenPrefix.for_model(tiny_model, [1]) is None


def _with_head(ids: torch.Tensor, head: list[int]) -> torch.Tensor:
    return torch.cat([torch.tensor(head).expand(ids.shape[0], -1), ids], dim=1)


def test_a_shared_head_runs_once_and_changes_no_hidden_state(tokenizer):
    model = _trained(_model(tokenizer)).eval()
    ids, mask = _batch()
    ids, mask = _with_head(ids, [11, 12, 13, 14, 15]), _with_head(mask, [1] * 5)
    real = mask.bool()
    prefix = FrozenPrefix.for_model(model, [2, 3])
    with torch.no_grad():
        full = final_hidden(model, ids, mask)
        head = SharedHead.build(model, [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(1))])
        assert head is not None and head.length == 5
        for _ in range(2):  # the head's cache is not consumed by a batch
            torch.testing.assert_close(
                final_hidden(model, ids, mask, head=head)[real], full[real], rtol=1e-5, atol=1e-5
            )
        for _ in range(2):  # frozen-layer cache: filled, then read
            got = final_hidden(model, ids, mask, prefix=prefix, head=head)
            torch.testing.assert_close(got[real], full[real], rtol=1e-5, atol=1e-5)
        # what the cache keeps is whole: training reads it without a head
        torch.testing.assert_close(
            final_hidden(model, ids, mask, prefix=prefix)[real], full[real], rtol=1e-5, atol=1e-5
        )
    assert prefix.misses == 3 and prefix.hits == 6


def test_the_run_wide_head_of_the_frozen_layers_serves_training_with_its_gradients_and_only_rows_that_start_with_it(
    tokenizer,
):
    model = _trained(_model(tokenizer))
    ids, mask = _batch()
    ids, mask = _with_head(ids, [11, 12, 13, 14, 15]), _with_head(mask, [1] * 5)
    real = mask.bool()
    full = final_hidden(model, ids, mask)
    full[real].square().sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    prefix = FrozenPrefix.for_model(model, [2, 3])
    prefix.share_head([row[: int(n)].tolist() for row, n in zip(ids, mask.sum(1))])
    assert prefix.head is not None and prefix.head.length == 5
    calls = []
    layer0 = model.get_base_model().model.layers[0]
    hook = layer0.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    got = final_hidden(model, ids, mask, prefix=prefix)  # as a training step calls it: no head of its own
    hook.remove()
    assert calls == [ids.shape[1] - 5]  # the lower layers ran only the rows' own tokens
    torch.testing.assert_close(got[real], full[real], rtol=1e-5, atol=1e-5)
    got[real].square().sum().backward()
    # The head's own forward pass rounds differently: float32 noise, amplified by a random model, and no more.
    scale = max(grad.abs().max().item() for grad in want.values())
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-3, atol=1e-3 * scale)
    with torch.no_grad():  # a sequence that does not start with the head is computed whole
        other, other_mask = _batch()
        torch.testing.assert_close(
            final_hidden(model, other, other_mask, prefix=prefix)[other_mask.bool()],
            final_hidden(model, other, other_mask)[other_mask.bool()],
            rtol=1e-5,
            atol=1e-5,
        )


def test_a_shared_head_leaves_every_sequence_a_token_of_its_own(tokenizer):
    model = _model(tokenizer)
    assert SharedHead.build(model, [[5, 6, 7, 8, 9, 10]] * 2).length == 5
    assert SharedHead.build(model, [[5, 6, 7, 8, 9], [5, 6, 7, 1, 9]]) is None  # 3 tokens: not worth a pass
    assert SharedHead.build(model, [[1, 2, 3, 4, 5], [2, 2, 3, 4, 5]]) is None
    assert SharedHead.build(model, []) is None


def test_gradient_checkpointing_changes_no_gradient_with_or_without_the_cache(tokenizer):
    from plw_lab.core import compat

    model = _trained(_model(tokenizer))
    model.train()
    ids, mask = _batch()
    real = mask.bool()
    grads, top_layer_runs = {}, []
    mlp = model.get_base_model().model.layers[3].mlp
    run_mlp = mlp.forward  # counted through `forward` itself: a recompute does not call module hooks
    mlp.forward = lambda *a, **k: (top_layer_runs.append(1), run_mlp(*a, **k))[1]
    for checkpointing in (False, True):
        if checkpointing:
            compat.enable_checkpointing(model)
            assert compat.checkpointing_enabled(model)
        for cached in (False, True):
            prefix = FrozenPrefix.for_model(model, [2, 3]) if cached else None
            model.zero_grad()
            final_hidden(model, ids, mask, prefix=prefix)[real].square().sum().backward()
            grads[checkpointing, cached] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(top_layer_runs) == 2 + 2 * 2  # checkpointed: each backward runs the layer (its MLP) again
    want = grads[False, False]
    assert any(g.abs().sum() > 0 for g in want.values())
    for key, got in grads.items():
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=f"{key} {name}")
