"""Reading every format and source, and the clear errors bad data gets."""

import json

import pytest
from conftest import mc_records

from plw_lab.core.config import DataConfig
from plw_lab.core.data import (
    HUB_UNREADABLE,
    DataError,
    check_hub_id,
    detect_format,
    hub_ids_only,
    load_examples,
    read_file,
    read_records,
    split,
    to_examples,
)


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    return path


def test_formats_are_detected_and_converted(tmp_path):
    cfg = DataConfig()
    pc = to_examples([{"prompt": "Say hi", "completion": "hi"}], cfg)[0]
    assert pc.messages == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    mc = to_examples(mc_records(1), cfg)[0]
    assert mc.choices == ("A", "B", "C") and mc.messages[-1]["content"] == mc.answer
    assert "A. " in mc.messages[0]["content"] and "Question: What colour" in mc.messages[0]["content"]
    cls = to_examples(
        [{"text": "CCO", "label": "BBB+"}, {"text": "C", "label": "BBB-"}], DataConfig(answer_format="({letter})")
    )
    assert cls[0].choices == ("(A)", "(B)") and cls[0].answer == "(A)" and cls[1].answer == "(B)"
    assert "(A) BBB+ (B) BBB-" in cls[0].messages[0]["content"]
    assert detect_format([{"messages": []}]) == "chat"


def test_jsonl_csv_and_parquet_files_give_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    _write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "d.csv").write_text("prompt,completion\n" + "\n".join(f"p{i},c{i}" for i in range(3)), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    got = [
        [e.messages for e in load_examples(DataConfig(source=str(tmp_path / f"d.{ext}")))]
        for ext in ("jsonl", "csv", "parquet")
    ]
    assert got[0] == got[1] == got[2] and len(got[0]) == 3


def test_column_map_renames_the_users_columns(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Q", "output": "A"}])
    ex = load_examples(DataConfig(source=str(path), column_map={"prompt": "instruction", "completion": "output"}))
    assert ex[0].messages[1]["content"] == "A"


def test_missing_fields_name_the_record_and_the_fix(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "only a prompt"}])
    with pytest.raises(DataError, match=r"record 1: missing field\(s\) completion .*column_map"):
        load_examples(DataConfig(source=str(path), format="prompt_completion"))


def test_unknown_field_names_list_what_is_expected(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"question_text": "a", "reply": "b"}])
    with pytest.raises(DataError, match="cannot tell the format.*prompt, completion"):
        load_examples(DataConfig(source=str(path)))


def test_empty_completion_is_refused():
    with pytest.raises(DataError, match="record 1: empty completion"):
        to_examples([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "  "}], DataConfig())


def test_answer_letter_must_be_among_the_options():
    record = {"context": "c", "question": "q", "options": ["x", "y"], "answer": "D"}
    with pytest.raises(DataError, match="record 0: answer 'D' is not among the option letters A, B"):
        to_examples([record], DataConfig())


def test_non_utf8_file_reports_where(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok", "completion": "fine"}\n{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataError, match=r"not valid UTF-8 at byte \d+ \(line 2\)"):
        read_file(path)


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataError, match="record 1: line 2: invalid JSON"):
        load_examples(DataConfig(source=str(path)))


def test_unsupported_file_and_missing_file_are_named(tmp_path):
    (tmp_path / "d.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(DataError, match="unsupported file type '.pkl'"):
        read_file(tmp_path / "d.pkl")
    with pytest.raises(DataError, match="no such file"):
        read_file(tmp_path / "nope.jsonl")


def test_unknown_builtin_set_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown built-in set 'nope'; choose one of"):
        load_examples(DataConfig(source="builtin:nope"))


def test_hub_dataset_offline_gets_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="need the internet"):
        load_examples(DataConfig(source="hf:someone/not-cached-anywhere"))


def test_split_is_deterministic_by_seed_and_disjoint():
    items = list(range(50))
    a = split(items, 0.2, seed=3)
    assert a == split(items, 0.2, seed=3)
    assert a != split(items, 0.2, seed=4)
    train, val = a
    assert len(val) == 10 and sorted(train + val) == items
    assert len(split(items, 7, seed=0)[1]) == 7
    assert len(split(items, 0.5, seed=0, val_max=5)[1]) == 5  # large sets keep evaluations quick


@pytest.mark.parametrize(
    "dataset_id",
    ["/etc", "../..", "secret", "secret/s.csv", "secret/sub", "a/../b", "owner/loader.py", "~/x", "a/b/c", ""],
)
def test_the_app_reads_only_hub_ids_never_server_folders(tmp_path, monkeypatch, dataset_id):
    """The app's hub box must not reach `datasets.load_dataset` with anything that names a local path."""
    (tmp_path / "secret" / "sub").mkdir(parents=True)
    (tmp_path / "secret" / "s.csv").write_text("user,password\nroot,hunter2\n")
    monkeypatch.chdir(tmp_path)
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail(f"load_dataset reached with {a}"))
    with hub_ids_only(), pytest.raises(DataError, match="hub dataset|dataset id"):
        read_records(DataConfig(source=f"hf:{dataset_id}"))


def test_a_server_says_the_same_of_its_folders_and_of_names_that_exist_nowhere(tmp_path, monkeypatch):
    """Within `hub_ids_only`, a hub id that is also a folder here gets the words of any dataset the hub
    cannot give (offline here), so the answer tells nothing about the server's disk."""
    (tmp_path / "secret" / "creds").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    import datasets

    def offline(path, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    answers = []
    for name in ("secret/creds", "nosuchdir/x"):
        with hub_ids_only(), pytest.raises(DataError) as caught:
            read_records(DataConfig(source=f"hf:{name}"))
        answers.append(str(caught.value).replace(name, "NAME"))
    assert answers[0] == answers[1] == HUB_UNREADABLE.format(id="NAME")
    with pytest.raises(DataError, match="LocalEntryNotFoundError"):  # the CLI's owner is told what went wrong
        read_records(DataConfig(source="hf:nosuchdir/x"))


def test_hub_ids_pass_the_check_and_the_cli_may_still_name_local_datasets(tmp_path, monkeypatch):
    import datasets

    seen = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda path, *a, **k: seen.append(path) or [{"prompt": "p", "completion": "c"}]
    )
    assert check_hub_id(" ehovy/race ") == "ehovy/race"
    with hub_ids_only():
        read_records(DataConfig(source="hf:someone/sums"))
    (tmp_path / "mine").mkdir()
    read_records(DataConfig(source=f"hf:{tmp_path / 'mine'}"))  # the machine's owner, from the CLI
    assert seen == ["someone/sums", str(tmp_path / "mine")]
