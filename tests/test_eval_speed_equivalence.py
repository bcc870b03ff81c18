"""The evaluation that reuses the frozen-layer cache, scores the shared head's positions once and keeps
the base model's states and log-normalisers reports the metrics of the plain computation: every
example run whole through the model with full logits, the base model's logits recomputed with the
adapter off (the oracle below)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import lora_llama, mc_records

from plw_lab.core import evaluation
from plw_lab.core.config import DataConfig, layer_indices
from plw_lab.core.data import to_examples
from plw_lab.core.forward import SharedHead
from plw_lab.core.loss import base_distributions, token_ce_kl
from plw_lab.core.masks import encode_all
from plw_lab.core.prefix import FrozenPrefix


def _model(tokenizer):
    model = lora_llama(tokenizer)
    with torch.no_grad():  # an adapter as after training: a zero update would make the KL trivially 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def _oracle(model, encoded):
    """Losses, answers and the exact mean KL(p || p_base) over every predicted token."""
    sums = dict.fromkeys(("p_ce", "p_n", "c_ce", "c_n", "hit", "a_ce", "a_n", "kl", "kl_n"), 0.0)
    answers = []
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
            with model.disable_adapter():
                base_logits = model(input_ids=ids).logits[0, :-1].float()
        log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(base_logits, -1)
        ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        prompt, completion, answer = (
            torch.tensor(m[1:], dtype=torch.bool) for m in (e.prompt_mask, e.completion_mask, e.answer_mask)
        )
        answer &= completion
        sums["p_ce"] += ce[prompt].sum().item()
        sums["p_n"] += int(prompt.sum())
        sums["c_ce"] += ce[completion].sum().item()
        sums["c_n"] += int(completion.sum())
        sums["hit"] += int((logits.argmax(-1) == ids[0, 1:])[completion].sum())
        sums["a_ce"] += ce[answer].sum().item()
        sums["a_n"] += int(answer.sum())
        sums["kl"] += (log_p.exp() * (log_p - log_q)).sum(-1).sum().item()
        sums["kl_n"] += len(ce)
        if e.answer_position is not None:
            at = torch.log_softmax(logits[e.answer_position - 1], -1)[e.choice_ids]
            answers.append(dict(zip(e.example.choices, at.tolist())))
    metrics = {
        "prompt_loss": sums["p_ce"] / sums["p_n"],
        "completion_loss": sums["c_ce"] / sums["c_n"],
        "full_loss": (sums["p_ce"] + sums["c_ce"]) / (sums["p_n"] + sums["c_n"]),
        "token_accuracy": sums["hit"] / sums["c_n"],
        "answer_loss": sums["a_ce"] / sums["a_n"],
        "format_loss": (sums["c_ce"] - sums["a_ce"]) / (sums["c_n"] - sums["a_n"]),
    }
    return metrics, answers, sums["kl"] / sums["kl_n"]


@pytest.fixture
def encoded(tokenizer):
    records = mc_records(9, seed=4)
    for i, r in enumerate(records):  # lengths differ, so batches are padded
        r["context"] += " It was parked outside." * (i % 4)
    return encode_all(tokenizer, to_examples(records, DataConfig()), 256)[0]


def test_cached_evaluation_gives_the_plain_metrics_and_the_exact_kl(tokenizer, encoded):
    model = _model(tokenizer)
    want, answers, kl = _oracle(model, encoded)
    head = SharedHead.build(model, [e.input_ids for e in encoded])
    assert head is not None and head.length > 4  # the chat template's system turn: scored once, counted nine times
    prefix = FrozenPrefix.for_model(model, layer_indices("top:2", 4))
    base_states = {}
    for _ in range(2):  # the first evaluation fills both caches, the second only reads them
        got = evaluation.evaluate(
            model, encoded, tokenizer.pad_token_id, 4, 64, details=True, prefix=prefix, base_states=base_states
        )
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        for ex, expected in zip(got["examples"], answers):
            assert ex["logprobs"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert got["kl_to_base"] == pytest.approx(kl, rel=1e-5, abs=1e-6)
    assert kl > 1e-2  # the adapter moved the model: a KL of 0 would not prove anything
    assert prefix.misses == len(encoded) and len(base_states) == 4  # frozen layers and base model: once (+ head)


def test_kl_from_the_log_normalisers_equals_the_log_softmax_form_and_is_zero_for_the_base_itself():
    torch.manual_seed(1)
    head, bias = torch.randn(7, 5), torch.randn(7)
    hidden, base_hidden = torch.randn(6, 5), torch.randn(6, 5)
    targets = torch.randint(0, 7, (6,))
    logits, base_logits = hidden @ head.T + bias, base_hidden @ head.T + bias
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(base_logits, -1)
    exact = (log_p.exp() * (log_p - log_q)).sum(-1)
    base = base_distributions(base_hidden, head, chunk_size=4, head_bias=bias)
    torch.testing.assert_close(base.log_normaliser, torch.logsumexp(base_logits, -1))
    ce, best, kl, lse, _ = token_ce_kl(hidden, head, targets, base, chunk_size=4, head_bias=bias)
    torch.testing.assert_close(kl, exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce, F.cross_entropy(logits, targets, reduction="none"))
    assert best.tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1))
    itself = token_ce_kl(base_hidden, head, targets, base, chunk_size=4, head_bias=bias)
    torch.testing.assert_close(itself.kl, torch.zeros(6), atol=1e-6, rtol=0)
    # A model scored without a base gives the log-normalisers it would keep as one.
    as_base = token_ce_kl(base_hidden, head, targets, None, chunk_size=4, head_bias=bias).as_base(base_hidden)
    torch.testing.assert_close(as_base.log_normaliser, base.log_normaliser)
    capped, _, capped_kl, _, _ = token_ce_kl(
        hidden, head, targets, base_distributions(base_hidden, head, 4, bias, 2.0), 4, bias, 2.0
    )
    capped_p, capped_q = (torch.log_softmax(2.0 * torch.tanh(x / 2.0), -1) for x in (logits, base_logits))
    torch.testing.assert_close(capped_kl, (capped_p.exp() * (capped_p - capped_q)).sum(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(capped, -capped_p.gather(1, targets[:, None]).squeeze(1))


def test_a_fresh_adapter_lends_its_states_to_the_base_and_later_evaluations_measure_against_them(
    tokenizer, encoded, monkeypatch
):
    def no_second_product(*args, **kwargs):
        raise AssertionError("the base's log-normalisers come from the scoring product itself")

    monkeypatch.setattr(evaluation, "base_distributions", no_second_product)
    model = _model(tokenizer)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    with torch.no_grad():  # LoRA as initialised: B is zero, the adapted model is the base model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    prefix = FrozenPrefix.for_model(model, layer_indices("top:2", 4))
    base_states = {}
    first = evaluation.evaluate(model, encoded, tokenizer.pad_token_id, 4, 64, prefix=prefix, base_states=base_states)
    assert first["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert prefix.hits == 0  # no second, adapter-off pass over the frozen layers' cache
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trained:
                p.copy_(trained[name])
    _, _, kl = _oracle(model, encoded)
    monkeypatch.undo()
    later = evaluation.evaluate(model, encoded, tokenizer.pad_token_id, 4, 64, prefix=prefix, base_states=base_states)
    assert later["kl_to_base"] == pytest.approx(kl, rel=1e-5, abs=1e-6) and later["kl_to_base"] > 0


def _own_greedy_references(model, tokenizer, encoded, steps):
    """`encoded` with each reference answer replaced by the model's own greedy tokens from its answer on:
    examples a teacher-forced pass follows to the end, which therefore need no generation loop."""
    out = []
    for e in encoded:
        start = e.answer_mask.index(1)
        ids = torch.tensor([e.input_ids[:start]])
        with torch.no_grad():
            greedy = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False
            )[0, start:].tolist()
        width = start + len(greedy)
        out.append(
            dataclasses.replace(
                e,
                input_ids=e.input_ids[:start] + greedy,
                prompt_mask=e.prompt_mask[:start] + [0] * len(greedy),
                completion_mask=[0] * start + [1] * len(greedy),
                answer_mask=[0] * start + [1] + [0] * (len(greedy) - 1),
                offsets=(e.offsets + [(0, 0)] * width)[:width],
            )
        )
    return out


def test_greedy_answers_read_from_the_evaluation_equal_the_generation_loop(tokenizer, encoded, monkeypatch):
    model = _model(tokenizer)
    own = _own_greedy_references(model, tokenizer, encoded, 3)
    followed = evaluation.evaluate(model, own, tokenizer.pad_token_id, 4, 64, follow=True)["followed"]
    looped = evaluation.generate_answers(model, tokenizer, own, 3, 4)
    prompts_generated = []
    plain_loop = evaluation._generate_ids

    def counting(model, tokenizer, prompts, *args):
        prompts_generated.extend(prompts)
        return plain_loop(model, tokenizer, prompts, *args)

    monkeypatch.setattr(evaluation, "_generate_ids", counting)
    read = evaluation.generate_answers(model, tokenizer, own, 3, 4, followed=followed)
    assert read == looped and prompts_generated == []  # every example settled by the teacher-forced pass
    # The real references: where the random model leaves them it is generated, and the answers agree.
    plain = evaluation.generate_answers(model, tokenizer, encoded, 3, 4)
    prompts_generated.clear()
    followed = evaluation.evaluate(model, encoded, tokenizer.pad_token_id, 4, 64, follow=True)["followed"]
    assert evaluation.generate_answers(model, tokenizer, encoded, 3, 4, followed=followed) == plain
    assert len(prompts_generated) == len(encoded)


def test_followed_text_settles_only_what_greedy_decoding_must_emit(tokenizer, encoded):
    e = dataclasses.replace(
        encoded[0],
        input_ids=[5, 6, 7, 40, 41, 2, 42],  # prompt 5 6 7, answer 40, then 41, the end of turn (2), 42
        answer_mask=[0, 0, 0, 1, 0, 0, 0],
    )
    assert evaluation.followed_text(e, [40, 41, 2, 42], 8, eos=2) == [40, 41, 2]  # stops at the end of turn
    assert evaluation.followed_text(e, [40, 41, 2, 42], 2, eos=2) == [40, 41]  # or at max_new_tokens
    assert evaluation.followed_text(e, [40, 9, 2, 42], 8, eos=2) is None  # left the reference: needs the loop
    assert evaluation.followed_text(e, [40, 41, 2, 42], 8, eos=3) is None  # 2 is not its end: runs past 42
    assert evaluation.followed_text(e, [40, 41, 2, 42], 4, eos=3) == [40, 41, 2, 42]  # ... unless it stops there
    assert evaluation.followed_text(e, None, 8, eos=2) is None
