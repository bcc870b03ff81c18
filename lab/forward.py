"""Running a causal LM to its final hidden states, without its output layer.

The loss functions in `lab.loss` apply the output layer themselves, chunk by chunk and only where
needed, so the model is asked for no logits at all (`logits_to_keep` selects no position) and
the hidden states are taken from its decoder with a forward hook. Calling the outermost model
(possibly DDP- or PEFT-wrapped) keeps data-parallel gradient syncing intact.
"""

from __future__ import annotations

import contextlib

import torch


def unwrap(model):
    """The plain transformers model under DDP/accelerate and PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def output_layer(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = unwrap(model).get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def supports_hidden_loss(model) -> bool:
    """Whether logits are exactly `hidden @ W.T + b` (no soft-capping or scaling after the head)."""
    config = unwrap(model).config
    return not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "output_multiplier"))


@contextlib.contextmanager
def _capture(decoder, store: dict):
    def hook(_module, _args, output):
        store["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, prefix=None, **model_kwargs) -> torch.Tensor:
    """Final (normalised) hidden states (B, T, H) of `model` on a batch; the output layer is not run.

    With a `lab.prefix.FrozenPrefix`, the frozen lower layers are read from its cache and only
    the adapted layers run.
    """
    store: dict = {}
    keep_none = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    with _capture(unwrap(model).get_decoder(), store):
        if prefix is None:
            model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep_none, use_cache=False, **model_kwargs)
        else:
            hidden_in = prefix.hidden_in(input_ids, attention_mask)
            with prefix.top_layers():
                model(inputs_embeds=hidden_in, attention_mask=attention_mask, logits_to_keep=keep_none, use_cache=False, **model_kwargs)
    return store["hidden"]


def logits_at(model, input_ids, attention_mask=None, keep: torch.Tensor | None = None, **model_kwargs) -> torch.Tensor:
    """Logits at the `keep` positions (B, T boolean), flattened to (n, V): the path for models whose
    output layer cannot be applied outside (soft-capped logits, sharded FSDP weights)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False, **model_kwargs)
    return out.logits
