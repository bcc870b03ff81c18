"""Experiment tracking (`train.report_to`): the run's config and every evaluation metric reach each
tracker, not only the training loss; `report_to` takes a list and 'all' as in transformers; a tracker
that is not installed is refused before the run folder exists. The trackers are stand-in modules with
the real packages' API (TensorBoard's SummaryWriter and hparams; trackio's and wandb's init / log /
finish), so the tests need none of them installed; where tensorboard is installed, its event file is
read back too."""

import importlib.machinery
import json
import sys
import types

import pytest

from plw_lab.core import tracking
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.events import Eval, Finished, Started, Step
from plw_lab.core.metrics import METRICS


def fake_module(monkeypatch, name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_a_tracker_that_is_not_installed_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    from plw_lab.core.training import train

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = LabConfig().override(
        {"model.name": "tiny-random", "train.report_to": "wandb", "train.output_dir": str(tmp_path / "runs")}
    )
    with pytest.raises(ConfigError, match=r"train.report_to: wandb is not installed here \(pip install wandb\)"):
        train(cfg)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(
        ConfigError, match="train.report_to lists 'mlflow'; each entry must be one of all, tensorboard, trackio, wandb"
    ):
        LabConfig().override({"train.report_to": "mlflow"})


def test_report_to_takes_one_name_a_list_all_or_none(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  report_to: [tensorboard, trackio]\n")
    assert LabConfig.load(path).train.report_to == ["tensorboard", "trackio"]
    path.write_text("report_to: wandb\n")  # transformers' single string, in a flat transformers-style file
    assert LabConfig.load(path).train.report_to == ["wandb"]
    assert LabConfig().override({"train.report_to": "tensorboard,wandb"}).train.report_to == ["tensorboard", "wandb"]
    assert LabConfig().override({"train.report_to": "none"}).train.report_to == []
    assert LabConfig().train.report_to == []
    # 'all' is every tracker installed here, and no error where none is.
    installed = {"trackio", "wandb"}
    monkeypatch.setattr(
        tracking.importlib.util,
        "find_spec",
        lambda name, *a: importlib.machinery.ModuleSpec(name, None) if name in installed else None,
    )
    assert tracking.chosen(["all"]) == ["trackio", "wandb"]
    tracking.check(["all"])
    installed.clear()
    assert tracking.chosen(["all"]) == []
    tracking.check(["all"])
    with pytest.raises(
        ConfigError, match=r"tensorboard, wandb are not installed here \(pip install tensorboard wandb\)"
    ):
        tracking.check(["tensorboard", "wandb"])


def test_tensorboard_gets_the_config_and_train_and_every_eval_scalar(tmp_path, monkeypatch):
    writers, hparams_calls = [], []

    class FileWriter:
        def __init__(self):
            self.summaries = []

        def add_summary(self, summary):
            self.summaries.append(summary)

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir, self.scalars, self.texts, self.closed = log_dir, [], [], False
            self.file_writer = FileWriter()
            writers.append(self)

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def add_text(self, tag, text):
            self.texts.append((tag, text))

        def close(self):
            self.closed = True

    def hparams(hparam_dict, metric_dict):
        hparams_calls.append((hparam_dict, metric_dict))
        return ("experiment", "session start", "session end")

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    fake_module(monkeypatch, "tensorboardX", SummaryWriter=SummaryWriter)
    fake_module(monkeypatch, "tensorboardX.summary", hparams=hparams)
    cfg = LabConfig().override({"train.report_to": "tensorboard", "train.prompt_loss_weight": "0.1"})
    tracker = tracking.Tracker(cfg, tmp_path / "run")
    metrics = {
        "prompt_loss": 3.5,
        "completion_loss": 1.25,
        "full_loss": 3.0,
        "token_accuracy": 0.5,
        "answer_accuracy": 0.75,
        "majority_baseline": 0.25,
        "n_examples": 8,
        "predicted": {"A": 6, "B": 2},
        "answer_accuracy_ci": [0.4, 0.9],
    }
    for event in (
        Started(run_dir=str(tmp_path / "run"), config={}, n_train=8, n_val=8, total_steps=1),
        Eval(step=0, epoch=0.0, metrics=metrics),
        Step(
            step=1,
            epoch=1.0,
            learning_rate=1e-3,
            train_loss=2.5,
            grad_norm=None,
            tokens_per_second=100.0,
            tokens_seen=80,
            elapsed=1.0,
            total_steps=1,
        ),
        Eval(step=1, epoch=1.0, metrics={**metrics, "completion_loss": float("nan")}),
        Finished(step=1, summary={}),
    ):
        tracker(event)
    (writer,) = writers
    assert writer.log_dir == str(tmp_path / "run" / "tensorboard") and writer.closed
    # The config as hparams, in the run's own event file, with the eval scalars as the HParams tab's metrics.
    ((hparam_dict, metric_dict),) = hparams_calls
    assert hparam_dict["train.prompt_loss_weight"] == 0.1 and hparam_dict["model.name"] == "embedded"
    assert hparam_dict["lora.target_modules"] == json.dumps(cfg.lora.target_modules)
    assert len(hparam_dict) == sum(len(section) for section in cfg.to_dict().values())
    assert {"eval/answer_accuracy", "eval/completion_loss"} <= set(metric_dict)
    assert writer.file_writer.summaries == ["experiment", "session start", "session end"]
    ((tag, text),) = writer.texts
    assert tag == "config" and "    train:\n" in text and "    prompt_loss_weight: 0.1\n" in text
    assert writer.scalars == [
        ("eval/prompt_loss", 3.5, 0),
        ("eval/completion_loss", 1.25, 0),
        ("eval/full_loss", 3.0, 0),
        ("eval/token_accuracy", 0.5, 0),
        ("eval/answer_accuracy", 0.75, 0),
        ("eval/majority_baseline", 0.25, 0),
        ("train/loss", 2.5, 1),
        ("train/learning_rate", 1e-3, 1),
        ("train/tokens_per_second", 100.0, 1),
        # NaN (a metric with nothing to measure) is left out rather than drawn as a gap in every chart.
        ("eval/prompt_loss", 3.5, 1),
        ("eval/full_loss", 3.0, 1),
        ("eval/token_accuracy", 0.5, 1),
        ("eval/answer_accuracy", 0.75, 1),
        ("eval/majority_baseline", 0.25, 1),
    ]


def test_a_training_run_logs_every_evaluation_to_trackio_and_wandb(tmp_path, monkeypatch):
    from plw_lab.core.training import train

    calls, wandb_calls = [], []
    for name, record in (("trackio", calls), ("wandb", wandb_calls)):
        fake_module(
            monkeypatch,
            name,
            init=lambda record=record, **kw: record.append(("init", kw)),
            log=lambda values, step, record=record: record.append(("log", step, values)),
            finish=lambda record=record: record.append(("finish",)),
        )
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "data.limit": 24,
            "train.max_steps": 2,
            "train.eval_interval": 1,
            "train.report_to": "trackio,wandb",
            "train.output_dir": str(tmp_path),
            "train.run_name": "tracked",
            "eval.generations": 0,
            "eval.probe_texts": 0,
        }
    )
    result = train(cfg)
    assert result.status == "finished"
    assert calls[0] == ("init", {"project": "plw-lab", "name": "tracked", "config": result_config(result)})
    assert calls[-1] == ("finish",)
    logged = [c for c in calls if c[0] == "log"]
    evals = {step: values for _, step, values in logged if any(k.startswith("eval/") for k in values)}
    assert sorted(evals) == [0, 1, 2]
    # Every registry metric of every evaluation, as the run's own event log has it.
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    for event in (e for e in events if e["type"] == "eval"):
        expected = {
            f"eval/{name}": value
            for name, value in event["metrics"].items()
            if name in METRICS and isinstance(value, (int, float)) and value == value
        }
        assert {"eval/answer_accuracy", "eval/completion_loss", "eval/prompt_loss"} <= set(expected)
        assert evals[event["step"]] == pytest.approx(expected), event["step"]
    assert [step for _, step, values in logged if "train/loss" in values] == [1, 2]
    assert wandb_calls == calls  # each tracker of the list gets the same config and values


def test_tensorboard_event_file_holds_the_config_as_hparams(tmp_path):
    pytest.importorskip("tensorboard", reason="reads a real event file: needs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = LabConfig().override({"train.report_to": "tensorboard", "train.prompt_loss_weight": "0.1"})
    tracker = tracking.Tracker(cfg, tmp_path)
    tracker(Started(run_dir=str(tmp_path), config={}, n_train=8, n_val=8, total_steps=1))
    tracker(Eval(step=0, epoch=0.0, metrics={"answer_accuracy": 0.75}))
    tracker(Finished(step=0, summary={}))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["train.prompt_loss_weight"].number_value == 0.1
    assert hparams["model.name"].string_value == "embedded"
    assert hparams["train.restore_best"].number_value == 1  # torch writes a bool as a number
    assert "prompt_loss_weight: 0.1" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert [(s.step, s.value) for s in events.Scalars("eval/answer_accuracy")] == [(0, 0.75)]


def result_config(result) -> dict:
    return LabConfig.load(result.run_dir / "config.yaml").to_dict()
