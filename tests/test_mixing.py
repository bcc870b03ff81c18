"""Mixing sources, temperature mixing, general-text replay, answer balancing and class weights."""

import math
from collections import Counter

import pytest
from conftest import sum_examples

from plw_lab.core.builtin import general_text
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.data import DataError, Example
from plw_lab.core.mixing import (
    REPLAY_SOURCE,
    balance,
    balanced_counts,
    class_weighted,
    draw_mixture,
    source_shares,
    training_split,
)


def test_shares_from_ratios_and_from_temperature_by_hand():
    assert source_shares({"a": 100, "b": 25}, {"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}
    assert source_shares({"a": 100, "b": 25}, {"a": 3}) == {"a": 0.75, "b": 0.25}, "an unlisted source has ratio 1"
    # p_k proportional to N_k^(1/T): T = 1 is proportional to size, T = 2 to its square root.
    assert source_shares({"a": 100, "b": 25}, {}, 1.0) == pytest.approx({"a": 0.8, "b": 0.2})
    assert source_shares({"a": 100, "b": 25}, {}, 2.0) == pytest.approx({"a": 10 / 15, "b": 5 / 15})
    assert source_shares({"a": 100, "b": 25}, {}, 100.0)["a"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixing_ratios_hold_within_sampling_error_over_many_draws(seed):
    pools = {"a": list(range(10)), "b": list(range(100, 103)), "c": list(range(200, 250))}
    shares = {"a": 0.6, "b": 0.3, "c": 0.1}
    n = 20_000
    drawn = draw_mixture(pools, shares, n, seed)
    counts = Counter("a" if x < 100 else "b" if x < 200 else "c" for x in drawn)
    for source, p in shares.items():
        standard_error = math.sqrt(p * (1 - p) / n)
        assert abs(counts[source] / n - p) < 4 * standard_error, (source, counts[source] / n)
    # A source drawn more often than it has items goes round it evenly: each of b's 3 items ~ 2000 times.
    per_item = Counter(x for x in drawn if 100 <= x < 200)
    assert max(per_item.values()) - min(per_item.values()) <= 1 + counts["b"] // 3 // 10


def _labelled(counts: dict[str, int]) -> list[Example]:
    out = []
    for label, n in counts.items():
        index = "AB".index(label)
        out += [
            Example(
                [{"role": "user", "content": f"{label}{i}"}, {"role": "assistant", "content": label}],
                choices=("A", "B"),
                answer_index=index,
                source_index=len(out),
            )
            for i in range(n)
        ]
    return out


def test_balancing_counts():
    examples = _labelled({"A": 6, "B": 2}) + sum_examples(3)
    down = balance(examples, "downsample")
    up = balance(examples, "upsample")
    key = lambda e: e.answer if e.answer_index is not None else "free"
    assert Counter(map(key, down)) == {"A": 2, "B": 2, "free": 3}
    assert Counter(map(key, up)) == {"A": 6, "B": 6, "free": 3}
    # Upsampling repeats each rare example as evenly as it can: each of the two B's three times.
    assert sorted(Counter(id(e) for e in up if e.answer == "B").values()) == [3, 3]
    assert balance(examples, "none") == examples
    assert balanced_counts({"A": 6, "B": 2}, "downsample") == {"A": 2, "B": 2}
    assert balanced_counts({"A": 6, "B": 2}, "upsample") == {"A": 6, "B": 6}
    with pytest.raises(DataError, match="data.balance needs"):
        balance(sum_examples(3), "upsample")


def test_class_weights_give_each_answer_the_same_total_weight():
    weighted = class_weighted(_labelled({"A": 6, "B": 2}))
    # n / (k n_c): A 8 / (2 x 6) = 2/3, B 8 / (2 x 2) = 2; totals 4 and 4.
    assert [e.weight for e in weighted] == pytest.approx([2 / 3] * 6 + [2.0] * 2)
    assert sum(e.weight for e in weighted if e.answer == "A") == pytest.approx(
        sum(e.weight for e in weighted if e.answer == "B")
    )


def _cfg(**overrides):
    return LabConfig().override(
        {
            "model.name": "tiny-random",
            "data.source": "builtin:bbb",
            "data.limit": 40,
            "data.val_size": 0.25,
            **overrides,
        }
    )


def test_without_remedies_the_split_is_the_plain_one():
    from plw_lab.core.data import load_examples, split

    cfg = _cfg()
    examples = load_examples(cfg.data)
    assert training_split(cfg, examples) == split(examples, 0.25, cfg.train.seed, cfg.data.val_max)


def test_two_sources_are_split_apart_and_drawn_at_their_ratio():
    cfg = _cfg(**{"data.mix": {"builtin:reading-mc": 3}})
    train, val = training_split(cfg)
    val_sources = Counter(e.meta["source"] for e in val)
    assert val_sources == {"builtin:bbb": 10, "builtin:reading-mc": 10}, "each source keeps its own validation share"
    train_sources = Counter(e.meta["source"] for e in train)
    assert sum(train_sources.values()) == 60
    # 60 draws at p = 3/4: within 4 standard errors (about 13 examples) of 45.
    assert abs(train_sources["builtin:reading-mc"] - 45) <= 4 * math.sqrt(60 * 0.75 * 0.25)
    val_ids = {(e.meta["source"], e.source_index) for e in val}
    assert not val_ids & {(e.meta["source"], e.source_index) for e in train}, "no validation example is trained on"


def test_replay_is_its_share_of_the_training_set_and_never_the_probe_text():
    cfg = _cfg(**{"data.replay": 0.25, "eval.probe_texts": 12})
    train, val = training_split(cfg)
    replay = [e for e in train if e.meta.get("source") == REPLAY_SOURCE]
    assert len(replay) == round(30 * 0.25 / 0.75) == 10 and len(train) == 40
    probe = general_text()[:12]
    for e in replay:
        assert not any(e.messages[1]["content"] in text for text in probe)
    assert all(e.meta.get("source") != REPLAY_SOURCE for e in val)


def test_balance_and_class_weights_apply_to_training_only():
    cfg = _cfg(**{"data.balance": "downsample", "train.class_weighted_loss": True, "data.limit": 60})
    train, val = training_split(cfg)
    counts = Counter(e.answer for e in train)
    assert len(set(counts.values())) == 1
    assert all(e.weight == pytest.approx(1.0) for e in train), "balanced classes need no reweighting"
    plain_train, plain_val = training_split(_cfg(**{"data.limit": 60}))
    assert val == plain_val


def test_bad_mix_settings_are_refused_clearly():
    with pytest.raises(ConfigError, match="data.mix: the ratio of 'x.jsonl'"):
        _cfg(**{"data.mix": {"x.jsonl": -1}})
    with pytest.raises(ConfigError, match="every ratio is 0"):
        _cfg(**{"data.mix": {"builtin:bbb": 0}})
    with pytest.raises(DataError, match="data.balance needs"):
        training_split(_cfg(**{"data.source": "builtin:instructions", "data.balance": "upsample", "data.limit": 0}))


def test_validation_reports_each_source(tokenizer, tiny_model):
    from plw_lab.core.evaluation import evaluate
    from plw_lab.core.masks import encode_all

    cfg = _cfg(**{"data.mix": {"builtin:reading-mc": 1}, "data.limit": 8, "data.val_size": 0.5})
    _, val = training_split(cfg)
    encoded, _ = encode_all(tokenizer, val, 256)
    metrics = evaluate(tiny_model, encoded, tokenizer.pad_token_id, batch_size=3)
    per = metrics["per_source"]
    assert set(per) == {"builtin:bbb", "builtin:reading-mc"}
    for source, entry in per.items():
        alone = evaluate(
            tiny_model, [e for e in encoded if e.example.meta["source"] == source], tokenizer.pad_token_id, batch_size=3
        )
        assert entry["n_examples"] == alone["n_examples"] == 4
        assert entry["completion_loss"] == pytest.approx(alone["completion_loss"], rel=1e-5)
        assert entry["prompt_loss"] == pytest.approx(alone["prompt_loss"], rel=1e-5)
        assert "answer_accuracy" not in alone or entry["answer_accuracy"] == pytest.approx(alone["answer_accuracy"])


def test_label_balance_chart_shows_before_and_after():
    from plw_lab.views.charts import label_balance_figure

    fig = label_balance_figure(
        {"A": 6, "B": 2}, after=balanced_counts({"A": 6, "B": 2}, "upsample"), after_label="after upsample"
    )
    assert [list(t.y) for t in fig.data] == [[6, 2], [6, 6]]
    assert "after upsample: majority 50%" in fig.layout.title.text
