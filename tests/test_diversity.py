"""Diversity of generations (distinct-n), the entropy of the predicted answers, and KL to the base model."""

import math

import pytest
import torch

from plw_lab.core.diversity import answer_entropy, distinct_n, text_diversity
from plw_lab.core.metrics import METRICS


def test_distinct_n_on_hand_written_texts():
    texts = ["the cat sat", "the cat ran"]
    # words: the cat sat the cat ran -> 4 distinct of 6; pairs: (the cat)(cat sat)(the cat)(cat ran) -> 3 of 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    collapsed = ["A A A A"] * 3
    assert distinct_n(collapsed, 1) == pytest.approx(1 / 12)
    assert distinct_n(collapsed, 2) == pytest.approx(1 / 9)
    assert distinct_n(["every word here differs"], 1) == 1.0
    assert math.isnan(distinct_n(["one"], 2)) and math.isnan(distinct_n([], 1))
    assert text_diversity(texts) == {"distinct_1": pytest.approx(4 / 6), "distinct_2": pytest.approx(3 / 4)}


def test_answer_entropy_in_bits():
    assert answer_entropy({"A": 10, "B": 0}) == 0.0
    assert answer_entropy({"A": 5, "B": 5}) == pytest.approx(1.0)
    assert answer_entropy({"A": 1, "B": 1, "C": 1, "D": 1}) == pytest.approx(2.0)
    # p = (3/4, 1/4): -(3/4 log2 3/4 + 1/4 log2 1/4) = 0.811278...
    assert answer_entropy({"A": 3, "B": 1}) == pytest.approx(0.8112781, rel=1e-6)
    assert math.isnan(answer_entropy({}))


def test_new_metrics_are_registered():
    for name in ("kl_to_base", "answer_entropy", "distinct_1", "distinct_2"):
        assert METRICS[name].higher_is_better is None and METRICS[name].help


def _val(tokenizer):
    from conftest import mc_records

    from plw_lab.core.config import DataConfig
    from plw_lab.core.data import to_examples
    from plw_lab.core.masks import encode_all

    encoded, _ = encode_all(tokenizer, to_examples(mc_records(6), DataConfig()), 128)
    return encoded


def test_evaluation_reports_answer_entropy_and_kl_to_base_against_a_naive_oracle(tokenizer, tiny_model):
    from plw_lab.core.config import LabConfig
    from plw_lab.core.evaluation import adapter, evaluate
    from plw_lab.core.loss import weighted_kl_from_logits
    from plw_lab.core.models import attach_lora, lora_factors

    model = attach_lora(tiny_model, LabConfig().override({"lora.layers": "all"}).lora)
    encoded = _val(tokenizer)
    states: dict = {}
    fresh = evaluate(model, encoded, tokenizer.pad_token_id, batch_size=4, base_states=states)
    assert fresh["kl_to_base"] == pytest.approx(0.0, abs=1e-6), "a fresh adapter is the base model"
    assert fresh["answer_entropy"] == pytest.approx(answer_entropy(fresh["predicted"]))
    batches = [key for key in states if key != ("head",)]
    assert len(batches) == 2, "the base states of both batches are kept for later evaluations"
    assert ("head",) in states, "the system turn every example shares is kept once, not per batch"

    torch.manual_seed(3)
    with torch.no_grad():
        for _a, b, _ in lora_factors(model):
            b.normal_(0, 0.3)
    moved = evaluate(model, encoded, tokenizer.pad_token_id, batch_size=4, base_states=states)
    # Oracle: full logits of each example alone, adapter on and off, every target position.
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            on = model(input_ids=ids).logits[0, :-1]
            with adapter(model, False):
                off = model(input_ids=ids).logits[0, :-1]
            total += weighted_kl_from_logits(on, off, torch.ones(len(e) - 1)).item()
            count += len(e) - 1
    assert moved["kl_to_base"] == pytest.approx(total / count, rel=1e-4)
    assert moved["kl_to_base"] > 1e-4
    assert "kl_to_base" not in evaluate(model, encoded, tokenizer.pad_token_id, batch_size=4)


def test_comparison_reports_the_diversity_of_generations_on_and_off(tokenizer, tiny_model):
    from plw_lab.core.config import LabConfig
    from plw_lab.core.evaluation import compare
    from plw_lab.core.models import attach_lora

    cfg = LabConfig().override({"eval.generations": 3, "eval.max_new_tokens": 6, "eval.batch_size": 4})
    model = attach_lora(tiny_model, cfg.lora)
    encoded = _val(tokenizer)
    result = compare(model, tokenizer, encoded, cfg, probe_texts=[])
    for side in ("on", "off"):
        metrics, generations = result[side]["metrics"], result[side]["generations"]
        assert metrics["distinct_1"] == pytest.approx(distinct_n(generations, 1), nan_ok=True)
        assert metrics["distinct_2"] == pytest.approx(distinct_n(generations, 2), nan_ok=True)
        assert 0.0 <= metrics["answer_entropy"] <= math.log2(3)
