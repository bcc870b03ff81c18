"""Full disks and damaged runs: a write the disk refuses (an adapter, a checkpoint, a JSON file, an
events line) keeps the previous complete file, becomes advice and fails the run, whose summary and
last event say so; with no room at the start `lab train` exits 2 and leaves no folder; a damaged run
file is named (exit 2), never a traceback, and one damaged run never hides the others of a list.

The disk errors are injected, in the forms a full disk really raised them: OSError(ENOSPC) from
Python's files, safetensors' SafetensorError and torch.save's RuntimeError("unexpected pos 64 vs 0").
"""

import errno
import json
import pathlib
import shutil

import pytest
from conftest import sum_examples
from safetensors import SafetensorError
from safetensors.torch import load_file

import plw_lab.core.runs as runs_module
import plw_lab.core.training as training_module
from plw_lab.cli import main
from plw_lab.core import events as ev
from plw_lab.core.config import LabConfig
from plw_lab.core.events import JsonlLog, Phase, Step, read_events
from plw_lab.core.runs import (
    DamagedRunError,
    list_runs,
    load_run,
    new_run_dir,
    replace_folder,
    write_json,
)
from plw_lab.core.training import train


def _full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


FULL_DISK_ERRORS = {
    "OSError": _full,
    "SafetensorError": lambda: SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    ),
    "RuntimeError": lambda: RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"),
}


def _cfg(tmp_path, name, **overrides):
    base = {
        "model.name": "tiny-random",
        "train.output_dir": str(tmp_path / "runs"),
        "train.run_name": name,
        "train.batch_size": 4,
        "train.max_steps": 8,
        "train.eval_interval": 2,
        "train.learning_rate": 1e-2,
        "lora.layers": "all",
        "eval.generations": 0,
        "eval.probe_texts": 0,
    }
    base.update(overrides)
    return LabConfig().override(base)


def _data_file(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": e.messages[0]["content"], "completion": e.messages[1]["content"]}) + "\n"
            for e in sum_examples(24)
        )
    )
    return path


def _refuse_write_text(monkeypatch, names):
    """Path.write_text writes half of the text, then the disk is full, for files named in `names`."""
    real = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name in names:
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise _full()
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def _leftovers(run_dir):
    """What a refused write must never leave behind: temporary files and folders, staging folders."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".old")) or "staging" in p.name)


def _advice(seen):
    return [e.message for e in seen if isinstance(e, ev.Advice)]


def _one_error_line(err: str) -> str:
    """The one `error:` line that ends stderr (a model load may draw its progress bar above it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


# -- writes the disk refuses ------------------------------------------------------------------------


def _refuse_checkpoint_at_step_4(error):
    def install(monkeypatch):
        real = training_module.compat.write_trainer_checkpoint

        def write_checkpoint(trainer, folder):
            if trainer.state.global_step == 4:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")  # the part written before the refusal
                raise FULL_DISK_ERRORS[error]()
            real(trainer, folder)

        monkeypatch.setattr(training_module.compat, "write_trainer_checkpoint", write_checkpoint)

    return install


def _refuse_the_first_best_adapter(monkeypatch):
    real = training_module.RunContext.save_adapter

    def save_adapter(self, name, step, write=None, trained_steps=None):
        if name == "best_adapter" and step > 0:

            def partial(folder):
                folder.mkdir()
                (folder / "adapter_model.safetensors").write_bytes(b"\x08\x00")
                raise FULL_DISK_ERRORS["SafetensorError"]()

            return real(self, name, step, partial, trained_steps)
        return real(self, name, step, write, trained_steps)

    monkeypatch.setattr(training_module.RunContext, "save_adapter", save_adapter)


def _refuse_the_events_after_step_3(monkeypatch):
    full = {"on": False}
    real = JsonlLog._append

    def append(self, line):
        if full["on"]:
            raise _full()
        real(self, line)

    real_call = JsonlLog.__call__

    def call(self, event):
        real_call(self, event)
        full["on"] = isinstance(event, Step) and event.step == 3  # only the line after step 3's (step 4's) is refused

    monkeypatch.setattr(JsonlLog, "_append", append)
    monkeypatch.setattr(JsonlLog, "__call__", call)


#: Each write a full disk may refuse: how it is refused, the advice that says so, the step the run fails at.
REFUSED_WRITES = {
    "checkpoint (torch.save)": (
        _refuse_checkpoint_at_step_4("RuntimeError"),
        "could not save last_adapter/ at step 4 (RuntimeError: [enforce fail at inline_container.cc:664] . "
        "unexpected pos 64 vs 0); last_adapter/ keeps step 2",
        4,
    ),
    "checkpoint (safetensors)": (
        _refuse_checkpoint_at_step_4("SafetensorError"),
        "could not save last_adapter/ at step 4 (SafetensorError: Error while serializing",
        4,
    ),
    "checkpoint (OSError)": (
        _refuse_checkpoint_at_step_4("OSError"),
        "could not save last_adapter/ at step 4 (No space left on device); last_adapter/ keeps step 2",
        4,
    ),
    "best adapter": (_refuse_the_first_best_adapter, "); best_adapter/ keeps step 0", None),
    "events line": (
        _refuse_the_events_after_step_3,
        "could not append to events.jsonl (No space left on device)",
        4,
    ),
    "split.json": (
        lambda monkeypatch: _refuse_write_text(monkeypatch, {"split.tmp"}),
        "could not write split.json (No space left on device)",
        0,
    ),
    "compare.json": (
        lambda monkeypatch: _refuse_write_text(monkeypatch, {"compare.tmp"}),
        "could not write compare.json (No space left on device)",
        8,
    ),
}


@pytest.mark.parametrize("refused", REFUSED_WRITES)
def test_a_write_the_disk_refuses_fails_the_run_and_keeps_the_previous_file(tmp_path, monkeypatch, refused):
    install, advice_said, failed_at = REFUSED_WRITES[refused]
    install(monkeypatch)
    seen = []
    cfg = _cfg(tmp_path, "full", **{"train.save_interval_steps": 2, "train.save_interval_seconds": 0.0})
    result = train(cfg, subscribers=[seen.append], examples=sum_examples(24))
    monkeypatch.undo()

    # Training stops at the refused write, and the run fails saying why.
    assert result.status == "failed"
    advice = [m for m in _advice(seen) if advice_said in m]
    assert len(advice) == 1, _advice(seen)
    error = f"WriteRefusedError: the disk refused the run's files ({advice[0]}); free disk space"
    assert result.summary["error"] == error
    if failed_at is not None:
        assert result.summary["steps"] == failed_at
    # The run folder says the same as its events, in the room the run kept for its ending.
    run_dir = result.run_dir
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert read_events(run_dir / "events.jsonl")[-1].kind == "failed"
    run = load_run(run_dir)
    assert run.status == "failed" and run.summary["write_failures"] == [advice[0]]
    assert _leftovers(run_dir) == [] and not (run_dir / runs_module.ROOM).exists()
    # Every adapter folder there is whole; the last checkpoint before the refusal resumes.
    for name in ("best_adapter", "last_adapter", "adapter"):
        if (run_dir / name).exists():
            load_file(run_dir / name / "adapter_model.safetensors")
    if failed_at:
        assert run.checkpoint() == run_dir / "last_adapter" and run.resumable


def test_lab_train_on_a_full_disk_exits_1_and_offers_the_resume(tmp_path, monkeypatch, capsys):
    _refuse_checkpoint_at_step_4("OSError")(monkeypatch)
    runs = tmp_path / "runs"
    argv = ["train", "--model", "tiny-random", "--data", str(_data_file(tmp_path)), "--output-dir", str(runs)]
    settings = ["train.max_steps=8", "train.save_interval_steps=2", "eval.generations=0", "eval.probe_texts=0"]
    assert main([*argv, *[a for s in settings for a in ("--set", s)], "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "failed at step 4: WriteRefusedError: the disk refused the run's files" in out
    (run_dir,) = runs.iterdir()
    assert f"resume with: lab train --resume {run_dir}" in out
    assert load_run(run_dir).status == "failed"


def test_a_refused_summary_is_said_and_the_run_stays_resumable(tmp_path, monkeypatch, capsys):
    _refuse_write_text(monkeypatch, {"summary.tmp"})
    seen = []
    cfg = _cfg(tmp_path, "nosummary", **{"train.max_steps": 2, "data.source": str(_data_file(tmp_path))})
    result = train(cfg, subscribers=[seen.append], compare=False)
    monkeypatch.undo()

    assert result.status == "finished"
    finished = [e for e in seen if isinstance(e, ev.Finished)][0]
    failure = "could not write summary.json (No space left on device); the run folder shows the run as interrupted"
    assert any(f.startswith(failure) for f in finished.summary["write_failures"])
    assert not (result.run_dir / "summary.json").exists() and _leftovers(result.run_dir) == []
    run = load_run(result.run_dir)
    assert run.status == "interrupted" and run.resumable

    # Resuming it with no room for running.json: exit 2, one line, the run as it was.
    monkeypatch.setattr(runs_module, "write_json", lambda path, data: (_ for _ in ()).throw(_full()))
    capsys.readouterr()
    assert main(["train", "--resume", str(result.run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot write running.json (No space left on device)" in line
    assert load_run(result.run_dir).resumable


@pytest.mark.parametrize("refused", ["running.json", "config.yaml"])
def test_no_room_for_the_run_folder_exits_2_and_leaves_no_folder(tmp_path, monkeypatch, capsys, refused):
    if refused == "running.json":
        monkeypatch.setattr(runs_module, "write_json", lambda path, data: (_ for _ in ()).throw(_full()))
    else:
        _refuse_write_text(monkeypatch, {"config.yaml"})
    runs = tmp_path / "runs"
    argv = ["train", "--model", "tiny-random", "--data", str(_data_file(tmp_path)), "--output-dir", str(runs)]
    assert main([*argv, "--set", "train.run_name=nospace", "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot write the run folder (No space left on device); free disk space" in line
    assert not (runs / "nospace").exists()


def test_an_events_line_cut_by_a_full_disk_is_taken_back_whole(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    errors = []
    log = JsonlLog(path, on_error=errors.append)
    log(Phase(name="loading"))
    real_write = runs_module.os.write
    calls = {"n": 0}

    def half_then_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise _full()

    monkeypatch.setattr(ev.os, "write", half_then_full)
    log(Phase(name="training", step=1))
    log(Phase(name="training", step=2))
    monkeypatch.undo()
    log(Phase(name="final evaluation", step=3))
    assert errors == ["No space left on device"]  # one stretch of refused lines, heard once
    assert [e.name for e in read_events(path)] == ["loading", "final evaluation"]
    assert len(path.read_text().splitlines()) == 2


def test_a_refused_rename_puts_the_previous_folder_back(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}")
    replace_folder(run_dir, "last_adapter", lambda f: (f.mkdir(), (f / "w").write_text("one")))
    real_rename = pathlib.Path.rename

    def rename(self, target):
        if self.name == ".last_adapter.tmp":
            raise _full()
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    with pytest.raises(OSError):
        replace_folder(run_dir, "last_adapter", lambda f: (f.mkdir(), (f / "w").write_text("two")))
    assert (run_dir / "last_adapter" / "w").read_text() == "one"
    assert _leftovers(run_dir) == []


def test_a_refused_json_write_keeps_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"status": "finished"})
    _refuse_write_text(monkeypatch, {"summary.tmp"})
    with pytest.raises(OSError):
        write_json(path, {"status": "failed"})
    assert json.loads(path.read_text()) == {"status": "finished"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# -- damaged run files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run with every file: config.yaml, split.json, adapters, compare.json, summary.json."""
    tmp_path = tmp_path_factory.mktemp("finished")
    cfg = _cfg(
        tmp_path,
        "whole",
        **{"train.max_steps": 2, "train.eval_interval": 1, "data.source": str(_data_file(tmp_path))},
    )
    result = train(cfg)
    assert result.status == "finished"
    for name in ("config.yaml", "split.json", "compare.json", "summary.json", "adapter"):
        assert (result.run_dir / name).exists(), name
    return result.run_dir


def _copy(run_dir, tmp_path, name="copy"):
    target = tmp_path / "runs" / name
    shutil.copytree(run_dir, target)
    return target


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, file, commands",
    [
        (_cut, "summary.json", ["eval", "compare", "probe"]),
        (_cut, "compare.json", ["compare", "probe"]),
        (_cut, "split.json", ["eval"]),
        (_cut, "adapter/adapter_model.safetensors", ["eval", "compare --recompute"]),
        (_cut, "adapter/adapter_config.json", ["eval"]),
        (lambda path: path.write_text(""), "config.yaml", ["eval", "compare", "probe"]),
        (_cut, "config.yaml", ["eval"]),
    ],
    ids=["summary", "compare", "split", "adapter-weights", "adapter-config", "config-emptied", "config-cut"],
)
def test_a_damaged_run_file_is_named_with_exit_2(finished_run, tmp_path, capsys, damage, file, commands):
    run_dir = _copy(finished_run, tmp_path)
    damage(run_dir / file)
    for command in commands:
        capsys.readouterr()
        assert main([*command.split(), str(run_dir)]) == 2, command
        line = _one_error_line(capsys.readouterr().err)
        assert f"{run_dir / file} is damaged" in line and "cut short or emptied" in line, (command, line)


def test_an_emptied_config_is_never_read_as_the_default_model(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    (run_dir / "config.yaml").write_text("\n")
    with pytest.raises(DamagedRunError, match="config.yaml is damaged: the file is empty"):
        load_run(run_dir)
    listed = load_run(run_dir, damaged_ok=True)
    assert listed.config is None and listed.status == "damaged" and list(listed.damaged) == ["config.yaml"]
    # The views fall back to the settings the run's started event recorded, not the defaults.
    assert runs_module.run_config(listed)["model"]["name"] == "tiny-random"


def test_one_damaged_summary_does_not_hide_the_other_runs(finished_run, tmp_path):
    from plw_lab.views.text_views import runs_rows

    good = _copy(finished_run, tmp_path, "good")
    bad = _copy(finished_run, tmp_path, "bad")
    _cut(bad / "summary.json")
    runs = {run.name: run for run in list_runs(tmp_path / "runs")}
    assert set(runs) == {"good", "bad"}
    assert runs["good"].status == "finished" and runs["good"].damaged == {}
    assert (
        runs["bad"].status == "damaged" and f"{bad / 'summary.json'} is damaged" in runs["bad"].damaged["summary.json"]
    )
    assert {row["run"]: row["status"] for row in runs_rows(list(runs.values()))} == {
        "good": "finished",
        "bad": "damaged",
    }
    assert load_run(good).adapter_dir() == good / "adapter"


# -- runs that never saved an adapter ---------------------------------------------------------------


def test_eval_of_a_run_killed_during_loading_says_no_adapter_was_saved(tmp_path, capsys):
    run_dir, _ = new_run_dir(_cfg(tmp_path, "killed"))
    JsonlLog(run_dir / "events.jsonl")(Phase(name="loading"))
    (run_dir / runs_module.LIVE_MARK).unlink()  # as a kill -9 leaves it: no process trains it any more
    assert main(["eval", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        "error: killed has no adapter: no adapter was saved yet (it was killed during loading, before its first "
        "checkpoint); train it again"
    )


def test_eval_of_a_run_killed_in_the_step_0_evaluation_says_no_adapter_was_saved(tmp_path, monkeypatch, capsys):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the second Ctrl-C: no saving, the process ends

    monkeypatch.setattr(training_module.evaluation, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "step0"), examples=sum_examples(24))
    run_dir = tmp_path / "runs" / "step0"
    assert main(["eval", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no adapter was saved yet (it was killed during the step-0 evaluation, before its first checkpoint)" in line


def test_eval_of_another_adapter_names_the_ones_there_are(finished_run, tmp_path, capsys):
    run_dir = _copy(finished_run, tmp_path)
    shutil.rmtree(run_dir / "best_adapter", ignore_errors=True)
    assert main(["eval", str(run_dir), "--adapter", "best"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == "error: copy has no best_adapter/; it has adapter/, last_adapter/: choose another --adapter"


def test_a_run_that_failed_before_any_checkpoint_says_why(tmp_path, capsys):
    run_dir, _ = new_run_dir(_cfg(tmp_path, "failed"))
    (run_dir / runs_module.LIVE_MARK).unlink()
    write_json(run_dir / "summary.json", {"status": "failed", "error": "ModelError: no such model"})
    assert main(["eval", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert (
        "no adapter was saved yet (it failed, before its first checkpoint; its error: ModelError: no such model)"
        in line
    )


# -- lab inspect on many records --------------------------------------------------------------------


def test_inspect_says_on_stderr_that_it_is_encoding(tmp_path, monkeypatch, capsys):
    import plw_lab.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_DELAY", 0.0)
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(300)))
    assert main(["inspect", "--data", str(path), "--model", "tiny-random", "-n", "1"]) == 0
    out, err = capsys.readouterr()
    assert "encoding examples" in err
    assert out.startswith("300 examples") and "encoding" not in out


def test_a_run_whose_every_adapter_the_disk_refused_says_so(tmp_path, capsys):
    run_dir, _ = new_run_dir(_cfg(tmp_path, "refused"))
    (run_dir / runs_module.LIVE_MARK).unlink()
    refused = "could not save last_adapter/ at step 0 (No space left on device); there is no last_adapter/ yet"
    write_json(run_dir / "summary.json", {"status": "finished", "adapter": None, "write_failures": [refused]})
    assert main(["eval", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        f"error: refused has no adapter: the disk refused every one the run saved ({refused}); "
        "free disk space and train it again"
    )
