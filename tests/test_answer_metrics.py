"""Answer-level metrics: the answer mask, answer/format loss, candidate mass, generated answers,
mixed option counts, classification scores, paired tests and how a run reports them."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import mc_records, sum_examples

from plw_lab.core import evaluation
from plw_lab.core import events as ev
from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import to_examples
from plw_lab.core.evaluation import (
    answer_metrics,
    evaluate,
    format_vs_task,
    generate_answers,
    paired_answers,
    parse_answer,
)
from plw_lab.core.masks import encode, encode_all
from plw_lab.core.training import train


def _decode(tokenizer, enc, mask):
    return tokenizer.decode([t for t, m in zip(enc.input_ids, mask) if m])


# -- the answer mask ---------------------------------------------------------------------------


def test_the_answer_mask_is_the_letter_and_the_rest_of_the_completion_is_format(tokenizer):
    enc = encode(tokenizer, to_examples(mc_records(1), DataConfig())[0], 256)
    assert _decode(tokenizer, enc, enc.answer_mask) == enc.example.answer
    rest = [c and not a for c, a in zip(enc.completion_mask, enc.answer_mask)]
    assert _decode(tokenizer, enc, rest) == "<|im_end|>"
    assert enc.answer_mask.index(1) == enc.answer_position  # the letter is where the candidates part ways
    wrapped = encode(tokenizer, to_examples(mc_records(1), DataConfig(answer_format="({letter})"))[0], 256)
    assert (
        wrapped.example.answer.startswith("(")
        and _decode(tokenizer, wrapped, wrapped.answer_mask) == wrapped.example.answer
    )


def test_free_form_data_has_no_answer_tokens_and_truncation_keeps_the_mask_aligned(tokenizer):
    free = encode(tokenizer, sum_examples(1)[0], 128)
    assert free.n_answer == 0 and len(free.answer_mask) == len(free)
    record = mc_records(1)[0] | {"context": "The road is long. " * 40}
    cut = encode(tokenizer, to_examples([record], DataConfig())[0], 64)
    assert cut.truncated > 0 and len(cut.answer_mask) == len(cut) == 64
    assert _decode(tokenizer, cut, cut.answer_mask) == cut.example.answer


# -- answer loss, format loss and candidate mass against the full logits ----------------------


def test_answer_and_format_loss_split_the_completion_loss_exactly(tokenizer, tiny_model):
    encoded, _ = encode_all(tokenizer, to_examples(mc_records(6), DataConfig()), 256)
    sums = {"answer": [0.0, 0], "format": [0.0, 0]}
    masses = []
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0]
        ce = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
        for i in range(1, len(e)):
            if e.completion_mask[i]:
                part = "answer" if e.answer_mask[i] else "format"
                sums[part][0] += ce[i - 1].item()
                sums[part][1] += 1
        probs = torch.softmax(logits[e.answer_position - 1], -1)
        masses.append(float(probs[e.choice_ids].sum()))
    metrics = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=4)
    assert sums["answer"][1] == 6 and sums["format"][1] == 6  # one letter and one <|im_end|> each
    assert metrics["answer_loss"] == pytest.approx(sums["answer"][0] / 6, rel=1e-5)
    assert metrics["format_loss"] == pytest.approx(sums["format"][0] / 6, rel=1e-5)
    assert metrics["completion_loss"] == pytest.approx((sums["answer"][0] + sums["format"][0]) / 12, rel=1e-5)
    assert metrics["candidate_mass"] == pytest.approx(sum(masses) / 6, rel=1e-4)
    low, high = metrics["answer_accuracy_ci"]
    assert low <= metrics["answer_accuracy"] <= high
    free = evaluate(tiny_model, encode_all(tokenizer, sum_examples(3), 128)[0], tokenizer.pad_token_id)
    assert "answer_loss" not in free and "format_loss" not in free and "answer_accuracy" not in free


def test_the_right_candidates_log_prob_is_minus_its_answer_loss(tokenizer, tiny_model):
    """The answers' log-probabilities and answer_loss are read from the same logits: their mean agrees
    to float64 rounding, on logits as large as a trained model's (a float32 log-softmax misses by ~1e-5)."""
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight.mul_(40.0)
    encoded, _ = encode_all(tokenizer, to_examples(mc_records(12), DataConfig()), 256)
    for batch_size in (1, 4):
        metrics = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=batch_size, details=True)
        right = [e["logprobs"][e["answer"]] for e in metrics["examples"]]
        assert len(right) == sum(e.answer_position is not None for e in encoded) > 8
        assert abs(-metrics["answer_loss"] - sum(right) / len(right)) < 1e-7


def test_mixed_option_counts_are_all_scored_and_counted_by_letter(tokenizer, tiny_model):
    records = mc_records(6)
    records[1] = records[1] | {"options": records[1]["options"] + ["white"]}
    records[4] = records[4] | {"options": records[4]["options"] + ["white"], "answer": "D"}
    encoded, _ = encode_all(tokenizer, to_examples(records, DataConfig()), 256)
    metrics = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=4, details=True)
    assert len(metrics["examples"]) == 6 and sum(metrics["predicted"].values()) == 6
    assert list(metrics["answers"]) == ["A", "B", "C", "D"] and metrics["answers"]["D"] == 1
    right = sum(ex["predicted"] == ex["answer"] for ex in metrics["examples"])
    assert metrics["answer_accuracy"] == pytest.approx(right / 6)
    assert metrics["chance"] == pytest.approx((4 / 3 + 2 / 4) / 6)


# -- answer metrics from hand-built examples --------------------------------------------------


def _scored(answer, predicted, logprobs, mass=0.5, label=True):
    ex = {"index": 0, "answer": answer, "predicted": predicted, "logprobs": logprobs, "candidate_mass": mass}
    return ex | ({"label": answer} if label else {})


def test_binary_classification_metrics_by_hand():
    lp = lambda a, b: {"A": math.log(a), "B": math.log(b)}  # noqa: E731
    examples = [
        _scored("A", "A", lp(0.6, 0.2), 0.8),  # margin log(1/3) = -1.10
        _scored("A", "A", lp(0.5, 0.4), 0.9),  # -0.22
        _scored("A", "B", lp(0.3, 0.6), 0.9),  # +0.69
        _scored("A", "A", lp(0.7, 0.1), 0.8),  # -1.95
        _scored("B", "B", lp(0.1, 0.8), 0.9),  # +2.08
        _scored("B", "A", lp(0.5, 0.45), 0.95),  # -0.11
    ]
    m = answer_metrics(examples)
    assert m["answer_accuracy"] == pytest.approx(4 / 6) and m["majority_baseline"] == pytest.approx(4 / 6)
    assert m["predicted"] == {"A": 4, "B": 2} and m["answers"] == {"A": 4, "B": 2}
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    # F1 A = 2*3 / (4 + 4) = 0.75, F1 B = 2*1 / (2 + 2) = 0.5
    assert m["macro_f1"] == pytest.approx(0.625)
    # positives (B) margins +2.08, -0.11 against negatives -1.10, -0.22, +0.69, -1.95: 4 + 3 = 7 of 8 pairs
    assert m["auc"] == pytest.approx(7 / 8)
    assert m["candidate_mass"] == pytest.approx((0.8 + 0.9 + 0.9 + 0.8 + 0.9 + 0.95) / 6)
    assert m["chance"] == pytest.approx(0.5)
    assert m["answer_accuracy_ci"] == [pytest.approx(v, abs=1e-4) for v in (0.29999, 0.90324)]
    mc = answer_metrics([_scored(e["answer"], e["predicted"], e["logprobs"], label=False) for e in examples])
    assert not {"balanced_accuracy", "macro_f1", "auc"} & set(mc)


# -- generated answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        (" C<|im_end|>", "C"),
        ("\nD. the sea", "D"),
        ("(A)", "A"),
        ("The answer is B.", "B"),
        ("Answer: C", "C"),
        ("**D**", "D"),
        ("Apple", None),
        ("I think so", None),
        ("", None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text, ("A", "B", "C", "D")) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("BBB+", "A"),
        ("BBB-\nThe molecule is polar.", "B"),
        ("The answer is BBB-.", "B"),
        ("B", "B"),
        ("(A) BBB-", "A"),
        ("BBB", None),
        ("BBB+x", None),
        ("bbb+", None),
    ],
)
def test_parse_answer_reads_an_option_named_by_its_text(text, expected):
    """The base model asked for a letter often writes the option itself ("BBB+"): that names option A, while a letter,
    when there is one, wins and a near miss names nothing."""
    assert parse_answer(text, ("A", "B"), ("BBB+", "BBB-")) == expected


def test_generated_accuracy_counts_unparseable_answers_as_wrong(tokenizer, monkeypatch):
    encoded, _ = encode_all(tokenizer, to_examples(mc_records(4), DataConfig()), 256)
    answers = [e.example.answer for e in encoded]
    wrong = [next(c for c in e.example.choices if c != e.example.answer) for e in encoded]
    texts = [answers[0], f"The answer is {answers[1]}", "Apple pie", wrong[3]]
    monkeypatch.setattr(evaluation, "_generate_ids", lambda model, tok, prompts, n, b: texts)
    m = generate_answers(None, tokenizer, encoded, 4)
    assert m["answer_accuracy_generated"] == 0.5 and m["unparseable"] == 1
    assert m["answer_accuracy_generated_ci"] == [pytest.approx(v, abs=1e-4) for v in (0.15004, 0.84996)]
    assert [g["parsed"] for g in m["generated"]] == [answers[0], answers[1], None, wrong[3]]


def test_generation_starts_where_scoring_reads_the_answer(tokenizer, tiny_model):
    encoded, _ = encode_all(tokenizer, to_examples(mc_records(3), DataConfig()), 256)
    m = generate_answers(tiny_model, tokenizer, encoded, max_new_tokens=1, batch_size=2)
    for e, g in zip(encoded, m["generated"]):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([e.input_ids[: e.answer_position]])).logits[0, -1]
        assert g["generated"] == tokenizer.decode([int(logits.argmax())], skip_special_tokens=True)


# -- paired tests and format vs task ----------------------------------------------------------


def test_paired_answers_and_the_format_task_split():
    off = [
        {"index": i, "answer": "A", "predicted": "A" if i < 4 else "B", "parsed": None if i else "A"} for i in range(12)
    ]
    on = [{"index": i, "answer": "A", "predicted": "A" if i < 12 else "B", "parsed": "A"} for i in range(12)]
    result = paired_answers(off, on)
    # 8 examples right only with the adapter on, none only off: p = 2 / 2^8
    assert (result["first_only"], result["second_only"]) == (0, 8)
    assert result["p_value"] == pytest.approx(2 / 256) and result["verdict"] == "significant at 5%"
    assert paired_answers(off, on, "parsed")["second_only"] == 11
    with pytest.raises(ValueError, match="same validation examples"):
        paired_answers(off, on[:5])
    m_off = {
        "answer_accuracy": 4 / 12,
        "answer_accuracy_generated": 1 / 12,
        "candidate_mass": 0.2,
        "unparseable": 11,
        "n_examples": 12,
        "answers": {"A": 12},
    }
    m_on = {
        "answer_accuracy": 1.0,
        "answer_accuracy_generated": 1.0,
        "candidate_mass": 0.9,
        "unparseable": 0,
        "n_examples": 12,
        "answers": {"A": 12},
    }
    split = format_vs_task(m_on, m_off)
    assert split["generated_gain"] == pytest.approx(11 / 12) and split["task_gain"] == pytest.approx(8 / 12)
    assert split["format_gain"] == pytest.approx(3 / 12) and split["parse_rate"] == [pytest.approx(1 / 12), 1.0]
    assert "+67% is task" in split["text"] and "+25% is format" in split["text"]
    assert format_vs_task({"completion_loss": 1.0}, {"completion_loss": 2.0}) is None


# -- a run reports them -----------------------------------------------------------------------


def test_a_multiple_choice_run_reports_answer_metrics_and_stops_on_answer_loss(tmp_path):
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path / "runs"),
            "train.batch_size": 4,
            "train.max_steps": 4,
            "train.eval_interval": 1,
            "lora.layers": "all",
            "eval.generations": 1,
            "eval.max_new_tokens": 2,
            "eval.probe_texts": 1,
            "eval.answer_tokens": 2,
        }
    )
    seen = []
    result = train(cfg, subscribers=[seen.append], examples=to_examples(mc_records(30), DataConfig()))
    assert result.status == "finished", result.summary
    started = next(e for e in seen if isinstance(e, ev.Started))
    assert started.early_stopping_metric == "answer_loss" and result.summary["early_stopping_metric"] == "answer_loss"
    evals = [e for e in seen if isinstance(e, ev.Eval)]
    assert [e.step for e in evals] == [0, 1, 2, 3, 4]
    for e in evals:
        assert {"answer_loss", "format_loss", "answer_accuracy", "answer_accuracy_ci", "candidate_mass"} <= set(
            e.metrics
        )
    # generation, the expensive part, only at the first and the last evaluation
    assert [e.step for e in evals if "answer_accuracy_generated" in e.metrics] == [0, 4]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    for key in ("answer_loss", "answer_accuracy", "answer_accuracy_ci", "answer_accuracy_generated", "candidate_mass"):
        assert summary[key] is not None, key
    comparison = json.loads((result.run_dir / "compare.json").read_text())
    assert comparison["paired"]["answer_accuracy"]["verdict"] in ("within noise", "significant at 5%")
    assert "is format" in comparison["format_vs_task"]["text"]


def test_binary_classification_data_gets_balanced_accuracy_macro_f1_and_auc(tokenizer, tiny_model):
    records = [{"text": f"molecule {i} {'C' * (i % 5)}", "label": "yes" if i % 3 == 0 else "no"} for i in range(12)]
    encoded, _ = encode_all(tokenizer, to_examples(records, DataConfig()), 128)
    m = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=4, details=True)
    # labels sort as ("no", "yes") -> letters A, B; "yes" (B) is the positive class
    margins = [(ex["logprobs"]["B"] - ex["logprobs"]["A"], ex["answer"] == "B") for ex in m["examples"]]
    pos = [s for s, y in margins if y]
    neg = [s for s, y in margins if not y]
    # AUC as rank statistic: (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), no ties in float margins
    ranks = {s: r for r, s in enumerate(sorted(pos + neg), 1)}
    expected = (sum(ranks[s] for s in pos) - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    assert (len(pos), len(neg)) == (4, 8) and m["auc"] == pytest.approx(expected)
    recall = lambda c: sum(ex["predicted"] == c for ex in m["examples"] if ex["answer"] == c) / m["answers"][c]  # noqa: E731
    assert m["balanced_accuracy"] == pytest.approx((recall("A") + recall("B")) / 2)
    assert 0.0 <= m["macro_f1"] <= 1.0 and m["chance"] == 0.5
