"""Validation that does not leak: grouped splits, a separate validation file, split.json."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import (
    DataError,
    group_of,
    load_examples,
    make_split,
    rebuild_split,
    split,
    to_examples,
)
from plw_lab.core.runs import write_json

RACE = Path("/work/shared/data/race_cube_1000.jsonl")


def race_like(passages: int, questions: int) -> list[dict]:
    """`passages` passages with `questions` questions each, RACE style (article, question, options, answer)."""
    records = []
    for p in range(passages):
        article = f"Passage {p}. " + " ".join(f"Sentence {s} of passage {p}." for s in range(5))
        for q in range(questions):
            records.append(
                {
                    "article": article,
                    "question": f"Question {q} about passage {p}?",
                    "options": ["one", "two", "three", "four"],
                    "answer": "ABCD"[(p + q) % 4],
                }
            )
    return records


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_questions_about_one_passage_never_fall_on_both_sides():
    examples = to_examples(race_like(10, 3), DataConfig())
    assert len({group_of(e, i) for i, e in enumerate(examples)}) == 10
    for seed in range(6):
        train, val = split(examples, 9, seed)
        train_passages = {e.meta["group"] for e in train}
        val_passages = {e.meta["group"] for e in val}
        assert not train_passages & val_passages
        # 9 validation questions are exactly 3 whole passages of 3 questions; nothing is lost.
        assert len(val) == 9 and len(val_passages) == 3 and len(train) == 21


def test_a_group_that_would_overfill_validation_stays_in_training():
    # Passages of 3 questions and a validation size of 4: one passage (3) fits, a second would make 6.
    examples = to_examples(race_like(6, 3), DataConfig())
    train, val = split(examples, 4, seed=0)
    assert len(val) == 3 and len(train) == 15
    assert len({e.meta["group"] for e in val}) == 1


def test_without_groups_the_split_is_the_plain_seeded_shuffle():
    examples = to_examples(race_like(12, 1), DataConfig(group_by="none"))
    assert all("group" not in e.meta for e in examples)
    order = list(range(12))
    random.Random(7).shuffle(order)  # the oracle: shuffle positions, the first 3 are validation
    train, val = split(examples, 0.25, 7)
    assert [e.source_index for e in val] == sorted(order[:3])
    assert [e.source_index for e in train] == order[3:]


def test_group_by_names_a_field_and_a_missing_field_is_a_clear_error():
    records = [{"prompt": f"Q{i}", "completion": "A", "doc": f"d{i // 2}"} for i in range(8)]
    examples = to_examples(records, DataConfig(group_by="doc"))
    assert [e.meta["group"] for e in examples] == ["d0", "d0", "d1", "d1", "d2", "d2", "d3", "d3"]
    train, val = split(examples, 2, seed=3)
    assert len(val) == 2 and val[0].meta["group"] == val[1].meta["group"]
    assert val[0].meta["group"] not in {e.meta["group"] for e in train}
    del records[5]["doc"]
    with pytest.raises(DataError, match=r"record 5: no field 'doc' to group by \(data.group_by\)"):
        to_examples(records, DataConfig(group_by="doc"))


def test_one_group_for_everything_cannot_be_split():
    examples = to_examples(race_like(1, 6), DataConfig())
    with pytest.raises(DataError, match="share one group"):
        split(examples, 2, seed=0)


def test_a_separate_validation_file_is_used_whole_with_the_training_label_letters(tmp_path):
    train_file = _write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)])
    # The validation file has only label 'b': on its own it would become letter A.
    val_file = _write_jsonl(tmp_path / "val.jsonl", [{"text": f"v{i}", "label": "b"} for i in range(4)])
    cfg = DataConfig(source=str(train_file), val_source=str(val_file), val_size=0.5)
    examples = load_examples(cfg)
    train, val, record = make_split(examples, cfg)
    assert [e.source_index for e in train] == list(range(10))  # nothing of the source held out
    assert [e.source_index for e in val] == [0, 1, 2, 3]
    assert all(e.answer == "B" and e.meta["label"] == "b" for e in val)
    assert record["val_source"] == str(val_file) and record["shared_groups"] == 0
    capped = make_split(examples, DataConfig(source=str(train_file), val_source=str(val_file), val_max=2))[1]
    assert len(capped) == 2
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "v", "label": "c"}])
    with pytest.raises(DataError, match=r"data.val_source: .*label 'c' is not one of the labels \['a', 'b'\]"):
        make_split(examples, DataConfig(source=str(train_file), val_source=str(bad)))


def test_a_validation_file_sharing_passages_with_training_is_reported(tmp_path, tokenizer):
    from plw_lab.core.training import prepare

    train_file = _write_jsonl(tmp_path / "train.jsonl", race_like(6, 2))
    val_file = _write_jsonl(tmp_path / "val.jsonl", race_like(6, 2)[:4])  # passages 0 and 1 again
    cfg = LabConfig().override({"data.source": str(train_file), "data.val_source": str(val_file)})
    prepared = prepare(cfg, tokenizer)
    assert prepared.split["shared_groups"] == 2
    assert any("2 validation groups" in note and "also occur in training" in note for note in prepared.notes)


def test_split_json_rebuilds_the_same_examples(tmp_path, tokenizer):
    from plw_lab.core.training import prepare

    source = _write_jsonl(tmp_path / "race.jsonl", race_like(12, 3))
    cfg = LabConfig().override({"data.source": str(source), "data.val_size": 6, "data.split_seed": 4})
    prepared = prepare(cfg, tokenizer)
    write_json(tmp_path / "split.json", prepared.split)
    record = json.loads((tmp_path / "split.json").read_text())
    assert record["split_seed"] == 4 and record["group_by"] == "auto"
    assert record["val_groups"] == 2 and record["train_groups"] == 10 and record["shared_groups"] == 0
    train_ex, val_ex = rebuild_split(cfg.data, tmp_path / "split.json")
    assert [e.source_index for e in train_ex] == [e.example.source_index for e in prepared.train]
    assert [e.source_index for e in val_ex] == [e.example.source_index for e in prepared.val]
    assert [e.messages for e in val_ex] == [e.example.messages for e in prepared.val]
    other = _write_jsonl(tmp_path / "small.jsonl", race_like(2, 1))
    with pytest.raises(DataError, match="split.json names records"):
        rebuild_split(DataConfig(source=str(other)), record)


def test_the_split_depends_on_split_seed_not_on_the_training_seed(tmp_path, tokenizer):
    from plw_lab.core.training import prepare

    source = _write_jsonl(tmp_path / "race.jsonl", race_like(12, 2))
    base = LabConfig().override({"data.source": str(source), "data.val_size": 6})
    val_of = lambda **kw: [e.example.source_index for e in prepare(base.override(kw), tokenizer).val]
    assert val_of(**{"train.seed": 0}) == val_of(**{"train.seed": 5})
    assert val_of(**{"data.split_seed": 0}) != val_of(**{"data.split_seed": 1})


@pytest.mark.skipif(not RACE.exists(), reason="the shared RACE sample is not on this machine")
def test_real_race_passages_stay_on_one_side():
    cfg = DataConfig(source=str(RACE))
    examples = load_examples(cfg)
    train, val, record = make_split(examples, DataConfig(source=str(RACE), val_size=0.2, val_max=0))
    assert not {e.meta["group"] for e in train} & {e.meta["group"] for e in val}
    assert record["shared_groups"] == 0 and len(train) + len(val) == len(examples)


@pytest.mark.skipif(importlib.util.find_spec("B3DB") is None, reason="the bbb set needs the qc-B3DB package")
def test_the_bbb_demo_config_gives_400_balanced_molecules_to_train_and_160_to_validate():
    import collections

    cfg = LabConfig.load("bbb-demo")
    assert cfg.data.source == "builtin:bbb" and cfg.model.name == "embedded"
    examples = load_examples(cfg.data)
    train, val, record = make_split(examples, cfg.data)
    assert (len(train), len(val)) == (400, 160)
    assert collections.Counter(e.meta["label"] for e in examples) == {"BBB+": 280, "BBB-": 280}
    assert not set(record["train"]) & set(record["val"])
