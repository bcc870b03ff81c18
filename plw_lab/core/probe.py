"""The frozen-feature probe: what a linear classifier on the base model's hidden states scores.

Fine-tuning is worth its cost only if it beats the cheap alternative: freeze the base model, read
its final hidden states for each prompt, and fit a logistic regression on the run's own training
split. Two readings of the prompt are probed: the mean over its tokens, and the last token (the
position where the model would write its answer). The probe is scored on the same validation
examples, with the same metrics and Wilson intervals as the adapter (`evaluation.answer_metrics`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from plw_lab.core.collate import collate
from plw_lab.core.data import DataError
from plw_lab.core.evaluation import _answer_prefix, adapter, answer_metrics, device_of, eval_mode
from plw_lab.core.extras import require
from plw_lab.core.forward import final_hidden
from plw_lab.core.masks import Encoded

#: The two feature readings of a prompt.
POOLINGS = ("mean", "last")
#: Probability floor for an answer the probe never saw in training, so log-probabilities stay finite.
MIN_PROB = 1e-12


def prompt_features(model, encoded: list[Encoded], pad_id: int, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Mean-pooled and last-token final hidden states (N, H) of each example's prompt, adapter off.

    The prompt is everything before the answer token: exactly what the model reads when it answers.
    """
    prompts = [_answer_prefix(e) for e in encoded]
    device = device_of(model)
    out = {name: [] for name in POOLINGS}
    with adapter(model, False), eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            mask = tensors["attention_mask"]
            hidden = final_hidden(model, tensors["input_ids"], mask).float()
            lengths = mask.sum(1)
            out["mean"].append(((hidden * mask[..., None]).sum(1) / lengths[:, None]).cpu())
            out["last"].append(hidden[torch.arange(len(batch), device=device), lengths - 1].cpu())
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def fit_and_score(
    train_x: np.ndarray, train_y: list[str], val_x: np.ndarray, val_examples: list[Encoded], seed: int = 0
) -> dict:
    """Logistic regression (standardised features) fitted on the training features, scored on validation.

    Returns `answer_metrics` of the validation predictions plus their per-example details.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(train_y)) < 2:
        raise DataError("the probe needs at least two different answers in the training split")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    classifier.fit(train_x, train_y)
    classes = list(classifier.classes_)
    probabilities = classifier.predict_proba(val_x)
    examples = []
    for e, row in zip(val_examples, probabilities):
        prob = {c: float(row[classes.index(c)]) if c in classes else 0.0 for c in e.example.choices}
        logprobs = {c: math.log(max(p, MIN_PROB)) for c, p in prob.items()}
        result = {
            "index": e.example.source_index,
            "answer": e.example.answer,
            "predicted": max(logprobs, key=logprobs.get),
            "logprobs": logprobs,
            "candidate_mass": sum(prob.values()),
        }
        if "label" in e.example.meta:
            result["label"] = e.example.meta["label"]
        examples.append(result)
    return {**answer_metrics(examples), "examples": examples}


def frozen_feature_probe(
    model, train: list[Encoded], val: list[Encoded], pad_id: int, batch_size: int = 8, seed: int = 0
) -> dict:
    """The probe for each pooling, as {"mean": metrics, "last": metrics, "n_train": ..., "n_val": ...}."""
    require("probe", "the frozen-feature probe")
    train = [e for e in train if e.answer_position is not None]
    val = [e for e in val if e.answer_position is not None]
    if not train or not val:
        raise DataError(
            "the frozen-feature probe needs multiple-choice or classification data (examples with a right answer)"
        )
    train_features = prompt_features(model, train, pad_id, batch_size)
    val_features = prompt_features(model, val, pad_id, batch_size)
    labels = [e.example.answer for e in train]
    result = {"n_train": len(train), "n_val": len(val)}
    for pooling in POOLINGS:
        result[pooling] = fit_and_score(train_features[pooling], labels, val_features[pooling], val, seed)
    return result
