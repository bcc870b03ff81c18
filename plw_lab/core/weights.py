"""The token-weight rule, the one place it is written.

    weight = (PLW x prompt_mask + lambda_r x completion_mask) x data weight

The loss (`plw_lab.core.loss`) applies it to tensors, the token views and the notebook widgets to
plain lists; this module imports no torch, so the views stay light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: `train.plw_schedule` values: how PLW moves from `prompt_loss_weight` to `plw_end` over a run.
PLW_SCHEDULES = ("constant", "linear", "cosine", "step")


def check_weights(plw: float, completion_weight: float = 1.0) -> None:
    """Both weights live in [0, 1]: a prompt weighted above the completion is no longer SFT."""
    if not 0.0 <= plw <= 1.0:
        raise ValueError(f"prompt_loss_weight must be in [0, 1], got {plw}")
    if not 0.0 <= completion_weight <= 1.0:
        raise ValueError(f"completion_loss_weight must be in [0, 1], got {completion_weight}")


def plw_at(schedule: str, start: float, end: float, step: int, total_steps: int) -> float:
    """The PLW in force while optimiser step `step` (0-based) of `total_steps` is taken.

    The first step trains at `start` and the last at `end`, so a 1 -> 0 schedule really ends on
    completion-only loss. The PLW depends on the step alone, which makes a resumed run identical.
    """
    if schedule == "constant":
        return start
    progress = min(1.0, max(0.0, step / max(1, total_steps - 1)))
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2
    if schedule == "step":
        return start if progress < 0.5 else end
    raise ValueError(f"train.plw_schedule must be one of {', '.join(PLW_SCHEDULES)}, got {schedule!r}")


def plw_range(schedule: str, start: float, end: float) -> tuple[float, float]:
    """The lowest and highest PLW a schedule reaches (every schedule moves monotonically between its ends)."""
    values = (start,) if schedule == "constant" else (start, end)
    return min(values), max(values)


def plw_text(schedule: str, start: float, end: float) -> str:
    """PLW as people read it: "0.1", or "1→0 linear" under a schedule."""
    return f"{start:g}" if schedule == "constant" else f"{start:g}→{end:g} {schedule}"


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
