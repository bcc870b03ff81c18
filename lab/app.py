"""The PLW Lab web app: Data, Train, Compare and Runs tabs over the lab engine.

`build_app()` returns a Gradio Blocks app and has no side effects until it is launched. The
process keeps one `JobRegistry` (one training job at a time; every visitor can watch it, and a
reloaded page re-attaches to it) and one `RunModels` cache (the model of the run being compared,
shared by visitors and used under a lock). Everything a visitor loads (their data, the run they
compare) lives in `gr.State`, so visitors never see each other's choices.

The controls of the Train tab are built from `lab.config.field_specs`: defaults, bounds, choices
and help texts all come from the config dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from . import views
from .packing import packing_efficiency
from .config import ConfigError, DataConfig, LabConfig, field_specs
from .data import DataError

#: Largest file a visitor may upload (Gradio rejects bigger ones before they reach the lab).
MAX_UPLOAD = "50mb"
#: Examples encoded for the statistics and the token view (the first N of the set).
STATS_LIMIT = 2000
UPLOAD_TYPES = [".jsonl", ".json", ".csv", ".parquet", ".ndjson"]
#: Lab fields a column can be mapped to, by format.
MAPPABLE = {
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
    "multiple_choice": ("context", "question", "options", "answer"),
    "classification": ("text", "label"),
}
ALL_MAPPABLE = ("prompt", "completion", "messages", "context", "question", "options", "answer", "text", "label")
MODEL_CHOICES = ["embedded", "tiny-random"]
POLL_SECONDS = 0.5
MINUS_INF, INF = "\u2212\u221e", "\u221e"

# Settings that are not a plain control in the Train tab: the PLW slider is its own bar, the data
# source is chosen in the Data tab, the output folder is fixed by whoever launched the app, and a
# web page never turns on remote code execution.
SPECIAL = {"train.prompt_loss_weight", "data.source", "data.format", "data.column_map", "data.hf_config", "data.hf_split"}
HIDDEN = {"train.output_dir", "model.trust_remote_code"}
TRAIN_LAYOUT = {
    "Essentials": [
        "model.name",
        "train.loss_normalization",
        "train.learning_rate",
        "train.epochs",
        "train.max_steps",
        "train.batch_size",
        "train.grad_accum",
        "data.max_length",
        "train.eval_interval",
    ],
    "Early stopping": ["train.early_stopping_metric", "train.patience", "train.restore_best"],
    "LoRA": ["lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.layers"],
}
#: Data options shown in the Data tab (they change how records become examples and tokens).
DATA_OPTIONS = ["data.val_size", "data.limit", "data.train_eos", "data.system_prompt", "data.mc_template",
                "data.classification_template", "data.answer_format"]

CSS = """
#plw-header h1{margin:0;font-size:1.6em}
#plw-header p{margin:2px 0 0;color:#4b5563}
#plw-bar{border:1px solid #fed7aa;background:#fff7ed;border-radius:10px;padding:6px 10px;align-items:center}
#plw-presets button{min-width:0}
.plw-msg-error{border:1px solid #fecaca;background:#fef2f2;color:#991b1b;border-radius:8px;padding:8px 12px;white-space:pre-wrap}
.plw-msg-ok{border:1px solid #bbf7d0;background:#f0fdf4;color:#166534;border-radius:8px;padding:8px 12px}
.plw-msg-info{border:1px solid #bfdbfe;background:#eff6ff;color:#1e3a8a;border-radius:8px;padding:8px 12px}
.plw-advice{border:1px solid #fde68a;background:#fffbeb;color:#92400e;border-radius:8px;padding:8px 12px;font-size:13px}
.plw-advice ul{margin:4px 0 0 18px;padding:0}
.plw-badge{display:inline-block;border-radius:999px;padding:2px 10px;font-size:12px;font-weight:600}
.plw-progress-msg{margin-top:6px;font-size:13px;color:#374151;white-space:pre-wrap}
.plw-run{font-size:12px;color:#6b7280;font-family:ui-monospace,monospace}
.plw-side-title{font-weight:600;margin-bottom:4px}
"""


def _theme():
    return gr.themes.Soft(
        primary_hue="orange",
        secondary_hue="blue",
        neutral_hue="slate",
        # local fonts only: the app must render without reaching a font CDN
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


# -- messages ----------------------------------------------------------------------------------


def message_html(text: str, kind: str = "error") -> str:
    if not text:
        return ""
    return f'<div class="plw-msg-{kind}" data-kind="{kind}">{html.escape(text)}</div>'


def advice_html(items: list[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{html.escape(a)}</li>" for a in items)
    return f'<div class="plw-advice"><b>Advice</b><ul>{lis}</ul></div>'


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (ConfigError, DataError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# -- process-level objects ------------------------------------------------------------------------


class JobBusy(RuntimeError):
    """A training job is already running in this process."""


class TrainingJob:
    """One training run in a background thread; its events accumulate for any number of watchers."""

    def __init__(self, cfg: LabConfig, examples=None):
        self.id = uuid.uuid4().hex[:8]
        self.cfg = cfg
        self.examples = examples
        self.stop = threading.Event()
        self.events: list = []
        self._lock = threading.Lock()
        self.result = None
        self.error = ""
        self.created = time.time()
        self.thread = threading.Thread(target=self._run, name=f"plw-train-{self.id}", daemon=True)

    def _collect(self, event) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        from .events import Failed

        try:
            from .training import train

            self.result = train(self.cfg, subscribers=[self._collect], stop=self.stop, examples=self.examples)
        except BaseException as exc:  # train() reports its own failures; this catches what escapes it
            self.error = _error_text(exc)
            self._collect(Failed(step=0, error=self.error, summary={"status": "failed", "error": self.error}))
            traceback.print_exc()

    def start(self) -> "TrainingJob":
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def events_since(self, cursor: int) -> list:
        with self._lock:
            return self.events[cursor:]

    def n_events(self) -> int:
        with self._lock:
            return len(self.events)

    @property
    def run_dir(self) -> str:
        from .events import Started

        for event in self.events_since(0):
            if isinstance(event, Started):
                return event.run_dir
        return ""


class JobRegistry:
    """The process's training jobs: at most one runs at a time; the latest is kept for watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: TrainingJob | None = None

    def start(self, cfg: LabConfig, examples=None) -> TrainingJob:
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy("A training job is already running in this app; watch it in the Train tab or stop it first.")
            self.current = TrainingJob(cfg, examples).start()
            return self.current

    def stop(self) -> bool:
        job = self.current
        if job is None or not job.running:
            return False
        job.stop.set()
        return True

    def running(self) -> TrainingJob | None:
        job = self.current
        return job if job is not None and job.running else None


@dataclass
class LoadedRun:
    """A run's model with its adapter, ready for comparisons (use it under `lock`)."""

    path: Path
    config: LabConfig
    model: Any
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    val: list | None = None
    comparison: dict | None = None
    token_losses: dict = field(default_factory=dict)


class RunModels:
    """Keeps the model of one run loaded for the Compare tab; shared by visitors, loaded on demand."""

    def __init__(self, registry: JobRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._loaded: LoadedRun | None = None
        self._tokenizers: dict[str, Any] = {}

    def tokenizer(self, model_name: str):
        from .config import ModelConfig
        from .models import load_tokenizer

        with self._lock:
            if model_name not in self._tokenizers:
                self._tokenizers[model_name] = load_tokenizer(ModelConfig(name=model_name))
            return self._tokenizers[model_name]

    def get(self, run_path: Path) -> LoadedRun:
        from .runs import load_run

        run_path = Path(run_path).resolve()
        with self._lock:
            if self._loaded is not None and self._loaded.path == run_path:
                return self._loaded
            job = self.registry.current
            if job is not None and job.running and job.run_dir and Path(job.run_dir).resolve() == run_path:
                raise RuntimeError("this run is still training; compare it when it has finished or been stopped")
            result = job.result if job is not None and not job.running else None
            if result is not None and result.model is not None and Path(result.run_dir).resolve() == run_path:
                loaded = LoadedRun(run_path, job.cfg, result.model, result.tokenizer)
                loaded.val = result.data.val if result.data else None
                loaded.comparison = result.comparison
            else:
                from .models import load_adapter, load_model, load_tokenizer, pick_device

                run = load_run(run_path)
                if run.config is None:
                    raise RuntimeError(f"{run.name}: its config.yaml cannot be read by this version of the lab")
                adapter_dir = run.adapter_dir()
                if adapter_dir is None:
                    raise RuntimeError(f"{run.name} has no saved adapter (it may have failed before training started)")
                device = pick_device(run.config.model.device)
                base = load_model(run.config.model, device)
                model = load_adapter(base, adapter_dir)
                model.eval()
                loaded = LoadedRun(run_path, run.config, model, load_tokenizer(run.config.model))
                loaded.comparison = run.comparison()
            self._loaded = loaded
            return loaded

    def forget(self, run_path: Path) -> None:
        with self._lock:
            if self._loaded is not None and self._loaded.path == Path(run_path).resolve():
                self._loaded = None


# -- per-visitor data state ---------------------------------------------------------------------


@dataclass
class DataView:
    """What a visitor loaded in the Data tab."""

    data: dict  # DataConfig as a dict (source, format, column_map and options)
    model_name: str
    examples: list
    encoded: dict  # source_index -> Encoded, for the first STATS_LIMIT examples
    skipped: list
    total: int
    info: dict
    columns: list
    fmt: str

    def example_indices(self) -> list[int]:
        return sorted(self.encoded)


# -- model helpers (torch; used by the Compare tab) ---------------------------------------------


def choice_logprobs(model, tokenizer, prompt: str, choices) -> dict[str, float]:
    """Log-probability of each candidate answer's first token right after `prompt` (a rendered prompt)."""
    import torch

    from .evaluation import device_of, eval_mode
    from .forward import final_hidden, output_layer

    if not choices:
        return {}
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    choice_ids = []
    for choice in choices:
        full = tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]
        if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            choice_ids.append(full[len(prompt_ids)])
        else:
            choice_ids.append(tokenizer(choice, add_special_tokens=False)["input_ids"][0])
    device = device_of(model)
    ids = torch.tensor([prompt_ids], device=device)
    weight, bias = output_layer(model)
    with eval_mode(model):
        hidden = final_hidden(model, ids, torch.ones_like(ids))
        logits = torch.nn.functional.linear(hidden[0, -1], weight, bias).float()
        logprobs = torch.log_softmax(logits, -1)
    return {c: float(logprobs[i]) for c, i in zip(choices, choice_ids)}


def user_prompt(tokenizer, text: str, system_prompt: str = "") -> str:
    from .masks import render

    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": text}]
    return render(tokenizer, messages, add_generation_prompt=True)


# -- the app ------------------------------------------------------------------------------------


def _first_sentence(text: str, limit: int = 160) -> str:
    """The start of a help text for a control's info line: whole sentences up to about `limit` characters."""
    import re

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


def _spec_index() -> dict[str, dict]:
    out = {}
    for section in ("model", "data", "lora", "train", "eval"):
        for spec in field_specs(section):
            out[f"{section}.{spec['name']}"] = {**spec, "section": section}
    names = [spec["name"] for spec in out.values()]
    for spec in out.values():
        spec["shared_name"] = names.count(spec["name"]) > 1
    return out


def _value(cfg: LabConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _make_control(key: str, spec: dict, value):
    """One Gradio control for a config field, from its metadata."""
    name = spec["name"]
    label = name.replace("_", " ")
    if spec.get("shared_name"):  # e.g. train.batch_size and eval.batch_size
        label = f"{spec['section']} {label}"
    info = _first_sentence(spec.get("help", ""))
    kind = spec["type"]
    elem_id = "cfg-" + key.replace(".", "-").replace("_", "-")
    if "min" in spec or "max" in spec:
        low, high = spec.get("min"), spec.get("max")
        info += f" Range: {low if low is not None else MINUS_INF} to {high if high is not None else INF}."
    if key == "model.name":
        choices = list(dict.fromkeys(MODEL_CHOICES + [value]))
        return gr.Dropdown(choices=choices, value=value, label="model", info=info, allow_custom_value=True, elem_id=elem_id)
    if kind == "bool":
        return gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id)
    if spec.get("choices"):
        return gr.Dropdown(choices=list(spec["choices"]), value=value, label=label, info=info, elem_id=elem_id)
    if kind == "list":
        choices = list(dict.fromkeys(list(spec["default"]) + list(value) + ["all-linear"]))
        return gr.Dropdown(choices=choices, value=list(value), multiselect=True, allow_custom_value=True, label=label,
                           info=info, elem_id=elem_id)
    if kind in ("int", "float"):
        step = 1 if kind == "int" else (10 ** _floor_log10(spec["default"]) if spec["default"] else 0.01)
        return gr.Number(value=value, label=label, info=info, precision=0 if kind == "int" else None, step=step,
                         elem_id=elem_id)
    lines = 3 if "\n" in str(value) or len(str(value)) > 60 else 1
    return gr.Textbox(value=value, label=label, info=info, lines=lines, elem_id=elem_id)


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _floor_log10(x: float) -> int:
    import math

    return math.floor(math.log10(abs(x))) if x else -2


def _coerce_control(key: str, spec: dict, value):
    if value is None:
        raise ConfigError(f"{key} is empty; {_first_sentence(spec.get('help', ''))}")
    if spec["type"] == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key} must be a whole number; got {value}")
        return int(value)
    if spec["type"] == "float":
        return float(value)
    if spec["type"] == "list":
        return list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
    return value


def build_app(
    config: LabConfig | None = None,
    runs_dir: str | Path | None = None,
    title: str = "PLW Lab",
) -> gr.Blocks:
    """The lab's Gradio app. `config` gives the starting values (defaults: `LabConfig()`); `runs_dir`
    is where runs are written and listed (default: the config's `train.output_dir`)."""
    base = config or LabConfig()
    runs_path = Path(runs_dir or base.train.output_dir).expanduser().resolve()
    base = base.override({"train.output_dir": str(runs_path)})
    registry = JobRegistry()
    models = RunModels(registry)

    def _packing(encoded, max_length):
        return packing_efficiency([len(e) for e in encoded], max_length, base.train.batch_size)

    specs = _spec_index()

    try:
        from . import builtin as builtin_sets

        builtin_names = list(builtin_sets.BUILTIN_SETS)
    except Exception:  # the built-in sets are optional for the app; files still work
        builtin_sets, builtin_names = None, []
    default_source = base.data.source
    default_builtin = default_source.removeprefix("builtin:") if default_source.startswith("builtin:") else None
    if default_builtin not in builtin_names:
        default_builtin = builtin_names[0] if builtin_names else None

    def builtin_description(name: str | None) -> str:
        if not name or builtin_sets is None or name not in builtin_sets.BUILTIN_SETS:
            return ""
        spec = builtin_sets.BUILTIN_SETS[name]
        labels = f" Labels: {', '.join(spec.labels)}." if getattr(spec, "labels", None) else ""
        return f"**{name}** ({spec.format.replace('_', ' ')}): {spec.description}{labels}"

    def list_runs():
        from .runs import list_runs as _list

        return _list(runs_path)

    def find_run(name: str | None):
        if not name:
            raise ValueError("choose a run first")
        for run in list_runs():
            if run.name == name:
                return run
        raise ValueError(f"no run named {name!r} in {runs_path}")

    with gr.Blocks(title=title, analytics_enabled=False, fill_width=True) as demo:
        data_state = gr.State(None)
        known_runs = gr.State(None)  # the run names this visitor has been shown (new ones join the overlay)
        # The id of the job this page watches: setting it (page load, Start, or the timer noticing a job
        # started elsewhere) starts streaming that job's events into the Train tab.
        seen_job = gr.State(None)
        job_timer = gr.Timer(3.0)

        with gr.Row(elem_id="plw-header"):
            gr.Markdown(
                f"# {html.escape(title)}\n"
                "Supervised fine-tuning where the **prompt-loss weight** is a knob you can see: each token's loss "
                "weight is PLW \u00d7 prompt_mask + completion_mask.",
            )
            job_badge = gr.HTML("", elem_id="job-badge")

        plw_spec = specs["train.prompt_loss_weight"]
        with gr.Row(elem_id="plw-bar"):
            plw = gr.Slider(
                minimum=plw_spec.get("min", 0.0),
                maximum=plw_spec.get("max", 1.0),
                value=base.train.prompt_loss_weight,
                step=0.001,
                label="Prompt-loss weight (PLW)",
                info=_first_sentence(plw_spec["help"], 200),
                elem_id="plw",
                scale=4,
            )
            with gr.Column(scale=2, min_width=260):
                gr.Markdown("Presets")
                with gr.Row(elem_id="plw-presets"):
                    preset_buttons = [
                        (p, gr.Button(f"{p:g}", size="sm", elem_id=f"plw-preset-{p:g}".replace(".", "_")))
                        for p in plw_spec.get("presets", (0.0, 0.01, 0.1, 0.5, 1.0))
                    ]

        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------------------- Data
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        with gr.Tabs(elem_id="source-tabs"):
                            with gr.Tab("Built-in", id="src-builtin"):
                                builtin_dd = gr.Dropdown(
                                    choices=builtin_names, value=default_builtin, label="Built-in set",
                                    info="Offline data sets shipped with the lab.", elem_id="builtin-set",
                                )
                                builtin_md = gr.Markdown(builtin_description(default_builtin), elem_id="builtin-desc")
                                load_builtin_btn = gr.Button("Load built-in set", variant="primary", elem_id="load-builtin",
                                                             interactive=False)  # enabled once the page has loaded
                            with gr.Tab("Upload file", id="src-file"):
                                upload = gr.File(label="JSONL, JSON, CSV or Parquet (at most 50 MB)", file_types=UPLOAD_TYPES,
                                                 type="filepath", elem_id="upload")
                                load_file_btn = gr.Button("Load file", variant="primary", elem_id="load-file", interactive=False)
                            with gr.Tab("Hub dataset", id="src-hub"):
                                hub_id = gr.Textbox(label="Hugging Face dataset id", placeholder="ehovy/race",
                                                    info="Needs the internet; offline the lab says so.", elem_id="hub-id")
                                with gr.Row():
                                    hub_config = gr.Textbox(label="config", value=base.data.hf_config,
                                                            info=_first_sentence(specs["data.hf_config"]["help"]))
                                    hub_split = gr.Textbox(label="split", value=base.data.hf_split)
                                load_hub_btn = gr.Button("Load hub dataset", variant="primary", elem_id="load-hub", interactive=False)
                        fmt = gr.Dropdown(choices=list(specs["data.format"]["choices"]), value=base.data.format,
                                          label="format", info=_first_sentence(specs["data.format"]["help"], 200),
                                          elem_id="data-format")
                        with gr.Accordion("Column mapping (when your column names differ)", open=False, elem_id="mapping"):
                            gr.Markdown("Pick which of your columns holds each lab field; leave '(same name)' where the names already match.")
                            mapping = {
                                f: gr.Dropdown(choices=["(same name)"], value="(same name)", label=f, elem_id=f"map-{f}",
                                               allow_custom_value=True)
                                for f in ALL_MAPPABLE
                            }
                        with gr.Accordion("Data options", open=False):
                            data_controls = {k: _make_control(k, specs[k], _value(base, k)) for k in DATA_OPTIONS}
                        data_msg = gr.HTML("", elem_id="data-msg")
                    with gr.Column(scale=2):
                        stats_md = gr.Markdown("Load a data set to see its statistics.", elem_id="data-stats")
                        rg_plot = gr.Plot(views.empty_figure("R<sub>g</sub> histogram"), label="Generation ratio", elem_id="rg-plot")
                        with gr.Row():
                            len_plot = gr.Plot(views.empty_figure("token lengths"), label="Token lengths", elem_id="len-plot")
                            label_plot = gr.Plot(views.empty_figure("label balance"), label="Label balance", elem_id="label-plot")
                gr.Markdown("### Token view\nEach token as the model sees it through its chat template, coloured by its "
                            "loss weight at the current PLW. Hover a token for its text, id, label and weight.")
                with gr.Row():
                    example_idx = gr.Slider(0, 1, value=0, step=1, label="Example", elem_id="example-idx", scale=3)
                    colour_by = gr.Radio(
                        ["loss weight", "loss: adapter on", "loss: adapter off", "loss: on \u2212 off"],
                        value="loss weight", label="Colour by",
                        info="The loss views use the run chosen in the Compare tab.", elem_id="colour-by", scale=2,
                    )
                token_view = gr.HTML("", elem_id="token-view")
                with gr.Accordion("Examples", open=True, elem_id="preview-acc"):
                    preview = gr.Dataframe(label="First examples", interactive=False, wrap=True, elem_id="preview")

            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=340):
                        train_controls: dict[str, Any] = {}
                        placed = set(SPECIAL) | set(HIDDEN) | set(DATA_OPTIONS)
                        for group, keys in TRAIN_LAYOUT.items():
                            with gr.Accordion(group, open=group == "Essentials"):
                                for key in keys:
                                    train_controls[key] = _make_control(key, specs[key], _value(base, key))
                                    placed.add(key)
                        rest = [k for k in specs if k not in placed]
                        with gr.Accordion("Advanced", open=False):
                            for section, heading in (("train", "Training"), ("model", "Model"), ("lora", "LoRA"),
                                                     ("eval", "Evaluation and comparison"), ("data", "Data")):
                                keys = [k for k in rest if specs[k]["section"] == section]
                                if keys:
                                    gr.Markdown(f"**{heading}**")
                                for key in keys:
                                    train_controls[key] = _make_control(key, specs[key], _value(base, key))
                        with gr.Accordion("All settings explained", open=False):
                            gr.Markdown(views.settings_help_markdown({s: field_specs(s) for s in ("model", "data", "lora", "train", "eval")}))
                    with gr.Column(scale=2):
                        with gr.Row():
                            start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                        train_msg = gr.HTML("", elem_id="train-msg")
                        progress = gr.HTML(views.progress_html(views.History()), elem_id="progress")
                        advice_box = gr.HTML("", elem_id="advice")
                        loss_plot = gr.Plot(views.loss_figure(views.History()), label="Loss", elem_id="loss-plot")
                        with gr.Row():
                            acc_plot = gr.Plot(views.accuracy_figure(views.History()), label="Accuracy", elem_id="acc-plot")
                            dist_plot = gr.Plot(views.predicted_distribution_figure(views.History()), label="Predicted answers",
                                                elem_id="dist-plot")

            # ---------------------------------------------------------------- Compare
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                with gr.Row():
                    compare_run = gr.Dropdown(choices=[], value=None, label="Run", info="Runs with a saved adapter, newest first.",
                                              elem_id="compare-run", scale=3)
                    compare_refresh = gr.Button("\u21bb Refresh", size="sm", scale=0, min_width=100)
                    compare_btn = gr.Button("Compare adapter on vs off", variant="primary", elem_id="compare-btn", scale=1)
                compare_msg = gr.HTML("", elem_id="compare-msg")
                with gr.Row():
                    compare_table = gr.Dataframe(label="Validation metrics and forgetting probe", interactive=False,
                                                 elem_id="compare-table", scale=3, wrap=True,
                                                 column_widths=["40%", "20%", "20%", "20%"])
                    compare_dist = gr.Plot(views.empty_figure("Predicted answers, adapter on vs off"), label="Predicted answers",
                                           elem_id="compare-dist", scale=2)
                compare_gens = gr.HTML("", elem_id="compare-gens")
                gr.Markdown("### One validation example")
                with gr.Row():
                    val_idx = gr.Slider(0, 1, value=0, step=1, label="Validation example", elem_id="val-idx", scale=3)
                    val_btn = gr.Button("Show", elem_id="val-show", scale=0, min_width=100)
                with gr.Row(equal_height=True):
                    with gr.Column():
                        gr.HTML('<div class="plw-side-title">Adapter off (base model)</div>')
                        gen_off = gr.Textbox(label="greedy generation, adapter off", lines=3, elem_id="gen-off", interactive=False)
                    with gr.Column():
                        gr.HTML('<div class="plw-side-title">Adapter on (fine-tuned)</div>')
                        gen_on = gr.Textbox(label="greedy generation, adapter on", lines=3, elem_id="gen-on", interactive=False)
                with gr.Row():
                    lp_plot = gr.Plot(views.empty_figure("Answer log-probabilities"), label="Answer log-probabilities", elem_id="lp-plot")
                loss_mode = gr.Radio(["on", "off", "diff"], value="diff", label="Per-token loss: adapter on, off, or on \u2212 off",
                                     elem_id="loss-mode")
                val_tokens = gr.HTML("", elem_id="val-tokens")
                gr.Markdown("### Your prompt")
                with gr.Row():
                    own_prompt = gr.Textbox(label="Prompt (sent as a user turn through the chat template)", lines=3,
                                            elem_id="own-prompt", scale=4)
                    own_btn = gr.Button("Generate both", elem_id="own-btn", scale=1)
                with gr.Row(equal_height=True):
                    own_off = gr.Textbox(label="adapter off (base model)", lines=3, elem_id="own-off", interactive=False)
                    own_on = gr.Textbox(label="adapter on (fine-tuned)", lines=3, elem_id="own-on", interactive=False)
                own_lp = gr.Plot(views.empty_figure("Answer log-probabilities for your prompt"), label="Answer log-probabilities",
                                 elem_id="own-lp")

            # ---------------------------------------------------------------- Runs
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                with gr.Row():
                    runs_refresh = gr.Button("\u21bb Refresh", size="sm", elem_id="runs-refresh", scale=0, min_width=100)
                    gr.Markdown(f"Runs are read from `{runs_path}`.")
                runs_table = gr.Dataframe(label="Runs", interactive=False, wrap=True, elem_id="runs-table")
                with gr.Row():
                    overlay_runs = gr.Dropdown(choices=[], value=[], multiselect=True, label="Runs to overlay",
                                               info="e.g. a PLW sweep", elem_id="overlay-runs", scale=3)
                    overlay_metric = gr.Dropdown(
                        choices=[("val completion loss", "completion_loss"), ("val answer accuracy", "answer_accuracy"),
                                 ("val prompt loss", "prompt_loss"), ("val full-sequence loss", "full_loss"),
                                 ("val token accuracy", "token_accuracy"), ("train loss", "train_loss")],
                        value="completion_loss", label="metric", elem_id="overlay-metric", scale=1,
                    )
                with gr.Row():
                    overlay_plot = gr.Plot(views.overlay_figure([]), label="Curves", elem_id="overlay-plot")
                    sweep_plot = gr.Plot(views.plw_sweep_figure([]), label="Best metrics against PLW", elem_id="sweep-plot")
                with gr.Row():
                    run_pick = gr.Dropdown(choices=[], value=None, label="Run", elem_id="run-pick", scale=2)
                    zip_btn = gr.Button("Download adapter (.zip)", elem_id="zip-btn", scale=1)
                    confirm_delete = gr.Checkbox(label="yes, delete it", value=False, elem_id="confirm-delete", scale=1)
                    delete_btn = gr.Button("Delete run", variant="stop", elem_id="delete-btn", scale=1)
                zip_file = gr.File(label="Adapter", visible=False, elem_id="zip-file", interactive=False)
                runs_msg = gr.HTML("", elem_id="runs-msg")
                with gr.Accordion("Run details", open=False):
                    run_details = gr.JSON(label="config and summary", elem_id="run-details")

        # ================================================================ handlers
        mapping_fields = list(mapping)
        mapping_inputs = [mapping[f] for f in mapping_fields]
        data_keys = list(data_controls)
        data_inputs = [data_controls[k] for k in data_keys]
        train_keys = list(train_controls)
        train_inputs = [train_controls[k] for k in train_keys]

        def column_map_from(values) -> dict:
            return {f: v for f, v in zip(mapping_fields, values) if v and v != "(same name)"}

        def data_config(source: str, fmt_value: str, map_values, option_values, train_values, hf_cfg="",
                        hf_split_="train") -> DataConfig:
            overrides = {"data.source": source, "data.format": fmt_value, "data.column_map": column_map_from(map_values),
                         "data.hf_config": hf_cfg or "", "data.hf_split": hf_split_ or "train"}
            for key, value in zip(data_keys, option_values):
                overrides[key] = _coerce_control(key, specs[key], value)
            for key, value in zip(train_keys, train_values):
                if key.startswith("data."):
                    overrides[key] = _coerce_control(key, specs[key], value)
            return base.override(overrides).data

        def model_name_now(train_values) -> str:
            return str(dict(zip(train_keys, train_values)).get("model.name") or base.model.name)

        n_map, n_opt = len(mapping_inputs), len(data_inputs)

        def split_inputs(args):
            maps = args[:n_map]
            opts = args[n_map:n_map + n_opt]
            trains = args[n_map + n_opt:]
            return maps, opts, trains

        def load_data(source: str, fmt_value: str, plw_value: float, args, hf_cfg="", hf_split_="train"):
            """Read, convert and encode a data set; every problem becomes a message, never a crash."""
            from .data import read_records, to_examples
            from .masks import encode_all

            maps, opts, trains = split_inputs(args)
            no_change = [gr.update()] * 6
            mapping_updates = [gr.update() for _ in mapping_fields]
            try:
                dcfg = data_config(source, fmt_value, maps, opts, trains, hf_cfg, hf_split_)
                records, info = read_records(dcfg)
            except (DataError, ConfigError) as exc:
                gr.Warning(str(exc))
                return (gr.update(), message_html(str(exc)), *no_change, gr.update(), *mapping_updates)
            except Exception as exc:  # a damaged file may raise anything
                gr.Warning(_error_text(exc))
                return (gr.update(), message_html(f"Could not read {source}: {_error_text(exc)}"), *no_change, gr.update(), *mapping_updates)
            columns = sorted({k for r in records[:200] for k in r} | set(dcfg.column_map.values()))
            mapping_updates = [
                gr.update(choices=["(same name)"] + columns, value=dcfg.column_map.get(f, "(same name)"))
                for f in mapping_fields
            ]
            try:
                fmt_used = dcfg.format if dcfg.format != "auto" else info.get("format") or _detect(records[0])
                examples = to_examples(records, dataclasses.replace(dcfg, format=fmt_used), info.get("labels"))
            except DataError as exc:
                text = f"{exc}\nColumns found: {', '.join(columns)}"
                gr.Warning(str(exc))
                raw = [{k: str(v)[:80] for k, v in r.items()} for r in records[:20]]
                empty = views.empty_figure("map the columns, then load again")
                return (None, message_html(text),
                        f"Read {len(records)} records with columns {', '.join(columns)}, but they could not be turned into "
                        "examples: choose the format and map the columns, then load again. The first records are below.",
                        empty, empty, empty, gr.update(maximum=1, value=0), _frame(raw), gr.update(), *mapping_updates)
            model_name = model_name_now(trains)
            try:
                tokenizer = models.tokenizer(model_name)
                encoded, skipped = encode_all(tokenizer, examples[:STATS_LIMIT], dcfg.max_length, dcfg.train_eos)
            except Exception as exc:
                gr.Warning(_error_text(exc))
                return (gr.update(), message_html(_error_text(exc)), *no_change, gr.update(), *mapping_updates)
            dv = DataView(
                data=dataclasses.asdict(dcfg), model_name=model_name, examples=examples,
                encoded={e.example.source_index: e for e in encoded}, skipped=skipped, total=len(examples), info=info,
                columns=columns, fmt=fmt_used,
            )
            if not encoded:
                text = "No example fits into max_length" + (f": {skipped[0]}" if skipped else "")
                gr.Warning(text)
                return (dv, message_html(text), *no_change, gr.update(), *mapping_updates)
            stats = views.length_stats(encoded)
            shown = Path(source).name if not source.startswith(("builtin:", "hf:")) else source
            note = f"Loaded {len(examples)} examples from {shown} as {fmt_used.replace('_', ' ')}."
            if skipped:
                note += f" {len(skipped)} skipped: {skipped[0]}" + (" \u2026" if len(skipped) > 1 else "")
            indices = dv.example_indices()
            return (
                dv,
                message_html(note, "ok"),
                views.stats_markdown(stats, plw_value, len(skipped), len(examples), _packing(encoded, dcfg.max_length)),
                views.rg_histogram(stats.rg),
                views.length_histogram(stats),
                views.label_balance_figure(views.label_counts(examples)),
                gr.update(minimum=0, maximum=max(len(indices) - 1, 1), value=0, step=1,
                          label=f"Example (0\u2013{len(indices) - 1} of the first {len(indices)})"),
                _frame(views.preview_rows(examples, dv.encoded)),
                gr.update(),
                *mapping_updates,
            )

        def _detect(record):
            from .data import detect_format

            return detect_format(record)

        load_outputs = [data_state, data_msg, stats_md, rg_plot, len_plot, label_plot, example_idx, preview, fmt, *mapping_inputs]
        extra_inputs = [*mapping_inputs, *data_inputs, *train_inputs]

        def on_load_builtin(name, fmt_value, plw_value, *args):
            if not name:
                gr.Warning("Choose a built-in set first.")
                return (gr.update(), message_html("Choose a built-in set first."), *[gr.update()] * (len(load_outputs) - 2))
            return load_data(f"builtin:{name}", fmt_value, plw_value, args)

        def on_load_file(path, fmt_value, plw_value, *args):
            if not path:
                gr.Warning("Upload a file first.")
                return (gr.update(), message_html("Upload a JSONL, JSON, CSV or Parquet file first."), *[gr.update()] * (len(load_outputs) - 2))
            return load_data(str(path), fmt_value, plw_value, args)

        def on_load_hub(dataset_id, cfg_name, split_name, fmt_value, plw_value, *args):
            dataset_id = (dataset_id or "").strip().removeprefix("hf:")
            if not dataset_id:
                gr.Warning("Type a dataset id such as ehovy/race.")
                return (gr.update(), message_html("Type a dataset id such as ehovy/race."), *[gr.update()] * (len(load_outputs) - 2))
            return load_data(f"hf:{dataset_id}", fmt_value, plw_value, args, cfg_name, split_name)

        def render_tokens(dv: DataView | None, index, mode, plw_value, run_name):
            if dv is None or not dv.encoded:
                return message_html("Load a data set to see its tokens.", "info")
            indices = dv.example_indices()
            i = min(max(int(index or 0), 0), len(indices) - 1)
            enc = dv.encoded[indices[i]]
            tokenizer = models.tokenizer(dv.model_name)
            special = set(tokenizer.all_special_ids)
            if mode == "loss weight" or not mode:
                return views.token_html(enc, float(plw_value), special_ids=special)
            if not run_name:
                return message_html("Choose a trained run in the Compare tab to colour tokens by loss.", "info") + \
                    views.token_html(enc, float(plw_value), special_ids=special)
            try:
                loaded = models.get(runs_path / run_name)
                enc2 = enc
                if loaded.config.model.name != dv.model_name:
                    from .masks import encode

                    enc2 = encode(loaded.tokenizer, enc.example, dv.data.get("max_length", 384), dv.data.get("train_eos", True))
                on, off = run_token_losses(loaded, enc2)
            except Exception as exc:
                return message_html(f"Cannot compute token losses with run {run_name}: {_error_text(exc)}")
            loss_mode_value = {"loss: adapter on": "on", "loss: adapter off": "off"}.get(mode, "diff")
            return views.token_loss_html(enc2, on, off, loss_mode_value, float(plw_value),
                                         special_ids=set(loaded.tokenizer.all_special_ids))

        def run_token_losses(loaded: LoadedRun, enc):
            from .evaluation import adapter, token_losses

            key = (tuple(enc.input_ids),)
            with loaded.lock:
                if key not in loaded.token_losses:
                    with adapter(loaded.model, True):
                        on = token_losses(loaded.model, enc)
                    with adapter(loaded.model, False):
                        off = token_losses(loaded.model, enc)
                    if len(loaded.token_losses) > 64:
                        loaded.token_losses.clear()
                    loaded.token_losses[key] = (on, off)
                return loaded.token_losses[key]

        def on_plw(dv, index, mode, plw_value, run_name):
            tokens = render_tokens(dv, index, mode, plw_value, run_name)
            if dv is None or not dv.encoded:
                return tokens, gr.update()
            stats = views.length_stats(dv.encoded.values())
            packing = _packing(dv.encoded.values(), dv.data.get("max_length"))
            return tokens, views.stats_markdown(stats, float(plw_value), len(dv.skipped), dv.total, packing)

        builtin_dd.change(builtin_description, builtin_dd, builtin_md)
        fmt.change(lambda f: [gr.update(visible=f == "auto" or name in MAPPABLE.get(f, ())) for name in mapping_fields],
                   fmt, mapping_inputs, show_progress="hidden")
        for btn, fn, inputs in (
            (load_builtin_btn, on_load_builtin, [builtin_dd]),
            (load_file_btn, on_load_file, [upload]),
            (load_hub_btn, on_load_hub, [hub_id, hub_config, hub_split]),
        ):
            btn.click(fn, [*inputs, fmt, plw, *extra_inputs], load_outputs, concurrency_limit=4).then(
                render_tokens, [data_state, example_idx, colour_by, plw, compare_run], token_view
            )
        plw.change(on_plw, [data_state, example_idx, colour_by, plw, compare_run], [token_view, stats_md],
                   show_progress="hidden", trigger_mode="always_last", concurrency_limit=None)
        for value, button in preset_buttons:
            button.click(lambda v=value: v, None, plw, show_progress="hidden")
        example_idx.change(render_tokens, [data_state, example_idx, colour_by, plw, compare_run], token_view,
                           show_progress="hidden", trigger_mode="always_last")
        colour_by.change(render_tokens, [data_state, example_idx, colour_by, plw, compare_run], token_view)

        # ---------------------------------------------------------------- training
        def build_config(plw_value, dv: DataView | None, builtin_name, option_values, train_values) -> LabConfig:
            """The run's config: PLW, the Train tab's controls, the data the visitor loaded and the data options."""
            overrides: dict[str, Any] = {"train.prompt_loss_weight": float(plw_value)}
            for key, value in zip(train_keys, train_values):
                overrides[key] = _coerce_control(key, specs[key], value)
            for key, value in zip(data_keys, option_values):
                overrides[key] = _coerce_control(key, specs[key], value)
            if dv is not None:
                for name in ("source", "format", "column_map", "hf_config", "hf_split"):
                    overrides[f"data.{name}"] = dv.data[name]
            elif builtin_name:
                overrides["data.source"] = f"builtin:{builtin_name}"
            overrides["train.output_dir"] = str(runs_path)
            return base.override(overrides)

        def badge(job: TrainingJob | None, history: views.History | None = None) -> str:
            if job is None:
                return ""
            if job.running:
                step = (history.last_step or {}).get("step", 0) if history else 0
                total = history.total_steps if history else 0
                return (f'<span class="plw-badge" style="background:#dbeafe;color:#1e40af" data-status="running">'
                        f"\u25cf training: step {step}/{total or '?'}</span>")
            return ""

        def render_job(history: views.History, job: TrainingJob | None, note: str = ""):
            running = job is not None and job.running
            if running and history.status == "idle":
                history_view = dataclasses.replace(history, status="starting")
                note = note or "Loading the model and the data\u2026"
            else:
                history_view = history
            error = ""
            if history.status == "failed":
                error = message_html(f"The run failed: {history.end_message}")
            elif history.status == "stopped":
                error = message_html(f"Stopped at step {(history.last_step or {}).get('step', 0)}: {history.end_message}", "info")
            elif history.status == "finished":
                error = message_html(f"Finished: {history.run_dir}", "ok")
            return (
                views.progress_html(history_view, note),
                advice_html(history.advice),
                views.loss_figure(history),
                views.accuracy_figure(history),
                views.predicted_distribution_figure(history),
                error,
                gr.update(interactive=not running),
                gr.update(interactive=running),
                badge(job, history),
            )

        watch_outputs = [progress, advice_box, loss_plot, acc_plot, dist_plot, train_msg, start_btn, stop_btn, job_badge]

        def watch():
            """Stream the current job's events into the charts until it ends (any visitor, any time)."""
            job = registry.current
            if job is None:
                yield render_job(views.History(), None)
                return
            history = views.History()
            cursor = 0
            first = True
            last_yield = 0.0
            while True:
                new = job.events_since(cursor)
                cursor += len(new)
                known = set(history.advice_steps)
                history.extend(new)
                if not first:  # toasts only for advice that arrives while watching, once per message
                    for message in history.advice_steps:
                        if message not in known:
                            gr.Warning(message)
                finished = not job.running and cursor >= job.n_events()
                now = time.time()
                if first or finished or (new and now - last_yield >= 0.8):
                    yield render_job(history, job)
                    last_yield = now
                    first = False
                if finished:
                    return
                time.sleep(POLL_SECONDS)

        def on_start(seen, plw_value, dv, builtin_name, *values):
            option_values, train_values = values[:n_opt], values[n_opt:]
            try:
                cfg = build_config(plw_value, dv, builtin_name, option_values, train_values)
                job = registry.start(cfg)
            except JobBusy as exc:
                gr.Warning(str(exc))
                running = registry.running()
                return message_html(str(exc), "info"), running.id if running else seen
            except (ConfigError, DataError, ValueError) as exc:
                gr.Warning(str(exc))
                return message_html(f"Cannot start: {exc}"), seen
            return message_html("Training started.", "info"), job.id

        def current_job_id():
            """On page load: the latest job, running or not, so a reload re-attaches to it."""
            return registry.current.id if registry.current is not None else None

        def running_job_id(seen):
            """On each timer tick: a job that started since this page last looked."""
            job = registry.running()
            return job.id if job is not None else seen

        def on_stop():
            if registry.stop():
                return message_html("Stopping after the current optimiser step; the adapter so far is kept.", "info")
            return message_html("No training job is running.", "info")

        def refresh_choices():
            runs = list_runs()
            names = [r.name for r in runs]
            with_adapter = [r.name for r in runs if r.adapter_dir() is not None and r.status != "running or interrupted"]
            running = registry.running()
            if running is not None and running.run_dir:
                with_adapter = [n for n in with_adapter if n != Path(running.run_dir).name]
            rows = views.runs_rows(runs)
            return runs, names, with_adapter, rows

        def runs_outputs(selected_overlay=None, metric="completion_loss", compare_value=None, pick_value=None, known=None):
            """Refresh the runs table, the overlay (runs new to this visitor join it) and the run pickers."""
            runs, names, with_adapter, rows = refresh_choices()
            new = [n for n in names if n not in (known or [])] if known is not None else []
            chosen = list(dict.fromkeys(new + [n for n in (selected_overlay or []) if n in names])) or names[:8]
            chosen_runs = [r for r in runs if r.name in chosen]
            compare_choice = compare_value if compare_value in with_adapter else (with_adapter[0] if with_adapter else None)
            pick = pick_value if pick_value in names else (names[0] if names else None)
            return (
                _frame(rows if rows else [{"run": "no runs yet", "status": ""}]),
                gr.update(choices=names, value=chosen),
                views.overlay_figure(chosen_runs, metric),
                views.plw_sweep_figure(chosen_runs),
                gr.update(choices=names, value=pick),
                gr.update(choices=with_adapter, value=compare_choice),
                names,
            )

        runs_out = [runs_table, overlay_runs, overlay_plot, sweep_plot, run_pick, compare_run, known_runs]
        runs_in = [overlay_runs, overlay_metric, compare_run, run_pick, known_runs]

        def after_job(selected_overlay, metric, pick_value, known):
            """Refresh the Runs and Compare lists; the newest run becomes the one to compare."""
            return runs_outputs(selected_overlay, metric, None, pick_value, known)

        start_btn.click(on_start, [seen_job, plw, data_state, builtin_dd, *data_inputs, *train_inputs], [train_msg, seen_job],
                        concurrency_limit=4)
        seen_job.change(watch, None, watch_outputs, concurrency_limit=None, show_progress="hidden").then(
            after_job, [overlay_runs, overlay_metric, run_pick, known_runs], runs_out
        )
        job_timer.tick(running_job_id, seen_job, seen_job, show_progress="hidden", concurrency_limit=None)
        stop_btn.click(on_stop, None, train_msg, concurrency_limit=None)

        # ---------------------------------------------------------------- compare
        def compare_outputs(loaded: LoadedRun):
            comparison = loaded.comparison
            on, off = comparison["on"], comparison["off"]
            rows = views.metrics_comparison_rows(on["metrics"], off["metrics"], on.get("probe_perplexity"), off.get("probe_perplexity"))
            predicted = {"adapter off": off["metrics"].get("predicted") or {}, "adapter on": on["metrics"].get("predicted") or {}}
            dist = (views.answer_distribution_figure(predicted, on["metrics"].get("answers"))
                    if any(predicted.values()) else views.empty_figure("Free-form data: no answer distribution"))
            gens = [
                {**ex, "off": g_off, "on": g_on}
                for ex, g_off, g_on in zip(comparison.get("examples", []), off.get("generations", []), on.get("generations", []))
            ]
            return _frame(rows), dist, views.generations_html(gens)

        def ensure_val(loaded: LoadedRun):
            if loaded.val is None:
                from .training import prepare

                loaded.val = prepare(loaded.config, loaded.tokenizer).val
            return loaded.val

        def on_compare(run_name, progress_=gr.Progress()):
            try:
                if not run_name:
                    raise ValueError("choose a run (train one first, or refresh the list)")
                find_run(run_name)
                progress_(0.1, desc="loading the run's model and adapter")
                loaded = models.get(runs_path / run_name)
                with loaded.lock:
                    if loaded.comparison is None:
                        from . import evaluation

                        progress_(0.3, desc="reading the validation set")
                        val = ensure_val(loaded)
                        probe = []
                        if loaded.config.eval.probe_texts and builtin_sets is not None:
                            probe = builtin_sets.general_text()[: loaded.config.eval.probe_texts]
                        progress_(0.5, desc="evaluating with the adapter on and off")
                        e = loaded.config.eval
                        loaded.comparison = evaluation.compare(loaded.model, loaded.tokenizer, val, probe, e.generations,
                                                               e.max_new_tokens, e.batch_size, loaded.config.train.chunk_size)
                    rows, dist, gens = compare_outputs(loaded)
                    n_val = len(loaded.val) if loaded.val is not None else len(loaded.comparison["on"]["metrics"].get("examples", []))
            except Exception as exc:
                gr.Warning(_error_text(exc))
                return message_html(_error_text(exc)), gr.update(), gr.update(), gr.update(), gr.update()
            plw_value = views.run_plw(find_run(run_name))
            note = f"{run_name}: PLW {plw_value:g}, {n_val} validation examples." if plw_value is not None else run_name
            return (message_html(note, "ok"), rows, dist, gens,
                    gr.update(maximum=max(n_val - 1, 1), value=0, label=f"Validation example (0\u2013{max(n_val - 1, 0)})"))

        def on_val_example(run_name, index, mode):
            try:
                if not run_name:
                    raise ValueError("choose a run and press Compare first")
                loaded = models.get(runs_path / run_name)
                from .evaluation import adapter, generate

                with loaded.lock:
                    val = ensure_val(loaded)
                    if not val:
                        raise ValueError("this run has no validation examples")
                    enc = val[min(max(int(index or 0), 0), len(val) - 1)]
                    gens = {}
                    for side, enabled in (("on", True), ("off", False)):
                        with adapter(loaded.model, enabled):
                            gens[side] = generate(loaded.model, loaded.tokenizer, [enc], loaded.config.eval.max_new_tokens)[0]
                    lps = {}
                    if enc.example.choices:
                        from .masks import prompt_text

                        prompt = prompt_text(loaded.tokenizer, enc.example)
                        for side, enabled in (("on", True), ("off", False)):
                            with adapter(loaded.model, enabled):
                                lps[side] = choice_logprobs(loaded.model, loaded.tokenizer, prompt, enc.example.choices)
                on, off = run_token_losses(loaded, enc)
            except Exception as exc:
                gr.Warning(_error_text(exc))
                return gr.update(), gr.update(), gr.update(), message_html(_error_text(exc))
            figure = views.logprob_figure(list(enc.example.choices), lps.get("on"), lps.get("off"), enc.example.answer)
            tokens = views.token_loss_html(enc, on, off, mode or "diff", loaded.config.train.prompt_loss_weight,
                                           special_ids=set(loaded.tokenizer.all_special_ids))
            reference = enc.example.messages[-1]["content"]
            return views.show_generation(gens["off"]), views.show_generation(gens["on"]), figure, message_html(f"reference answer: {reference}", "info") + tokens

        def on_own_prompt(run_name, text):
            try:
                if not run_name:
                    raise ValueError("choose a run first")
                if not (text or "").strip():
                    raise ValueError("type a prompt first")
                loaded = models.get(runs_path / run_name)
                from .evaluation import adapter, generate_texts

                prompt = user_prompt(loaded.tokenizer, text, loaded.config.data.system_prompt)
                choices = ()
                if loaded.val:
                    choices = next((e.example.choices for e in loaded.val if e.example.choices), ())
                elif loaded.comparison and loaded.comparison["on"]["metrics"].get("predicted"):
                    choices = tuple(loaded.comparison["on"]["metrics"]["predicted"])
                out, lps = {}, {}
                with loaded.lock:
                    for side, enabled in (("on", True), ("off", False)):
                        with adapter(loaded.model, enabled):
                            out[side] = generate_texts(loaded.model, loaded.tokenizer, [prompt], loaded.config.eval.max_new_tokens)[0]
                            if choices:
                                lps[side] = choice_logprobs(loaded.model, loaded.tokenizer, prompt, choices)
            except Exception as exc:
                gr.Warning(_error_text(exc))
                return gr.update(), gr.update(), gr.update()
            figure = views.logprob_figure(list(choices), lps.get("on"), lps.get("off")) if choices else views.empty_figure(
                "This run's data has no candidate answers")
            return views.show_generation(out["off"]), views.show_generation(out["on"]), figure

        compare_btn.click(on_compare, [compare_run], [compare_msg, compare_table, compare_dist, compare_gens, val_idx],
                          concurrency_limit=2).then(
            on_val_example, [compare_run, val_idx, loss_mode], [gen_off, gen_on, lp_plot, val_tokens]
        )
        val_btn.click(on_val_example, [compare_run, val_idx, loss_mode], [gen_off, gen_on, lp_plot, val_tokens], concurrency_limit=2)
        val_idx.release(on_val_example, [compare_run, val_idx, loss_mode], [gen_off, gen_on, lp_plot, val_tokens],
                        trigger_mode="always_last")
        loss_mode.change(on_val_example, [compare_run, val_idx, loss_mode], [gen_off, gen_on, lp_plot, val_tokens])
        own_btn.click(on_own_prompt, [compare_run, own_prompt], [own_off, own_on, own_lp], concurrency_limit=2)
        own_prompt.submit(on_own_prompt, [compare_run, own_prompt], [own_off, own_on, own_lp], concurrency_limit=2)
        compare_refresh.click(runs_outputs, runs_in, runs_out)

        # ---------------------------------------------------------------- runs
        def on_overlay(selected, metric):
            runs = [r for r in list_runs() if r.name in (selected or [])]
            return views.overlay_figure(runs, metric), views.plw_sweep_figure(runs)

        def on_pick(name):
            if not name:
                return None
            try:
                run = find_run(name)
            except ValueError:
                return None
            return {"summary": run.summary, "config": run.config.to_dict() if run.config else None}

        def on_zip(name):
            try:
                run = find_run(name)
                adapter_dir = run.adapter_dir()
                if adapter_dir is None:
                    raise ValueError(f"{name} has no saved adapter")
                folder = Path(tempfile.mkdtemp(prefix="plw-adapter-"))
                target = folder / f"{run.name}-{adapter_dir.name}.zip"
                with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                    for path in sorted(adapter_dir.rglob("*")):
                        if path.is_file():
                            zf.write(path, Path(adapter_dir.name) / path.relative_to(adapter_dir))
                    for extra in ("config.yaml", "summary.json"):
                        if (run.path / extra).exists():
                            zf.write(run.path / extra, extra)
            except Exception as exc:
                gr.Warning(_error_text(exc))
                return gr.update(visible=False), message_html(_error_text(exc))
            return gr.update(value=str(target), visible=True), message_html(f"{target.name} is ready to download.", "ok")

        def on_delete(name, confirmed, selected_overlay, metric, compare_value, known):
            try:
                if not confirmed:
                    raise ValueError("tick 'yes, delete it' to confirm")
                run = find_run(name)
                job = registry.running()
                if job is not None and job.run_dir and Path(job.run_dir).resolve() == run.path.resolve():
                    raise ValueError("this run is still training; stop it first")
                from .runs import delete_run

                models.forget(run.path)
                delete_run(run.path)
            except Exception as exc:
                gr.Warning(_error_text(exc))
                return (message_html(_error_text(exc)), gr.update(), *[gr.update()] * len(runs_out))
            return (message_html(f"Deleted {name}.", "ok"), False,
                    *runs_outputs(selected_overlay, metric, compare_value if compare_value != name else None, None, known))

        runs_refresh.click(runs_outputs, runs_in, runs_out)
        overlay_runs.change(on_overlay, [overlay_runs, overlay_metric], [overlay_plot, sweep_plot])
        overlay_metric.change(on_overlay, [overlay_runs, overlay_metric], [overlay_plot, sweep_plot])
        run_pick.change(on_pick, run_pick, run_details)
        zip_btn.click(on_zip, run_pick, [zip_file, runs_msg])
        delete_btn.click(on_delete, [run_pick, confirm_delete, overlay_runs, overlay_metric, compare_run, known_runs],
                         [runs_msg, confirm_delete, *runs_out])

        # ---------------------------------------------------------------- page load
        def on_page_load(name, fmt_value, plw_value, *args):
            if not name:
                return (gr.update(), message_html("No built-in sets are installed; upload a file.", "info"),
                        *[gr.update()] * (len(load_outputs) - 2))
            return load_data(f"builtin:{name}", fmt_value, plw_value, args)

        demo.load(runs_outputs, runs_in, runs_out)
        demo.load(current_job_id, None, seen_job)
        # The default set loads by itself; the Load buttons wait for it so it can never overwrite a visitor's choice.
        demo.load(on_page_load, [builtin_dd, fmt, plw, *extra_inputs], load_outputs).then(
            render_tokens, [data_state, example_idx, colour_by, plw, compare_run], token_view
        ).then(lambda: [gr.update(interactive=True)] * 3, None, [load_builtin_btn, load_file_btn, load_hub_btn])

    demo.queue(default_concurrency_limit=4)
    demo.plw_registry = registry  # for tests and embedding: the process's job registry
    demo.plw_runs_dir = runs_path
    _set_launch_defaults(demo)
    return demo


def _set_launch_defaults(demo: gr.Blocks) -> None:
    """Make `demo.launch()` safe by default: bind to 127.0.0.1, cap uploads, use the lab's theme and CSS."""
    original = demo.launch

    @functools.wraps(original)
    def launch(*args, **kwargs):
        kwargs.setdefault("server_name", "127.0.0.1")
        kwargs.setdefault("max_file_size", MAX_UPLOAD)
        kwargs.setdefault("css", CSS)
        kwargs.setdefault("theme", _theme())
        kwargs.setdefault("footer_links", ["gradio"])
        return original(*args, **kwargs)

    demo.launch = launch
