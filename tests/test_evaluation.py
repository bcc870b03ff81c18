"""Validation metrics against oracles; answers from log-probabilities match greedy decoding."""

import pytest
import torch
import torch.nn.functional as F
from conftest import mc_records, sum_examples

from plw_lab.core.config import DataConfig, LoraConfig
from plw_lab.core.data import to_examples
from plw_lab.core.evaluation import adapter, evaluate, evaluate_answers, generate, perplexity, token_losses
from plw_lab.core.masks import encode_all
from plw_lab.core.models import attach_lora


def _oracle(model, encoded):
    """Per-example teacher-forced CE summed by mask, with the full logits: the plain way."""
    sums = {"prompt": [0.0, 0], "completion": [0.0, 0]}
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        for name, mask in (("prompt", e.prompt_mask), ("completion", e.completion_mask)):
            m = torch.tensor(mask[1:], dtype=torch.bool)
            sums[name][0] += ce[m].sum().item()
            sums[name][1] += int(m.sum())
    return {f"{k}_loss": v[0] / v[1] for k, v in sums.items()} | {
        "full_loss": (sums["prompt"][0] + sums["completion"][0]) / (sums["prompt"][1] + sums["completion"][1])
    }


def test_losses_are_set_wide_sums_whatever_the_batch_size(tokenizer, tiny_model):
    encoded, _ = encode_all(tokenizer, sum_examples(7), 128)
    oracle = _oracle(tiny_model, encoded)
    for batch_size in (1, 3, 7):
        metrics = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=batch_size, chunk_size=16)
        for key, value in oracle.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5), (key, batch_size)


def test_answers_from_log_probabilities_match_greedy_generation(tokenizer, tiny_model):
    examples = to_examples(mc_records(12), DataConfig())
    encoded, _ = encode_all(tokenizer, examples, 256)
    metrics = evaluate_answers(tiny_model, encoded, tokenizer.pad_token_id, batch_size=4)
    # Force generation to choose among the candidates, as scoring does.
    allowed = set(encoded[0].choice_ids)
    for e, scored in zip(encoded, metrics["examples"]):
        prompt = torch.tensor([e.input_ids[: e.answer_position]])
        with torch.no_grad():
            logits = tiny_model(input_ids=prompt).logits[0, -1]
        mask = torch.full_like(logits, float("-inf"))
        mask[list(allowed)] = 0
        greedy = int((logits + mask).argmax())
        assert e.choice_ids.index(greedy) == examples[0].choices.index(scored["predicted"])
    # mc_records(12) repeats one record exactly; to_examples leaves the repeat out
    assert sum(metrics["predicted"].values()) == len(examples) == 11 == sum(metrics["answers"].values())
    answers_only = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=4, details=True, losses=False)
    # Scoring answers only reads each answer's state alone; the full evaluation reads the same numbers from
    # the logits its losses come from (one matrix product for many positions: float32 rounding apart).
    assert "completion_loss" not in answers_only
    for alone, full in zip(answers_only["examples"], metrics["examples"], strict=True):
        assert alone["predicted"] == full["predicted"] and alone["answer"] == full["answer"]
        assert alone["logprobs"] == pytest.approx(full["logprobs"], rel=1e-6)
    correct = sum(s["predicted"] == s["answer"] for s in metrics["examples"])
    assert metrics["answer_accuracy"] == pytest.approx(correct / 11)
    assert metrics["majority_baseline"] == pytest.approx(max(metrics["answers"].values()) / 11)


def test_adapter_off_is_the_base_model(tokenizer, tiny_model):
    encoded, _ = encode_all(tokenizer, sum_examples(4), 128)
    base = evaluate(tiny_model, encoded, tokenizer.pad_token_id)
    model = attach_lora(tiny_model, LoraConfig(layers="all"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter
    on = evaluate(model, encoded, tokenizer.pad_token_id)
    with adapter(model, enabled=False):
        off = evaluate(model, encoded, tokenizer.pad_token_id)
    assert off["completion_loss"] == pytest.approx(base["completion_loss"], rel=1e-6)
    assert on["completion_loss"] != pytest.approx(base["completion_loss"], rel=1e-3)


def test_token_losses_align_with_tokens_and_perplexity_is_exp_mean_ce(tokenizer, tiny_model):
    encoded, _ = encode_all(tokenizer, sum_examples(1), 128)
    losses = token_losses(tiny_model, encoded[0])
    assert len(losses) == len(encoded[0]) and losses[0] is None
    ids = torch.tensor([encoded[0].input_ids])
    with torch.no_grad():
        ce = F.cross_entropy(tiny_model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="none")
    assert losses[1:] == pytest.approx(ce.tolist(), rel=1e-5)
    text = tokenizer.decode(encoded[0].input_ids)
    assert perplexity(tiny_model, tokenizer, [text]) == pytest.approx(float(torch.exp(ce.mean())), rel=1e-4)


def test_generation_continues_the_prompt_greedily(tokenizer, tiny_model):
    encoded, _ = encode_all(tokenizer, sum_examples(3), 128)
    first = generate(tiny_model, tokenizer, encoded, max_new_tokens=5)
    again = generate(tiny_model, tokenizer, encoded[:1], max_new_tokens=5)
    assert len(first) == 3 and first[0] == again[0]  # left padding in a batch changes nothing
