"""Packing several examples into one row, kept apart and weighted exactly as if they were alone.

A micro-batch of variable-length examples is padded to its longest example, so short examples
next to a long one are mostly padding, and padding costs as much compute as real tokens. Packing
places the examples of a micro-batch into as few rows as possible (best-fit decreasing, rows as
wide as the longest example), so the micro-batch, the optimiser step and the loss stay those of
the unpacked run while the padding mostly disappears.

Three things keep a packed row equal to its examples run one by one:

* positions restart at 0 for every example (`position_ids`), so rotary embeddings see the same
  offsets;
* attention stays inside each example: a block-diagonal causal 4D mask (boolean for sdpa, additive
  float for eager attention), or, with flash-attention, one flattened row without padding whose
  restarting `position_ids` transformers turns into `cu_seqlens` for the varlen kernel;
* nothing learns across a boundary: the first token of every example gets prompt and completion
  mask 0, so the position before it (the last token of the previous example) has weight 0, just
  as the unpacked loss never predicts an example's first token. `labels` follow the same rule.

Trailing padding of a row is its own causal block (never a fully masked query row, which would
give NaN in sdpa and poison the backward pass) and has weight 0.

`packing_efficiency` tells a front end how much of the compute goes to real tokens with and
without packing, for a data set's lengths and the batch size.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import torch

from plw_lab.core.masks import Encoded

#: How the packed rows keep examples apart, by attention implementation.
MASK_KINDS = ("bool", "float", "flat")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` tokens, best-fit decreasing.

    Items are placed longest first, each into the open bin with the least room left that still
    fits it; a new bin is opened when none does. Bins keep their items in placement order.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"an item of length {max(lengths)} does not fit into rows of {capacity} tokens")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # (room left, bin number), kept sorted so the tightest fitting bin is a bisect away
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
    return bins


def attention_kind(model) -> str:
    """The packing layout a model's attention implementation needs: 'bool', 'float' or 'flat'."""
    from plw_lab.core.compat import attention_implementation

    impl = attention_implementation(model)
    if "flash" in impl:
        return "flat"  # varlen kernels: one row, no mask, cu_seqlens from the restarting position_ids
    if impl == "eager":
        return "float"  # eager adds the mask to the scores; a boolean mask would be added as 0/1
    return "bool"


def block_causal_mask(
    segments: torch.Tensor, kind: str = "bool", dtype: torch.dtype = torch.float32, window: int | None = None
) -> torch.Tensor:
    """(R, 1, W, W) mask from per-token segment ids (R, W): causal inside a segment, closed across;
    with a sliding `window`, a query sees only the `window` latest positions (itself included)."""
    width = segments.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    if window is not None:
        causal = causal.triu(1 - window)
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    if kind == "float":
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
    raise ValueError(f"mask kind must be 'bool' or 'float', got {kind!r}")


def collate_packed(
    batch: list[Encoded],
    pad_id: int = 0,
    kind: str = "bool",
    width: int | None = None,
    pad_to_multiple_of: int = 1,
    mask_dtype: torch.dtype = torch.float32,
    windows: dict[str, int | None] | None = None,
) -> dict[str, torch.Tensor]:
    """The micro-batch `batch` packed into rows.

    Returns `input_ids`, `position_ids`, `prompt_mask`, `completion_mask`, `data_weight`, `labels` (R, W),
    `attention_mask` ((R, 1, W, W) block-diagonal causal; absent for `kind='flat'`), `seq_lens`
    (the example lengths in row order, for cu_seqlens) and `num_tokens` (real tokens).
    Rows are `width` tokens wide (default: the longest example, rounded up to `pad_to_multiple_of`).
    With `kind='flat'` (flash-attention varlen) everything is one row without padding.
    `windows` (from `plw_lab.core.compat.attention_windows`) maps layer types to their sliding window: a
    model given a 4D mask applies no window of its own, so the mask carries it, one per layer type
    (the key '' stands for a single mask for every layer).
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    lengths = [len(e) for e in batch]
    if kind == "flat":
        rows = [list(range(len(batch)))]
        width = sum(lengths)
    else:
        width = width or max(lengths)
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        rows = best_fit_decreasing(lengths, width)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.zeros(shape, dtype=torch.long)
    prompt = torch.zeros(shape, dtype=torch.long)
    completion = torch.zeros(shape, dtype=torch.long)
    data_weight = torch.ones(shape, dtype=torch.float32)
    seq_lens = []
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            e, n = batch[i], lengths[i]
            input_ids[r, at : at + n] = torch.tensor(e.input_ids)
            position_ids[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = s
            prompt[r, at : at + n] = torch.tensor(e.prompt_mask)
            completion[r, at : at + n] = torch.tensor(e.completion_mask)
            if e.data_weight:
                data_weight[r, at : at + n] = torch.tensor(e.data_weight)
            # The first token of an example is never a target: zero weight on the boundary position.
            prompt[r, at] = completion[r, at] = 0
            seq_lens.append(n)
            at += n
        if at < width:  # trailing padding: its own causal block, weight 0
            position_ids[r, at:] = torch.arange(width - at)
            segments[r, at:] = len(row)
    labels = torch.where((prompt + completion) > 0, input_ids, torch.full_like(input_ids, -100))
    out = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "prompt_mask": prompt,
        "completion_mask": completion,
        "data_weight": data_weight,
        "labels": labels,
        "seq_lens": torch.tensor(seq_lens, dtype=torch.long),
        "num_tokens": torch.tensor(sum(lengths), dtype=torch.long),
    }
    if kind != "flat":
        masks = {
            name: block_causal_mask(segments, kind, mask_dtype, window)
            for name, window in (windows or {"": None}).items()
        }
        out["attention_mask"] = masks[""] if "" in masks else masks
    return out


class PackingCollator:
    """A picklable packing collate function (see `collate_packed`)."""

    def __init__(
        self,
        pad_id: int,
        kind: str = "bool",
        pad_to_multiple_of: int = 1,
        mask_dtype: torch.dtype = torch.float32,
        windows: dict | None = None,
    ) -> None:
        self.pad_id, self.kind, self.pad_to_multiple_of, self.mask_dtype = pad_id, kind, pad_to_multiple_of, mask_dtype
        self.windows = windows

    def __call__(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        return collate_packed(
            batch, self.pad_id, self.kind, None, self.pad_to_multiple_of, self.mask_dtype, self.windows
        )


def model_kwargs(batch: dict) -> dict:
    """What a (packed or padded) batch passes to the model besides `input_ids`."""
    kwargs = {"attention_mask": batch.get("attention_mask")}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    return kwargs


def num_tokens(batch: dict) -> int:
    """Real (non-padding) tokens in a packed or padded batch."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    return int(batch["attention_mask"].sum())


# -- efficiency ---------------------------------------------------------------------------------


def packing_efficiency(
    lengths: Sequence[int],
    max_length: int | None = None,
    batch_size: int = 8,
    seed: int | None = 0,
) -> dict:
    """Share of computed token slots that hold real tokens, padded to the longest vs packed.

    `lengths` are tokenised example lengths (clipped to `max_length`, as the encoder truncates);
    micro-batches are `batch_size` consecutive examples after a shuffle with `seed` (None: in the
    given order), like the trainer's random batches. Returns `padded` and `packed` (fractions in
    (0, 1]), `speedup` (padded slots / packed slots, the expected gain in useful tokens per
    second when compute is proportional to slots), and the counts behind them.
    """
    lengths = [min(int(n), max_length) if max_length else int(n) for n in lengths]
    lengths = [n for n in lengths if n > 0]
    if not lengths:
        return {
            "padded": float("nan"),
            "packed": float("nan"),
            "speedup": float("nan"),
            "tokens": 0,
            "padded_slots": 0,
            "packed_slots": 0,
            "rows": 0,
            "batches": 0,
        }
    if seed is not None:
        lengths = lengths[:]
        random.Random(seed).shuffle(lengths)
    tokens = sum(lengths)
    padded_slots = packed_slots = rows = batches = 0
    for start in range(0, len(lengths), batch_size):
        chunk = lengths[start : start + batch_size]
        width = max(chunk)
        padded_slots += width * len(chunk)
        n_rows = len(best_fit_decreasing(chunk, width))
        packed_slots += width * n_rows
        rows += n_rows
        batches += 1
    return {
        "padded": tokens / padded_slots,
        "packed": tokens / packed_slots,
        "speedup": padded_slots / packed_slots,
        "tokens": tokens,
        "padded_slots": padded_slots,
        "packed_slots": packed_slots,
        "rows": rows,
        "batches": batches,
    }
