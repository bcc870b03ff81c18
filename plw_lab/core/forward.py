"""Running a causal LM to its final hidden states, without its output layer.

The loss functions in `plw_lab.core.loss` apply the output layer themselves, chunk by chunk and only where
needed, so the model is asked for no logits at all (`logits_to_keep` selects no position) and
the hidden states are taken from its decoder with a forward hook. Calling the outermost model
(possibly DDP- or PEFT-wrapped) keeps data-parallel gradient syncing intact.
"""

from __future__ import annotations

import torch

from plw_lab.core import compat


def supports_hidden_loss(model) -> bool:
    """Whether logits are exactly `hidden @ W.T + b` of the base output layer (see `compat.hidden_loss_blocker`)."""
    return not compat.hidden_loss_blocker(model)


class SharedHead:
    """The tokens every sequence of a set starts with, run once for a pass without gradients.

    A chat template puts the same system turn before every example (SmolLM2's is 24 tokens of a
    typical 110), so an evaluation runs those tokens once: each batch then attends to their cached
    keys and values and runs only its own tokens, and every row shares their hidden states. The
    adapter's layers are part of the head, so it is valid for one model state only.
    """

    def __init__(
        self, length: int, keys_values: list[tuple[torch.Tensor, torch.Tensor]], states: tuple[torch.Tensor, ...], model
    ):
        self.length = length
        self.model = model
        self.keys_values = keys_values
        #: states[i] is the hidden state entering layer i; states[-1] the final normalised one.
        self.states = states

    @classmethod
    @torch.no_grad()
    def build(cls, model, sequences: list[list[int]], minimum: int = 4) -> SharedHead | None:
        """The head of `sequences` (at least `minimum` tokens, leaving each at least one of its own), or None."""
        if not sequences or not compat.is_proven(model):
            return None
        window = compat.sliding_window(model)
        if window is not None and max(len(s) for s in sequences) > window:
            return None  # beyond a sliding window the head's cache is cut to the window: proven only within it
        first, shortest = sequences[0], min(len(s) for s in sequences)
        length = 0
        while length < shortest - 1 and all(s[length] == first[length] for s in sequences):
            length += 1
        if length < minimum:
            return None
        device = next(model.parameters()).device
        ids = torch.tensor([first[:length]], device=device)
        cache = compat.new_cache(model)
        keep_none = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        out = model(
            input_ids=ids,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=keep_none,
            **compat.cache_kwargs(cache),
        )
        return cls(length, compat.cache_keys_values(cache), tuple(out.hidden_states), model)

    def cache(self, batch: int):
        """A fresh cache holding the head for `batch` rows (a forward pass appends to the cache it is given)."""
        return compat.prefilled_cache(self.model, self.keys_values, batch)

    def join(self, layer: int, rest: torch.Tensor) -> torch.Tensor:
        """The head's state entering `layer` (-1: the final one) followed by the rows' own states `rest` (B, T, H)."""
        return torch.cat([self.states[layer].expand(rest.shape[0], -1, -1), rest], dim=1)


def final_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    prefix=None,
    head: SharedHead | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Final (normalised) hidden states (B, T, H) of `model` on a batch; the output layer is not run.

    With a `plw_lab.core.prefix.FrozenPrefix`, the frozen lower layers are read from its cache and only
    the adapted layers run. With a `SharedHead` (no gradients), only the tokens after it run.
    """
    store: dict = {}
    skip = head.length if head is not None else 0
    if head is not None and attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep_none = torch.zeros(input_ids[:, skip:].shape, dtype=torch.bool, device=input_ids.device)
    cache = compat.cache_kwargs(head.cache(input_ids.shape[0]) if head is not None else None)
    with compat.capture_final_hidden(model, store):
        if prefix is None:
            model(
                input_ids=input_ids[:, skip:],
                attention_mask=attention_mask,
                logits_to_keep=keep_none,
                use_cache=False,
                **cache,
                **model_kwargs,
            )
        else:
            hidden_in = prefix.hidden_in(input_ids, attention_mask, head)
            with prefix.top_layers():
                model(
                    inputs_embeds=hidden_in[:, skip:],
                    attention_mask=attention_mask,
                    logits_to_keep=keep_none,
                    use_cache=False,
                    **cache,
                    **model_kwargs,
                )
    return store["hidden"] if head is None else head.join(-1, store["hidden"])


def logits_at(model, input_ids, attention_mask=None, keep: torch.Tensor | None = None, **model_kwargs) -> torch.Tensor:
    """Logits at the `keep` positions (B, T boolean), flattened to (n, V): the path for models whose
    output layer cannot be applied outside (soft-capped logits, sharded FSDP weights)."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False, **model_kwargs
    )
    return out.logits
