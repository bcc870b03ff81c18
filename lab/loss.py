"""The prompt-loss-weighted cross-entropy.

Token t gets weight w_t = PLW * prompt_mask_t + completion_mask_t, and the loss of an optimiser
step is sum(w * CE) / N, where N is the sum of the weights ("sum_weights") or the number of
tokens with non-zero weight ("count_nonzero") over *all* micro-batches and processes of the
step, so gradient accumulation and data parallelism give the update of one big batch.

Nothing here holds the full batch x length x vocabulary logits: `weighted_ce` takes the final
hidden states and the output-layer weight, drops positions whose weight is 0 (most of the
sequence at PLW 0), and computes the logits a chunk of positions at a time, producing the exact
gradient in the same pass (the fused linear cross-entropy trick).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALIZATIONS = ("sum_weights", "count_nonzero")


def token_weights(prompt_mask: torch.Tensor, completion_mask: torch.Tensor, plw: float) -> torch.Tensor:
    if not 0.0 <= plw <= 1.0:
        raise ValueError(f"prompt_loss_weight must be in [0, 1], got {plw}")
    return plw * prompt_mask.float() + completion_mask.float()


def shift_for_targets(weights: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t+1, so it carries token t+1's weight; the last position predicts nothing."""
    return weights[..., 1:]


def normalizer(shifted_weights: torch.Tensor, mode: str = "sum_weights") -> torch.Tensor:
    if mode == "sum_weights":
        return shifted_weights.sum()
    if mode == "count_nonzero":
        return (shifted_weights > 0).sum().to(shifted_weights.dtype)
    raise ValueError(f"loss normalisation must be one of {NORMALIZATIONS}, got {mode!r}")


def weighted_ce_from_logits(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * CE) from aligned logits (..., V), targets (...) and weights (...): the plain reference."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (ce * weights.reshape(-1)).sum()


class _ChunkedLinearCE(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W.T + b, y_i), with the gradient computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_w, chunk_size):
        needs_h, needs_w = hidden.requires_grad, weight.requires_grad
        needs_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if needs_b else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = targets[start : start + chunk_size]
            w = token_w[start : start + chunk_size]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * w).sum()
            if needs_h or needs_w or needs_b:
                # d CE / d logits = softmax - onehot, scaled by the token weight; reuse the logits buffer.
                grad_logits = logits.sub_(lse[:, None]).exp_()
                grad_logits[torch.arange(len(y), device=y.device), y] -= 1.0
                grad_logits.mul_(w[:, None])
                if needs_h:
                    grad_h[start : start + chunk_size] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
                if needs_w:
                    grad_w += grad_logits.t() @ h.float()
                if needs_b:
                    grad_b += grad_logits.sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.which = (needs_h, needs_w, needs_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = []
        for needed, dtype in zip(ctx.which, ctx.dtypes):
            grads.append((next(saved) * grad_out).to(dtype) if needed else None)
        return grads[0], grads[1], grads[2], None, None, None


def weighted_ce(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum(w * CE) from aligned hidden states (..., H), targets (...) and weights (...).

    Positions with weight 0 never reach the output layer. The result equals
    `weighted_ce_from_logits(hidden @ W.T + b, targets, weights)`, gradient included.
    """
    keep = weights.reshape(-1) > 0
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    y = targets.reshape(-1)[keep]
    w = weights.reshape(-1)[keep].float()
    if h.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected so every process still runs backward
    return _ChunkedLinearCE.apply(h, head_weight, head_bias, y, w, chunk_size)


@torch.no_grad()
def token_ce(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and whether the arg-max token is the target, chunked; for evaluation."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = targets.reshape(-1)
    ce = torch.empty(flat_y.shape, dtype=torch.float32, device=hidden.device)
    hit = torch.empty(flat_y.shape, dtype=torch.bool, device=hidden.device)
    for start in range(0, flat_h.shape[0], chunk_size):
        logits = F.linear(flat_h[start : start + chunk_size], head_weight, head_bias).float()
        y = flat_y[start : start + chunk_size]
        ce[start : start + chunk_size] = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        hit[start : start + chunk_size] = logits.argmax(-1) == y
    return ce.view(targets.shape), hit.view(targets.shape)
