"""The app's Train tab: every setting as a control, Start and Stop, and the run's live charts.

The controls are built from `lab.config.field_specs`: defaults, bounds, choices and help texts
all come from the config dataclasses. A run trains in the process's one `TrainingJob`; every page
that watches it (any visitor, or the same visitor after a reload) streams its events into the
progress bar and the charts.
"""

from __future__ import annotations

import dataclasses
import html
import time
from typing import Any

import gradio as gr

from .app_common import AppContext, SharedComponents, coerce_control, config_value, make_control, message_html
from .app_data import DATA_OPTIONS, DataView
from .app_jobs import JobBusy, TrainingJob
from .charts import accuracy_figure, loss_figure, predicted_distribution_figure
from .config import ConfigError, LabConfig, field_specs
from .data import DataError
from .history import History
from .text_views import progress_html, settings_help_markdown

POLL_SECONDS = 0.5

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


def advice_html(items: list[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{html.escape(a)}</li>" for a in items)
    return f'<div class="plw-advice"><b>Advice</b><ul>{lis}</ul></div>'


def badge_html(job: TrainingJob | None, history: History | None = None) -> str:
    """The header's badge: the step of the job that is training, or nothing."""
    if job is None or not job.running:
        return ""
    step = (history.last_step or {}).get("step", 0) if history else 0
    total = history.total_steps if history else 0
    return (f'<span class="plw-badge" style="background:#dbeafe;color:#1e40af" data-status="running">'
            f"\u25cf training: step {step}/{total or '?'}</span>")


class TrainTab:
    """The Train tab's components and handlers; `wire` connects them once every tab exists."""

    def __init__(self, ctx: AppContext, shared: SharedComponents) -> None:
        self.ctx, self.shared = ctx, shared
        base, specs = ctx.base, ctx.specs
        with gr.Tab("Train", id="train", elem_id="tab-train"):
            with gr.Row():
                with gr.Column(scale=1, min_width=340):
                    self.controls: dict[str, Any] = {}
                    placed = set(SPECIAL) | set(HIDDEN) | set(DATA_OPTIONS)
                    for group, keys in TRAIN_LAYOUT.items():
                        with gr.Accordion(group, open=group == "Essentials"):
                            for key in keys:
                                self.controls[key] = make_control(key, specs[key], config_value(base, key))
                                placed.add(key)
                    rest = [k for k in specs if k not in placed]
                    with gr.Accordion("Advanced", open=False):
                        for section, heading in (("train", "Training"), ("model", "Model"), ("lora", "LoRA"),
                                                 ("eval", "Evaluation and comparison"), ("data", "Data")):
                            keys = [k for k in rest if specs[k]["section"] == section]
                            if keys:
                                gr.Markdown(f"**{heading}**")
                            for key in keys:
                                self.controls[key] = make_control(key, specs[key], config_value(base, key))
                    with gr.Accordion("All settings explained", open=False):
                        gr.Markdown(settings_help_markdown({s: field_specs(s) for s in ("model", "data", "lora", "train", "eval")}))
                with gr.Column(scale=2):
                    with gr.Row():
                        self.start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                        self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                    self.msg = gr.HTML("", elem_id="train-msg")
                    self.progress = gr.HTML(progress_html(History()), elem_id="progress")
                    self.advice_box = gr.HTML("", elem_id="advice")
                    self.loss_plot = gr.Plot(loss_figure(History()), label="Loss", elem_id="loss-plot")
                    with gr.Row():
                        self.acc_plot = gr.Plot(accuracy_figure(History()), label="Accuracy", elem_id="acc-plot")
                        self.dist_plot = gr.Plot(predicted_distribution_figure(History()), label="Predicted answers",
                                                 elem_id="dist-plot")

        shared.settings.update(self.controls)
        #: Everything watching a job changes.
        self.watch_outputs = {self.progress, self.advice_box, self.loss_plot, self.acc_plot, self.dist_plot, self.msg,
                              self.start_btn, self.stop_btn, shared.job_badge}

    # -- events ------------------------------------------------------------------------------------

    def wire(self) -> None:
        """Start trains on the visitor's data with every setting; a job that ends refreshes the run lists."""
        shared = self.shared
        self.start_btn.click(self.on_start, {shared.seen_job, shared.plw, shared.data_state, *shared.settings.values()},
                             {self.msg, shared.seen_job}, concurrency_limit=4)
        lists = shared.run_lists
        shared.seen_job.change(self.watch, None, self.watch_outputs, concurrency_limit=None, show_progress="hidden").then(
            lists.after_job, lists.inputs, lists.outputs
        )
        shared.job_timer.tick(self.running_job_id, shared.seen_job, shared.seen_job, show_progress="hidden",
                              concurrency_limit=None)
        self.stop_btn.click(self.on_stop, None, self.msg, concurrency_limit=None)

    def wire_page_load(self, demo: gr.Blocks) -> None:
        demo.load(self.current_job_id, None, self.shared.seen_job)

    # -- handlers ----------------------------------------------------------------------------------

    def build_config(self, values: dict) -> LabConfig:
        """The run's config: PLW, every setting's control and the data the visitor loaded."""
        shared, specs = self.shared, self.ctx.specs
        overrides: dict[str, Any] = {"train.prompt_loss_weight": float(values[shared.plw])}
        for key, value in shared.setting_values(values).items():
            overrides[key] = coerce_control(key, specs[key], value)
        dv: DataView | None = values.get(shared.data_state)
        if dv is not None:
            for name in ("source", "format", "column_map", "hf_config", "hf_split"):
                overrides[f"data.{name}"] = dv.data[name]
        overrides["train.output_dir"] = str(self.ctx.runs_path)
        return self.ctx.base.override(overrides)

    def render_job(self, history: History, job: TrainingJob | None, note: str = "") -> dict:
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
        return {
            self.progress: progress_html(history_view, note),
            self.advice_box: advice_html(history.advice),
            self.loss_plot: loss_figure(history),
            self.acc_plot: accuracy_figure(history),
            self.dist_plot: predicted_distribution_figure(history),
            self.msg: error,
            self.start_btn: gr.update(interactive=not running),
            self.stop_btn: gr.update(interactive=running),
            self.shared.job_badge: badge_html(job, history),
        }

    def watch(self):
        """Stream the current job's events into the charts until it ends (any visitor, any time)."""
        job = self.ctx.registry.current
        if job is None:
            yield self.render_job(History(), None)
            return
        history = History()
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
                yield self.render_job(history, job)
                last_yield = now
                first = False
            if finished:
                return
            time.sleep(POLL_SECONDS)

    def on_start(self, values: dict):
        shared, registry = self.shared, self.ctx.registry
        seen = values[shared.seen_job]
        try:
            job = registry.start(self.build_config(values))
        except JobBusy as exc:
            gr.Warning(str(exc))
            running = registry.running()
            return {self.msg: message_html(str(exc), "info"), shared.seen_job: running.id if running else seen}
        except (ConfigError, DataError, ValueError) as exc:
            gr.Warning(str(exc))
            return {self.msg: message_html(f"Cannot start: {exc}")}
        return {self.msg: message_html("Training started.", "info"), shared.seen_job: job.id}

    def current_job_id(self):
        """On page load: the latest job, running or not, so a reload re-attaches to it."""
        job = self.ctx.registry.current
        return job.id if job is not None else None

    def running_job_id(self, seen):
        """On each timer tick: a job that started since this page last looked."""
        job = self.ctx.registry.running()
        return job.id if job is not None else seen

    def on_stop(self):
        if self.ctx.registry.stop():
            return message_html("Stopping after the current optimiser step; the adapter so far is kept.", "info")
        return message_html("No training job is running.", "info")
