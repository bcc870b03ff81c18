"""Checkpoints and resume: a run stopped after step k and resumed ends exactly where an
uninterrupted run ends; a full disk never replaces a complete adapter folder with a partial one."""

import errno
import json
import threading

import pytest
import torch
from conftest import sum_examples
from safetensors.torch import load_file

from plw_lab.core import events as ev
from plw_lab.core.config import LabConfig
from plw_lab.core.runs import complete_folder, load_run, replace_folder
from plw_lab.core.training import resume, train


def _cfg(tmp_path, name, **overrides):
    base = {
        "model.name": "tiny-random",
        "train.output_dir": str(tmp_path / "runs"),
        "train.run_name": name,
        "train.batch_size": 4,
        "train.max_steps": 8,  # about 5 batches an epoch: the run crosses an epoch boundary
        "train.eval_interval": 4,
        "train.learning_rate": 1e-2,
        "train.restore_best": False,
        "lora.layers": "all",
        "lora.dropout": 0.1,  # random: the resumed run must continue the random-number streams
        "eval.generations": 0,
        "eval.probe_texts": 0,
    }
    base.update(overrides)
    return LabConfig().override(base)


def _stop_at(step):
    stop = threading.Event()

    def watch(event):
        if isinstance(event, ev.Step) and event.step == step:
            stop.set()

    return stop, watch


def _weights(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_a_run_stopped_after_step_3_and_resumed_ends_like_an_uninterrupted_run(tmp_path):
    data = sum_examples(24)
    whole = train(_cfg(tmp_path, "whole"), examples=data, compare=False)
    assert whole.status == "finished", whole.summary

    stop, watch = _stop_at(3)
    first = train(_cfg(tmp_path, "split"), subscribers=[watch], stop=stop, examples=data, compare=False)
    assert first.status == "stopped" and first.summary["steps"] == 3
    assert load_run(first.run_dir).resumable

    seen = []
    resumed = resume(first.run_dir, subscribers=[seen.append], examples=data, compare=False)
    assert resumed.status == "finished", resumed.summary
    started = [e for e in seen if isinstance(e, ev.Started)]
    assert len(started) == 1 and started[0].resumed and started[0].from_step == 3
    assert [e.step for e in seen if isinstance(e, ev.Step)] == [4, 5, 6, 7, 8]

    losses = {
        r.run_dir.name: [e.train_loss for e in load_run(r.run_dir).events if isinstance(e, ev.Step)]
        for r in (whole, resumed)
    }
    assert len(losses["split"]) == 8  # the steps of both attempts, once each
    assert losses["split"] == pytest.approx(losses["whole"], rel=1e-5)
    a, b = _weights(whole.run_dir / "adapter"), _weights(resumed.run_dir / "adapter")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
    # One events.jsonl for the whole run: the resumed part is appended, and the run reads as one run.
    log = [json.loads(line) for line in (resumed.run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in log].count("started") == 2 and log[-1]["type"] == "finished"
    run = load_run(resumed.run_dir)
    assert run.status == "finished" and run.summary["resumed_from"] == 3 and run.summary["adapter_step"] == 8
    assert [e.step for e in run.evals] == [0, 3, 4, 8]


def test_a_finished_run_cannot_be_resumed(tmp_path):
    from plw_lab.core.runs import ResumeError

    done = train(_cfg(tmp_path, "done", **{"train.max_steps": 1}), examples=sum_examples(12), compare=False)
    with pytest.raises(ResumeError, match="finished"):
        resume(done.run_dir, examples=sum_examples(12))


def test_checkpoints_come_every_n_steps_and_last_adapter_stays_recent(tmp_path):
    seen = []
    cfg = _cfg(tmp_path, "periodic", **{"train.save_interval_steps": 3, "train.save_interval_seconds": 0.0})
    result = train(cfg, subscribers=[seen.append], examples=sum_examples(24), compare=False)
    last = [e.step for e in seen if isinstance(e, ev.CheckpointSaved) and e.label == "last"]
    assert last == [0, 3, 6, 8]
    assert json.loads((result.run_dir / "last_adapter" / "trainer_state.json").read_text())["global_step"] == 8
    assert {p.name for p in result.run_dir.iterdir()}.isdisjoint({".last_adapter.tmp", ".last_adapter.old"})


def test_a_full_disk_at_the_final_save_never_names_a_missing_adapter(tmp_path, monkeypatch):
    import plw_lab.core.training as training_module

    real = training_module.RunContext.save_adapter

    def save(self, name, step, write=None, **kwargs):
        if name == "adapter":

            def partial(folder):
                folder.mkdir()
                (folder / "adapter_config.json").write_text("{")
                raise OSError(errno.ENOSPC, "No space left on device")

            return real(self, name, step, partial, **kwargs)
        return real(self, name, step, write, **kwargs)

    monkeypatch.setattr(training_module.RunContext, "save_adapter", save)
    result = train(_cfg(tmp_path, "final", **{"train.restore_best": True}), examples=sum_examples(24), compare=False)
    # The adapter it could not write fails the run, whose summary names the best adapter it saved.
    assert result.status == "failed" and "could not save adapter/" in result.summary["error"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert not (result.run_dir / "adapter").exists()
    assert summary["adapter"] in ("best_adapter", "last_adapter")
    assert any("could not save adapter/" in f and "No space left" in f for f in summary["write_failures"])
    assert (result.run_dir / summary["adapter"] / "adapter_model.safetensors").exists()
    run = load_run(result.run_dir)
    assert run.adapter_dir() == result.run_dir / summary["adapter"]


def test_a_swap_cut_between_its_two_renames_keeps_the_complete_folder(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}")
    replace_folder(run_dir, "last_adapter", lambda f: (f.mkdir(), (f / "w").write_text("one")))
    (run_dir / "last_adapter").rename(run_dir / ".last_adapter.old")  # as if killed between the renames
    assert complete_folder(run_dir, "last_adapter") == run_dir / ".last_adapter.old"
    with pytest.raises(OSError):
        replace_folder(run_dir, "last_adapter", lambda f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert (run_dir / "last_adapter" / "w").read_text() == "one"
    assert not (run_dir / ".last_adapter.tmp").exists()


def test_early_stopping_that_keeps_step_0_says_so(tmp_path, monkeypatch):
    import plw_lab.core.training as training_module

    real = training_module.evaluation.evaluate
    calls = []

    def worse_every_time(*args, **kwargs):  # completion loss 1, 2, 3, ...: step 0 stays the best
        metrics = real(*args, **kwargs)
        calls.append(1)
        return {**metrics, "completion_loss": float(len(calls))}

    monkeypatch.setattr(training_module.evaluation, "evaluate", worse_every_time)
    cfg = _cfg(
        tmp_path,
        "zero",
        **{"train.max_steps": 30, "train.eval_interval": 1, "train.patience": 2, "train.restore_best": True},
    )
    seen = []
    result = train(cfg, subscribers=[seen.append], examples=sum_examples(24), compare=False)
    assert result.status == "stopped" and result.summary["steps"] == 2
    assert result.summary["adapter_step"] == 0 and result.summary["adapter_is_base_model"] is True
    assert any("step 0" in e.message and "no-op" in e.message for e in seen if isinstance(e, ev.Advice))
    final = [e for e in seen if isinstance(e, ev.CheckpointSaved) and e.label == "final"]
    assert [e.step for e in final] == [0]


def test_a_deleted_run_folder_is_never_recreated(tmp_path):
    import shutil

    def delete_on_step_2(event):
        if isinstance(event, ev.Step) and event.step == 2:
            shutil.rmtree(event_dir["path"])

    event_dir = {}
    cfg = _cfg(tmp_path, "gone", **{"train.save_interval_steps": 3})
    result = train(
        cfg,
        subscribers=[delete_on_step_2],
        examples=sum_examples(24),
        compare=False,
        on_run_dir=lambda path: event_dir.update(path=path),
    )
    assert event_dir["path"] == result.run_dir
    assert result.status == "failed" and "deleted" in result.summary["error"]
    assert not result.run_dir.exists()


def test_eval_and_compare_say_which_adapter_and_step_they_use(tmp_path, capsys):
    from plw_lab.cli import main

    data = tmp_path / "sums.jsonl"  # a file, so eval and compare read the same small set back
    data.write_text(
        "".join(
            json.dumps({"prompt": e.messages[0]["content"], "completion": e.messages[1]["content"]}) + "\n"
            for e in sum_examples(24)
        )
    )
    cfg = _cfg(
        tmp_path,
        "pick",
        **{
            "train.max_steps": 4,
            "train.eval_interval": 2,
            "lora.dropout": 0.0,
            "train.restore_best": True,
            "data.source": str(data),
        },
    )
    result = train(cfg)  # with the comparison, as `lab train` leaves it
    summary = result.summary
    assert summary["adapter"] == "adapter"
    capsys.readouterr()
    assert main(["eval", str(result.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"adapter: {result.run_dir / 'adapter'} (step {summary['adapter_step']})" in out
    assert main(["eval", str(result.run_dir), "--adapter", "last"]) == 0
    assert f"adapter: {result.run_dir / 'last_adapter'} (step 4)" in capsys.readouterr().out
    assert main(["compare", str(result.run_dir)]) == 0
    assert f"(step {summary['adapter_step']}; from compare.json)" in capsys.readouterr().out
    assert main(["compare", str(result.run_dir), "--adapter", "last"]) == 0
    assert f"adapter: {result.run_dir / 'last_adapter'} (step 4)" in capsys.readouterr().out
