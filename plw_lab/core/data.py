"""Reading records from any source and turning them into conversations.

Every format ends up as an `Example`: a list of chat messages whose assistant turns are the
completions, plus, for multiple-choice and classification data, the candidate answers as they
are written in the completion (so accuracy can be read from their log-probabilities).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from plw_lab.core.config import DataConfig, brief, shown, unicode_problem, unknown_builtin_set, value_problem
from plw_lab.core.extras import require
from plw_lab.core.quiet import dataset_bars

FORMATS = ("prompt_completion", "chat", "multiple_choice", "classification")
_REQUIRED = {
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
    "multiple_choice": ("question", "options", "answer"),
    "classification": ("text", "label"),
}
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Bad data; the message names the file or record, the field, and what to do."""


class HubLoadError(DataError):
    """`datasets` could not load a hub dataset (offline, unknown id, missing config)."""


@dataclass
class Example:
    #: Chat messages; an assistant message marked `"trained": False` (an earlier reply inside a
    #: TRL conversational prompt) is context and gets the prompt weight, not the completion mask.
    messages: list[dict]
    #: Candidate answers as written in the completion ("A", "B", ...); empty for free-form data.
    choices: tuple[str, ...] = ()
    #: Index into `choices` of the right answer.
    answer_index: int | None = None
    #: What each choice stands for ("BBB+", "the sea"), where the data says: a generated answer that
    #: names an option by its text instead of its letter still names that option.
    option_texts: tuple[str, ...] = ()
    #: Position of the record in the source, for error messages and the UI.
    source_index: int = 0
    meta: dict = field(default_factory=dict)
    #: The record's own loss weight (its `weight` field): multiplies every token weight; 0 skips it.
    weight: float = 1.0

    @property
    def answer(self) -> str | None:
        return None if self.answer_index is None else self.choices[self.answer_index]


@dataclass
class DataReport:
    """What conversion left out of the records it was given, and why."""

    records: int = 0
    #: (record, the earlier record it repeats exactly): left out so no example is in both train and validation.
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    #: (record, why) for records skipped under `data.on_error: skip`.
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def lines(self, shown: int = 3) -> list[str]:
        """One sentence per kind of record left out, naming the first few: for the CLI, the app and events."""
        out = []
        if self.duplicates:
            pairs = ", ".join(f"record {i} repeats {j}" for i, j in self.duplicates[:shown])
            more = ", ..." if len(self.duplicates) > shown else ""
            out.append(
                f"{len(self.duplicates)} exact duplicate record(s) of {self.records} left out, so none is in both "
                f"train and validation ({pairs}{more})"
            )
        if self.skipped:
            first = "; ".join(f"record {i}: {why}" for i, why in self.skipped[:shown])
            more = "; ..." if len(self.skipped) > shown else ""
            out.append(
                f"{len(self.skipped)} bad record(s) of {self.records} skipped (data.on_error=skip): {first}{more}"
            )
        return out

    def to_dict(self) -> dict:
        return {
            "records": self.records,
            "duplicates": len(self.duplicates),
            "skipped": len(self.skipped),
            "first_skipped": [{"record": i, "reason": why} for i, why in self.skipped[:20]],
            "notes": self.lines(),
        }


class Examples(list):
    """The examples converted from a data set, carrying the `DataReport` of what was left out.

    A list, so everything that takes examples still does; the report travels with them from
    the app or a notebook into training, which puts it in the `started` event.
    """

    def __init__(self, examples=(), report: DataReport | None = None):
        super().__init__(examples)
        self.report = report or DataReport(records=len(self))


# -- reading ---------------------------------------------------------------------------------


class Unreadable(dict):
    """A line or value that is not a record (invalid JSON, a bare number): it keeps its place so
    conversion names it, or skips it under `data.on_error: skip` like any other bad record."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason


#: A dataset id as the Hugging Face Hub spells them: owner, slash, name.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


#: What a server that reads hub ids only says of any hub dataset it cannot read, whatever the reason: the
#: same words for a folder of that name on the server and for a name that exists nowhere, so a visitor
#: learns nothing about the server's disk.
HUB_UNREADABLE = (
    "Could not load hub dataset {id!r}: it is not on the Hugging Face Hub, it is private or gated, or this server "
    "cannot reach the internet. Choose a built-in set or upload a file."
)
_HUB_IDS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("hub_ids_only", default=False)


@contextlib.contextmanager
def hub_ids_only():
    """Within it, 'hf:' sources name hub datasets and nothing else: what a server does with the names its
    visitors type (the app, unless its owner allows local paths). `datasets.load_dataset` reads a local
    folder of the same name first, so such a name is never handed to it."""
    token = _HUB_IDS_ONLY.set(True)
    try:
        yield
    finally:
        _HUB_IDS_ONLY.reset(token)


def check_hub_id(dataset_id: str) -> str:
    """`dataset_id` (stripped) when it is spelled as a hub dataset id, owner/name; looks at nothing on disk."""
    dataset_id = dataset_id.strip()
    if not HUB_ID.fullmatch(dataset_id) or ".." in dataset_id or dataset_id.endswith(".py"):
        raise DataError(f"{dataset_id!r} is not a Hugging Face dataset id: type it as owner/name, e.g. ehovy/race")
    return dataset_id


def _read_hub_id_only(dataset_id: str, config: str, split: str) -> list[dict]:
    """`read_hub` for a server's visitor: an owner/name id, never a local path, and one answer for every
    dataset that cannot be read (`HUB_UNREADABLE`), whether a folder of that name exists here or not."""
    dataset_id = check_hub_id(dataset_id)
    if os.path.lexists(dataset_id) or os.path.lexists(dataset_id.split("/")[0]):
        raise DataError(HUB_UNREADABLE.format(id=dataset_id))
    try:
        return read_hub(dataset_id, config, split)
    except HubLoadError:
        raise DataError(HUB_UNREADABLE.format(id=dataset_id)) from None


def read_records(cfg: DataConfig) -> tuple[list[dict], dict]:
    """Records from `cfg.source` and what is known about them (e.g. classification labels).

    Within `hub_ids_only()` (the app) 'hf:' takes owner/name ids of the hub only, so a visitor cannot
    make the server read its own folders; the CLI, run by the machine's owner, may name local datasets.
    """
    source = cfg.source.strip()
    if not source:
        raise DataError("data.source is empty: choose a built-in set ('builtin:NAME'), a file, or 'hf:ORG/NAME'")
    info: dict = {}
    if source.startswith("builtin:"):
        from plw_lab.core import builtin

        name = source.removeprefix("builtin:")
        if unknown := unknown_builtin_set(source):
            raise DataError(unknown)
        spec = builtin.BUILTIN_SETS[name]
        if spec.extra:
            require(spec.extra, f"the built-in set {name!r} ({source})")
        records = builtin.load_builtin(name, n=cfg.limit or None, seed=0)
        info = {"format": spec.format, "labels": list(spec.labels), "description": spec.description}
    elif source.startswith("hf:"):
        dataset_id = source.removeprefix("hf:")
        read = _read_hub_id_only if _HUB_IDS_ONLY.get() else read_hub
        records = read(dataset_id, cfg.hf_config, cfg.hf_split)
    else:
        records = read_file(source, cfg.hf_split)
    if cfg.limit:
        records = records[: cfg.limit]
    if not records:
        raise DataError(f"{brief(source)}: no records found")
    _check_columns(records, cfg.column_map, source)
    return [_rename(r, cfg.column_map) for r in records], info


def _check_columns(records: list, column_map: dict, source: str) -> None:
    """Refuse a `data.column_map` that names a column no record has: it would rename nothing, silently."""
    if not column_map:
        return
    columns = {key for record in records if isinstance(record, dict) for key in record if isinstance(key, str)}
    missing = [column for column in column_map.values() if column not in columns]
    if missing:
        raise DataError(
            f"data.column_map names column(s) {', '.join(map(shown, missing))}, which {brief(source)} does not have; "
            f"its columns are {', '.join(map(shown, sorted(columns))) or 'none'}"
        )


def read_file(path: str | Path, split: str = "train") -> list[dict]:
    """Records of a data file, or of a folder written by `datasets`' `save_to_disk` (its `split` when it
    holds a DatasetDict)."""
    path = Path(path).expanduser()
    name = brief(str(path))
    suffix = path.suffix.lower()
    try:
        if not path.exists():
            raise DataError(f"{name}: no such file")
        if path.is_dir():
            return _read_saved_dataset(path, split)
        if suffix == ".arrow":
            return _read_arrow(path)
        if suffix not in (".parquet", ".csv", ".json", ".jsonl", ".ndjson"):
            raise DataError(
                f"{name}: unsupported file type {shown(suffix)}; use .jsonl, .json, .csv, .parquet, .arrow "
                "or a folder saved with datasets' save_to_disk"
            )
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except Exception as exc:  # pyarrow raises many types for a damaged file
                raise DataError(f"{name}: not a readable Parquet file ({exc})") from exc
        raw = path.read_bytes()
    except OSError as exc:  # a path too long for the file system, no permission
        raise DataError(f"{name} cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name}: not valid UTF-8 at byte {exc.start} (line {line}); re-save the file as UTF-8"
        ) from None
    if suffix == ".csv":
        return _read_csv(text, name)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        except ValueError as exc:
            raise DataError(f"{name} {value_problem(exc)}") from None
        except RecursionError:
            raise DataError(f"{name}: {TOO_DEEP}") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if not isinstance(data, list):
            raise DataError(f"{name}: expected a list of records")
        return data
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            records.append(Unreadable(f"line {number}: invalid JSON ({exc.msg})"))
        except ValueError as exc:
            records.append(Unreadable(f"line {number} {value_problem(exc)}"))
        except RecursionError:
            records.append(Unreadable(f"line {number}: {TOO_DEEP}"))
    return records


#: Why a record nested past the parser's recursion limit is refused.
TOO_DEEP = "nested too deeply to read (a record holds text, numbers and lists of messages or options)"


def _read_csv(text: str, name: str) -> list[dict]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    try:
        return list(reader)
    except csv.Error as exc:
        line = reader.reader.line_num  # the DictReader's own count stops at the last row it returned
        if "field limit" in str(exc):
            raise DataError(
                f"{name}: line {line} has a field longer than {csv.field_size_limit()} characters, the "
                "CSV reader's limit; save such long texts as .jsonl"
            ) from None
        raise DataError(f"{name}: line {line} is not valid CSV ({exc})") from None


#: The files `datasets`' `save_to_disk` writes: a Dataset's, or a DatasetDict's index of its splits.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")


def _read_saved_dataset(path: Path, split: str) -> list[dict]:
    if not any((path / name).is_file() for name in SAVED_DATASET_FILES):
        raise DataError(
            f"{brief(str(path))} is a folder, not a data file nor a dataset saved with datasets' save_to_disk "
            f"(it has no {' or '.join(SAVED_DATASET_FILES)}); name a .jsonl, .json, .csv or .parquet file"
        )
    import datasets

    with dataset_bars():
        try:
            saved = datasets.load_from_disk(str(path))
        except Exception as exc:  # datasets raises many kinds for a damaged or partly copied folder
            raise DataError(f"{brief(str(path))}: not a readable saved dataset ({type(exc).__name__}: {exc})") from exc
    return dataset_records(saved, split, brief(str(path)))


def _read_arrow(path: Path) -> list[dict]:
    import datasets

    with dataset_bars():
        try:
            dataset = datasets.Dataset.from_file(str(path))
        except Exception as exc:  # pyarrow raises many types for a damaged file, or one in another Arrow layout
            raise DataError(
                f"{brief(str(path))}: not a readable Arrow file of a dataset ({type(exc).__name__}: {exc})"
            ) from exc
    return dataset_records(dataset, "", brief(str(path)))


def dataset_records(dataset, split: str = "train", where: str = "the dataset") -> list[dict]:
    """The rows of a `datasets.Dataset` (or of the `split` of a `DatasetDict`) as records.

    A ClassLabel column (a label stored as its index) gives back its label names, so the labels
    are what the data says, not 0 and 1.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(
                f"{where} is a DatasetDict without a {split!r} split; it has {', '.join(dataset)}: "
                "choose one with data.hf_split"
            )
        dataset = dataset[split]
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{where}: expected a datasets Dataset or DatasetDict, got {type(dataset).__name__}")
    with dataset_bars():
        records = dataset.to_list()
    names = {
        column: feature.names
        for column, feature in dataset.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    for record in records:
        for column, labels in names.items():
            if isinstance(record.get(column), int) and 0 <= record[column] < len(labels):
                record[column] = labels[record[column]]
    return records


def as_examples(examples, cfg: DataConfig) -> list[Example]:
    """What the Python API takes as examples: `Example`s as they are, or records (a list of dicts,
    a `datasets.Dataset` or `DatasetDict`) converted as `cfg` says, like a data file's."""
    if _is_dataset(examples):
        records = dataset_records(examples, cfg.hf_split)
    elif isinstance(examples, (list, tuple)) and examples and all(isinstance(e, dict) for e in examples):
        records = list(examples)
    else:
        return examples
    if cfg.limit:
        records = records[: cfg.limit]
    return to_examples([_rename(r, cfg.column_map) for r in records], cfg)


def _is_dataset(value) -> bool:
    # Checked by module name so that passing a list never imports datasets.
    return type(value).__module__.startswith("datasets.")


def read_hub(dataset_id: str, config: str = "", split: str = "train") -> list[dict]:
    """A Hugging Face dataset as records; RACE is mapped to the multiple-choice format."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError("Reading hub datasets needs `pip install datasets`") from exc
    is_race = dataset_id.lower() in ("ehovy/race", "race")
    with dataset_bars():
        try:
            ds = datasets.load_dataset(dataset_id, config or ("all" if is_race else None), split=split)
        except Exception as exc:  # offline, unknown id, missing config: datasets raises many kinds
            raise HubLoadError(
                f"Could not load hub dataset {dataset_id!r} ({type(exc).__name__}: {exc}). Hub datasets need the "
                "internet; offline, use a built-in set or a local file."
            ) from exc
    # A Dataset gives its ClassLabel columns by name; any other iterable of rows is read as it comes.
    records = dataset_records(ds, split, dataset_id) if isinstance(ds, datasets.Dataset) else list(ds)
    return [race_record(r) for r in records] if is_race else records


def race_record(r: dict) -> dict:
    """A RACE row (article, question, options, answer letter) as a multiple-choice record."""
    return {"context": r["article"], "question": r["question"], "options": list(r["options"]), "answer": r["answer"]}


def _rename(record, column_map: dict) -> dict:
    if not isinstance(record, dict):
        return Unreadable(f"expected an object with named fields, got {type(record).__name__}")
    if not column_map or isinstance(record, Unreadable):
        return record
    out = {k: v for k, v in record.items() if k not in column_map.values()}
    for lab_field, column in column_map.items():
        if column in record:
            out[lab_field] = record[column]
    return out


# -- formats ---------------------------------------------------------------------------------


#: Records looked at to tell the format; one odd record at the top must not decide it.
DETECT_SAMPLE = 200


def _filled(record: dict) -> set:
    """The named fields of a record that hold a value (a short CSV row gives None for the rest)."""
    return {k for k, v in record.items() if k is not None and v is not None}


def _is_flag(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false"))


def refuse_preference_data(records: list[dict]) -> None:
    """A `DataError` when most of the first records are preference data, which SFT must not train on.

    TRL's paired format (chosen/rejected, with or without a prompt) has a good and a bad answer per
    prompt; its unpaired format (prompt/completion/label) marks each completion desirable or not, and
    reading it as prompt/completion would train on the undesirable completions too.
    """
    sample = [r for r in records[:DETECT_SAMPLE] if isinstance(r, dict) and not isinstance(r, Unreadable)]
    if not sample:
        return
    paired = sum({"chosen", "rejected"} <= _filled(r) for r in sample)
    unpaired = sum({"prompt", "completion", "label"} <= _filled(r) and _is_flag(r["label"]) for r in sample)
    if paired * 2 > len(sample):
        raise DataError(
            "preference data (prompt/chosen/rejected) is not SFT data: SFT learns one reply per prompt, not which "
            "of two is better. To fine-tune on the chosen replies, map them: data.column_map "
            "{'completion': 'chosen'} ({'messages': 'chosen'} where they hold whole conversations); to learn the "
            "preference, use a preference trainer such as TRL's DPOTrainer"
        )
    if unpaired * 2 > len(sample):
        raise DataError(
            "preference data (prompt/completion/label) is not SFT data: its label marks each completion desirable "
            "or not, and SFT would learn the undesirable ones too. To fine-tune on the desirable completions, keep "
            "the records whose label is true and drop the label column; to learn from both, use a preference "
            "trainer such as TRL's KTOTrainer"
        )


def detect_format(records: list[dict]) -> str:
    """The format whose fields most of the first records have (ties: chat, multiple choice, prompt/completion)."""
    sample = records[:DETECT_SAMPLE]
    if sample and all(isinstance(r, Unreadable) for r in sample):
        raise DataError(f"none of the first {len(sample)} record(s) could be read; record 0: {sample[0].reason}")
    order = ("chat", "multiple_choice", "prompt_completion", "classification")
    fits = {fmt: sum(set(_REQUIRED[fmt]) <= _filled(r) for r in sample) for fmt in order}
    best = max(order, key=lambda fmt: fits[fmt])  # max keeps the first of equals
    if fits[best]:
        return best
    seen = sorted({str(k) for r in sample for k in _filled(r)})
    raise DataError(
        f"cannot tell the format from the fields {seen} of the first {len(sample)} record(s). Expected one of: "
        + "; ".join(f"{fmt}: {', '.join(req)}" for fmt, req in _REQUIRED.items())
        + ". Rename columns with data.column_map."
    )


def offered_choices(text: str, choices) -> list:
    """The candidate answers a prompt lists as options ("A. ...", "(B) ..."), as the multiple-choice and
    classification templates write them; none for a free-form prompt."""

    def listed(choice) -> bool:
        mark = re.sub(r"[^A-Za-z0-9]", "", str(choice))
        return bool(mark) and re.search(rf"(?:^|\s)\(?{re.escape(mark)}[.):]\s", text + " ") is not None

    offered = [c for c in choices or () if listed(c)]
    return offered if len(offered) >= 2 else []


#: Answers are scored by the log-probability of their letter, a single token from A to Z.
MAX_CHOICES = len(string.ascii_uppercase)


def letters(n: int, what: str = "options") -> str:
    if n > MAX_CHOICES:
        raise DataError(
            f"{n} {what}; answers are scored by their letter (one token, A to Z), so at most {MAX_CHOICES} "
            f"{what} are supported. Use fewer, or write the answer text as prompt/completion data"
        )
    return string.ascii_uppercase[:n]


#: Fields each format reads besides the required ones.
_OPTIONAL = {"multiple_choice": ("context", "article")}


def _check_record(record: dict, fmt: str) -> None:
    """A `DataError` naming the field when a record cannot be read as `fmt`: missing, null, bytes or a ragged row."""
    if isinstance(record, Unreadable):
        raise DataError(record.reason)
    if None in record:
        extra = record[None]
        raise DataError(
            f"the CSV row has {len(extra)} more value(s) than the header has columns ({shown(extra)}); "
            "quote text that contains commas"
        )
    fields = sorted(str(k) for k in _filled(record)) or ["no fields"]
    missing = [k for k in _REQUIRED[fmt] if k not in record]
    if missing:
        raise DataError(
            f"missing field(s) {', '.join(missing)} for format {fmt} (it has {', '.join(fields)}); "
            "map columns with data.column_map"
        )
    empty = [k for k in _REQUIRED[fmt] if record[k] is None]
    if empty:
        raise DataError(
            f"field(s) {', '.join(empty)} empty (null, or left out of a short CSV row); "
            "fill them in or set data.on_error to skip such records"
        )
    binary = [k for k in (*_REQUIRED[fmt], *_OPTIONAL.get(fmt, ())) if isinstance(record.get(k), (bytes, bytearray))]
    if binary:
        raise DataError(
            f"field(s) {', '.join(binary)} hold bytes, not text; decode them to text (UTF-8) before loading"
        )
    if fmt == "classification":
        for key in ("text", "label"):
            if not isinstance(record[key], (str, int, float)):
                raise DataError(
                    f"'{key}' must be text or a number; got {type(record[key]).__name__} {shown(record[key])}"
                )
    for key in (*_REQUIRED[fmt], *_OPTIONAL.get(fmt, ())):
        problem = _text_problem(record.get(key))
        if problem:
            raise DataError(f"field '{key}' holds {problem}; fix the \\u escape or re-save the file as UTF-8")


def _text_problem(value) -> str:
    """'' when every text inside `value` (a field, a list of messages) is valid Unicode, else what is wrong."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            problem = unicode_problem(item)
            if problem:
                return problem
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return ""


def to_examples(records: list[dict], cfg: DataConfig, labels: list[str] | None = None) -> Examples:
    """Convert records into examples; a bad record raises a `DataError` naming it, or is skipped
    and reported under `data.on_error: skip`. Exact duplicates are left out and reported."""
    if not records:
        raise DataError("no records to convert")
    refuse_preference_data(records)
    fmt = cfg.format if cfg.format != "auto" else detect_format(records)
    report = DataReport(records=len(records))
    problems = {}
    for i, record in enumerate(records):
        try:
            _check_record(record, fmt)
        except DataError as exc:
            problems[i] = exc
    if fmt == "classification" and not labels:
        labels = sorted({str(r["label"]) for i, r in enumerate(records) if i not in problems})
    if fmt == "classification":
        letters(len(labels), "labels")  # a data set with too many labels fails as a whole, never record by record
        if len(labels) == 1:
            raise DataError(
                f"every record has the label {shown(labels[0])}, and classification needs at least two to choose "
                "between; add records of another label, or write the data as prompt/completion"
            )
    examples, first_seen = Examples(report=report), {}
    for i, record in enumerate(records):
        try:
            if i in problems:
                raise problems[i]
            example = _CONVERTERS[fmt](record, cfg, labels)
            group = _group_key(record, fmt, cfg.group_by)
            if record.get("weight") is not None:
                example.weight = data_weight(record["weight"])
        except DataError as exc:
            _fail_or_skip(cfg, report, i, exc)
            continue
        example.source_index = i
        if group is not None:
            example.meta["group"] = group
        if cfg.system_prompt:
            example.messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        key = json.dumps([example.messages, example.choices, example.answer_index, example.weight], sort_keys=True)
        if key in first_seen:
            report.duplicates.append((i, first_seen[key]))
            continue
        first_seen[key] = i
        examples.append(example)
    if not examples:
        raise DataError(
            f"all {len(records)} records were skipped; first: record {report.skipped[0][0]}: {report.skipped[0][1]}"
        )
    return examples


def _group_key(record: dict, fmt: str, group_by: str) -> str | None:
    """The key that keeps related records on one side of the split (`data.group_by`); None: its own group."""
    if group_by == "none":
        return None
    if group_by:
        if record.get(group_by) is None:
            raise DataError(
                f"no field {shown(group_by)} to group by (data.group_by); it has "
                f"{', '.join(sorted(record))}. Name another field, '' for auto or 'none'"
            )
        return str(record[group_by])
    if fmt == "multiple_choice":  # several questions about one passage: the passage is the group
        passage = record.get("context") or record.get("article")
        return str(passage) if passage else None
    return None


def _fail_or_skip(cfg: DataConfig, report: DataReport, index: int, exc: DataError) -> None:
    if cfg.on_error != "skip":
        raise DataError(f"record {index}: {exc}") from None
    report.skipped.append((index, str(exc)))


def _prompt_completion(r: dict, cfg: DataConfig, _labels) -> Example:
    prompt, completion = r["prompt"], r["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):
        return _conversational(prompt, completion)
    for name, value in (("prompt", prompt), ("completion", completion)):
        if isinstance(value, dict):
            raise DataError(
                f"'{name}' must be text or a list of {{role, content}} messages; got an object {shown(value)}"
            )
    prompt, completion = str(prompt), str(completion)
    if not completion.strip():
        raise DataError("empty completion: every example needs something to train on")
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])


def _conversational(prompt, completion) -> Example:
    """TRL's conversational prompt/completion: two message lists; only the completion's replies are trained."""
    if not (isinstance(prompt, list) and isinstance(completion, list)):
        raise DataError(
            "in conversational prompt/completion data both 'prompt' and 'completion' must be lists of messages"
        )
    _check_messages(prompt, "prompt")
    _check_messages(completion, "completion")
    if not completion or any(m["role"] != "assistant" for m in completion):
        raise DataError("'completion' must hold the assistant's reply: one or more messages with role 'assistant'")
    if any(not m["content"].strip() for m in completion):
        raise DataError("an assistant turn in 'completion' is empty")
    context = [
        dict(role=m["role"], content=m["content"], **({"trained": False} if m["role"] == "assistant" else {}))
        for m in prompt
    ]
    return Example(context + [dict(role=m["role"], content=m["content"]) for m in completion])


def _check_messages(messages, name: str) -> None:
    if not isinstance(messages, list):
        raise DataError(f"'{name}' must be a list of {{role, content}} objects")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{name} message {j} must be {{'role': one of {ROLES}, 'content': text}}; got {shown(m)}")
        if m.get("weight") is not None:
            try:
                data_weight(m["weight"])
            except DataError as exc:
                raise DataError(f"{name} message {j}: {exc}") from None


def _chat(r: dict, _cfg: DataConfig, _labels) -> Example:
    messages = r["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list of {role, content} objects")
    _check_messages(messages, "messages")
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise DataError("a conversation without an assistant turn has nothing to train on")
    if any(not m["content"].strip() for m in assistant):
        raise DataError("an assistant turn is empty")
    return Example([_message(m) for m in messages])


def _message(m: dict) -> dict:
    """A chat message as the lab keeps it: role, content and, when the data gives one, its loss weight."""
    out = {"role": m["role"], "content": m["content"]}
    weight = 1.0 if m.get("weight") is None else data_weight(m["weight"])
    if weight != 1.0:
        out["weight"] = weight
    return out


def data_weight(value) -> float:
    """A record's or message's `weight` field as a float in [0, inf), or a `DataError` saying what is wrong."""
    try:
        weight = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"'weight' must be a number (0 skips the record or message), got {shown(value)}") from None
    if not weight >= 0 or weight == float("inf"):
        raise DataError(f"'weight' must be a finite number of at least 0, got {shown(value)}")
    return weight


def _lettered(answer_format: str, n: int) -> tuple[str, ...]:
    return tuple(answer_format.format(letter=c) for c in letters(n))


def _multiple_choice(r: dict, cfg: DataConfig, _labels) -> Example:
    options = r["options"]
    if isinstance(options, str) and options.strip().startswith("["):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"'options' starts like a JSON list but is not valid JSON ({exc.msg} at character {exc.pos}); "
                'write it as ["first", "second"] or separate the options with |'
            ) from None
    elif isinstance(options, str):
        options = options.split("|")
    if not isinstance(options, (list, tuple)) or len(options) < 2:
        raise DataError(f"'options' must list at least two options; got {shown(options)}")
    if any(o is None or isinstance(o, (bytes, bytearray, dict, list)) for o in options):
        raise DataError(f"every option must be text; got {shown(options)}")
    answer = str(r["answer"]).strip().upper()
    valid = letters(len(options))
    if answer.isdecimal() and len(answer) <= 3 and int(answer) < len(options):
        answer = valid[int(answer)]
    if len(answer) != 1 or answer not in valid:
        raise DataError(f"answer {shown(r['answer'])} is not among the option letters {', '.join(valid)}")
    lines = "\n".join(f"{c}. {o}" for c, o in zip(valid, options))
    prompt = cfg.mc_template.format(
        context=r.get("context") or r.get("article") or "", question=r["question"], options=lines
    )
    choices = _lettered(cfg.answer_format, len(options))
    index = valid.index(answer)
    return Example(
        [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": choices[index]}],
        choices=choices,
        answer_index=index,
        option_texts=tuple(str(o).strip() for o in options),
    )


def _classification(r: dict, cfg: DataConfig, labels) -> Example:
    label = str(r["label"])
    if label not in labels:
        raise DataError(f"label {shown(label)} is not one of the labels {labels}")
    valid = letters(len(labels), "labels")
    options = " ".join(f"({c}) {name}" for c, name in zip(valid, labels))
    prompt = cfg.classification_template.format(text=r["text"], options=options)
    choices = _lettered(cfg.answer_format, len(labels))
    index = labels.index(label)
    return Example(
        [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": choices[index]}],
        choices=choices,
        answer_index=index,
        option_texts=tuple(labels),
        meta={"label": label},
    )


_CONVERTERS = {
    "prompt_completion": _prompt_completion,
    "chat": _chat,
    "multiple_choice": _multiple_choice,
    "classification": _classification,
}


def load_examples(cfg: DataConfig, labels: list[str] | None = None) -> Examples:
    """Examples of `cfg.source`; `labels` fixes the label order of classification data (the training set's)."""
    records, info = read_records(cfg)
    if cfg.format == "auto" and info.get("format"):
        cfg = dataclasses.replace(cfg, format=info["format"])
    try:
        return to_examples(records, cfg, labels or info.get("labels"))
    except DataError as exc:
        raise DataError(f"{brief(cfg.source)}: {exc}") from None


def load_validation(cfg: DataConfig, train_examples: list[Example]) -> list[Example]:
    """The examples of `data.val_source`, with the training set's label letters for classification data."""
    labels = _labels_of(train_examples)
    val_cfg = dataclasses.replace(cfg, source=cfg.val_source, limit=0)
    try:
        return load_examples(val_cfg, labels)
    except DataError as exc:
        raise DataError(f"data.val_source: {exc}") from None


def _labels_of(examples: list[Example]) -> list[str] | None:
    """Classification labels in the order of their answer letters, read back from the examples."""
    by_index = {e.answer_index: e.meta["label"] for e in examples if "label" in e.meta and e.answer_index is not None}
    if not by_index or not examples[0].choices:
        return None
    return [by_index.get(i, f"label {i}") for i in range(len(examples[0].choices))]


def split_sizes(n: int, val_size: float, val_max: int = 0) -> tuple[int, int]:
    """How many of `n` examples `split` puts into training and validation."""
    n_val = int(val_size) if val_size >= 1 else round(n * val_size)
    n_val = max(min(n_val, val_max or n_val, n - 1), 0)
    return n - n_val, n_val


def group_of(example, position: int):
    """An example's group key (`meta["group"]`); an example without one is a group of its own."""
    meta = getattr(example, "meta", None) or {}
    return meta.get("group", ("record", position))


def split(examples: list, val_size: float, seed: int, val_max: int = 0) -> tuple[list, list]:
    """A deterministic shuffle-and-cut into train and validation lists that never splits a group.

    Groups (examples sharing `meta["group"]`, e.g. questions about one passage) are shuffled and
    whole groups fill the validation side up to its size; a group that would overfill it stays in
    training. Without groups this is a plain shuffle of the examples, cut at the validation size.
    """
    n_val = split_sizes(len(examples), val_size, val_max)[1]
    groups: dict = {}
    for i, example in enumerate(examples):
        groups.setdefault(group_of(example, i), []).append(i)
    members = list(groups.values())
    if n_val > 0 and len(members) < 2:
        raise DataError(
            f"all {len(examples)} examples share one group (data.group_by), so no validation split can keep "
            "groups apart; choose another data.group_by, 'none', or a separate data.val_source"
        )
    random.Random(seed).shuffle(members)
    val_positions: list[int] = []
    train_positions: list[int] = []
    for group in members:
        (val_positions if len(val_positions) + len(group) <= n_val else train_positions).extend(group)
    if n_val > 0 and not val_positions:  # every group is larger than the validation size: take the first
        val_positions = members[0]
        train_positions = [i for group in members[1:] for i in group]
    val = [examples[i] for i in sorted(val_positions)]
    train = [examples[i] for i in train_positions]
    return train, val


def make_split(examples: list[Example], cfg: DataConfig) -> tuple[list[Example], list[Example], dict]:
    """Train and validation examples as `cfg` asks (a grouped split, or `val_source`), and the record
    that `split.json` keeps so anyone can rebuild them with `rebuild_split`."""
    if cfg.val_source.strip():
        train, val = list(examples), load_validation(cfg, examples)
        if cfg.val_max and len(val) > cfg.val_max:
            _, val = split(val, cfg.val_max, cfg.split_seed)
    else:
        train, val = split(examples, cfg.val_size, cfg.split_seed, cfg.val_max)
    return train, val, split_record(train, val, cfg)


def split_record(train: list[Example], val: list[Example], cfg: DataConfig) -> dict:
    """What rebuilds a split: where the examples came from, how they were grouped, and which went where."""
    train_groups = {group_of(e, ("train", i)) for i, e in enumerate(train)}
    val_groups = {group_of(e, ("val", i)) for i, e in enumerate(val)}
    return {
        "source": cfg.source,
        "val_source": cfg.val_source,
        "limit": cfg.limit,
        "group_by": cfg.group_by or "auto",
        "split_seed": cfg.split_seed,
        "val_size": cfg.val_size,
        "val_max": cfg.val_max,
        "train_groups": len(train_groups),
        "val_groups": len(val_groups),
        #: Groups on both sides; 0 unless a separate val_source repeats training passages.
        "shared_groups": len(train_groups & val_groups),
        #: Record numbers in the source (validation: in val_source when it is set).
        "train": [e.source_index for e in train],
        "val": [e.source_index for e in val],
        #: A hash of each side's content, so a file edited since the run is noticed even where its record numbers match.
        "fingerprint": {"train": examples_fingerprint(train), "val": examples_fingerprint(val)},
    }


def examples_fingerprint(examples: list[Example]) -> str:
    """SHA-256 of the examples' messages and answers, in order."""
    content = [[e.messages, list(e.choices), e.answer_index, e.weight] for e in examples]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def read_split(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def rebuild_split(cfg: DataConfig, record: dict | str | Path) -> tuple[list[Example], list[Example]]:
    """The train and validation examples of a `split.json` (a path or its dict), read from `cfg`'s data."""
    if not isinstance(record, dict):
        record = read_split(record)
    examples = load_examples(cfg)
    pool = load_validation(cfg, examples) if record.get("val_source") else examples
    by_index = {e.source_index: e for e in examples}
    val_by_index = {e.source_index: e for e in pool}
    missing = [i for i in record["train"] if i not in by_index] + [i for i in record["val"] if i not in val_by_index]
    if missing:
        raise DataError(
            f"split.json names records {missing[:5]} that {cfg.source} does not have; it was written for other data"
        )
    return [by_index[i] for i in record["train"]], [val_by_index[i] for i in record["val"]]
