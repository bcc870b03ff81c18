"""`lab sweep --backend ray` on a local Ray instance (2 CPUs) with the tiny model: the same sweep.csv as the
local backend, ASHA pruning a hopeless run, and a killed worker that `--resume` finishes."""

import json
import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from plw_lab.cli import main  # noqa: E402
from plw_lab.core.config import LabConfig  # noqa: E402
from plw_lab.core.runs import load_run  # noqa: E402
from plw_lab.core.sweep import points, run_cells, run_sweep  # noqa: E402
from plw_lab.core.sweep_table import Grid, SweepTable, new_cell, read_csv  # noqa: E402
from plw_lab.views.charts import sweep_figure  # noqa: E402

TINY = {
    "model.name": "tiny-random",
    "train.max_steps": 2,
    "train.eval_interval": 1,
    "data.limit": 16,
    "data.val_size": 6,
    "eval.generations": 0,
    "eval.probe_texts": 0,
}
SETS = [arg for key, value in TINY.items() if key != "model.name" for arg in ("--set", f"{key}={value}")]
COMPARED = ("plw", "seed", "status", "steps", "best_answer_accuracy", "best_answer_loss", "best_answer_loss_step")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_grid_on_ray_writes_the_rows_of_the_local_backend(tmp_path, capsys):
    started = time.perf_counter()
    code = main(
        ["sweep", "--model", "tiny-random", "--plws", "0,1", "--seeds", "0", "--backend", "ray", "--name", "grid"]
        + ["--output-dir", str(tmp_path / "ray"), *SETS]
    )
    ray_seconds = time.perf_counter() - started
    assert code == 0, capsys.readouterr()
    started = time.perf_counter()
    local = run_sweep(LabConfig().override({**TINY, "train.output_dir": str(tmp_path / "local")}), [0, 1], [0])
    local_seconds = time.perf_counter() - started
    print(f"2 x 1 tiny grid: ray {ray_seconds:.1f} s, local {local_seconds:.1f} s")
    on_ray, at_home = read_csv(tmp_path / "ray" / "grid"), read_csv(local)
    assert [[r[k] for k in COMPARED] for r in on_ray] == [[r[k] for k in COMPARED] for r in at_home]
    assert [(r["plw"], r["seed"], r["status"]) for r in on_ray] == [(0.0, 0, "finished"), (1.0, 0, "finished")]
    assert all(load_run(r["run"]).status == "finished" for r in on_ray)


def test_asha_prunes_a_hopeless_run_which_stops_cleanly_and_stays_out_of_the_means(tmp_path):
    cfg = LabConfig().override(
        {
            **TINY,
            "train.max_steps": 3,
            "train.warmup_ratio": 0.0,
            "train.learning_rate": 0.05,
            "train.output_dir": str(tmp_path),
            "sweep.backend": "ray",
            "sweep.prune": "asha",
            "sweep.grace_steps": 1,
            "sweep.cpus_per_run": 2,  # one run at a time, so the good run reaches the comparison first
        }
    )
    folder = tmp_path / "asha"
    folder.mkdir()
    good = new_cell(cfg, folder, {"plw": 0.0, "seed": 0}, "plw0-seed0")
    # A learning rate of 0 never moves the adapter: its answer loss stays the base model's, behind any learning run.
    hopeless = new_cell(cfg, folder, {"plw": 0.0, "seed": 1}, "plw0-seed1")
    hopeless.cfg = hopeless.cfg.override({"train.learning_rate": 0.0})
    run_cells(cfg, [good, hopeless], SweepTable(folder, Grid([0.0], [0, 1])))
    rows = read_csv(folder)
    assert [(r["seed"], r["status"], r["pruned_step"]) for r in rows] == [(0, "finished", None), (1, "pruned", 1)]
    pruned = load_run(rows[1]["run"])
    # Stopped through its StopRequest: one more step, then its adapter and summary, like the Stop button.
    assert pruned.status == "stopped" and pruned.summary["steps"] == 2 < 3
    assert (pruned.path / "adapter").is_dir() and not (pruned.path / "running.json").exists()
    summary = points(rows)
    assert [(m["plw"], m["n"], m["mean"]) for m in summary["means"]] == [(0.0, 1, rows[0]["best_answer_accuracy"])]
    assert [r["excluded"] for r in summary["runs"]] == ["", "pruned at step 1"]
    hollow = [t for t in sweep_figure(rows).data if t.name == "runs left out (pruned at step 1)"]
    assert hollow and all(t.marker.symbol == "circle-open" for t in hollow)


def _kill_when_training(run_dir, killed: list) -> None:
    """SIGKILL the worker training `run_dir` once it has evaluated step 1 (its checkpoint of step 0 exists)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        events = run_dir / "events.jsonl"
        lines = events.read_text().splitlines() if events.exists() else []
        if any(json.loads(line).get("type") == "eval" and json.loads(line)["step"] >= 1 for line in lines):
            pid = json.loads((run_dir / "running.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


def test_a_killed_worker_leaves_a_sweep_that_resume_finishes(tmp_path, capsys):
    folder = tmp_path / "killed"
    killed: list = []
    killer = threading.Thread(target=_kill_when_training, args=(folder / "plw0-seed0", killed), daemon=True)
    killer.start()
    code = main(
        ["sweep", "--model", "tiny-random", "--plws", "0", "--seeds", "0,1", "--backend", "ray", "--name", "killed"]
        + ["--output-dir", str(tmp_path), *SETS, "--set", "train.max_steps=3"]
    )
    killer.join()
    out = capsys.readouterr().out
    assert killed and code == 1
    rows = read_csv(folder)
    assert [(r["seed"], r["status"]) for r in rows] == [(0, "interrupted"), (1, "finished")]
    assert f"lab sweep --resume {folder}" in out
    survivor = folder / "plw0-seed1" / "events.jsonl"
    before = survivor.read_text()
    assert main(["sweep", "--resume", str(folder)]) == 0
    rows = read_csv(folder)
    assert [(r["seed"], r["status"], r["steps"]) for r in rows] == [(0, "finished", 3), (1, "finished", 3)]
    resumed = load_run(folder / "plw0-seed0")
    assert any(getattr(e, "resumed", False) for e in resumed.events)  # continued from its checkpoint
    assert survivor.read_text() == before  # the finished run was left alone
