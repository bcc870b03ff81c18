"""`accelerate launch` with two CPU processes (gloo) trains exactly like one process on the same global batch."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import sum_examples

from plw_lab.core.events import Step, read_events

pytestmark = pytest.mark.slow


def _run(tmp_path, name, processes, batch):
    args = [
        "--model",
        "tiny-random",
        "--data",
        str(tmp_path / "data.jsonl"),
        "--max-steps",
        "3",
        "--output-dir",
        str(tmp_path / "runs"),
        "--set",
        f"train.batch_size={batch}",
        "--set",
        "train.eval_interval=2",
        "--set",
        "train.prompt_loss_weight=0.1",
        "--set",
        "eval.probe_texts=0",
        "--set",
        "eval.generations=0",
        "--set",
        "lora.layers=all",
        "--set",
        f"train.run_name={name}",
    ]
    if processes == 1:
        cmd = [sys.executable, "-m", "plw_lab", "train", *args]
    else:
        launcher = shutil.which("accelerate")
        cmd = [
            launcher,
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--main_process_port",
            "29561",
            "-m",
            "plw_lab",
            "train",
            *args,
        ]
    env = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    import os

    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return read_events(tmp_path / "runs" / name / "events.jsonl")


def test_two_gloo_processes_give_the_loss_curve_of_one_process(tmp_path):
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher is not on PATH")
    with open(tmp_path / "data.jsonl", "w") as fh:
        for e in sum_examples(32):
            fh.write(json.dumps({"prompt": e.messages[0]["content"], "completion": e.messages[1]["content"]}) + "\n")
    one = _run(tmp_path, "one", 1, batch=4)
    two = _run(tmp_path, "two", 2, batch=2)
    curve_one = [e.train_loss for e in one if isinstance(e, Step)]
    curve_two = [e.train_loss for e in two if isinstance(e, Step)]
    assert len(curve_one) == len(curve_two) == 3
    assert curve_one == pytest.approx(curve_two, rel=1e-4)
    evals_one = [e.metrics["completion_loss"] for e in one if e.kind == "eval"]
    evals_two = [e.metrics["completion_loss"] for e in two if e.kind == "eval"]
    assert evals_one == pytest.approx(evals_two, rel=1e-4)


def test_a_cpu_launch_that_would_start_one_process_fails_with_the_command_that_works(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process; the lab says so instead of training alone."""
    import os

    if shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher is not on PATH")
    cmd = [
        shutil.which("accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "29562",
        "-m",
        "plw_lab",
        "train",
        "--model",
        "tiny-random",
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode != 0
    assert "starts only one process" in done.stdout + done.stderr
    assert "accelerate launch --multi_gpu --num_processes N" in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run folder
