"""Experiment tracking (`train.report_to`): the run's config and events sent to TensorBoard, Trackio or W&B.

The tracker subscribes to the lab's event bus like the app and the CLI do, so it receives what
they show: every training step's loss, learning rate, gradient norm and tokens/s, and every
validation metric of the metrics registry at each evaluation (step 0, the base model, included),
under `train/NAME` and `eval/NAME`. Each tracker gets the run's config when the run starts:
TensorBoard as hparams (its HParams tab compares runs by setting) and as text, Trackio and W&B
as the run's config. Trackers are optional packages: `check` refuses one that is not installed
before the run folder is made.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.events import Eval, Failed, Finished, Started, Step, Stopped
from plw_lab.core.metrics import METRICS

#: Each tracker and the packages that provide it, in the order they are tried.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",)}


def available() -> list[str]:
    """The trackers installed here."""
    return [name for name, packages in PACKAGES.items() if any(importlib.util.find_spec(p) for p in packages)]


def chosen(report_to: list[str]) -> list[str]:
    """The trackers `train.report_to` names, 'all' standing for every one installed here (as in transformers)."""
    return available() if "all" in report_to else list(dict.fromkeys(report_to))


def check(report_to: list[str]) -> None:
    installed = available()
    missing = [name for name in chosen(report_to) if name not in installed]
    if missing:
        raise ConfigError(
            f"train.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here "
            f"(pip install {' '.join(PACKAGES[name][0] for name in missing)}); installed trackers: "
            f"{', '.join(installed) or 'none'}. Set train.report_to: none to train without one."
        )


def _scalars(prefix: str, values: dict) -> dict[str, float]:
    return {
        f"{prefix}/{name}": float(value)
        for name, value in values.items()
        if name in METRICS and isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    }


def flat_config(cfg: LabConfig) -> dict[str, int | float | str | bool]:
    """The config as `{"train.prompt_loss_weight": 0.1, ...}`, lists and mappings as JSON text: TensorBoard's
    hparams take only plain values."""
    return {
        f"{section}.{name}": value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for section, settings in cfg.to_dict().items()
        for name, value in settings.items()
    }


class _TensorBoard:
    def __init__(self, cfg: LabConfig, run_dir: Path):
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        else:
            from tensorboardX import SummaryWriter
            from tensorboardX.summary import hparams
        import yaml

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        # SummaryWriter.add_hparams would write them to a sub-folder, a run of its own in TensorBoard; written
        # to the run's own event file, the HParams tab shows the config beside the run's eval scalars.
        metric_tags = {f"eval/{name}": 0.0 for name in METRICS if name != "train_loss"}
        for summary in hparams(flat_config(cfg), metric_tags):
            self.writer.file_writer.add_summary(summary)
        # Indented four spaces, the YAML is a code block in TensorBoard's markdown text tab.
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class _RunLogger:
    """Trackio or W&B: trackio mirrors wandb's init / log / finish."""

    def __init__(self, kind: str, cfg: LabConfig, run_dir: Path):
        self.module = importlib.import_module(kind)
        self.module.init(project="plw-lab", name=run_dir.name, config=cfg.to_dict())

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.module.log(scalars, step=step)

    def close(self) -> None:
        self.module.finish()


class Tracker:
    """An event subscriber that logs the run to every tracker `train.report_to` names."""

    def __init__(self, cfg: LabConfig, run_dir: Path):
        self.cfg, self.run_dir, self.kinds = cfg, Path(run_dir), chosen(cfg.train.report_to)
        self.loggers: list = []

    def _open(self) -> None:
        for kind in self.kinds:
            if kind == "tensorboard":
                self.loggers.append(_TensorBoard(self.cfg, self.run_dir))
            else:
                self.loggers.append(_RunLogger(kind, self.cfg, self.run_dir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        if scalars:
            for logger in self.loggers:
                logger.log(scalars, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def __call__(self, event) -> None:
        if isinstance(event, Started):
            self._open()
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
