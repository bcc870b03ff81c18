"""Truncation is never silent: raw lengths, what max_length cuts, auto max_length, and too-small lengths."""

import pytest
from conftest import mc_records

from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import DataError, Example, to_examples
from plw_lab.core.masks import auto_max_length, encode, encode_fitted
from plw_lab.core.stats import length_stats, truncation_message, truncation_report


def _long(i: int, words: int) -> Example:
    passage = " ".join(f"word{k}" for k in range(words))
    return Example(
        [{"role": "user", "content": passage + " Question?"}, {"role": "assistant", "content": "Yes."}], source_index=i
    )


def test_the_report_counts_examples_tokens_and_prompt_share_cut(tokenizer):
    raw = [encode(tokenizer, _long(i, w), 0) for i, w in enumerate((10, 60, 120))]
    lengths = [len(e) for e in raw]
    limit = lengths[1] - 10  # the middle example loses 10 tokens, the longest loses more, the short one none
    report = truncation_report(raw, limit)
    cut_long = lengths[2] - limit
    assert report["examples_cut"] == 2 and report["examples_skipped"] == 0
    assert report["tokens_cut"] == 10 + cut_long
    assert report["prompt_share_cut"] == pytest.approx((10 + cut_long) / sum(e.raw_prompt for e in raw))
    assert report["max_prompt_share_cut"] == pytest.approx(cut_long / raw[2].raw_prompt)
    assert report["longest"] == report["fits_all"] == lengths[2]
    message = truncation_message(report)
    assert "cuts 2 of 3 examples (66.7%)" in message and f"set data.max_length to {lengths[2]}" in message
    assert truncation_message(truncation_report(raw, lengths[2])) is None


def test_statistics_show_raw_lengths_and_what_was_cut(tokenizer):
    raw_len = len(encode(tokenizer, _long(0, 120), 0))
    enc = encode(tokenizer, _long(0, 120), raw_len - 25)
    assert enc.truncated == 25 and len(enc) == raw_len - 25
    stats = length_stats([enc])
    assert stats.prompt == [enc.n_prompt + 25] == [enc.raw_prompt]  # the length as written, not the cut one
    assert stats.cut == [25] and stats.prompt_kept == [enc.n_prompt]
    s = stats.summary()
    assert s["total_prompt"] == enc.n_prompt and s["total_prompt_raw"] == enc.raw_prompt
    assert s["examples_cut"] == 1 and s["tokens_cut"] == 25


def test_auto_max_length_fits_the_longest_example_up_to_the_budget_and_context():
    assert auto_max_length([5, 17, 12], cap=1024) == 24  # 17 rounded up to a multiple of 8
    assert auto_max_length([5, 16], cap=1024) == 16
    assert auto_max_length([700, 3000], cap=1024) == 1024
    assert auto_max_length([700, 3000], cap=1024, context=512) == 512
    assert LabConfig().data.max_length == 0


def test_auto_keeps_every_example_whole(tokenizer):
    examples = [_long(i, w) for i, w in enumerate((10, 60, 120))]
    fitted = encode_fitted(tokenizer, examples, 0, 1024)
    longest = max(len(encode(tokenizer, e, 0)) for e in examples)
    assert fitted.max_length == -(-longest // 8) * 8
    assert all(e.truncated == 0 for e in fitted.encoded) and fitted.truncation["examples_cut"] == 0


def test_a_max_length_too_small_for_the_template_head_and_answer_names_the_smallest_that_works(tokenizer):
    examples = to_examples(mc_records(6), DataConfig())
    with pytest.raises(
        DataError,
        match=r"data.max_length 8 is too small for the template head plus the answer: "
        r"the smallest value that keeps every example is (\d+)",
    ) as info:
        encode_fitted(tokenizer, examples, 8, 1024)
    smallest = int(info.value.args[0].split("keeps every example is ")[1].split(" ")[0])
    fitted = encode_fitted(tokenizer, examples, smallest, 1024)
    assert len(fitted.encoded) == 6 and not fitted.skipped
    for enc in fitted.encoded:
        text = tokenizer.decode(enc.input_ids)
        # The template head, the user marker and the whole answer survive; only passage text went.
        assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in text
        assert text.endswith("<|im_start|>assistant\n" + enc.example.answer + "<|im_end|>\n")
        assert enc.input_ids[enc.answer_position] == enc.choice_ids[enc.example.answer_index]


def test_a_multi_turn_cut_takes_the_oldest_turns_and_keeps_the_template_head(tokenizer):
    long = " ".join(f"word{k}" for k in range(80))
    ex = Example(
        [
            {"role": "user", "content": long},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "Done."},
        ]
    )
    raw = len(encode(tokenizer, ex, 0))
    enc = encode(tokenizer, ex, raw - 40)  # more than the short last user turn can give
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\n") and "word0 " not in text and "word79" in text
    assert text.endswith("And?<|im_end|>\n<|im_start|>assistant\nDone.<|im_end|>\n")


def test_a_run_warns_and_its_started_event_carries_the_counts(tmp_path):
    from plw_lab.core import events as ev
    from plw_lab.core.training import train

    examples = [_long(i, 30 + 10 * i) for i in range(8)]
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.max_steps": 1,
            "train.output_dir": str(tmp_path),
            "data.max_length": 70,
            "data.val_size": 2,
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    seen = []
    result = train(cfg, subscribers=[seen.append], examples=examples, compare=False)
    assert result.status == "finished"
    started = next(e for e in seen if isinstance(e, ev.Started))
    assert started.truncation["max_length"] == 70 and started.truncation["examples_cut"] > 0
    assert started.truncation["examples"] == 8
    notes = [e.message for e in seen if isinstance(e, ev.Advice)]
    assert any(n.startswith("max_length 70 cuts") for n in notes)
    assert (result.run_dir / "split.json").exists()


def test_inspect_reports_what_max_length_cuts(capsys):
    from plw_lab.cli import main

    code = main(
        ["inspect", "-n", "0", "--data", "builtin:reading-mc", "--set", "data.limit=12", "--set", "data.max_length=60"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "max_length 60 cuts 12 of 12 examples (100.0%)" in out
    assert main(["inspect", "-n", "0", "--set", "data.limit=4", "--set", "data.max_length=8"]) == 2
    assert "smallest value that keeps every example" in capsys.readouterr().err
