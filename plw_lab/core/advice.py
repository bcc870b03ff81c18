"""Warnings a practitioner would want before and during a run."""

from __future__ import annotations

from plw_lab.core.config import LabConfig
from plw_lab.core.scores import binomial_tail

#: Collapse: at least this share of predictions on one answer ...
COLLAPSE_SHARE = 0.8
#: ... and at least this much above that answer's true share ...
COLLAPSE_EXCESS = 0.3
#: ... and more predictions of it than a model answering it at its true share would give by chance (one-sided binomial).
COLLAPSE_P = 0.05


def before_training(cfg: LabConfig, n_train: int, total_steps: int, has_answers: bool = False) -> list[str]:
    """`has_answers`: the data has candidate answers (multiple choice or classification)."""
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
        notes.append(
            f"train.epochs={t.epochs:g} is ignored because train.max_steps={t.max_steps} is set; "
            "set max_steps to 0 to train by epochs."
        )
    if t.learning_rate == 0:
        notes.append(
            "train.learning_rate is 0: the adapter never changes, so the run only measures the base model. "
            "Set a learning rate such as 2e-4."
        )
    if t.max_steps == 0 and t.epochs == 0:
        notes.append(
            f"train.epochs and train.max_steps are both 0: the run takes the minimum of {total_steps} "
            "optimiser step(s). Set train.epochs (e.g. 1) or train.max_steps."
        )
    if t.learning_rate > 3e-3:
        notes.append(
            f"learning rate {t.learning_rate:g} is above LoRA norms (1e-4 to 3e-3): expect instability or collapse."
        )
    if cfg.lora.r > 64 and n_train < 1000:
        notes.append(f"LoRA rank {cfg.lora.r} on {n_train} examples: a small rank (4-16) overfits less.")
    if t.early_stopping_metric == "full_loss":
        notes.append(
            "early stopping on full-sequence loss: it is dominated by prompt tokens and can pick a far worse "
            "checkpoint than completion loss or accuracy."
        )
    if t.early_stopping_metric == "completion_loss" and has_answers:
        notes.append(
            "early stopping on completion loss with letter answers: the completion is the letter plus the end-of-turn "
            "token, whose loss falls to almost nothing in a few steps, so it mostly measures learning to stop. "
            "answer_loss or answer_accuracy ('auto' picks answer_loss) follows the answer itself."
        )
    if n_train < 50:
        notes.append(
            f"only {n_train} training examples: watch the predicted-answer distribution for collapse to one answer."
        )
    return notes


def collapsed_answer(metrics: dict) -> tuple[str, float, float] | None:
    """The answer the predictions have collapsed to, with its predicted and true share; None if none.

    Judged against the true answers, not a fixed share: four in five predictions on one answer
    (`COLLAPSE_SHARE`) is far from what a model that reads the questions does on mixed data, the
    excess over the answer's true share (`COLLAPSE_EXCESS`) keeps a genuinely dominant answer
    predicted at its real rate from being flagged, and the binomial test keeps a handful of
    examples from being flagged by chance. 42/48 "B" with "B" right 23% of the time is collapse;
    85% "A" where "A" is right 85% of the time is not.
    """
    predicted = metrics.get("predicted") or {}
    truth = metrics.get("answers") or {}
    total = sum(predicted.values())
    if total < 5 or not truth:
        return None
    answer, count = max(predicted.items(), key=lambda kv: kv[1])
    share = count / total
    true_share = truth.get(answer, 0) / max(sum(truth.values()), 1)
    if share < COLLAPSE_SHARE or share < true_share + COLLAPSE_EXCESS:
        return None
    if binomial_tail(count, total, true_share) >= COLLAPSE_P:
        return None
    return answer, share, true_share


def collapse(metrics: dict) -> str | None:
    """A warning when the predictions have collapsed to one answer (see `collapsed_answer`)."""
    found = collapsed_answer(metrics)
    if found is None:
        return None
    answer, share, true_share = found
    return (
        f"predictions collapsed: {share:.0%} of validation answers are {answer!r}, which is the right answer "
        f"for only {true_share:.0%} of them."
    )


class CollapseWatch:
    """Checks every evaluation (step 0, the base model, included); speaks when a collapse starts or changes answer."""

    def __init__(self) -> None:
        self.answer: str | None = None

    def check(self, metrics: dict, step: int) -> str | None:
        found = collapsed_answer(metrics)
        answer = found[0] if found else None
        changed = answer is not None and answer != self.answer
        self.answer = answer  # a recovery resets it, so a later collapse is flagged again
        if not changed:
            return None
        message = collapse(metrics)
        return (
            f"{message} This is the base model (step 0, adapter off): its accuracy is not a measure of the task."
            if step == 0
            else message
        )
