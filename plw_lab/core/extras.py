"""Features behind an optional extra of the package (`pip install "plw-lab[NAME]"`), and the one error
a missing extra raises, so every front door (the CLI, the app, the notebooks) names the same fix."""

from __future__ import annotations

import importlib.util

from plw_lab.core.config import ConfigError

#: Each extra of pyproject.toml's [project.optional-dependencies] that a feature checks for, and the
#: modules of it the lab imports.
EXTRAS = {
    "app": ("gradio", "plotly"),
    "demo": ("B3DB",),
    "probe": ("sklearn",),
    "ray": ("ray",),
}


class MissingExtraError(ConfigError):
    """A feature needs an extra that is not installed here; the message is the pip command."""


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it (B3DB's import alone reads 80 MB)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that is not a package, or a module blocked from import
        return False


def require(extra: str, feature: str) -> None:
    """Raise a `MissingExtraError` when a module of `extra` is not installed; `feature` says what needs it."""
    missing = [module for module in EXTRAS[extra] if not installed(module)]
    if missing:
        raise MissingExtraError(
            f'{feature} needs {missing[0]}, which is not installed here: pip install "plw-lab[{extra}]"'
        )
