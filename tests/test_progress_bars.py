"""Third-party progress bars (transformers' "Loading weights", datasets' own) stay off the log when stderr
is not a terminal, come back afterwards, and stay as they are on a terminal or where the user's
environment variable decides."""

import sys

from plw_lab.core.config import ModelConfig
from plw_lab.core.quiet import dataset_bars, model_loading_bars


def test_loading_a_model_draws_no_bar_into_a_log(capfd, tiny_dir):
    from transformers.utils import logging

    from plw_lab.core.models import load_model

    load_model(ModelConfig(name="tiny-random", device="cpu"))
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()  # switched back on for whoever loads next


def test_on_a_terminal_the_bars_stay(monkeypatch):
    from datasets.utils import are_progress_bars_disabled
    from transformers.utils import logging

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with model_loading_bars(), dataset_bars():
        assert not logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    assert logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with model_loading_bars(), dataset_bars():
        assert logging.is_progress_bar_enabled() and not are_progress_bars_disabled()


def test_the_users_environment_variable_wins(monkeypatch):
    from transformers.utils import logging

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    with model_loading_bars():
        assert logging.is_progress_bar_enabled()
