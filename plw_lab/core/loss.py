"""The prompt-loss-weighted cross-entropy.

Token t gets weight w_t = (PLW * prompt_mask_t + lambda_r * completion_mask_t) * d_t, where lambda_r
is the completion weight of Weighted Instruction Tuning (1 unless set) and d_t the weight the data
gives the token's record or message (1 unless set), and the loss of an optimiser
step is sum(w * CE) / N, where N is the sum of the weights ("sum_weights") or the number of
tokens with non-zero weight ("count_nonzero") over *all* micro-batches and processes of the
step, so gradient accumulation and data parallelism give the update of one big batch.

Nothing here holds the full batch x length x vocabulary logits: `weighted_ce` takes the final
hidden states and the output-layer weight, drops positions whose weight is 0 (most of the
sequence at PLW 0), and computes the logits a chunk of positions at a time, producing the exact
gradient in the same pass (the fused linear cross-entropy trick).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from plw_lab.core.weights import check_weights, weight_rule

NORMALIZATIONS = ("sum_weights", "count_nonzero")


def token_weights(
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    plw: float,
    completion_weight: float = 1.0,
    data_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`plw_lab.core.weights.weight_rule` over whole masks, as float tensors."""
    check_weights(plw, completion_weight)
    weights = weight_rule(prompt_mask.float(), completion_mask.float(), plw, completion_weight)
    return weights if data_weight is None else weights * data_weight.float()


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


def _gradient_buffers(hidden, weight, bias):
    """Which of hidden, head weight and bias need gradients, and zeroed buffers for those that do."""
    needs_h, needs_w = hidden.requires_grad, weight.requires_grad
    needs_b = bias is not None and bias.requires_grad
    grad_h = torch.empty_like(hidden) if needs_h else None
    grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs_w else None
    grad_b = torch.zeros_like(bias, dtype=torch.float32) if needs_b else None
    return needs_h, needs_w, needs_b, grad_h, grad_w, grad_b


def _keep_gradients(ctx, hidden, weight, bias, grads) -> None:
    ctx.save_for_backward(*(g for g in grads if g is not None))
    ctx.which = tuple(g is not None for g in grads)
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)


def _kept_gradients(ctx, grad_out) -> list:
    """The gradients formed in the forward pass, scaled by the incoming gradient: [hidden, weight, bias]."""
    saved = iter(ctx.saved_tensors)
    return [(next(saved) * grad_out).to(dtype) if needed else None for needed, dtype in zip(ctx.which, ctx.dtypes)]


class _ChunkedLinearCE(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W.T + b, y_i), with the gradient computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_w, chunk_size):
        needs_h, needs_w, needs_b, grad_h, grad_w, grad_b = _gradient_buffers(hidden, weight, bias)
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
        _keep_gradients(ctx, hidden, weight, bias, (grad_h, grad_w, grad_b))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = _kept_gradients(ctx, grad_out)
        return grad_h, grad_w, grad_b, None, None, None


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
def head_logits(
    hidden: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor | None = None, softcap: float | None = None
) -> torch.Tensor:
    """Float logits of the output layer, soft-capped as the model caps them (`plw_lab.core.compat.logit_softcap`)."""
    # Under bf16 mixed precision the final states can come back in float32 (the Trainer's autocast
    # wrapper converts outputs) while the output layer stays in bfloat16.
    logits = F.linear(hidden.to(head_weight.dtype), head_weight, head_bias).float()
    return softcap * torch.tanh(logits / softcap) if softcap else logits


def token_ce(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and whether the arg-max token is the target, chunked; for evaluation.

    `hidden` may carry batch dimensions (..., H) with `targets` (...): the results have the targets' shape.
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    scores = token_ce_kl(flat_h, head_weight, targets.reshape(-1), None, chunk_size, head_bias, softcap)
    ce, best = scores.ce, scores.best
    return ce.view(targets.shape), (best == targets.reshape(-1)).view(targets.shape)


# -- regularisation toward the base model ---------------------------------------------------------


def weighted_kl_from_logits(logits: torch.Tensor, base_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * KL(p || p_base)) from aligned logits (..., V): the plain reference, full logits and all.

    p is the adapted model's next-token distribution, p_base the base model's (the adapter off):
    KL(p || p_base) = sum_v p_v (log p_v - log p_base_v), the direction of the RLHF KL penalty.
    """
    log_p = torch.log_softmax(logits.float(), -1)
    log_base = torch.log_softmax(base_logits.float(), -1)
    kl = (log_p.exp() * (log_p - log_base)).sum(-1)
    return (kl * weights).sum()


class _ChunkedLinearKL(torch.autograd.Function):
    """sum_i w_i * KL(softmax(h_i W.T + b) || softmax(g_i W.T + b)), gradients formed chunk by chunk.

    g are the base model's hidden states and carry no gradient; the output layer is shared, so
    when it is trained it also receives the gradient through the base logits.
    """

    @staticmethod
    def forward(ctx, hidden, base_hidden, weight, bias, token_w, chunk_size):
        needs_h, needs_w, needs_b, grad_h, grad_w, grad_b = _gradient_buffers(hidden, weight, bias)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            g = base_hidden[start : start + chunk_size]
            w = token_w[start : start + chunk_size, None]
            log_p = torch.log_softmax(F.linear(h, weight, bias).float(), -1)
            log_base = torch.log_softmax(F.linear(g, weight, bias).float(), -1)
            p = log_p.exp()
            diff = log_p.sub_(log_base)  # log p - log p_base, in the log_p buffer
            kl = (p * diff).sum(-1, keepdim=True)
            total += (kl * w).sum()
            if not (needs_h or needs_w or needs_b):
                continue
            # d KL / d logits = p * (log p - log p_base - KL); through the base logits: p_base - p.
            grad_logits = diff.sub_(kl).mul_(p).mul_(w)
            if needs_h:
                grad_h[start : start + chunk_size] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if needs_w or needs_b:
                grad_base = log_base.exp_().sub_(p).mul_(w)
            if needs_w:
                grad_w += grad_logits.t() @ h.float() + grad_base.t() @ g.float()
            if needs_b:
                grad_b += grad_logits.sum(0) + grad_base.sum(0)
        _keep_gradients(ctx, hidden, weight, bias, (grad_h, grad_w, grad_b))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = _kept_gradients(ctx, grad_out)
        return grad_h, None, grad_w, grad_b, None, None


def weighted_kl(
    hidden: torch.Tensor,
    base_hidden: torch.Tensor,
    head_weight: torch.Tensor,
    weights: torch.Tensor,
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum(w * KL(p || p_base)) from aligned hidden states of the adapted and the base model (..., H).

    Only positions with non-zero weight reach the output layer, a chunk at a time; the result
    equals `weighted_kl_from_logits` on the full logits, gradient included.
    """
    keep = weights.reshape(-1) > 0
    h = hidden.reshape(-1, hidden.shape[-1])[keep]
    if h.shape[0] == 0:
        return hidden.sum() * 0.0
    g = base_hidden.reshape(-1, base_hidden.shape[-1])[keep].detach()
    w = weights.reshape(-1)[keep].float()
    return _ChunkedLinearKL.apply(h, g, head_weight, head_bias, w, chunk_size)


@dataclass
class BaseDistributions:
    """The base model's next-token distributions at a set of positions, as its final hidden states and
    each distribution's log-normaliser.

    An evaluation's `kl_to_base` needs the base model's distribution at every validation position,
    and the base model never changes during a run: its states and log-normalisers are computed at
    the first evaluation and kept (H + 1 numbers per position); later evaluations apply the output
    layer to the states and never normalise those logits again (`token_ce_kl`).
    """

    hidden: torch.Tensor  # (n, H) the base model's final hidden states
    log_normaliser: torch.Tensor  # (n,) logsumexp of the base logits at each position

    def __len__(self) -> int:
        return self.hidden.shape[0]


@torch.no_grad()
def base_distributions(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> BaseDistributions:
    """`BaseDistributions` of the base model's final states `hidden` (n, H), a chunk of logits at a time."""
    lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        lse[start : start + chunk_size] = torch.logsumexp(
            head_logits(hidden[start : start + chunk_size], head_weight, head_bias, softcap), -1
        )
    return BaseDistributions(hidden.detach(), lse)


class TokenScores(NamedTuple):
    """Per-position results of `token_ce_kl`, each of shape (n,)."""

    ce: torch.Tensor
    best: torch.Tensor  # the arg-max token
    kl: torch.Tensor | None  # KL(p || p_base); None without a base
    log_normaliser: torch.Tensor  # logsumexp of the logits: the base's own when this model is the base
    #: position -> log p of each token `picks` asked for there, from the same logits as `ce`.
    picked: dict = {}

    def as_base(self, hidden: torch.Tensor) -> BaseDistributions:
        """These positions as the base's distributions, for when the scored model is the base model."""
        return BaseDistributions(hidden.detach(), self.log_normaliser)


@torch.no_grad()
def token_ce_kl(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    base: BaseDistributions | None = None,
    chunk_size: int = 1024,
    head_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    picks: dict[int, list[int]] | None = None,
) -> TokenScores:
    """Per-position cross-entropy, arg-max token and, with `base`, the exact KL(p || p_base), for `hidden`
    (n, H) and `targets` (n,), from one pass over each chunk's logits; for evaluation. `picks` maps a
    position to tokens whose log-probabilities it also returns (an answer's candidates): read from the
    same logits and log-normaliser, the target's is exactly minus its cross-entropy.

    With l and m the adapted and the base logits, p = softmax(l) and Z_l, Z_m their log-normalisers,

        KL(p || p_base) = sum_v p_v (l_v - m_v) - (Z_l - Z_m),

    so past the two matrix products a chunk costs a maximum, one exponential, one sum and one dot
    product over the vocabulary: the base's log-normaliser is `base.log_normaliser`, and no
    log-softmax is written. Each chunk holds two (chunk_size, V) float32 buffers at most.
    """
    n = hidden.shape[0]
    ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    best = torch.empty(n, dtype=torch.long, device=hidden.device)
    kl = torch.empty(n, dtype=torch.float32, device=hidden.device) if base is not None else None
    picked = {}
    for start in range(0, n, chunk_size):
        window = slice(start, start + chunk_size)
        logits = head_logits(hidden[window], head_weight, head_bias, softcap)
        y = targets[window].clamp_min(0)[:, None]
        top, best[window] = logits.max(-1)
        target_logit = logits.gather(1, y).squeeze(1)
        here = [i for i in picks or () if start <= i < start + chunk_size]
        for i in here:  # before the buffer is overwritten below
            picked[i] = logits[i - start, picks[i]]
        if base is not None:
            moved = head_logits(base.hidden[window], head_weight, head_bias, softcap).neg_().add_(logits)
        scaled = logits.sub_(top[:, None]).exp_()  # exp(l - max l), in the logits' buffer
        total = scaled.sum(-1)
        log_normaliser = lse[window] = top + total.log()
        ce[window] = log_normaliser - target_logit
        for i in here:
            picked[i] = picked[i] - log_normaliser[i - start]
        if base is not None:
            expected_move = torch.linalg.vecdot(scaled, moved) / total
            # KL is never negative; rounding can make a near-zero difference dip below 0.
            kl[window] = (expected_move - (log_normaliser - base.log_normaliser[window])).clamp_min_(0.0)
    return TokenScores(ce, best, kl, lse, picked)


def lora_update_sq_norm(pairs) -> torch.Tensor:
    """sum over adapted layers of ||s B A||_F^2, the squared size of each LoRA update delta W = s B A.

    `pairs` yields (A (r, in), B (out, r), s). ||BA||_F^2 = <B^T B, A A^T>_F, so only r x r
    matrices are formed, never the out x in update. Penalising it pulls the adapted model toward
    the base weights; weight decay on A and B instead shrinks each factor, which also pulls on A
    while B (and so the update) is still zero.
    """
    total = None
    for a, b, scale in pairs:
        term = (scale**2) * ((b.t() @ b) * (a @ a.t())).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the model has no LoRA layers to penalise")
    return total
