"""Caching what the frozen lower layers compute.

With LoRA on the top layers only ("lora.layers: top:N"), every layer below the lowest adapted one
is frozen, with or without the adapter: the hidden state entering the lowest adapted layer is a
fixed function of the example's tokens. Training repeats examples every epoch and evaluation
repeats the validation set every interval, so the lab computes that hidden state once per example
and afterwards runs only the adapted layers. On a CPU, where a forward pass through 30 layers
dominates everything, this is the largest single saving after skipping logits.

It is exact for decoders whose layers see only the hidden state, the attention mask and rotary
positions (`plw_lab.core.compat.PROVEN_DECODERS`, each proven by tests/test_architectures.py); right
padding keeps each example's states independent of its batch-mates.
"""

from __future__ import annotations

import contextlib

import torch

from plw_lab.core import compat
from plw_lab.core.forward import SharedHead


class FrozenPrefix:
    """Per-example cache of the hidden states entering layer `first_adapted`."""

    def __init__(self, model, first_adapted: int, budget_bytes: int = 2 << 30):
        self.model = model
        self.first_adapted = first_adapted
        self.budget_bytes = budget_bytes
        #: When set, only rows whose tokens are in it are kept: a run that never draws a training example
        #: twice keeps just its validation set (`keep_only`).
        self.kept_rows: set[tuple[int, ...]] | None = None
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.cached_bytes = 0
        self.hits = self.misses = 0
        self.head: SharedHead | None = None
        self.head_ids: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model, adapted_layers: list[int] | None, **kwargs) -> FrozenPrefix | None:
        """A cache when it is exact and useful for this model and adapter placement, else None."""
        if adapted_layers is None or min(adapted_layers) == 0:
            return None
        if not compat.is_proven(model) or compat.adapted_embeddings(model):
            return None
        return cls(model, min(adapted_layers), **kwargs)

    def share_head(self, sequences: list[list[int]]) -> None:
        """Run the tokens every one of `sequences` starts with (a chat template's system turn) through the
        frozen layers once: each example computed later runs only its own tokens there.

        Valid for the whole run, adapter on or off, as only the frozen layers' part of the head is read.
        """
        self.head = SharedHead.build(self.model, sequences)
        self.head_ids = torch.tensor(sequences[0][: self.head.length]) if self.head is not None else None

    def keep_only(self, sequences: list[list[int]]) -> None:
        """Keep only these rows from now on: the others are computed when met and not kept, as a run that
        sees each training example once would only fill memory with states it never reads again."""
        self.kept_rows = {tuple(s) for s in sequences}

    def _own_head(self, input_ids: torch.Tensor, lengths: list[int]) -> SharedHead | None:
        """`self.head` when every row starts with it and has tokens of its own after it, else None."""
        if self.head is None or min(lengths) <= self.head.length:
            return None
        ids = self.head_ids.to(input_ids.device)
        return self.head if bool((input_ids[:, : self.head.length] == ids).all()) else None

    @torch.no_grad()
    def _compute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, head=None) -> torch.Tensor:
        skip = head.length if head is not None else 0
        cache = compat.cache_kwargs(head.cache(input_ids.shape[0]) if head is not None else None)
        with compat.decoder_layers(self.model, slice(0, self.first_adapted), skip_norm=True) as decoder:
            was_training = decoder.training
            decoder.eval()
            try:
                states = decoder(
                    input_ids=input_ids[:, skip:], attention_mask=attention_mask, use_cache=False, **cache
                ).last_hidden_state
            finally:
                decoder.train(was_training)
        return states if head is None else head.join(self.first_adapted, states)

    def hidden_in(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, head=None) -> torch.Tensor:
        """(B, T, H) hidden states entering the lowest adapted layer; padding positions are zeros.

        A `plw_lab.core.forward.SharedHead` of the same model lets uncached rows skip their head's tokens;
        without one, the head of `share_head` serves the rows that start with it."""
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(row[:n].tolist()) for row, n in zip(input_ids, lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh = {}
        if missing:
            if head is None:
                head = self._own_head(input_ids[missing], [lengths[i] for i in missing])
            states = self._compute(input_ids[missing], attention_mask[missing], head)
            for row, i in enumerate(missing):
                fresh[keys[i]] = states[row, : lengths[i]]
                wanted = self.kept_rows is None or keys[i] in self.kept_rows
                if wanted and self.cached_bytes < self.budget_bytes:
                    self.cache[keys[i]] = fresh[keys[i]].clone()
                    self.cached_bytes += fresh[keys[i]].numel() * fresh[keys[i]].element_size()
        first = fresh.get(keys[0], self.cache.get(keys[0]))
        out = first.new_zeros(input_ids.shape[0], input_ids.shape[1], first.shape[-1])
        for i, key in enumerate(keys):
            out[i, : lengths[i]] = fresh[key] if key in fresh else self.cache[key]
        return out

    @contextlib.contextmanager
    def top_layers(self):
        """Within this block, calling the model with `inputs_embeds=hidden_in(...)` runs only the adapted layers."""
        with compat.decoder_layers(self.model, slice(self.first_adapted, None), skip_norm=False):
            yield
