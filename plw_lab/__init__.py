"""PLW Lab: supervised fine-tuning with a visible, tunable prompt-loss weight."""

from plw_lab.core.version import __version__

__all__ = ["__version__"]
