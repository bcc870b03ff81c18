"""Bad input is refused before anything is written: `lab train` (and `lab inspect`) exit with code 2 and
one line, `error: ...`, that names the setting or the record and the fix; no traceback, and no run
folder in train.output_dir.

Each case builds its input in a fresh folder and runs the CLI in-process on the tiny random model. The
refusals cover settings checked on their own (config parsing), against the data (reading, converting,
encoding), against the tokenizer's chat template and against the model's real modules and layers.
"""

import json

import pytest
import torch

from plw_lab.cli import main
from plw_lab.core.runs import load_run


def sums(n: int = 12) -> list[dict]:
    return [{"prompt": f"Add {i} and {i + 3}.", "completion": str(2 * i + 3)} for i in range(n)]


def jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def huge_int() -> str:
    return "1" * 5000


def mc(answer: str) -> list[dict]:
    records = [
        {"question": f"Which comes {i}?", "options": ["red", "blue", "green"], "answer": "ABC"[i % 3]} for i in range(8)
    ]
    records[5]["answer"] = answer
    return records


def classification(labels: list) -> list[dict]:
    return [{"text": f"review number {i}", "label": label} for i, label in enumerate(labels)]


#: Files a case writes before running: {name: text}; the name `{data}` in an argument is the data file.
#: Each case: files, the arguments after `lab`, and what the one error line must contain.
CASES = {
    # -- settings refused on their own -------------------------------------------------------------
    "val_size 0": ({}, ["--set", "data.val_size=0"], ["data.val_size is 0"]),
    "answer_format empty": ({}, ["--set", "data.answer_format="], ["data.answer_format", "{letter}"]),
    "answer_format without {letter}": ({}, ["--set", "data.answer_format=X"], ["data.answer_format 'X'"]),
    "mc_template padding a field": (
        {},
        ["--set", "data.mc_template={context:>1000000000}"],
        ["data.mc_template formats a field ({context:>1000000000})"],
    ),
    "answer_format converting a field": ({}, ["--set", "data.answer_format={letter!r}"], ["({letter!r})"]),
    "classification_template indexing a field": (
        {},
        ["--set", "data.classification_template={text[0]} {options}"],
        ["data.classification_template formats a field ({text[0]})"],
    ),
    "mc_template reading an attribute": (
        {},
        ["--set", "data.mc_template={question.__class__} {options}"],
        ["({question.__class__})"],
    ),
    "data.mix naming no built-in set": (
        {},
        ["--set", 'data.mix={"builtin:../../secret/creds.jsonl": 1}'],
        ["data.mix: unknown built-in set '../../secret/creds.jsonl'; choose one of reading-mc"],
    ),
    "target_modules []": ({}, ["--set", "lora.target_modules=[]"], ["lora.target_modules is empty"]),
    "target_modules [1,2]": ({}, ["--set", "lora.target_modules=[1,2]"], ["lora.target_modules", "got 1"]),
    "lora.layers empty": ({}, ["--set", "lora.layers="], ["lora.layers is empty"]),
    "column_map to a list": ({}, ["--set", 'data.column_map={"prompt": ["a"]}'], ["data.column_map", "['a']"]),
    "run name of 300 characters": ({}, ["--set", "train.run_name=" + "r" * 300], ["train.run_name is 300"]),
    "folder name of 300 characters": ({}, ["--output-dir", "{runs}/" + "o" * 300], ["train.output_dir", "255"]),
    "path of 5000 characters": ({}, ["--output-dir", "{runs}" + "/deep" * 1000], ["train.output_dir is 5"]),
    "lone surrogate in a setting": ({}, ["--set", "data.system_prompt=\ud800"], ["data.system_prompt", "surrogate"]),
    "5000-digit integer in a JSON config": (
        {"c.json": '{"train": {"max_steps": ' + huge_int() + "}}"},
        ["--config", "{tmp}/c.json"],
        ["c.json", "4300 digits"],
    ),
    "5000-digit integer in a YAML config": (
        {"c.yaml": "train:\n  max_steps: " + huge_int() + "\n"},
        ["--config", "{tmp}/c.yaml"],
        ["c.yaml", "4300 digits"],
    ),
    # Nine short lines that expand to 10^9 values ("billion laughs").
    "YAML config whose aliases multiply": (
        {
            "c.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
        },
        ["--config", "{tmp}/c.yaml"],
        ["c.yaml", "more than 10000 values"],
    ),
    "YAML config that contains itself": (
        {"c.yaml": "train: &t\n  max_steps: *t\n"},
        ["--config", "{tmp}/c.yaml"],
        ["c.yaml", "more than 10000 values"],
    ),
    "YAML config nested 5000 deep": ({"c.yaml": nested(5000)}, ["--config", "{tmp}/c.yaml"], ["c.yaml", "nested"]),
    "JSON config nested 100k deep": ({"c.json": nested(100_000)}, ["--config", "{tmp}/c.json"], ["c.json", "nested"]),
    # -- the data ----------------------------------------------------------------------------------
    "data.limit 1": ({}, ["--set", "data.limit=1"], ["data.limit=1 keeps 1 example(s)", "validate"]),
    "missing val_source": ({}, ["--set", "data.val_source={tmp}/nope.jsonl"], ["data.val_source", "no such file"]),
    "unknown source in data.mix": ({}, ["--set", 'data.mix={"builtin:nope": 1}'], ["data.mix", "'nope'"]),
    "a folder called x.jsonl": ({"x.jsonl/keep": ""}, ["--data", "{tmp}/x.jsonl"], ["x.jsonl is a folder"]),
    "lone surrogate in a record": (
        {"d.jsonl": jsonl(sums()[:3]) + '{"prompt": "Add \\ud800.", "completion": "1"}\n' + jsonl(sums()[3:])},
        [],
        ["record 3", "field 'prompt'", "surrogate"],
    ),
    "lone surrogate in a chat message": (
        {
            "d.jsonl": jsonl(
                [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
            )
            + '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}\n'
        },
        [],
        ["record 1", "field 'messages'", "surrogate"],
    ),
    "5000-digit integer in a JSONL record": (
        {"d.jsonl": jsonl(sums()[:2]) + '{"prompt": "a", "completion": ' + huge_int() + "}\n" + jsonl(sums()[2:])},
        [],
        ["record 2", "line 3", "4300 digits"],
    ),
    "5000-digit integer in a JSON file": ({"d.json": "[" + huge_int() + "]"}, [], ["d.json", "4300 digits"]),
    "JSONL record nested 5000 deep": (
        {"d.jsonl": jsonl(sums()) + nested(5000) + "\n"},
        [],
        ["record 12", "nested too deeply"],
    ),
    "JSON file nested 100k deep": ({"d.json": nested(100_000)}, [], ["d.json", "nested too deeply"]),
    "CSV field over 128 kB": (
        {"d.csv": "prompt,completion\nhello,world\n" + "long," + "x" * 140_000 + "\n"},
        [],
        ["d.csv", "line 3", "field longer than 131072"],
    ),
    "answer '²'": ({"d.jsonl": jsonl(mc("²"))}, [], ["record 5", "answer '²'"]),
    "label that is an object": (
        {"d.jsonl": jsonl(classification(["good", "bad", {"x": 1}, "good"]))},
        [],
        ["record 2", "'label' must be text or a number"],
    ),
    "one label": ({"d.jsonl": jsonl(classification(["good"] * 8))}, [], ["every record has the label 'good'"]),
    "every record identical": (
        {"d.jsonl": jsonl(sums(1) * 10)},
        [],
        ["the 10 records hold 1 distinct example(s) (9 exact duplicates)"],
    ),
    "every record with weight 0": (
        {"d.jsonl": jsonl([{**r, "weight": 0} for r in sums()])},
        [],
        ["every training token has weight 0"],
    ),
    "column_map naming a missing column": (
        {},
        ["--set", 'data.column_map={"prompt": "instruction"}'],
        ["data.column_map", "'instruction'", "'prompt'"],
    ),
    "max_length 16": ({}, ["--set", "data.max_length=16"], ["data.max_length 16 is too small"]),
    # -- the tokenizer's chat template -------------------------------------------------------------
    "chat template that raises": (
        {},
        ["--set", "model.chat_template={{ raise_exception('no chat here') }}"],
        ["model.chat_template", "no chat here"],
    ),
    "chat template that ignores the messages": (
        {},
        ["--set", "model.chat_template=hello"],
        ["model.chat_template", "changed the text"],
    ),
    "chat template that keeps only the last message": (
        {},
        ["--set", "model.chat_template={{ messages[-1]['content'] }}"],
        ["model.chat_template", "differently from its prefixes"],
    ),
    "chat template that refuses a record's system turn": (
        {},
        [
            "--set",
            "model.chat_template={% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('system role not supported') }}{% endif %}{{ m['content'] }}\n{% endfor %}",
            "--set",
            "data.system_prompt=Be brief.",
        ],
        ["example", "system role not supported", "model.chat_template"],
    ),
    # -- the model's real modules and layers -------------------------------------------------------
    "target_modules [nope]": ({}, ["--set", "lora.target_modules=nope"], ["lora.target_modules", "called nope"]),
    "target_modules with lm_head": ({}, ["--set", "lora.target_modules=q_proj,lm_head"], ["lm_head"]),
    "lora.layers beyond the model": ({}, ["--set", "lora.layers=0,7"], ["lora.layers", "[7]"]),
    "model.device cuda without CUDA": ({}, ["--set", "model.device=cuda"], ["model.device is 'cuda'"]),
}


@pytest.mark.parametrize("case", CASES)
def test_lab_train_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys, case):
    files, args, fragments = CASES[case]
    if case == "model.device cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    runs = tmp_path / "runs"
    data = tmp_path / "sums.jsonl"
    data.write_text(jsonl(sums()))
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if name.startswith("d."):
            data = path
    args = [arg.replace("{tmp}", str(tmp_path)).replace("{runs}", str(runs)) for arg in args]
    argv = ["train", "--model", "tiny-random", "--data", str(data), "--output-dir", str(runs), *args]
    err = refused(capsys, argv, fragments)
    assert len(err) < 1200, err  # a huge value is quoted cut short
    assert not runs.exists(), sorted(runs.rglob("*"))


def test_inspect_refuses_a_negative_number_of_examples(capsys):
    refused(capsys, ["inspect", "--model", "tiny-random", "-n", "-5"], ["-n", "got -5"])


def refused(capsys, argv: list[str], fragments: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "Traceback" not in out + err and "resume with" not in out
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    "fails_in, resumable",
    [("RunContext.evaluate", False), ("PLWTrainer.compute_loss", True)],
    ids=["before the first checkpoint", "after the step-0 checkpoint"],
)
def test_resume_with_is_offered_only_for_a_run_with_a_checkpoint(tmp_path, capsys, monkeypatch, fails_in, resumable):
    import plw_lab.core.training as training

    owner, method = fails_in.split(".")

    def broken(*args, **kwargs):
        raise RuntimeError("sentinel failure")

    monkeypatch.setattr(getattr(training, owner), method, broken)
    data = tmp_path / "sums.jsonl"
    data.write_text(jsonl(sums()))
    runs = tmp_path / "runs"
    argv = ["train", "--model", "tiny-random", "--data", str(data), "--output-dir", str(runs), "--max-steps", "2"]
    assert main([*argv, "--set", "eval.generations=0", "--set", "eval.probe_texts=0"]) == 1
    out = capsys.readouterr().out
    (run_dir,) = runs.iterdir()
    assert "RuntimeError: sentinel failure" in out
    assert ("resume with: lab train --resume" in out) == resumable
    assert load_run(run_dir).resumable == resumable


def test_a_resume_refused_for_bad_data_leaves_the_run_as_it_was(tmp_path, capsys, monkeypatch):
    import plw_lab.core.training as training

    def broken(*args, **kwargs):
        raise RuntimeError("sentinel failure")

    data = tmp_path / "sums.jsonl"
    data.write_text(jsonl(sums()))
    runs = tmp_path / "runs"
    with monkeypatch.context() as patch:
        patch.setattr(training.PLWTrainer, "compute_loss", broken)
        argv = ["train", "--model", "tiny-random", "--data", str(data), "--output-dir", str(runs), "--max-steps", "2"]
        assert main([*argv, "--set", "eval.generations=0", "--set", "eval.probe_texts=0"]) == 1
    (run_dir,) = runs.iterdir()
    before = {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    (run_dir / "data" / "sums.jsonl").write_text('{"prompt": null, "completion": "3"}\n' + jsonl(sums()))
    capsys.readouterr()
    refused(capsys, ["train", "--resume", str(run_dir)], ["record 0", "field(s) prompt empty"])
    after = {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert after.keys() == before.keys()
    assert {p: t for p, t in after.items() if p.parts[0] != "data"} == {
        p: t for p, t in before.items() if p.parts[0] != "data"
    }
    assert load_run(run_dir).status == "failed" and load_run(run_dir).resumable
