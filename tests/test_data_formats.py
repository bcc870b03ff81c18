"""Data is never silently changed: formats read as they are meant, bad records named or skipped,
duplicates counted and kept out of both sides of the split."""

import json

import pytest

from plw_lab.cli import main
from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import DataError, as_examples, detect_format, load_examples, split, to_examples
from plw_lab.core.events import read_events
from plw_lab.core.masks import encode


def completion_text(tokenizer, enc) -> str:
    return tokenizer.decode([t for t, c in zip(enc.input_ids, enc.completion_mask) if c])


# -- TRL's conversational prompt/completion -----------------------------------------------------


def test_conversational_prompt_completion_is_chat_with_only_the_completion_trained(tokenizer):
    record = {
        "prompt": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Teal."},
            {"role": "user", "content": "Another one?"},
        ],
        "completion": [{"role": "assistant", "content": "Crimson."}],
    }
    example = to_examples([record], DataConfig())[0]
    assert [m["role"] for m in example.messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in example.messages] == ["Name a colour.", "Teal.", "Another one?", "Crimson."]
    enc = encode(tokenizer, example, 256, train_eos=False)
    assert completion_text(tokenizer, enc) == "Crimson."  # the earlier reply is context at the prompt weight
    assert "Teal." in enc.text and "{'role'" not in enc.text


def test_conversational_halves_must_both_be_message_lists():
    with pytest.raises(DataError, match="record 0: in conversational prompt/completion data both"):
        to_examples([{"prompt": "Hi", "completion": [{"role": "assistant", "content": "Hello"}]}], DataConfig())
    with pytest.raises(DataError, match="'completion' must hold the assistant's reply"):
        to_examples(
            [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "x"}]}],
            DataConfig(),
        )
    with pytest.raises(DataError, match="'prompt' must be text or a list"):
        to_examples([{"prompt": {"text": "Hi"}, "completion": "Hello"}], DataConfig())


# -- many options ------------------------------------------------------------------------------


def mc(n_options: int, answer: str = "A") -> dict:
    return {"context": "c", "question": "q", "options": [f"option {i}" for i in range(n_options)], "answer": answer}


def test_26_options_all_reach_the_prompt_and_score_at_distinct_tokens(tokenizer):
    example = to_examples([mc(26, "Z")], DataConfig())[0]
    prompt = example.messages[0]["content"]
    assert all(f"\n{chr(65 + i)}. option {i}" in "\n" + prompt for i in range(26))
    assert example.answer == "Z" and len(example.choices) == 26
    enc = encode(tokenizer, example, 512)
    assert len(set(enc.choice_ids)) == 26


def test_more_than_26_options_or_labels_are_refused_never_dropped():
    with pytest.raises(DataError, match="record 1: 27 options; answers are scored by their letter .* at most 26"):
        to_examples([mc(3), mc(27)], DataConfig())
    skipped = to_examples([mc(3), mc(27)], DataConfig(on_error="skip"))
    assert len(skipped) == 1 and skipped.report.skipped[0][0] == 1
    labels = [{"text": f"t{i}", "label": f"L{i}"} for i in range(27)]
    with pytest.raises(DataError, match="27 labels; .* at most 26 labels"):
        to_examples(labels, DataConfig(on_error="skip"))


def test_options_that_are_not_valid_json_name_the_record():
    bad = {**mc(2), "options": '["first", "second"'}
    with pytest.raises(DataError, match=r"record 1: 'options' starts like a JSON list but is not valid JSON"):
        to_examples([mc(2), bad], DataConfig())
    assert to_examples([{**mc(2), "options": '["first", "second"]'}], DataConfig())[0].choices == ("A", "B")


# -- bytes, nulls, ragged rows -------------------------------------------------------------------


def test_bytes_are_an_error_not_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": [b"caf\xc3\xa9"], "completion": ["x"]}), path)
    with pytest.raises(DataError, match="record 0: field\\(s\\) prompt hold bytes, not text"):
        load_examples(DataConfig(source=str(path)))


def test_nulls_are_named_as_empty_not_missing():
    with pytest.raises(DataError) as err:
        to_examples([{"prompt": None, "completion": "b"}, {"prompt": "a", "completion": "b"}], DataConfig())
    assert "record 0: field(s) prompt empty (null" in str(err.value) and "missing" not in str(err.value)


@pytest.mark.parametrize(
    "row, message",
    [
        ("c", "record 1: field(s) completion empty (null, or left out of a short CSV row)"),
        ("c,d,e", "record 1: the CSV row has 1 more value(s) than the header has columns (['e'])"),
    ],
)
def test_ragged_csv_rows_are_named(tmp_path, row, message):
    path = tmp_path / "d.csv"
    path.write_text(f"prompt,completion\na,b\n{row}\n")
    with pytest.raises(DataError) as err:
        load_examples(DataConfig(source=str(path)))
    assert message in str(err.value)


# -- format detection ----------------------------------------------------------------------------


def test_the_format_comes_from_most_records_and_the_odd_one_is_named():
    records = [{"prompt": "only a prompt"}] + [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)]
    assert detect_format(records) == "prompt_completion"
    with pytest.raises(
        DataError, match=r"record 0: missing field\(s\) completion for format prompt_completion \(it has prompt\)"
    ):
        to_examples(records, DataConfig())
    with pytest.raises(DataError, match=r"fields \['a', 'b'\] of the first 2 record"):
        detect_format([{"a": 1}, {"b": 2}])


# -- data.on_error ----------------------------------------------------------------------------------


def test_on_error_skip_leaves_bad_records_out_and_says_why():
    records = [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c", "completion": " "},
        {"prompt": "e"},
        {"prompt": "f", "completion": "g"},
    ]
    with pytest.raises(DataError, match="record 1: empty completion"):
        to_examples(records, DataConfig())
    examples = to_examples(records, DataConfig(on_error="skip"))
    assert [e.source_index for e in examples] == [0, 3]
    assert [i for i, _ in examples.report.skipped] == [1, 2]
    assert "missing field(s) completion" in examples.report.skipped[1][1]
    assert examples.report.lines() == [
        "2 bad record(s) of 4 skipped (data.on_error=skip): record 1: empty completion: every example needs "
        "something to train on; record 2: missing field(s) completion for format prompt_completion (it has prompt); "
        "map columns with data.column_map"
    ]
    with pytest.raises(DataError, match="all 2 records were skipped; first: record 0: empty completion"):
        to_examples(records[1:2] * 2, DataConfig(on_error="skip"))


def test_unreadable_lines_are_bad_records_that_can_be_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", \n[1, 2]\n{"prompt": "e", "completion": "f"}\n'
    )
    with pytest.raises(DataError, match=r"record 1: line 3: invalid JSON"):
        load_examples(DataConfig(source=str(path)))
    examples = load_examples(DataConfig(source=str(path), on_error="skip"))
    assert [e.source_index for e in examples] == [0, 3]
    assert examples.report.skipped == [
        (1, "line 3: invalid JSON (Expecting property name enclosed in double quotes)"),
        (2, "expected an object with named fields, got list"),
    ]
    path.write_text("not json\n{oops\n")
    with pytest.raises(
        DataError, match=r"none of the first 2 record\(s\) could be read; record 0: line 1: invalid JSON"
    ):
        load_examples(DataConfig(source=str(path), on_error="skip"))


# -- duplicates ----------------------------------------------------------------------------------


def sums(n: int) -> list[dict]:
    return [{"prompt": f"{i} + {i} =", "completion": str(2 * i)} for i in range(n)]


def test_exact_duplicates_are_counted_and_never_on_both_sides_of_the_split():
    records = sums(20)
    records[5] = dict(records[0])
    records[11] = dict(records[0])
    records[19] = dict(records[7])
    examples = to_examples(records, DataConfig())
    assert len(examples) == 17
    assert examples.report.duplicates == [(5, 0), (11, 0), (19, 7)]
    assert examples.report.lines()[0].startswith("3 exact duplicate record(s) of 20 left out")
    for seed in range(5):
        train, val = split(examples, 0.3, seed)
        seen = {json.dumps(e.messages) for e in train}
        assert not any(json.dumps(e.messages) in seen for e in val)
    assert examples.report.to_dict()["duplicates"] == 3


def test_inspect_and_the_started_event_report_duplicates_and_skips(tmp_path, capsys):
    records = sums(12) + [sums(1)[0], {"prompt": "bad", "completion": ""}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    common = ["--model", "tiny-random", "--data", str(path), "--set", "data.on_error=skip"]
    assert main(["inspect", *common, "-n", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 exact duplicate record(s) of 14 left out" in out and "record 12 repeats 0" in out
    assert "1 bad record(s) of 14 skipped (data.on_error=skip): record 13: empty completion" in out
    assert (
        main(
            [
                "train",
                *common,
                "--max-steps",
                "1",
                "--output-dir",
                str(tmp_path / "runs"),
                "--set",
                "eval.generations=0",
                "--set",
                "eval.probe_texts=0",
                "--set",
                "data.val_size=3",
            ]
        )
        == 0
    )
    assert "data: 1 exact duplicate record(s)" in capsys.readouterr().out
    events = read_events(next((tmp_path / "runs").iterdir()) / "events.jsonl")
    started = next(e for e in events if e.kind == "started")
    assert started.data_report["duplicates"] == 1 and started.data_report["skipped"] == 1
    assert started.data_report["first_skipped"][0]["record"] == 13
    assert started.n_train + started.n_val == 12


def test_a_config_with_on_error_round_trips(tmp_path):
    cfg = LabConfig().override({"data.on_error": "skip"})
    assert LabConfig.load(cfg.save(tmp_path / "c.yaml")).data.on_error == "skip"


# -- preference data is not SFT data ----------------------------------------------------------------

PAIRED = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five."},
]
#: TRL's unpaired preference format: each completion labelled desirable (true) or not (false).
UNPAIRED = [
    {"prompt": "The sky is", "completion": " blue.", "label": True},
    {"prompt": "The sky is", "completion": " green.", "label": False},
]


@pytest.mark.parametrize(
    "records, message",
    [
        (PAIRED, "preference data (prompt/chosen/rejected) is not SFT data: SFT learns one reply per prompt"),
        (
            # the implicit-prompt conversational form: whole conversations under chosen and rejected
            [
                {
                    "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                    "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
                }
            ],
            "preference data (prompt/chosen/rejected) is not SFT data",
        ),
        (UNPAIRED, "preference data (prompt/completion/label) is not SFT data: its label marks each completion"),
    ],
)
def test_preference_data_is_refused_by_name(records, message):
    for cfg in (DataConfig(), DataConfig(format="prompt_completion"), DataConfig(on_error="skip")):
        with pytest.raises(DataError) as caught:
            to_examples(records, cfg)
        assert message in str(caught.value)


def test_unpaired_preference_data_exits_2_before_a_run_folder(tmp_path, capsys):
    path = tmp_path / "kto.csv"  # a CSV spells the labels as text
    path.write_text("prompt,completion,label\nThe sky is,blue,True\nThe sky is,green,False\n")
    runs = tmp_path / "runs"
    assert main(["train", "--model", "tiny-random", "--data", str(path), "--output-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: preference data (prompt/completion/label) is not SFT data" in err
    assert not runs.exists()


def test_the_remedy_the_message_names_trains_on_the_chosen_replies():
    examples = as_examples(PAIRED, DataConfig(column_map={"completion": "chosen"}))
    assert [e.messages[-1]["content"] for e in examples] == [" blue.", " four."]
    # A prompt/completion set whose label is not a yes/no flag is ordinary SFT data.
    labelled = [{"prompt": "p", "completion": "c", "label": "topic-a"}, {"prompt": "q", "completion": "d", "label": 3}]
    assert len(to_examples(labelled, DataConfig())) == 2


# -- datasets: save_to_disk folders, .arrow files, Dataset objects ------------------------------------


def sum_records(n: int) -> list[dict]:
    return [{"prompt": f"Add {i} and {i + 1}.", "completion": str(2 * i + 1)} for i in range(n)]


def test_a_save_to_disk_folder_and_an_arrow_file_are_read(tmp_path):
    import datasets

    records = sum_records(6)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    assert [e.messages[-1]["content"] for e in load_examples(DataConfig(source=str(tmp_path / "saved")))] == [
        r["completion"] for r in records
    ]
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    assert len(load_examples(DataConfig(source=str(arrow)))) == 6
    # A DatasetDict folder: data.hf_split picks the split, and a missing one names those there are.
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(records), "test": datasets.Dataset.from_list(sum_records(2))}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert len(load_examples(DataConfig(source=str(tmp_path / "dict")))) == 6
    assert len(load_examples(DataConfig(source=str(tmp_path / "dict"), hf_split="test"))) == 2
    with pytest.raises(DataError, match=r"is a DatasetDict without a 'validation' split; it has train, test"):
        load_examples(DataConfig(source=str(tmp_path / "dict"), hf_split="validation"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is a folder, not a data file nor a dataset saved with datasets' save_to_disk"):
        load_examples(DataConfig(source=str(tmp_path / "plain")))


def test_class_label_columns_give_their_names():
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    dataset = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]}, features=features)
    examples = as_examples(dataset, DataConfig())
    assert [e.meta["label"] for e in examples] == ["yes", "no", "yes"]
    assert "(A) no (B) yes" in examples[0].messages[0]["content"]


def test_a_dataset_or_dataset_dict_is_taken_by_the_python_api(tokenizer):
    import datasets

    from plw_lab.core.training import prepare

    cfg = LabConfig().override({"data.val_size": "2", "data.column_map": '{"completion": "answer"}'})
    rows = [{"prompt": r["prompt"], "answer": r["completion"]} for r in sum_records(8)]
    dataset = datasets.Dataset.from_list(rows)
    prepared = prepare(cfg, tokenizer, dataset)
    assert (len(prepared.train), len(prepared.val)) == (6, 2)
    # The same rows as a list of dicts and as a DatasetDict's train split give the same split.
    for same in (rows, datasets.DatasetDict({"train": dataset, "test": dataset.select([0])})):
        assert prepare(cfg, tokenizer, same).split["fingerprint"] == prepared.split["fingerprint"]
    with pytest.raises(DataError, match="preference data"):
        prepare(cfg, tokenizer, datasets.Dataset.from_list(PAIRED))


def test_a_save_to_disk_folder_trains(tmp_path):
    import datasets

    datasets.Dataset.from_list(sum_records(10)).save_to_disk(str(tmp_path / "saved"))
    runs = tmp_path / "runs"
    args = ["train", "--model", "tiny-random", "--data", str(tmp_path / "saved"), "--max-steps", "1"]
    args += ["--output-dir", str(runs), "--set", "eval.generations=0", "--set", "eval.probe_texts=0"]
    assert main(args) == 0
    (run,) = runs.iterdir()
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
