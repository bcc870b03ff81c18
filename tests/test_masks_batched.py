"""The batched, cached encoder gives exactly the encodings of the one-example-at-a-time encoder it replaced.

The oracle below is the old path: one tokenizer call for the text and one per candidate answer,
the answer position found by walking every variant from its first token.
"""

import pytest

from plw_lab.core import masks
from plw_lab.core.builtin import BUILTIN_SETS
from plw_lab.core.config import DataConfig
from plw_lab.core.data import Example, load_examples


def _old_tokenize(tokenizer, text):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _old_encode(tokenizer, example, max_length, train_eos=True):
    text, spans, contents = masks.completion_spans(tokenizer, example.messages, train_eos)
    ids, offsets = _old_tokenize(tokenizer, text)
    completion = [int(any(s < ce and e > cs for cs, ce in spans)) for s, e in offsets]
    enc = masks.Encoded(ids, [1 - c for c in completion], completion, offsets, text, example)
    enc.raw_completion = sum(completion)
    enc.raw_prompt = len(ids) - enc.raw_completion
    enc.data_weight = masks._data_weights(example, text, spans, offsets)
    enc.answer_mask = [0] * len(ids)
    if example.choices:
        start, end = contents[-1]
        variants = [_old_tokenize(tokenizer, text[:start] + c + text[end:])[0] for c in example.choices]
        position = 0
        while all(position < len(v) for v in variants) and len({v[position] for v in variants}) == 1:
            position += 1
        enc.answer_position, enc.choice_ids = position, [v[position] for v in variants]
        enc.answer_mask = [int(c and s < end and e > start) for c, (s, e) in zip(completion, offsets)]
    enc.cuttable = masks._cuttable(enc, spans[-1][0])
    enc.min_length = len(ids) - (enc.cuttable[0][1] - enc.cuttable[1])
    return masks.fit(enc, max_length)


def _builtin(name, limit):
    try:
        return list(load_examples(DataConfig(source=f"builtin:{name}", limit=limit)))
    except Exception as exc:  # bbb needs the optional qc-B3DB package
        pytest.skip(f"builtin:{name} unavailable here: {exc}")


def _assert_same(tokenizer, examples, max_length):
    masks._cache.clear()
    batched = masks.encode_full(tokenizer, examples)
    cached = masks.encode_full(tokenizer, examples)  # every encoding from the cache now
    for example, first, second in zip(examples, batched, cached):
        expected = _old_encode(tokenizer, example, 0)
        assert first == expected and second == expected, example.source_index
        assert second.example is example and second.input_ids is not first.input_ids
    fitted, _ = masks.encode_all(tokenizer, examples, max_length)
    whole = [_old_encode(tokenizer, e, 0) for e in examples]
    kept = [masks.fit(e, max_length) for e in whole if not max_length or e.min_length <= max_length]
    assert fitted == kept


@pytest.mark.parametrize("name", list(BUILTIN_SETS))
def test_batched_encodings_equal_the_per_example_ones_on_every_builtin_set(tokenizer, name):
    examples = _builtin(name, 300)
    lengths = sorted(len(e) for e in masks.encode_full(tokenizer, examples))
    _assert_same(tokenizer, examples, lengths[len(lengths) // 2])  # half the examples are cut


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN_SETS))
def test_batched_encodings_equal_the_per_example_ones_on_every_whole_builtin_set(tokenizer, name):
    examples = _builtin(name, 0)
    _assert_same(tokenizer, examples, 0)


def test_a_template_changed_in_place_is_not_served_from_the_cache(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    example = Example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    chat = masks.encode(tok, example, 0)
    tok.chat_template = masks.PLAIN_TEMPLATE
    plain = masks.encode(tok, example, 0)
    assert plain.text == "Hi\nHello<|im_end|>\n" and chat.text != plain.text
    assert plain == _old_encode(tok, example, 0)


def test_a_cut_encoding_leaves_the_cached_one_whole(tokenizer):
    example = _builtin("reading-mc", 1)[0]
    full = masks.encode(tokenizer, example, 0)
    cut = masks.encode(tokenizer, example, full.min_length)
    assert len(cut) == full.min_length < len(full)
    assert masks.encode(tokenizer, example, 0) == full == _old_encode(tokenizer, example, 0)


def test_the_first_example_with_a_template_error_is_the_one_reported(tokenizer):
    # The second example's reply is rewritten by the template (found while rendering, before any
    # tokenising); the first's candidates never part ways (found after): the first is still reported.
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] | replace('zz', 'yy') }}\n{% endfor %}"
    same = Example([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], choices=("A", "A"))
    rewritten = Example([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "zz"}])
    with pytest.raises(masks.TemplateError, match="do not differ at a single token"):
        masks.encode_full(tok, [same, rewritten])
    with pytest.raises(masks.TemplateError, match="changed the text of assistant turn 1"):
        masks.encode_full(tok, [rewritten, same])
