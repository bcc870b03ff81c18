"""`lab train` and `lab sweep` under signals: SIGTERM and Ctrl-C stop like the Stop button (saved,
`stopped`, no traceback), SIGKILL leaves an `interrupted` run that `lab train --resume` finishes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plw_lab.core.runs import load_run
from plw_lab.core.sweep_table import read_csv

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Add {i} and {i + 1}.", "completion": str(2 * i + 1)}) + "\n" for i in range(40))
    )
    return path


def _lab(*args):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "plw_lab", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _tiny(tmp_path):
    """The tiny model on a small data file with many steps, so a run is still training whenever the signal comes."""
    return [
        "--model",
        "tiny-random",
        "--data",
        str(_data(tmp_path)),
        "--output-dir",
        str(tmp_path / "runs"),
        "--max-steps",
        "5000",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.eval_interval=1000",
        "--set",
        "train.save_interval_steps=3",
        "--set",
        "lora.layers=all",
        "--set",
        "eval.generations=0",
        "--set",
        "eval.probe_texts=0",
    ]


def _start(tmp_path, name):
    return _lab("train", *_tiny(tmp_path), "--set", f"train.run_name={name}")


def _wait_for(proc, log: Path, test, what):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lab ended ({proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        if log.exists():
            events = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
            if test(events):
                return events
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {what} within {TIMEOUT}s")


def _checkpoint_at_least(step):
    return lambda events: any(e["type"] == "checkpoint" and e["label"] == "last" and e["step"] >= step for e in events)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_like_the_stop_button(tmp_path, sig, code):
    proc = _start(tmp_path, "sig")
    run_dir = tmp_path / "runs" / "sig"
    _wait_for(proc, run_dir / "events.jsonl", lambda events: any(e["type"] == "step" for e in events), "a first step")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    run = load_run(run_dir)
    assert run.status == "stopped" and run.summary["stop_reason"] == f"stopped by {sig.name}"
    assert run.events[-1].kind == "stopped" and run.events[-1].step == run.summary["steps"] > 0
    # The stop saved the step it reached, whole and resumable.
    assert run.checkpoint() == run_dir / "last_adapter"
    assert (
        json.loads((run_dir / "last_adapter" / "trainer_state.json").read_text())["global_step"] == run.summary["steps"]
    )
    assert run.summary["adapter"] == "adapter" and (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_ctrl_c_stops_a_sweep_which_names_its_own_resume_command(tmp_path):
    proc = _lab("sweep", *_tiny(tmp_path), "--plws", "0,1", "--seeds", "0", "--name", "sig")
    folder = tmp_path / "runs" / "sig"
    _wait_for(proc, folder / "plw0-seed0" / "events.jsonl", lambda evs: any(e["type"] == "step" for e in evs), "a step")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err and "lab train --resume" not in out + err
    assert f"2 run(s) did not finish; finish them with: lab sweep --resume {folder}" in out
    # The run that trained stopped as under `lab train`; the next never started.
    assert [(r["plw"], r["status"]) for r in read_csv(folder)] == [(0.0, "stopped")]
    assert load_run(folder / "plw0-seed0").summary["stop_reason"] == "stopped by SIGINT"


def test_a_run_killed_without_warning_is_interrupted_and_resumes(tmp_path):
    proc = _start(tmp_path, "kill")
    run_dir = tmp_path / "runs" / "kill"
    _wait_for(proc, run_dir / "events.jsonl", _checkpoint_at_least(3), "a checkpoint at step 3")
    proc.kill()
    proc.communicate(timeout=TIMEOUT)
    run = load_run(run_dir)
    assert run.status == "interrupted" and run.step >= 3 and not (run_dir / "summary.json").exists()
    assert run.resumable
    checkpoint = json.loads((run_dir / "last_adapter" / "trainer_state.json").read_text())["global_step"]

    # Resume it, then stop the resumed run with SIGTERM once it has trained past the checkpoint.
    resumed = _lab("train", "--resume", str(run_dir))
    events = _wait_for(
        resumed,
        run_dir / "events.jsonl",
        lambda evs: (
            any(e["type"] == "started" and e.get("resumed") for e in evs)
            and evs[-1]["type"] == "step"
            and evs[-1]["step"] > checkpoint + 1
        ),
        "a resumed step",
    )
    started = [e for e in events if e["type"] == "started"]
    assert len(started) == 2 and started[1]["from_step"] == checkpoint
    resumed.send_signal(signal.SIGTERM)
    out, err = resumed.communicate(timeout=TIMEOUT)
    assert resumed.returncode == 143, err[-3000:]
    run = load_run(run_dir)
    assert (
        run.status == "stopped" and run.summary["resumed_from"] == checkpoint and run.summary["steps"] > checkpoint + 1
    )
    steps = [e.step for e in run.events if e.kind == "step"]
    assert steps == list(range(1, run.summary["steps"] + 1))  # each step once, the lost ones retrained


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = _lab("train", "--resume", str(tmp_path))
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2 and "not a run folder" in err and "Traceback" not in err


def test_signal_handlers_are_installed_only_from_the_main_thread():
    """The app trains in a thread: asking there changes no handler (Python allows them only in the main thread)."""
    import threading

    from plw_lab.cli import stop_on_signals
    from plw_lab.core.training import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    result = {}
    worker = threading.Thread(target=lambda: result.update(previous=stop_on_signals(StopRequest())))
    worker.start()
    worker.join()
    assert result["previous"] == {} and signal.getsignal(signal.SIGTERM) is before
    previous = stop_on_signals(StopRequest())
    try:
        assert set(previous) == {signal.SIGINT, signal.SIGTERM} and signal.getsignal(signal.SIGTERM) is not before
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_to_the_app_stops_its_run_resumably_and_exits_within_10_s(tmp_path):
    """What a Space or Docker does to `lab app`: SIGTERM (then SIGKILL after 10 s) while a run trains."""
    gradio_client = pytest.importorskip("gradio_client")
    from e2e.e2e_support import free_port

    from plw_lab import api

    port, runs = free_port(), tmp_path / "runs"
    settings = ["data.limit=40", "train.batch_size=2", "train.eval_interval=20", "lora.layers=all"]
    settings += ["lora.dropout=0.1", "eval.generations=0", "eval.probe_texts=0"]
    app = _lab(
        "app",
        "--model",
        "tiny-random",
        "--runs-dir",
        str(runs),
        "--port",
        str(port),
        *(arg for s in settings for arg in ("--set", s)),
    )
    try:
        deadline = time.time() + TIMEOUT
        while True:
            try:
                client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert app.poll() is None and time.time() < deadline, app.stderr.read()[-3000:]
                time.sleep(0.5)
        endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/start"]
        names = {p["label"]: p["parameter_name"] for p in endpoint["parameters"]}
        visitor = {p["parameter_name"]: None for p in endpoint["parameters"] if not p["parameter_has_default"]}
        client.predict(**visitor, **{names["Max steps"]: 60}, api_name="/start")
        log = next(iter(runs.glob("*/events.jsonl")), None)
        while log is None:
            log = next(iter(runs.glob("*/events.jsonl")), None)
            time.sleep(0.05)
        _wait_for(app, log, lambda events: sum(e["type"] == "step" for e in events) >= 3, "a third step")
        signalled = time.time()
        app.send_signal(signal.SIGTERM)
        out, err = app.communicate(timeout=30)
        print("T exited", time.time(), err[-2000:])
        assert time.time() - signalled < 10 and app.returncode in (0, 143), err[-3000:]
        assert "terminate called" not in err and "Traceback" not in err, err[-3000:]
    finally:
        if app.poll() is None:
            app.kill()
    run = load_run(log.parent)
    assert run.events[-1].kind == "stopped" and run.summary["stop_reason"] == "stopped by SIGTERM"
    assert run.resumable and (run.path / "owner.json").exists()  # its owner gets Resume after a restart

    resumed = api.resume(run.path, compare=False)
    whole = api.train(run.config.override({"train.run_name": "whole"}), compare=False)
    assert resumed.summary["steps"] == whole.summary["steps"] == 60
    final = [load_run(r.run_dir).evals[-1] for r in (resumed, whole)]
    assert final[0].step == final[1].step == 60
    for metric in ("completion_loss", "answer_loss", "token_accuracy", "answer_accuracy"):
        assert final[0].metrics[metric] == pytest.approx(final[1].metrics[metric], rel=1e-4), metric
