"""PLW sweeps: `lab sweep` on the tiny model, sweep.csv, means with intervals, the quadratic fit, odd runs."""

import json
import os
import re
import shutil
import sys
import threading
from types import SimpleNamespace

import pytest
from conftest import fake_sweep

from plw_lab.core.config import LabConfig
from plw_lab.core.metrics import best_of
from plw_lab.core.runs import list_runs, load_run
from plw_lab.core.sweep import axes, odd_runs, points, quadratic_fit, summarise, t95, varied
from plw_lab.core.sweep_table import COLUMNS, list_sweeps, read_csv
from plw_lab.core.sweep_verdict import sweep_runs
from plw_lab.views.charts import plw_sweep_figure, sweep_figure


def _row(plw, seed, acc, status="finished", steps=40, loss=1.0):
    return {
        "plw": plw,
        "seed": seed,
        "status": status,
        "steps": steps,
        "n_val": 48,
        "best_answer_accuracy": acc,
        "best_answer_accuracy_step": 20,
        "answer_accuracy_ci_low": None,
        "answer_accuracy_ci_high": None,
        "best_answer_loss": loss,
        "best_answer_loss_step": 30,
        "run": f"plw{plw}-seed{seed}",
    }


def test_lab_sweep_runs_a_plw_by_seed_grid_on_one_split(tmp_path, capsys):
    from plw_lab.cli import main

    code = main(
        [
            "sweep",
            "--model",
            "tiny-random",
            "--plws",
            "0,1",
            "--seeds",
            "0,1",
            "--name",
            "grid",
            "--output-dir",
            str(tmp_path),
            "--max-steps",
            "2",
            "--set",
            "train.eval_interval=1",
            "--set",
            "data.limit=16",
            "--set",
            "data.val_size=6",
            "--set",
            "eval.generations=0",
            "--set",
            "eval.probe_texts=0",
        ]
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # without the terminal colours
    assert code == 0, out
    folder = tmp_path / "grid"
    rows = read_csv(folder)
    assert list(json.loads(json.dumps(rows[0]))) == list(COLUMNS)
    assert [(r["plw"], r["seed"], r["status"], r["steps"]) for r in rows] == [
        (0.0, 0, "finished", 2),
        (0.0, 1, "finished", 2),
        (1.0, 0, "finished", 2),
        (1.0, 1, "finished", 2),
    ]
    runs = [load_run(r["run"]) for r in rows]
    # One split for every run: the seeds vary the adapter and the data order only.
    splits = [json.loads((run.path / "split.json").read_text()) for run in runs]
    assert all(s["val"] == splits[0]["val"] and s["train"] == splits[0]["train"] for s in splits)
    assert [run.config.train.seed for run in runs] == [0, 1, 0, 1]
    for row, run in zip(rows, runs):
        best = best_of(run.evals, ["answer_accuracy"])["answer_accuracy"]  # the oracle: the registry's own rule
        assert (row["best_answer_accuracy"], row["best_answer_accuracy_step"]) == (best["value"], best["step"])
        loss = best_of(run.evals, ["answer_loss"])["answer_loss"]
        assert (row["best_answer_loss"], row["best_answer_loss_step"]) == (pytest.approx(loss["value"]), loss["step"])
        at_best = next(e for e in run.evals if e.step == best["step"]).metrics["answer_accuracy_ci"]
        assert [row["answer_accuracy_ci_low"], row["answer_accuracy_ci_high"]] == pytest.approx(at_best)
        # A column per stopping criterion, from the run's own report in summary.json.
        stopping = run.summary["stopping"]
        for name in ("full_loss", "answer_loss", "answer_accuracy"):
            assert row[f"stop_{name}_step"] == stopping[name]["step"]
            assert row[f"stop_{name}_accuracy"] == pytest.approx(stopping[name]["answer_accuracy"])
        assert row["stop_test_p_value"] == pytest.approx(stopping["test"]["p_value"])
    # The verdict of the finished runs follows the sweep's table.
    assert "what 4 finished run(s) support:" in out and "PLW 0 vs PLW 1: " in out
    # Different seeds start from different adapters: their last validation losses differ at the same PLW.
    last = [run.evals[-1].metrics["completion_loss"] for run in runs]
    assert last[0] != last[1] and last[2] != last[3]
    assert "PLW 0, seed 1: finished after 2 steps" in out and f"sweep folder: {folder}" in out
    assert (folder / "sweep_config.yaml").exists() and list_sweeps(tmp_path) == [folder]
    # The sweep folder is no run of its own; its runs are listed under its name, in grid order.
    assert [run.name for run in list_runs(tmp_path)] == [f"grid/{run.path.name}" for run in runs]


def test_runs_dirs_list_every_sweeps_runs_grouped_newest_sweep_first(tmp_path):
    old = fake_sweep(tmp_path / "sweep-old", plws=(0.0,), seeds=(0, 1))
    solo = tmp_path / "solo"
    solo.mkdir()
    LabConfig().save(solo / "config.yaml")
    new = fake_sweep(tmp_path / "sweep-new", plws=(0.0, 1.0), seeds=(0,))
    (tmp_path / "notes").mkdir()  # a folder without runs is neither a run nor a group
    for age, path in enumerate([*new, solo, *old]):
        os.utime(path, (1e9 - 100 * age, 1e9 - 100 * age))
    os.utime(new[0], (1e9 - 10_000, 1e9 - 10_000))  # a sweep is as new as its newest run
    runs = list_runs(tmp_path)
    assert [run.name for run in runs] == [
        "sweep-new/plw0-seed0",
        "sweep-new/plw1-seed0",
        "solo",
        "sweep-old/plw0-seed0",
        "sweep-old/plw0-seed1",
    ]
    assert [run.path for run in runs] == [*new, solo, *old] and runs[2].group == ""
    # The verdict reads a sweep folder's runs, as `lab verdict` names it, with their bare folder names.
    assert [run.name for run in sweep_runs([tmp_path / "sweep-new"])] == ["plw0-seed0", "plw1-seed0"]


def test_a_bad_grid_exits_with_a_clear_message(capsys):
    from plw_lab.cli import main

    assert main(["sweep", "--plws", "0,2", "--model", "tiny-random"]) == 2
    assert "train.prompt_loss_weight must be at most 1.0; got 2.0" in capsys.readouterr().err


def test_means_over_seeds_carry_a_t_interval():
    s = summarise([0.5, 0.6, 0.7])
    # mean 0.6, sample sd 0.1, half-width t(0.975, 2) x 0.1 / sqrt(3) = 4.303 x 0.057735 = 0.24843
    assert s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(0.1)
    assert (s["low"], s["high"]) == (pytest.approx(0.6 - 0.24843, abs=1e-5), pytest.approx(0.6 + 0.24843, abs=1e-5))
    assert summarise([0.55])["low"] is None  # one seed: no interval
    assert t95(1) == 12.706 and t95(30) == pytest.approx(2.042, abs=0.002)


def test_stopped_runs_and_runs_of_another_length_are_left_out_of_the_means():
    rows = [
        _row(0.0, 0, 0.5),
        _row(0.0, 1, 0.7),
        _row(0.0, 2, 0.9, status="stopped", steps=10),
        _row(1.0, 0, 0.4),
        _row(1.0, 1, 0.3, steps=20),
    ]
    summary = points(rows)
    assert summary["steps"] == 40
    assert {m["plw"]: (m["n"], round(m["mean"], 6)) for m in summary["means"]} == {0.0: (2, 0.6), 1.0: (1, 0.4)}
    reasons = {(r["plw"], r["seed"]): r["excluded"] for r in summary["runs"] if r["excluded"]}
    assert reasons == {(0.0, 2): "status stopped", (1.0, 1): "20 steps, not 40"}


def test_the_quadratic_fit_needs_four_plw_values_and_recovers_a_parabola():
    xs = [0.0, 0.01, 0.1, 0.5, 1.0]
    ys = [0.5 + 0.2 * x - 0.3 * x * x for x in xs]
    fit = quadratic_fit(xs, ys)
    assert (fit["a"], fit["b"], fit["c"]) == (pytest.approx(0.5), pytest.approx(0.2), pytest.approx(-0.3))
    assert fit["r2"] == pytest.approx(1.0)
    assert quadratic_fit([0.0, 0.1, 1.0, 1.0], [0.5, 0.6, 0.4, 0.45]) is None  # 3 distinct PLWs
    rows = [_row(x, 0, y) for x, y in zip(xs, ys)]
    assert [fit["c"] for fit in points(rows)["fits"]] == [pytest.approx(-0.3)]


def test_the_sweep_figure_draws_means_left_out_runs_convergence_and_the_fit():
    rows = [_row(p, s, 0.5 + p / 4 + s / 50, loss=1.5 - p / 2) for p in (0.0, 0.01, 0.1, 1.0) for s in (0, 1)]
    rows.append(_row(0.1, 2, 0.9, status="stopped", steps=10))
    fig = sweep_figure(rows)
    names = [t.name for t in fig.data]
    assert "mean over seeds (95% t interval)" in names
    assert any(n.startswith("runs left out (status stopped") for n in names)
    assert sum(n.startswith("quadratic fit") for n in names) == 2  # accuracy and answer loss
    assert {"step of best accuracy", "step of best answer loss"} <= set(names)
    assert list(fig.layout.yaxis.range) == [0, 1.02]
    mean = next(t for t in fig.data if t.name == "mean over seeds (95% t interval)")
    assert list(mean.y) == pytest.approx([0.51, 0.5125, 0.535, 0.76])  # the stopped run is not in PLW 0.1's mean


def test_the_runs_tab_plw_plot_marks_runs_that_differ():
    def run(name, plw, steps, status):
        config = {
            "data": {"source": "builtin:reading-mc", "limit": 0, "val_size": 0.2, "val_source": "", "split_seed": 0},
            "train": {"prompt_loss_weight": plw, "max_steps": 40},
        }
        best = {"answer_accuracy": {"value": 0.5, "step": steps}, "completion_loss": {"value": 1.0, "step": steps}}
        return SimpleNamespace(
            name=name, config=config, summary={"status": status, "steps": steps, "best": best}, events=[]
        )

    runs = [run("a", 0.0, 40, "finished"), run("b", 0.1, 40, "finished"), run("c", 1.0, 10, "stopped")]
    assert odd_runs(runs) == {"c": "steps 10, status stopped"}
    fig = plw_sweep_figure(runs)
    hollow = [t for t in fig.data if "differs" in t.name]
    assert hollow and all("open" in t.marker.symbol for t in hollow)
    assert all("c (PLW 1)" not in (t.text or ()) for t in fig.data if "differs" not in t.name)


def test_the_app_runs_a_sweep_as_its_one_training_job(tmp_path):
    from plw_lab.app.jobs import JobBusy, JobRegistry
    from plw_lab.core.config import LabConfig
    from plw_lab.views.history import History

    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path),
            "train.max_steps": 1,
            "data.limit": 12,
            "data.val_size": 4,
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    registry = JobRegistry()
    job = registry.start(cfg, sweep=([0.0], [0, 1]))
    with pytest.raises(JobBusy):
        registry.start(cfg)  # one job at a time, a sweep included
    job.thread.join(timeout=600)
    rows = read_csv(job.sweep_dir)
    assert [(r["plw"], r["seed"], r["status"]) for r in rows] == [(0.0, 0, "finished"), (0.0, 1, "finished")]
    # Watchers of the job see the current run's curves, not the two runs strung together.
    history = History.from_events(job.events_since(0))
    assert history.run_dir.endswith("plw0-seed1") and [e["step"] for e in history.evals] == [0, 1]


def test_pruned_runs_are_drawn_hollow_and_never_join_the_means():
    rows = [_row(0.0, 0, 0.6), _row(0.0, 1, 0.2, status="pruned", steps=9), _row(1.0, 0, 0.5)]
    rows[1]["pruned_step"] = 8
    summary = points(rows)
    assert [(m["plw"], m["n"], m["mean"]) for m in summary["means"]] == [(0.0, 1, 0.6), (1.0, 1, 0.5)]
    assert [r["excluded"] for r in summary["runs"]] == ["", "pruned at step 8", ""]
    fig = sweep_figure(rows)
    hollow = [t for t in fig.data if t.name == "runs left out (pruned at step 8)"]
    assert len(hollow) == 2 and all(t.marker.symbol == "circle-open" for t in hollow)  # accuracy and loss
    convergence = next(t for t in fig.data if t.name == "step of best accuracy")
    assert list(convergence.marker.symbol) == ["circle", "circle-open", "circle"]


def test_the_ray_backend_without_ray_names_the_extra_and_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    import plw_lab.core
    from plw_lab.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as where Ray is not installed
    # Imported again even where an earlier test of this process imported it (test_sweep_ray.py).
    monkeypatch.delitem(sys.modules, "plw_lab.core.sweep_ray", raising=False)
    monkeypatch.delattr(plw_lab.core, "sweep_ray", raising=False)
    code = main(["sweep", "--model", "tiny-random", "--backend", "ray", "--output-dir", str(tmp_path), "--seeds", "0"])
    assert code == 2
    assert 'pip install "plw-lab[ray]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prune", "asha"], "sweep.prune asha needs sweep.backend ray"),
        (["--backend", "ray", "--prune", "asha", "--grace-steps", "40"], "sweep.grace_steps 40 must be below"),
        (["--backend", "dask"], "sweep.backend must be one of local, ray"),
        (["--backend", "ray", "--gpus-per-run", "-1"], "sweep.gpus_per_run must be at least 0"),
    ],
)
def test_sweep_settings_that_cannot_work_exit_2_before_any_run(tmp_path, capsys, flags, message):
    from plw_lab.cli import main

    assert main(["sweep", "--model", "tiny-random", "--output-dir", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_whose_runs_would_be_refused_leaves_no_sweep_folder(tmp_path, capsys):
    from plw_lab.cli import main

    args = ["sweep", "--model", "tiny-random", "--output-dir", str(tmp_path), "--plws", "0,1", "--seeds", "0"]
    assert main([*args, "--set", "lora.target_modules=q_proj,lm_head"]) == 2
    assert "lm_head" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_resume_finishes_only_the_runs_a_stopped_local_sweep_did_not(tmp_path, capsys):
    from plw_lab.cli import main
    from plw_lab.core.config import LabConfig
    from plw_lab.core.sweep import run_sweep

    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path),
            "train.max_steps": 1,
            "data.limit": 12,
            "data.val_size": 4,
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    stop = threading.Event()
    folder = run_sweep(cfg, [0.0], [0, 1], name="half", stop=stop, on_run=lambda row: stop.set())
    assert [(r["seed"], r["status"]) for r in read_csv(folder)] == [(0, "finished")]  # stopped between its runs
    first = (folder / "plw0-seed0" / "events.jsonl").read_text()
    assert main(["sweep", "--resume", str(folder), "--plws", "0,1"]) == 2  # the grid is the sweep's own
    assert "--resume finishes the sweep with its own grid and config; leave out --plws" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(folder)]) == 0
    rows = read_csv(folder)
    assert [(r["seed"], r["status"], r["steps"]) for r in rows] == [(0, "finished", 1), (1, "finished", 1)]
    assert (folder / "plw0-seed0" / "events.jsonl").read_text() == first  # the finished run was left alone
    assert load_run(rows[1]["run"]).config.train.seed == 1


TINY_SWEEP = [
    "--model",
    "tiny-random",
    "--max-steps",
    "1",
    "--set",
    "data.limit=12",
    "--set",
    "data.val_size=4",
    "--set",
    "eval.generations=0",
    "--set",
    "eval.probe_texts=0",
]


def test_a_grid_over_another_setting_writes_its_column_and_resumes_on_the_recorded_grid(tmp_path, capsys):
    from plw_lab.cli import main

    args = ["sweep", "--plws", "0", "--seeds", "0", "--grid", "train.completion_loss_weight=0.5,1", "--name", "wit"]
    assert main([*args, "--output-dir", str(tmp_path), *TINY_SWEEP]) == 0
    folder = tmp_path / "wit"
    header = (folder / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["plw", "seed", "train.completion_loss_weight"]
    rows = read_csv(folder)
    assert [(r["plw"], r["train.completion_loss_weight"], r["seed"], r["status"]) for r in rows] == [
        (0.0, 0.5, 0, "finished"),
        (0.0, 1.0, 0, "finished"),
    ]
    assert [load_run(r["run"]).config.train.completion_loss_weight for r in rows] == [0.5, 1.0]
    assert [load_run(r["run"]).name for r in rows] == [
        "plw0-completion_loss_weight0.5-seed0",
        "plw0-completion_loss_weight1-seed0",
    ]
    out = capsys.readouterr().out
    assert "PLW 0 x train.completion_loss_weight 0.5, 1 x seeds 0 = 2 runs" in out
    assert "PLW 0, train.completion_loss_weight 0.5: mean best answer accuracy" in out
    # Lose the second cell (its row and its folder): --resume trains it again from the recorded grid.
    first = (folder / "plw0-completion_loss_weight0.5-seed0" / "events.jsonl").read_text()
    csv_lines = (folder / "sweep.csv").read_text().splitlines()
    (folder / "sweep.csv").write_text("\n".join(csv_lines[:2]) + "\n")
    shutil.rmtree(rows[1]["run"])
    assert main(["sweep", "--resume", str(folder)]) == 0
    again = read_csv(folder)
    assert [(r["train.completion_loss_weight"], r["status"]) for r in again] == [(0.5, "finished"), (1.0, "finished")]
    assert load_run(again[1]["run"]).config.train.completion_loss_weight == 1.0
    assert (folder / "plw0-completion_loss_weight0.5-seed0" / "events.jsonl").read_text() == first


def test_a_config_carries_its_grid_and_arms_run_beside_it_at_every_seed(tmp_path, capsys):
    """sweep.plws, sweep.seeds, sweep.grid and sweep.arms in a config: `lab sweep --config FILE` alone runs
    the comparison; an arm (here a PLW schedule) is a cell beside the cross product, at every seed, with a
    column per setting it sets, and `--resume` finishes it from the recorded grid."""
    from plw_lab.cli import main

    config = tmp_path / "lesson.yaml"
    config.write_text(
        "sweep:\n  plws: [0]\n  seeds: [0]\n  grid: {train.completion_loss_weight: [1]}\n"
        "  arms:\n    - {train.prompt_loss_weight: 1, train.plw_schedule: linear, train.plw_end: 0}\n"
    )
    args = ["sweep", "--config", str(config), "--name", "lesson", "--output-dir", str(tmp_path), *TINY_SWEEP]
    assert main(args) == 0
    folder = tmp_path / "lesson"
    rows = read_csv(folder)
    assert [(r["plw"], r["train.plw_schedule"], r["train.plw_end"], r["seed"], r["status"]) for r in rows] == [
        (0.0, "constant", 0.0, 0, "finished"),
        (1.0, "linear", 0.0, 0, "finished"),
    ]
    assert [load_run(r["run"]).name for r in rows] == ["plw0-seed0", "plw1-plw_schedulelinear-plw_end0-seed0"]
    scheduled = load_run(rows[1]["run"]).config.train
    assert (scheduled.prompt_loss_weight, scheduled.plw_schedule, scheduled.plw_end) == (1.0, "linear", 0.0)
    out = capsys.readouterr().out
    assert "(PLW 0 + PLW 1\u21920 linear) x seeds 0 = 2 runs" in out
    row = "PLW {}, train.completion_loss_weight 1, seed 0: finished after 1 steps"
    assert row.format("0") in out and row.format("1\u21920 linear") in out  # the schedule read with its PLW
    shutil.rmtree(rows[1]["run"])
    (folder / "sweep.csv").write_text("\n".join((folder / "sweep.csv").read_text().splitlines()[:2]) + "\n")
    assert main(["sweep", "--resume", str(folder)]) == 0
    assert [r["status"] for r in read_csv(folder)] == ["finished", "finished"]
    assert load_run(read_csv(folder)[1]["run"]).config.train.plw_schedule == "linear"


def test_the_shipped_lesson_recipe_is_the_whole_lesson_and_flags_replace_its_values():
    from plw_lab.core.sweep import make_grid
    from plw_lab.views.text_views import grid_text

    cfg = LabConfig.load("plw-lesson")
    grid = make_grid(cfg)
    assert len(grid.cells()) == 12 and grid.seeds == [0, 1, 2]
    assert grid_text(grid) == "(PLW 0, 0.1, 1 + PLW 1\u21920 linear) x seeds 0, 1, 2"
    fewer = make_grid(cfg, "0,1", "5")  # --plws and --seeds replace the recipe's; its arm stays
    assert [(c["plw"], c["train.plw_schedule"], c["seed"]) for c in fewer.cells()] == [
        (0.0, "constant", 5),
        (1.0, "constant", 5),
        (1.0, "linear", 5),
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"arms": [{"train.seed": 3}]}, "leave train.seed out of it"),
        ({"plws": [1], "arms": [{"train.prompt_loss_weight": 1}]}, "is already a cell of the sweep"),
        ({"arms": [{"sweep.backend": "ray"}]}, "a sweep cannot vary sweep.backend"),
        ({"arms": [{"train.plw_schedul": "linear"}]}, "unknown setting 'train.plw_schedul'"),
        ({"arms": [{"train.plw_schedule": "sideways"}]}, "train.plw_schedule must be one of"),
        ({"arms": ["linear"]}, "sweep.arms lists cells, each a mapping"),
        ({"grid": {"train.learning_rate": 0.001}}, "sweep.grid maps a setting (SECTION.FIELD) to a list"),
    ],
)
def test_a_bad_grid_in_a_config_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, sweep, message):
    from plw_lab.cli import main

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"sweep": sweep}))
    out = tmp_path / "runs"
    assert main(["sweep", "--config", str(config), "--model", "tiny-random", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["--grid", "train.completion_los=0.5,1"], "unknown setting 'train.completion_los'"),
        (["--grid", "train.completion_loss_weight=0.5,x"], "train.completion_loss_weight: cannot read 'x' as float"),
        (["--grid", "train.completion_loss_weight=-1"], "train.completion_loss_weight must be at least 0.0"),
        (["--grid", "train.completion_loss_weight"], "expected SECTION.FIELD=VALUE"),
        (["--grid", "train.completion_loss_weight=1,1.0"], "train.completion_loss_weight lists 1.0 twice"),
        (["--grid", "train.output_dir=a,b"], "a sweep cannot vary train.output_dir"),
        (["--grid", "lora.target_modules=q_proj"], "a grid varies settings of one value each"),
        (["--grid", "prompt_loss_weight=0,1"], "train.prompt_loss_weight is varied twice"),
        # A cell that no run could train: PLW 0 with completion weight 0 weighs no token.
        (["--grid", "train.completion_loss_weight=0,1"], "PLW reaches 0 (train.prompt_loss_weight"),
    ],
)
def test_a_bad_grid_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, grid, message):
    from plw_lab.cli import main

    assert main(["sweep", "--model", "tiny-random", "--plws", "0", "--output-dir", str(tmp_path), *grid]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def _wit_rows():
    """A PLW x completion-weight grid of two seeds, accuracy = 0.5 + PLW / 4 - completion weight / 10 + seed / 100."""
    rows = []
    for plw in (0.0, 1.0):
        for weight in (0.25, 0.5, 0.75, 1.0):
            for seed in (0, 1):
                row = _row(plw, seed, 0.5 + plw / 4 - weight / 10 + seed / 100)
                rows.append({**row, "train.completion_loss_weight": weight, "train.plw_schedule": "constant"})
    return rows


def test_means_and_fits_group_by_every_varied_setting():
    rows = _wit_rows()
    assert varied(rows) == ["plw", "train.completion_loss_weight", "train.plw_schedule"]
    assert axes(rows) == ["plw", "train.completion_loss_weight"]  # text settings are series, never an axis
    by_plw = points(rows)
    assert len(by_plw["means"]) == 8 and all(m["n"] == 2 for m in by_plw["means"])
    mean = next(m for m in by_plw["means"] if (m["plw"], m["train.completion_loss_weight"]) == (1.0, 0.5))
    assert mean["mean"] == pytest.approx(0.5 + 0.25 - 0.05 + 0.005)
    assert by_plw["series"] == ["train.completion_loss_weight", "train.plw_schedule"]
    assert by_plw["fits"] == []  # two PLW values per series: too few for a parabola
    by_weight = points(rows, x="train.completion_loss_weight")
    assert [fit["series"] for fit in by_weight["fits"]] == [
        {"plw": 0.0, "train.plw_schedule": "constant"},
        {"plw": 1.0, "train.plw_schedule": "constant"},
    ]
    assert [fit["b"] for fit in by_weight["fits"]] == [pytest.approx(-0.1), pytest.approx(-0.1)]
    with pytest.raises(ValueError, match="x-axis is one of plw, train.completion_loss_weight"):
        points(rows, x="train.plw_schedule")


def test_the_sweep_figure_draws_any_varied_number_along_x_with_the_rest_as_series():
    rows = _wit_rows()
    by_weight = sweep_figure(rows, x="train.completion_loss_weight")
    assert (
        by_weight.layout.xaxis.title.text == "train.completion_loss_weight" and by_weight.layout.xaxis.type == "linear"
    )
    means = {t.name: list(t.x) for t in by_weight.data if "mean over seeds" in t.name}
    series = "mean over seeds (95% t interval)"  # a constant schedule reads as the PLW itself
    assert means == {f"PLW 0: {series}": [0.25, 0.5, 0.75, 1.0], f"PLW 1: {series}": [0.25, 0.5, 0.75, 1.0]}
    colours = {t.line.color for t in by_weight.data if "mean over seeds" in t.name}
    assert len(colours) == 2  # a colour per series
    by_plw = sweep_figure(rows)
    assert by_plw.layout.xaxis.type == "log" and by_plw.layout.xaxis.title.text.startswith("PLW")
    # A mean line per completion weight (x schedule), in the accuracy and in the loss panel.
    assert sum("mean over seeds" in t.name for t in by_plw.data) == 4 * 2


def test_ctrl_c_on_the_ray_backend_stops_every_trial_in_the_labs_words(tmp_path, monkeypatch, capsys):
    """Ray Tune stands in here (a real trial costs a minute): the lab's Ctrl-C ends its trials through
    `StopAll`, with Tune's own Ctrl-C handler and trial tracebacks switched off while it runs."""
    pytest.importorskip("ray")
    import os
    import signal

    from ray import cloudpickle

    from plw_lab.cli import main
    from plw_lab.core import sweep_ray

    seen = {}

    class Tuner:
        def __init__(self, trainable, param_space, tune_config, run_config):
            cloudpickle.dumps((param_space, tune_config, run_config))  # as Tune keeps them for Tuner.restore
            seen["cells"] = [cell["values"] for cell in param_space["cell"]["grid_search"]]
            self.stopper = run_config.stop

        def fit(self):
            seen["quiet"] = {key: os.environ.get(key) for key in sweep_ray.TUNE_QUIET}
            seen["before"] = self.stopper.stop_all()
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the trials train
            seen["after"] = self.stopper.stop_all()
            return []  # every trial stopped before its run began: no rows

    monkeypatch.setattr(sweep_ray.tune, "Tuner", Tuner)
    monkeypatch.setattr(sweep_ray.tune, "with_parameters", lambda trainable, **data: trainable)  # no object store
    monkeypatch.setattr(sweep_ray.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(sweep_ray.ray, "cluster_resources", lambda: {})
    grid = ["--plws", "0", "--seeds", "0", "--grid", "train.completion_loss_weight=0.5,1", "--name", "stopped"]
    code = main(["sweep", "--backend", "ray", *grid, "--output-dir", str(tmp_path), *TINY_SWEEP])
    out, err = capsys.readouterr()
    assert code == 130, err
    assert seen["cells"] == [
        {"plw": 0.0, "train.completion_loss_weight": 0.5, "seed": 0},
        {"plw": 0.0, "train.completion_loss_weight": 1.0, "seed": 0},
    ]
    assert seen["quiet"] == sweep_ray.TUNE_QUIET and not seen["before"] and seen["after"]
    assert not set(sweep_ray.TUNE_QUIET) & set(os.environ)  # Tune's switches are this sweep's only
    assert f"2 run(s) did not finish; finish them with: lab sweep --resume {tmp_path / 'stopped'}" in out
    assert "Tuner.restore" not in out + err and read_csv(tmp_path / "stopped") == []


def test_a_sweep_name_never_leaves_the_output_folder(tmp_path):
    from plw_lab.core.config import LabConfig
    from plw_lab.core.sweep import run_sweep

    cfg = LabConfig().override(
        {"model.name": "tiny-random", "train.output_dir": str(tmp_path / "runs"), "data.limit": 12, "data.val_size": 4}
    )
    stop = threading.Event()
    stop.set()  # the folder is made, no run starts
    for name in ("../../sweep-escape", "..", "/tmp/abs"):
        folder = run_sweep(cfg, [0.0], [0], name=name, stop=stop)
        assert folder.parent == tmp_path / "runs"
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names[:2] == ["-..-sweep-escape", "-tmp-abs"] and names[2].startswith("sweep-")  # '..': the default
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_cell_name_too_long_for_a_run_name_stays_unique():
    from plw_lab.core.sweep_table import MAX_CELL_NAME, cell_name

    long = lambda text: {"plw": 0.0, "data.prompt_template": "x" * 300 + text, "seed": 0}
    first, second = cell_name(long("a")), cell_name(long("b"))
    assert len(first) == len(second) == MAX_CELL_NAME and first != second
    assert cell_name({"plw": 0.1, "model.name": "org/model", "seed": 2}) == "plw0.1-nameorg-model-seed2"


def test_the_runs_tab_offers_an_x_axis_for_a_sweep_that_varies_more_than_plw(tmp_path):
    pytest.importorskip("gradio")
    from plw_lab.app.main import build_app
    from plw_lab.core.config import LabConfig
    from plw_lab.core.sweep_table import write_csv

    (tmp_path / "wit").mkdir()
    write_csv(tmp_path / "wit" / "sweep.csv", _wit_rows(), ["train.completion_loss_weight", "train.plw_schedule"])
    (tmp_path / "plain").mkdir()
    write_csv(tmp_path / "plain" / "sweep.csv", [_row(0.0, 0, 0.5), _row(1.0, 0, 0.6)])
    runs = build_app(LabConfig().override({"model.name": "tiny-random"}), runs_dir=tmp_path).plw_tabs["runs"]
    shown = runs.on_sweep_pick({runs.sweep_pick: "wit", runs.sweep_x: "train.completion_loss_weight"})
    figure, picker = shown[runs.sweep_figure], shown[runs.sweep_x]
    assert picker["visible"] and picker["value"] == "train.completion_loss_weight"
    assert picker["choices"] == [("PLW", "plw"), ("train.completion_loss_weight", "train.completion_loss_weight")]
    assert figure.layout.xaxis.title.text == "train.completion_loss_weight"
    shown = runs.on_sweep_pick({runs.sweep_pick: "plain", runs.sweep_x: "train.completion_loss_weight"})
    figure, picker = shown[runs.sweep_figure], shown[runs.sweep_x]  # not varied there: PLW
    assert not picker["visible"] and picker["value"] == "plw" and figure.layout.xaxis.title.text.startswith("PLW")
