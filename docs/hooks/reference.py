"""mkdocs hook: the reference pages are written from the code at every build, so they cannot drift from it.

- reference/config.md: every setting of `LabConfig`, from `plw_lab.core.config.field_specs` (default, type,
  bounds or choices, and the help text each field carries where it is defined);
- reference/metrics.md: every metric of `plw_lab.core.metrics.METRICS` (label, unit, direction, interval);
- reference/cli.md: `lab --help` and every `lab COMMAND --help`, as the parsers print them.
"""

from __future__ import annotations

import contextlib
import io
import os

from mkdocs.structure.files import File

SECTIONS = ("model", "data", "lora", "train", "eval")


def _cell(text) -> str:
    """Text for one markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(value) -> str:
    if value == "" or value == {} or value == [] or (isinstance(value, str) and "\n" in value):
        return f"`{value!r}`"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _allowed(spec: dict) -> str:
    if spec.get("choices"):
        return ", ".join(f"`{c}`" for c in spec["choices"])
    low, high = spec.get("min"), spec.get("max")
    if low is not None and high is not None:
        return f"{low:g} to {high:g}"
    if low is not None:
        return f"at least {low:g}"
    if high is not None:
        return f"at most {high:g}"
    return ""


def config_page() -> str:
    from plw_lab.core.config import field_specs, recipe_names

    lines = [
        "# Config reference",
        "",
        "Every setting of a run, generated from the help each field carries in `plw_lab/core/config.py`",
        "(`field_specs`), where its default is defined. A config file is YAML or JSON with these sections;",
        "`lab config` prints the full config, `--set SECTION.FIELD=VALUE` changes one setting on any command,",
        "and `--config NAME` also takes a recipe shipped with the lab: "
        + ", ".join(f"`{name}`" for name in recipe_names())
        + ".",
        "",
        "```yaml",
        "train:",
        "  prompt_loss_weight: 0.1",
        "  max_steps: 60",
        "```",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## `{section}`", "", "| setting | default | allowed | what it does |", "| --- | --- | --- | --- |"]
        for spec in field_specs(section):
            lines.append(
                f"| `{section}.{spec['name']}` | {_cell(_default(spec['default']))} | {_cell(_allowed(spec))} "
                f"| {_cell(spec.get('help', ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def metrics_page() -> str:
    from plw_lab.core.metrics import METRICS

    direction = {True: "higher", False: "lower", None: "-"}
    lines = [
        "# Metrics reference",
        "",
        "Every metric the lab logs, generated from the registry in `plw_lab/core/metrics.py`: the key in",
        "`events.jsonl` and `summary.json`, its label in charts and tables, its unit, which direction is better,",
        "whether it can drive early stopping (`train.early_stopping_metric`) and the key of its 95% interval.",
        "What the numbers mean and how sure they are: [Metrics and how sure they are](../metrics.md).",
        "",
        "| key | label | unit | better | stopping | interval | what it measures |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in METRICS.values():
        lines.append(
            f"| `{m.name}` | {_cell(m.label)} | {m.unit} | {direction[m.higher_is_better]} "
            f"| {'yes' if m.stopping else ''} | {f'`{m.interval}`' if m.interval else ''} | {_cell(m.help)} |"
        )
    return "\n".join(lines) + "\n"


def _help_text(run) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        run()
    return out.getvalue().rstrip()


def cli_page() -> str:
    from plw_lab import cli
    from plw_lab.app.main import parse_args

    commands = [c for c in cli.EXAMPLES if c != "app"]
    lines = [
        "# CLI reference",
        "",
        "Generated from the `lab` command's own parsers (`plw_lab/cli.py`). `python -m plw_lab` is the same",
        "command. Every option that names a setting is a shortcut for `--set SECTION.FIELD=VALUE`; the settings",
        "are in the [config reference](config.md).",
        "",
        "## `lab`",
        "",
        "```text",
        _help_text(lambda: cli.main(["--help"])),
        "```",
        "",
    ]
    for name in commands:
        lines += [f"## `lab {name}`", "", "```text", _help_text(lambda n=name: cli.main([n, "--help"])), "```", ""]
    lines += [
        "## `lab app`",
        "",
        "The app's options; `python app.py` (the Hugging Face Space's entry point) takes the same ones.",
        "",
        "```text",
        _help_text(lambda: parse_args(["--help"], prog="lab app")),
        "```",
        "",
    ]
    return "\n".join(lines)


PAGES = {"reference/config.md": config_page, "reference/metrics.md": metrics_page, "reference/cli.md": cli_page}


def on_files(files, config):
    # argparse wraps its help to the terminal width: a fixed width gives the same page on every machine.
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        for uri, page in PAGES.items():
            files.append(File.generated(config, uri, content=page()))
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return files
