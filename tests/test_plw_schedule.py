"""Adaptive PLW (`train.plw_schedule`): the formula, the weights the loss sees at each step, the
PLW recorded with every step, and resume in the middle of a schedule."""

import math
import threading
from types import SimpleNamespace

import pytest
import torch
from conftest import sum_examples

from plw_lab.core import events as ev
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.runs import load_run
from plw_lab.core.training import PLWTrainer, resume, train
from plw_lab.core.weights import plw_at, plw_range, plw_text


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # 5 steps from 1 to 0: progress 0, 1/4, 1/2, 3/4, 1.
        ("constant", [1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("cosine", [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0]),
        ("step", [1.0, 1.0, 0.0, 0.0, 0.0]),
    ],
)
def test_each_schedule_starts_at_the_plw_and_ends_at_plw_end(schedule, expected):
    assert [plw_at(schedule, 1.0, 0.0, step, 5) for step in range(5)] == pytest.approx(expected, abs=1e-12)


def test_a_rising_schedule_and_the_range_the_config_checks():
    assert [plw_at("linear", 0.0, 0.5, step, 3) for step in range(3)] == [0.0, 0.25, 0.5]
    assert plw_range("cosine", 0.2, 0.9) == (0.2, 0.9) and plw_range("constant", 0.2, 0.9) == (0.2, 0.2)
    assert plw_text("constant", 0.1, 0.0) == "0.1" and plw_text("linear", 1.0, 0.0) == "1\u21920 linear"
    with pytest.raises(ConfigError, match="PLW reaches 0"):
        LabConfig().override(
            {"train.completion_loss_weight": 0, "train.prompt_loss_weight": 1, "train.plw_schedule": "step"}
        )
    with pytest.raises(ConfigError, match="plw_schedule"):
        LabConfig().override({"train.plw_schedule": "exponential"})


def test_the_loss_weights_at_step_t_follow_the_schedule():
    """Hand-built masks: prompt tokens weigh PLW(t), completion tokens 1, the first token nothing."""
    cfg = LabConfig().override({"train.prompt_loss_weight": 1.0, "train.plw_end": 0.2, "train.plw_schedule": "linear"})
    batch = {"prompt_mask": torch.tensor([[1, 1, 1, 0, 0]]), "completion_mask": torch.tensor([[0, 0, 0, 1, 1]])}
    for step, plw in [(0, 1.0), (2, 0.6), (4, 0.2)]:
        trainer = SimpleNamespace(lab=cfg, state=SimpleNamespace(global_step=step, max_steps=5))
        trainer.plw = lambda s, t=trainer: PLWTrainer.plw(t, s)
        weights = PLWTrainer._weights(trainer, batch)  # shifted: the weight of predicting token i+1
        assert weights[0].tolist() == pytest.approx([plw, plw, 1.0, 1.0])


def _cfg(tmp_path, name, **overrides):
    return LabConfig().override(
        {
            "model.name": "tiny-random",
            "train.output_dir": str(tmp_path / "runs"),
            "train.run_name": name,
            "train.batch_size": 4,
            "train.max_steps": 6,
            "train.eval_interval": 3,
            "train.learning_rate": 1e-2,
            "lora.layers": "all",
            "eval.generations": 0,
            "eval.probe_texts": 0,
            **overrides,
        }
    )


def _steps(run_dir):
    return [e for e in load_run(run_dir).events if isinstance(e, ev.Step)]


def test_a_constant_schedule_trains_exactly_like_a_fixed_plw(tmp_path):
    data = sum_examples(16)
    fixed = train(_cfg(tmp_path, "fixed", **{"train.prompt_loss_weight": 0.3}), examples=data, compare=False)
    flat = train(
        _cfg(
            tmp_path, "flat", **{"train.prompt_loss_weight": 0.3, "train.plw_schedule": "linear", "train.plw_end": 0.3}
        ),
        examples=data,
        compare=False,
    )
    assert [s.train_loss for s in _steps(flat.run_dir)] == [s.train_loss for s in _steps(fixed.run_dir)]
    assert [s.plw for s in _steps(fixed.run_dir)] == [0.3] * 6


def test_a_schedule_resumed_mid_run_ends_like_an_uninterrupted_one(tmp_path):
    data = sum_examples(16)
    schedule = {"train.prompt_loss_weight": 1.0, "train.plw_end": 0.0, "train.plw_schedule": "linear"}
    whole = train(_cfg(tmp_path, "whole", **schedule), examples=data, compare=False)
    recorded = [s.plw for s in _steps(whole.run_dir)]
    assert recorded == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])

    stop = threading.Event()
    first = train(
        _cfg(tmp_path, "split", **schedule),
        subscribers=[lambda e: isinstance(e, ev.Step) and e.step == 2 and stop.set()],
        stop=stop,
        examples=data,
        compare=False,
    )
    assert first.status == "stopped" and first.summary["steps"] == 2
    resumed = resume(first.run_dir, examples=data, compare=False)
    assert resumed.status == "finished", resumed.summary
    split = _steps(resumed.run_dir)
    assert [s.plw for s in split] == pytest.approx(recorded)
    assert [s.train_loss for s in split] == pytest.approx([s.train_loss for s in _steps(whole.run_dir)], rel=1e-5)
    final = resumed.summary["final_eval"]
    assert final["completion_loss"] == pytest.approx(whole.summary["final_eval"]["completion_loss"], rel=1e-5)
    # The schedule changed what was trained: a constant PLW 1 run takes other steps after the first.
    constant = train(_cfg(tmp_path, "constant", **{"train.prompt_loss_weight": 1.0}), examples=data, compare=False)
    assert [s.train_loss for s in _steps(constant.run_dir)][1:] != [s.train_loss for s in split][1:]
