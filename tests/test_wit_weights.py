"""WIT weights (lambda_p, lambda_r) and the data's own per-record and per-message weights."""

import pytest
import torch
from conftest import sum_examples
from transformers import AutoModelForCausalLM

from plw_lab.core.collate import Collator, collate
from plw_lab.core.config import LabConfig
from plw_lab.core.data import DataError, Example, to_examples
from plw_lab.core.loss import normalizer, token_weights
from plw_lab.core.masks import encode, encode_all
from plw_lab.core.models import attach_lora
from plw_lab.core.packing import collate_packed
from plw_lab.core.training import PLWTrainer, training_arguments


def test_wit_weights_by_hand():
    prompt = torch.tensor([1, 1, 1, 0, 0])
    completion = torch.tensor([0, 0, 0, 1, 1])
    w = token_weights(prompt, completion, 0.5, 0.25)
    assert w.tolist() == [0.5, 0.5, 0.5, 0.25, 0.25]
    # WIT's count normalisation divides by the tokens that carry weight, not by the weights' sum.
    assert normalizer(w, "count_nonzero").item() == 5
    assert normalizer(w, "sum_weights").item() == pytest.approx(2.0)
    data = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.5])
    assert token_weights(prompt, completion, 0.5, 0.25, data).tolist() == [1.0, 0.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="completion_loss_weight"):
        token_weights(prompt, completion, 0.5, 1.5)


def _model_and_batch(tokenizer, tiny_dir, examples):
    torch.manual_seed(0)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), LabConfig().lora)
    encoded, _ = encode_all(tokenizer, examples, 64)
    return model, encoded, collate(encoded, tokenizer.pad_token_id)


def _loss(tmp_path, model, tokenizer, batch, **overrides):
    cfg = LabConfig().override({"model.name": "tiny-random", "train.output_dir": str(tmp_path), **overrides})
    trainer = PLWTrainer(
        model=model,
        args=training_arguments(cfg, tmp_path / "t", torch.device("cpu"), torch.float32),
        data_collator=Collator(tokenizer.pad_token_id),
        lab_config=cfg,
    )
    return trainer.compute_loss(model, batch)


def _labels_loss(model, batch, mask):
    labels = torch.where(mask.bool(), batch["input_ids"], torch.full_like(batch["input_ids"], -100))
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


@pytest.mark.parametrize("mode", ["sum_weights", "count_nonzero"])
def test_lambda_p_0_lambda_r_1_is_completion_only_and_both_1_the_full_sequence_loss(
    tmp_path, tokenizer, tiny_dir, mode
):
    model, _, batch = _model_and_batch(tokenizer, tiny_dir, sum_examples(4))
    completion_only = _labels_loss(model, batch, batch["completion_mask"])
    full = _labels_loss(model, batch, batch["attention_mask"])
    base = {"train.loss_normalization": mode}
    got = _loss(
        tmp_path,
        model,
        tokenizer,
        batch,
        **base,
        **{"train.prompt_loss_weight": 0.0, "train.completion_loss_weight": 1.0},
    )
    assert got.item() == pytest.approx(completion_only.item(), rel=1e-5)
    got = _loss(
        tmp_path,
        model,
        tokenizer,
        batch,
        **base,
        **{"train.prompt_loss_weight": 1.0, "train.completion_loss_weight": 1.0},
    )
    assert got.item() == pytest.approx(full.item(), rel=1e-5)


def test_lambda_r_scales_completion_tokens_under_count_normalisation(tmp_path, tokenizer, tiny_dir):
    model, _, batch = _model_and_batch(tokenizer, tiny_dir, sum_examples(4))
    # With the prompt at weight 0 and count normalisation, lambda_r scales the completion-only loss.
    half = _loss(
        tmp_path,
        model,
        tokenizer,
        batch,
        **{
            "train.prompt_loss_weight": 0.0,
            "train.completion_loss_weight": 0.5,
            "train.loss_normalization": "count_nonzero",
        },
    )
    assert half.item() == pytest.approx(0.5 * _labels_loss(model, batch, batch["completion_mask"]).item(), rel=1e-5)
    # Prompt only: lambda_r 0 and PLW 1 trains the prompt tokens alone.
    prompt_only = _loss(
        tmp_path, model, tokenizer, batch, **{"train.prompt_loss_weight": 1.0, "train.completion_loss_weight": 0.0}
    )
    assert prompt_only.item() == pytest.approx(_labels_loss(model, batch, batch["prompt_mask"]).item(), rel=1e-5)


# -- weights from the data ---------------------------------------------------------------------


def _chat(weight=None, user_weight=None, reply_weight=None):
    record = {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]}
    if weight is not None:
        record["weight"] = weight
    if user_weight is not None:
        record["messages"][0]["weight"] = user_weight
    if reply_weight is not None:
        record["messages"][1]["weight"] = reply_weight
    return record


def test_data_weights_all_one_leave_the_loss_unchanged(tmp_path, tokenizer, tiny_dir):
    plain = sum_examples(4)
    weighted = [
        Example([{**m, "weight": 1.0} for m in e.messages], source_index=e.source_index, weight=1.0) for e in plain
    ]
    model, encoded, batch = _model_and_batch(tokenizer, tiny_dir, plain)
    _, encoded_w, batch_w = _model_and_batch(tokenizer, tiny_dir, weighted)
    assert all(e.data_weights() == [1.0] * len(e) for e in encoded_w)
    assert torch.equal(batch_w["data_weight"], batch["data_weight"])
    for plw in (0.0, 0.1, 1.0):
        a = _loss(tmp_path, model, tokenizer, batch, **{"train.prompt_loss_weight": plw})
        b = _loss(tmp_path, model, tokenizer, batch_w, **{"train.prompt_loss_weight": plw})
        assert torch.equal(a, b)


def test_record_and_message_weights_reach_their_tokens(tokenizer):
    from plw_lab.core.config import DataConfig

    examples = to_examples([_chat(weight=2.0, user_weight=0.5, reply_weight=0.0), _chat()], DataConfig())
    assert examples[0].weight == 2.0 and examples[1].weight == 1.0
    enc = encode(tokenizer, examples[0], 64)
    by_token = list(zip(enc.input_ids, enc.completion_mask, enc.data_weight, enc.offsets))
    reply = [w for _, c, w, _ in by_token if c]
    assert reply == [0.0, 0.0], "the reply '5' and its end-of-turn token take the reply's weight times the record's"
    start = enc.text.index("Add 2 and 3.")
    user_text = [w for _, _, w, (s, e) in by_token if s >= start and e <= start + len("Add 2 and 3.")]
    assert user_text and set(user_text) == {1.0}, "user content tokens: 2 x 0.5"
    template = [w for _, c, w, (s, e) in by_token if not c and enc.text[s:e] == "<|im_start|>"]
    assert set(template) == {2.0}, "template tokens carry the record's weight"
    # An example whose every weight is 0 is skipped and reported.
    kept, skipped = encode_all(tokenizer, to_examples([_chat(weight=0), _chat()], DataConfig()), 64)
    assert len(kept) == 1 and "data weight is 0" in skipped[0]


def test_data_weights_survive_collation_packing_and_truncation(tokenizer):
    from plw_lab.core.config import DataConfig

    long_chat = {
        "messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}],
        "weight": 0.5,
    }
    examples = to_examples([_chat(weight=3.0), _chat(), long_chat], DataConfig())
    encoded = [encode(tokenizer, e, 40) for e in examples]
    assert (
        encoded[2].truncated and len(encoded[2].data_weight) == len(encoded[2]) and set(encoded[2].data_weight) == {0.5}
    )
    batch = collate(encoded, tokenizer.pad_token_id)
    assert batch["data_weight"][0, : len(encoded[0])].unique().tolist() == [3.0]
    assert batch["data_weight"][1].unique().tolist() == [1.0]
    packed = collate_packed(encoded, tokenizer.pad_token_id)
    assert sorted(packed["data_weight"].unique().tolist()) == [0.5, 1.0, 3.0]


@pytest.mark.parametrize("bad", ["heavy", -1, float("nan")])
def test_a_bad_weight_names_the_record(bad):
    from plw_lab.core.config import DataConfig

    with pytest.raises(DataError, match="record 1: 'weight'"):
        to_examples([_chat(), _chat(weight=bad)], DataConfig())
    with pytest.raises(DataError, match="record 0: messages message 1: 'weight'"):
        to_examples([_chat(reply_weight=bad)], DataConfig())


def test_statistics_count_the_examples_the_data_weights(tokenizer):
    from plw_lab.core.config import DataConfig
    from plw_lab.core.stats import length_stats
    from plw_lab.views.text_views import stats_markdown

    encoded, _ = encode_all(
        tokenizer, to_examples([_chat(weight=2.0), _chat(reply_weight=0.5), _chat()], DataConfig()), 64
    )
    s = length_stats(encoded).summary()
    # Each reply is "5" plus its end-of-turn token: 2 completion tokens, weighted 2x2 + 0.5x2 + 1x2.
    assert s["total_completion"] == 6 and s["total_weighted_completion"] == pytest.approx(7.0)
    assert s["data_weighted"] == 2
    assert "**2** examples carry their own weight" in stats_markdown(length_stats(encoded), 0.0)
    plain = length_stats(encode_all(tokenizer, sum_examples(3), 64)[0]).summary()
    assert plain["data_weighted"] == 0
