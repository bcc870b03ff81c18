"""PLW Lab: supervised fine-tuning with a visible, tunable prompt-loss weight.

    import plw_lab
    cfg = plw_lab.LabConfig().override({"train.prompt_loss_weight": 0.1, "train.max_steps": 60})
    result = plw_lab.train(cfg)
    run = plw_lab.load_run(result.run_dir)
    print(plw_lab.compare(run)["on"]["metrics"]["answer_accuracy"])

The public API is `plw_lab.api`'s services and the config; the names below load on first use, so
`import plw_lab` (and `lab --version`) stays fast and has no side effects.
"""

from plw_lab.core.version import __version__

_API = {
    "train",
    "resume",
    "evaluate",
    "compare",
    "probe",
    "load_run",
    "data_report",
    "example_outputs",
    "prompt_outputs",
    "per_token_losses",
    "sweep",
    "resume_sweep",
    "lesson",
    "sweep_verdict_of",
    "Lesson",
    "LoadedRun",
    "DataReport",
    "StopRequest",
    "TrainResult",
}
_CONFIG = {"LabConfig", "ConfigError"}

__all__ = ["__version__", *sorted(_API), *sorted(_CONFIG)]


def __getattr__(name: str):
    if name in _API:
        from plw_lab import api

        return getattr(api, name)
    if name in _CONFIG:
        from plw_lab.core import config

        return getattr(config, name)
    raise AttributeError(f"module 'plw_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
