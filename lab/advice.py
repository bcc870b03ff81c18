"""Warnings a practitioner would want before and during a run."""

from __future__ import annotations

from .config import LabConfig

#: Beyond this share of predictions on one answer, the model has collapsed to it.
COLLAPSE_SHARE = 0.9


def before_training(cfg: LabConfig, n_train: int, total_steps: int) -> list[str]:
    t = cfg.train
    notes = []
    examples_seen = total_steps * t.batch_size * t.grad_accum
    epochs = examples_seen / max(n_train, 1)
    if epochs > 20:
        notes.append(
            f"{epochs:.0f} epochs over {n_train} training examples: the adapter will memorise them. "
            "Use fewer steps or early stopping on completion loss or accuracy."
        )
    if t.max_steps > 0 and t.epochs != 1.0:
        notes.append(f"train.epochs={t.epochs:g} is ignored because train.max_steps={t.max_steps} is set; set max_steps to 0 to train by epochs.")
    if t.learning_rate == 0:
        notes.append("train.learning_rate is 0: the adapter never changes, so the run only measures the base model. Set a learning rate such as 2e-4.")
    if t.max_steps == 0 and t.epochs == 0:
        notes.append(
            f"train.epochs and train.max_steps are both 0: the run takes the minimum of {total_steps} optimiser step(s). "
            "Set train.epochs (e.g. 1) or train.max_steps."
        )
    if t.learning_rate > 3e-3:
        notes.append(f"learning rate {t.learning_rate:g} is far above LoRA norms (1e-4 to 1e-3): expect instability or collapse.")
    if cfg.lora.r > 64 and n_train < 1000:
        notes.append(f"LoRA rank {cfg.lora.r} on {n_train} examples: a small rank (4-16) overfits less.")
    if t.early_stopping_metric == "full_loss":
        notes.append("early stopping on full-sequence loss: it is dominated by prompt tokens and can pick a far worse checkpoint than completion loss or accuracy.")
    if n_train < 50:
        notes.append(f"only {n_train} training examples: watch the predicted-answer distribution for collapse to one answer.")
    return notes


def collapse(metrics: dict) -> str | None:
    """A warning when nearly every prediction is the same answer while the true answers are mixed."""
    predicted = metrics.get("predicted") or {}
    total = sum(predicted.values())
    if total < 5:
        return None
    answer, count = max(predicted.items(), key=lambda kv: kv[1])
    share = count / total
    if share >= COLLAPSE_SHARE and share > metrics.get("majority_baseline", 1.0) + 0.05:
        return (
            f"predictions collapsed: {share:.0%} of validation answers are {answer!r} while the true answers are mixed "
            f"(majority baseline {metrics['majority_baseline']:.0%})."
        )
    return None
