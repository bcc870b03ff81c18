"""The token-weight rule, the one place it is written.

    weight = (PLW x prompt_mask + lambda_r x completion_mask) x data weight

The loss (`plw_lab.core.loss`) applies it to tensors, the token views and the notebook widgets to
plain lists; this module imports no torch, so the views stay light.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_weights(plw: float, completion_weight: float = 1.0) -> None:
    """Both weights live in [0, 1]: a prompt weighted above the completion is no longer SFT."""
    if not 0.0 <= plw <= 1.0:
        raise ValueError(f"prompt_loss_weight must be in [0, 1], got {plw}")
    if not 0.0 <= completion_weight <= 1.0:
        raise ValueError(f"completion_loss_weight must be in [0, 1], got {completion_weight}")


def weight_rule(prompt, completion, plw: float, completion_weight: float = 1.0, data_weight=1.0):
    """One token's weight, or a whole tensor's: the arithmetic is the same for floats and tensors."""
    return (plw * prompt + completion_weight * completion) * data_weight


def token_weight_values(
    prompt_mask: Sequence[int],
    completion_mask: Sequence[int],
    plw: float,
    completion_weight: float = 1.0,
    data_weight: Sequence[float] | None = None,
) -> list[float]:
    """The weight of each token as a training target. The first token is 0 whatever its masks:
    nothing before it predicts it."""
    check_weights(plw, completion_weight)
    data_weight = data_weight or [1.0] * len(prompt_mask)
    weights = [
        float(weight_rule(p, c, plw, completion_weight, d))
        for p, c, d in zip(prompt_mask, completion_mask, data_weight)
    ]
    return [0.0, *weights[1:]] if weights else weights
