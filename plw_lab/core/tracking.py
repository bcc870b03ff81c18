"""Experiment tracking (`train.report_to`): the run's events sent to TensorBoard, Trackio or W&B.

The tracker subscribes to the lab's event bus like the app and the CLI do, so it receives what
they show: every training step's loss, learning rate, gradient norm and tokens/s, and every
validation metric of the metrics registry at each evaluation (step 0, the base model, included),
under `train/NAME` and `eval/NAME`. Trackers are optional packages: `check` refuses one that is
not installed before the run folder is made.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.events import Eval, Failed, Finished, Started, Step, Stopped
from plw_lab.core.metrics import METRICS

#: Each tracker and the packages that provide it, in the order they are tried.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",)}


def available() -> list[str]:
    """The trackers installed here."""
    return [name for name, packages in PACKAGES.items() if any(importlib.util.find_spec(p) for p in packages)]


def check(report_to: str) -> None:
    if report_to != "none" and report_to not in available():
        raise ConfigError(
            f"train.report_to: {report_to} is not installed here (pip install {PACKAGES[report_to][0]}); "
            f"installed trackers: {', '.join(available()) or 'none'}. Set train.report_to: none to train without one."
        )


def _scalars(prefix: str, values: dict) -> dict[str, float]:
    return {
        f"{prefix}/{name}": float(value)
        for name, value in values.items()
        if name in METRICS and isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    }


class Tracker:
    """An event subscriber that logs scalars to one experiment tracker."""

    def __init__(self, cfg: LabConfig, run_dir: Path):
        self.cfg, self.run_dir, self.kind = cfg, Path(run_dir), cfg.train.report_to
        self.writer = None  # a TensorBoard SummaryWriter, or the trackio / wandb module

    def _open(self) -> None:
        if self.kind == "tensorboard":
            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter
            else:
                from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            return
        module = importlib.import_module(self.kind)  # trackio mirrors wandb's init / log / finish
        module.init(project="plw-lab", name=self.run_dir.name, config=self.cfg.to_dict())
        self.writer = module

    def log(self, scalars: dict[str, float], step: int) -> None:
        if not scalars:
            return
        if self.kind == "tensorboard":
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        else:
            self.writer.log(scalars, step=step)

    def close(self) -> None:
        if self.writer is None:
            return
        if self.kind == "tensorboard":
            self.writer.close()
        else:
            self.writer.finish()
        self.writer = None

    def __call__(self, event) -> None:
        if isinstance(event, Started):
            self._open()
        elif self.writer is None:
            return
        elif isinstance(event, Step):
            scalars = {
                "train/loss": event.train_loss,
                "train/learning_rate": event.learning_rate,
                "train/tokens_per_second": event.tokens_per_second,
            }
            if event.grad_norm is not None:
                scalars["train/grad_norm"] = event.grad_norm
            self.log(scalars, event.step)
        elif isinstance(event, Eval):
            self.log(_scalars("eval", event.metrics), event.step)
        elif isinstance(event, (Finished, Stopped, Failed)):
            self.close()
