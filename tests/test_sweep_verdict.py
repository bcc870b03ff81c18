"""The sweep verdict on hand-built runs: arms from the varied settings, the stopping contrast pooled
over seeds, paired differences between arms, and sentences that claim no more than the tests."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from plw_lab.core.config import LabConfig
from plw_lab.core.events import Eval
from plw_lab.core.sweep_verdict import holm, sweep_verdict, varied_settings

N = 40


def _eval(step, full, answer, right, prompt=2.0):
    return Eval(
        step=step,
        epoch=0.0,
        metrics={
            "full_loss": full,
            "answer_loss": answer,
            "prompt_loss": prompt,
            "answer_accuracy": right / N,
            "answer_accuracy_ci": [0.0, 1.0],
            "n_examples": N,
        },
        correct="1" * right + "0" * (N - right),
    )


def _run(settings: dict, seed: int, curve):
    cfg = LabConfig().override({**settings, "train.seed": seed, "train.run_name": f"r{seed}"})
    return SimpleNamespace(config=cfg, evals=[_eval(*point) for point in curve], path=Path(f"/runs/{seed}"), summary={})


# PLW 0: full-sequence loss best at step 0 (20/40 right), answer loss best at step 20 (36-38/40 right).
def _plw0(seed):
    return _run({"train.prompt_loss_weight": 0.0}, seed, [(0, 3.0, 1.0, 20, 3.0), (20, 4.0, 0.5, 36 + seed, 4.5)])


# PLW 1: both losses best at the end, at about the same accuracy as PLW 0 (within a few examples).
def _plw1(seed):
    return _run({"train.prompt_loss_weight": 1.0}, seed, [(0, 3.0, 1.0, 20, 3.0), (20, 1.0, 0.6, 37 - seed, 1.2)])


RUNS = [_plw0(s) for s in range(3)] + [_plw1(s) for s in range(3)]


def test_arms_are_the_settings_that_vary_seeds_aside():
    configs = [
        {"train.seed": 0, "train.prompt_loss_weight": 0.0, "lora.r": 8},
        {"train.seed": 1, "train.prompt_loss_weight": 1.0, "lora.r": 8},
    ]
    assert varied_settings(configs) == ["train.prompt_loss_weight"]
    assert [a["arm"] for a in sweep_verdict(RUNS)["arms"]] == ["PLW 0", "PLW 1"]


def test_the_stopping_contrast_pools_every_seed_example_by_example():
    plw0 = sweep_verdict(RUNS)["arms"][0]
    assert plw0["kept_steps"] == [20, 20, 20] and plw0["full_loss_steps"] == [0, 0, 0]
    assert plw0["kept_accuracy"] == pytest.approx([36 / 40, 37 / 40, 38 / 40])
    assert plw0["full_loss"]["mean"] == 0.5
    # 16 + 17 + 18 examples right only under the answer-loss adapter, none the other way.
    test = plw0["stopping_test"]
    assert (test["n"], test["a_only"], test["b_only"]) == (120, 0, 51)
    assert test["p_value"] == pytest.approx(2 * 0.5**51)
    assert plw0["prompt_loss_first"]["mean"] == 3.0 and plw0["prompt_loss_last"]["mean"] == 4.5


def test_arms_within_a_few_examples_are_not_called_different():
    pair = sweep_verdict(RUNS)["pairs"][0]
    assert (pair["first"], pair["second"]) == ("PLW 0", "PLW 1")
    # Per seed: 36-37, 37-36, 38-35 right: differences -1, +1, +3 examples of 40.
    assert pair["difference"]["mean"] == pytest.approx(1 / 40)
    assert pair["supported"] is False
    sentences = sweep_verdict(RUNS)["sentences"]
    assert any("PLW 0 vs PLW 1: +2.5 points" in s and "cannot be told apart" in s for s in sentences)
    assert any(
        "Stopping on full-sequence loss instead keeps step 0, 0, 0 and 50.0%" in s and "beyond noise" in s
        for s in sentences
    )


def test_a_large_consistent_gap_is_called_real():
    worse = [_run({"train.prompt_loss_weight": 1.0}, s, [(0, 3.0, 1.0, 20), (20, 1.0, 0.9, 21 + s)]) for s in range(3)]
    pair = sweep_verdict([_plw0(s) for s in range(3)] + worse)["pairs"][0]
    assert pair["difference"]["low"] > 0 and pair["supported"] is True


def test_holm_adjusts_the_smallest_p_by_the_family_size_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_a_schedule_is_its_own_arm():
    runs = [
        _plw0(0),
        _run(
            {"train.prompt_loss_weight": 1.0, "train.plw_schedule": "linear"},
            0,
            [(0, 3.0, 1.0, 20), (20, 2.0, 0.5, 30)],
        ),
    ]
    assert [a["arm"] for a in sweep_verdict(runs)["arms"]] == ["PLW 0", "PLW 1\u21920 linear"]


def test_lab_verdict_reads_a_sweep_or_the_measured_lesson_through_the_api(tmp_path, monkeypatch, capsys):
    from conftest import fake_lesson, fake_sweep

    from plw_lab import api
    from plw_lab.cli import main

    fake_sweep(tmp_path / "mine", plws=(0.0,), seeds=(0, 1))
    assert main(["verdict", str(tmp_path / "mine")]) == 0
    out = capsys.readouterr().out
    assert "what 2 finished run(s) support:" in out and "all runs: stopping on answer loss keeps" in out
    monkeypatch.setattr(api, "SHIPPED_LESSON", tmp_path / "absent")
    assert main(["verdict"]) == 2
    assert "no measured real-data lesson (absent/measured.json is missing)" in capsys.readouterr().err
    monkeypatch.setattr(api, "SHIPPED_LESSON", fake_lesson(tmp_path / "plw-lesson"))
    lesson = api.lesson()
    assert [run.name for run in lesson.runs] == ["plw0-seed0", "plw0-seed1", "plw1-seed0", "plw1-seed1"]
    assert lesson.verdict == api.sweep_verdict_of(tmp_path / "plw-lesson" / "sweep-plw-lesson").verdict
    assert main(["verdict"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "The real-data PLW lesson shipped with the lab, measured on real data (B3DB molecules), 2025-01-02, "
        "commit abc1234, 2-core test CPU; reproduce it with:\n  lab sweep --config plw-lesson"
    )
    assert "what 4 finished run(s) support:\nPLW 0: stopping on answer loss" in out
    (tmp_path / "empty").mkdir()
    assert main(["verdict", str(tmp_path / "empty")]) == 2
    assert "no finished runs in empty yet" in capsys.readouterr().err


def test_the_shipped_lesson_is_what_the_recipe_runs():
    """The measured runs in the wheel are the cells of `lab sweep --config plw-lesson`, with the recipe's
    settings, and their measurement says so: the page, the app and `lab verdict` show what a user reruns."""
    from plw_lab import api
    from plw_lab.core.sweep import make_grid
    from plw_lab.core.sweep_verdict import NOT_ARMS, PLW_FIELDS, flatten

    lesson = api.lesson()
    recipe = LabConfig.load("plw-lesson")
    cells = [(c["plw"], c["train.plw_schedule"], c["train.plw_end"], c["seed"]) for c in make_grid(recipe).cells()]
    shipped = [(t.prompt_loss_weight, t.plw_schedule, t.plw_end, t.seed) for t in (r.config.train for r in lesson.runs)]
    assert sorted(shipped) == sorted(cells) and len(cells) == 12
    same = lambda config: {
        k: v for k, v in flatten(config.to_dict()).items() if k not in (*NOT_ARMS, *PLW_FIELDS) and "sweep." not in k
    }
    assert all(same(run.config) == same(recipe) for run in lesson.runs)
    assert "lab sweep --config plw-lesson --name plw-lesson" in lesson.measured["commands"]
    assert [a["arm"] for a in lesson.verdict["arms"]] == ["PLW 0", "PLW 0.1", "PLW 1", "PLW 1\u21920 linear"]
