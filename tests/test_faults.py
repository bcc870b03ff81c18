"""Full disks and damaged runs: a write the disk refuses (an adapter, a checkpoint, a JSON file, an
events line) keeps the previous complete file, becomes advice and training goes on; with no room at
the start `lab train` exits 2 and leaves no folder; a damaged run file is named (exit 2), never a
traceback, and one damaged run never hides the others of a list.

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


def test_every_write_the_disk_refuses_keeps_the_previous_file_and_training_goes_on(tmp_path, monkeypatch):
    # Checkpoints every 2 steps: step 0 and 2 are written, 4, 6 and the final 8 are refused, each with
    # another of the errors a full disk raised, after a partial file was written.
    real_checkpoint = training_module.compat.write_trainer_checkpoint
    refused_at = {4: "RuntimeError", 6: "SafetensorError", 8: "OSError"}

    def write_checkpoint(trainer, folder):
        step = trainer.state.global_step
        if step in refused_at:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
            raise FULL_DISK_ERRORS[refused_at[step]]()
        real_checkpoint(trainer, folder)

    # Every best adapter after the base model's, and the final adapter, are refused.
    real_save = training_module.RunContext.save_adapter

    def save_adapter(self, name, step, write=None, trained_steps=None):
        if (name == "best_adapter" and step > 0) or name == "adapter":
            error = FULL_DISK_ERRORS["SafetensorError" if name == "best_adapter" else "OSError"]

            def partial(folder):
                folder.mkdir()
                (folder / "adapter_model.safetensors").write_bytes(b"\x08\x00")
                raise error()

            return real_save(self, name, step, partial, trained_steps)
        return real_save(self, name, step, write, trained_steps)

    # events.jsonl refuses the lines of steps 4 and 5.
    log_full = {"on": False}
    real_append = JsonlLog._append

    def append(self, line):
        if log_full["on"]:
            raise _full()
        real_append(self, line)

    def toggle_log(event):
        if isinstance(event, Step):
            log_full["on"] = event.step in (3, 4)

    monkeypatch.setattr(training_module.compat, "write_trainer_checkpoint", write_checkpoint)
    monkeypatch.setattr(training_module.RunContext, "save_adapter", save_adapter)
    monkeypatch.setattr(JsonlLog, "_append", append)
    _refuse_write_text(monkeypatch, {"split.tmp", "compare.tmp"})
    seen = []
    cfg = _cfg(
        tmp_path,
        "full",
        **{"train.save_interval_steps": 2, "train.save_interval_seconds": 0.0, "train.restore_best": True},
    )
    result = train(cfg, subscribers=[toggle_log, seen.append], examples=sum_examples(24))

    assert result.status == "finished" and result.summary["steps"] == 8
    advice = _advice(seen)
    for expected in (
        "could not write split.json (No space left on device)",
        "could not append to events.jsonl (No space left on device)",
        "could not save last_adapter/ at step 4 (RuntimeError: [enforce fail at inline_container.cc:664] . "
        "unexpected pos 64 vs 0); last_adapter/ keeps step 2",
        "could not save last_adapter/ at step 6 (SafetensorError: Error while serializing",
        "could not save last_adapter/ at step 8 (No space left on device); last_adapter/ keeps step 2",
        "); best_adapter/ keeps step 0",
        "could not save adapter/ at step",
        "there is no adapter/ yet; the run keeps best_adapter/ (step 0)",
        "could not write compare.json (No space left on device)",
    ):
        assert any(expected in message for message in advice), (expected, advice)
    assert sum("events.jsonl" in message for message in advice) == 1  # once per stretch of refused lines

    run_dir = result.run_dir
    assert _leftovers(run_dir) == []
    assert not (run_dir / "adapter").exists()
    assert not (run_dir / "split.json").exists() and not (run_dir / "compare.json").exists()
    # The checkpoint of step 2 is whole and resumable; best_adapter/ still holds step 0.
    assert json.loads((run_dir / "last_adapter" / "trainer_state.json").read_text())["global_step"] == 2
    load_file(run_dir / "last_adapter" / "adapter_model.safetensors")
    load_file(run_dir / "best_adapter" / "adapter_model.safetensors")
    # The summary names what was kept: best_adapter/ at step 0, and why, with that adapter's metrics.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["adapter"] == "best_adapter" and summary["adapter_step"] == 0
    assert summary["adapter_is_base_model"] is True
    assert summary["completion_loss"] == summary["first_eval"]["completion_loss"]
    assert any("could not save adapter/" in failure for failure in summary["write_failures"])
    assert len(summary["write_failures"]) == len([m for m in advice if m.startswith("could not")])
    run = load_run(run_dir)
    assert run.require_adapter() == (run_dir / "best_adapter", 0)
    assert run.checkpoint() == run_dir / "last_adapter"
    # The log lost the refused lines whole: every line it kept is one event.
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert len(read_events(run_dir / "events.jsonl")) == len(lines)
    logged_steps = [e.step for e in read_events(run_dir / "events.jsonl") if isinstance(e, Step)]
    assert logged_steps == [1, 2, 3, 6, 7, 8]


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
