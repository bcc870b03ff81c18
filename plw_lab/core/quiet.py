"""Third-party progress bars only on a terminal.

transformers draws a "Loading weights" bar, huggingface_hub its download bars and datasets its own
while a data set is read or converted. In a log file, a pipe or the app's captured stderr each redraw
is a line of noise, so while stderr is not a terminal they are switched off with each library's own
switch, and back on afterwards. A user who set the library's environment variable has the last word:
the libraries give it priority, and so does the lab.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def _off_unless_terminal(is_on: Callable[[], bool], off, on, env_var: str) -> Iterator[None]:
    if sys.stderr.isatty() or os.environ.get(env_var) is not None or not is_on():
        yield
        return
    off()
    try:
        yield
    finally:
        on()


def model_loading_bars():
    """transformers' bars (weights, and through it huggingface_hub's downloads) off while stderr is no terminal."""
    from transformers.utils import logging

    return _off_unless_terminal(
        logging.is_progress_bar_enabled,
        logging.disable_progress_bar,
        logging.enable_progress_bar,
        "HF_HUB_DISABLE_PROGRESS_BARS",
    )


def dataset_bars():
    """datasets' bars (reading, converting, saving) off while stderr is no terminal."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    return _off_unless_terminal(
        lambda: not are_progress_bars_disabled(),
        disable_progress_bars,
        enable_progress_bars,
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
    )
