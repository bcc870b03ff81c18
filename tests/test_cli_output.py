"""What the `lab` command prints: colour only on a terminal, a progress bar naming every phase,
a metrics table, its version and examples in every --help."""

from __future__ import annotations

import io
import re

import pytest

from plw_lab import __version__
from plw_lab.cli import main

ESC = "\033["


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_no_colour_codes_when_the_output_is_not_a_terminal(data_file, capsys):
    assert main(["inspect", "--model", "tiny-random", "--data", str(data_file), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out
    assert re.search(r"\[[^\]]+\]", out)  # completion tokens are bracketed instead of coloured


def test_colour_on_a_terminal_unless_no_color_is_set(data_file, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["inspect", "--model", "tiny-random", "--data", str(data_file), "-n", "1"]) == 0
    assert ESC + "1m" + ESC + "32m" in terminal.getvalue()  # completion in bold green
    plain = Terminal()
    monkeypatch.setattr("sys.stdout", plain)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["inspect", "--model", "tiny-random", "--data", str(data_file), "-n", "1"]) == 0
    assert ESC not in plain.getvalue() and "example 0" in plain.getvalue()


def test_errors_are_plain_text_off_a_terminal(capsys):
    assert main(["inspect", "--plw", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.prompt_loss_weight must be at most 1.0") and ESC not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"lab {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


@pytest.mark.parametrize("command", ["train", "eval", "compare", "inspect", "config"])
def test_every_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert 2 <= sum(line.lstrip().startswith(("lab ", "NO_COLOR=1 lab ")) for line in examples) <= 3


def test_train_shows_its_phases_then_eval_prints_a_table(data_file, tmp_path, monkeypatch, capsys):
    bar = Terminal()
    monkeypatch.setattr("sys.stderr", bar)
    code = main(
        [
            "train",
            "--model",
            "tiny-random",
            "--data",
            str(data_file),
            "--max-steps",
            "2",
            "--output-dir",
            str(tmp_path / "runs"),
            "--set",
            "train.run_name=bar",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.eval_interval=1",
            "--set",
            "eval.generations=1",
            "--set",
            "eval.probe_texts=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    drawn = bar.getvalue()
    for phase in (
        "loading the model and the data",
        "evaluating the base model (step 0)",
        "evaluating at step 1",
        "comparing adapter on and off",
        "finished",
    ):
        assert phase in drawn, phase
    assert "2/2 steps" in drawn and "ETA" in drawn and "elapsed" in drawn
    assert "finished at step 2" in out  # the events are still printed, above the bar

    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: phases become lines, no bar
    assert (
        main(
            [
                "train",
                "--model",
                "tiny-random",
                "--data",
                str(data_file),
                "--max-steps",
                "1",
                "--output-dir",
                str(tmp_path / "runs"),
                "--set",
                "train.run_name=log",
                "--set",
                "train.batch_size=4",
                "--set",
                "eval.generations=0",
                "--set",
                "eval.probe_texts=0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "\u2026 evaluating the base model (step 0)" in out and "\u2026 comparing adapter on and off" in out

    assert main(["eval", str(tmp_path / "runs" / "bar")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("adapter: ") and "(step 2)" in lines[0]  # which adapter the numbers are of
    assert re.match(r"metric\s+adapter off\s+adapter on$", lines[2])
    assert any(re.match(r"val completion loss\s+\d+\.\d{4}\s+\d+\.\d{4}$", line) for line in lines)
    assert "{" not in out  # no raw dicts


def test_a_reader_that_stops_early_gets_no_traceback(data_file):
    """`lab inspect | head -0`: the reader has gone before the lab prints its first line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "plw_lab", "inspect", "--model", "tiny-random", "--data", str(data_file), "-n", "3"]
    lab = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.stdout.close()  # the lab takes seconds to load, so every line it prints meets a closed pipe
    err = lab.stderr.read().decode()
    assert lab.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err
