"""Masks found token-exactly on the real SmolLM2 chat template."""

import pytest
from conftest import mc_records

from plw_lab.core.config import DataConfig
from plw_lab.core.data import Example, to_examples
from plw_lab.core.masks import TooLongError, encode, encode_all


def _decode(tokenizer, enc, mask):
    return tokenizer.decode([t for t, m in zip(enc.input_ids, mask) if m])


def test_completion_is_exactly_the_reply_and_its_end_of_turn_token(tokenizer):
    ex = Example([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}])
    enc = encode(tokenizer, ex, 256)
    assert _decode(tokenizer, enc, enc.completion_mask) == "It is 4.<|im_end|>"
    prompt = _decode(tokenizer, enc, enc.prompt_mask)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n\n")
    assert [p + c for p, c in zip(enc.prompt_mask, enc.completion_mask)] == [1] * len(enc)
    assert tokenizer.decode(enc.input_ids) == enc.text


def test_end_of_turn_token_is_trained_only_when_asked(tokenizer):
    ex = Example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    enc = encode(tokenizer, ex, 256, train_eos=False)
    assert _decode(tokenizer, enc, enc.completion_mask) == "Hello"
    eos = enc.input_ids.index(tokenizer.eos_token_id, enc.completion_mask.index(1))
    assert enc.prompt_mask[eos] == 1


def test_every_assistant_turn_of_a_conversation_is_a_completion(tokenizer):
    ex = Example(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Teal."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Amber."},
        ]
    )
    enc = encode(tokenizer, ex, 256)
    assert _decode(tokenizer, enc, enc.completion_mask) == "Teal.<|im_end|>Amber.<|im_end|>"
    assert "You are a helpful" not in enc.text  # an explicit system message replaces the default


def test_a_token_merged_across_the_boundary_counts_as_completion(tokenizer):
    # A template with no separator lets the tokenizer merge prompt and reply text into one token,
    # which splitting the prompt and completion apart would get wrong.
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    ex = Example([{"role": "user", "content": "The capital of France is Par"}, {"role": "assistant", "content": "is"}])
    enc = encode(tok, ex, 64, train_eos=False)
    merged = [i for i, (s, e) in enumerate(enc.offsets) if s < len("The capital of France is Par") < e]
    assert merged, "the tokenizer should merge 'Paris' across the boundary"
    assert enc.completion_mask[merged[0]] == 1
    separate = (
        tok("The capital of France is Par", add_special_tokens=False)["input_ids"]
        + tok("is", add_special_tokens=False)["input_ids"]
    )
    assert separate != enc.input_ids  # the naive concatenation is a different sequence


def test_answer_position_points_at_the_letter_the_candidates_differ_in(tokenizer):
    ex = to_examples(mc_records(1), DataConfig(answer_format="({letter})"))[0]
    enc = encode(tokenizer, ex, 256)
    assert tokenizer.convert_ids_to_tokens(enc.choice_ids) == ["A", "B", "C"]
    assert enc.input_ids[enc.answer_position] == enc.choice_ids[ex.answer_index]
    assert enc.completion_mask[enc.answer_position] == 1
    assert tokenizer.decode(enc.input_ids[enc.answer_position - 1]) == "("


def test_long_prompt_is_cut_from_the_left_keeping_the_template_head_and_the_whole_reply(tokenizer):
    long = " ".join(f"word{i}" for i in range(300))
    ex = Example([{"role": "user", "content": long + " Question?"}, {"role": "assistant", "content": "Short answer."}])
    enc = encode(tokenizer, ex, 64)
    assert len(enc) == 64 and enc.truncated > 0
    assert _decode(tokenizer, enc, enc.completion_mask) == "Short answer.<|im_end|>"
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in text
    assert "Question?" in text and "word0 " not in text


def test_example_whose_reply_cannot_fit_is_skipped_with_a_reason(tokenizer):
    ex = Example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}], source_index=7)
    with pytest.raises(TooLongError, match="example 7"):
        encode(tokenizer, ex, 64)
    ok = Example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    encoded, skipped = encode_all(tokenizer, [ex, ok], 64)
    assert len(encoded) == 1 and len(skipped) == 1 and "max_length" in skipped[0]
