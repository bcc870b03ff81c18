"""The app's Train tab: every setting as a control, Start and Stop, and the run's live charts.

The controls are built from `plw_lab.core.config.field_specs`: defaults, bounds, choices and help texts
all come from the config dataclasses. A run trains in the process's one `TrainingJob`; every page
that watches it (any visitor, or the same visitor after a reload) streams its events into the
progress bar and the charts.
"""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path
from typing import Any

import gradio as gr

from plw_lab.app.common import (
    AppContext,
    SharedComponents,
    StoppingView,
    coerce_control,
    control_value,
    make_control,
    message_html,
    page_message,
    warn,
)
from plw_lab.app.data import DATA_OPTIONS, DataView
from plw_lab.app.jobs import REFUSALS, JobBusy, JobRegistry, TrainingJob, hide_paths
from plw_lab.app.visitors import visitor_token
from plw_lab.core import memory
from plw_lab.core.config import ConfigError, LabConfig, field_specs
from plw_lab.core.data import split_sizes
from plw_lab.core.stopping import run_stopping
from plw_lab.views.charts import accuracy_figure, loss_figure, predicted_distribution_figure
from plw_lab.views.history import History
from plw_lab.views.text_views import (
    SEP,
    format_duration,
    progress_html,
    run_settings_html,
    settings_help_markdown,
)

POLL_SECONDS = 0.5
#: The settings the memory estimate depends on (plw_lab/core/memory.py).
MEMORY_SETTINGS = {
    "model.name",
    "model.device",
    "model.dtype",
    "model.quantization",
    "train.batch_size",
    "data.max_length",
    "train.chunk_size",
    "lora.r",
    "lora.target_modules",
    "lora.layers",
    "train.gradient_checkpointing",
}

# Settings that are not a plain control in the Train tab: the PLW slider is its own bar, the data
# source is chosen in the Data tab, the output folder is fixed by whoever launched the app, and a
# web page never turns on remote code execution.
SPECIAL = {
    "train.prompt_loss_weight",
    "data.source",
    "data.format",
    "data.column_map",
    "data.hf_config",
    "data.hf_split",
}
HIDDEN = {"train.output_dir", "model.trust_remote_code"}
#: The settings the next run's summary line reads (with PLW and the visitor's data).
NEXT_RUN_KEYS = ("data.val_size", "data.val_max")
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
    "Remedies for forgetting and collapse": [
        "train.kl_weight",
        "train.l2_to_base",
        "data.replay",
        "data.mix",
        "data.mix_temperature",
        "train.completion_loss_weight",
        "train.class_weighted_loss",
    ],
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
    return (
        f'<span class="plw-badge" style="background:#dbeafe;color:#1e40af" data-status="running">'
        f"\u25cf training: step {step}/{total or '?'}</span>"
    )


OTHER_VISITOR = "A run started by another visitor is training; you can watch it here."
OUTSIDE_THE_PAGE = "A run started outside this page is training; you can watch it here."
STOPPING = "Stopping after the current optimiser step; the adapter so far is kept."


def queue_html(registry: JobRegistry, visitor: str | None) -> str:
    """The queue as every visitor sees it: each waiting run (the visitor's own marked) and when it
    should start; first, the visitor's own place."""
    waits = registry.waits()
    if not waits:
        return '<div class="plw-queue" data-size="0"></div>'
    items, mine = [], ""
    for position, (job, wait) in enumerate(waits, 1):
        when = f"starts in about {format_duration(wait)}" if wait is not None else "start time not known yet"
        own = job.owner is not None and job.owner == visitor
        what = f"PLW {job.cfg.train.prompt_loss_weight:g}, {job.steps or '?'} steps"
        items.append(f'<li data-mine="{str(own).lower()}">{"your run" if own else "a run"} ({what}): {when}</li>')
        if own:
            mine = f'<div class="plw-queue-mine">Your run is queued, position {position} of {len(waits)}: {when}.</div>'
    return (
        f'<div class="plw-queue" data-size="{len(waits)}">{mine}<b>Queue</b>: {len(waits)} waiting, '
        f"each starts by itself when the one before it ends<ol>{''.join(items)}</ol></div>"
    )


def watched_html(history: History, job: TrainingJob | None) -> str:
    """What the watched run is: its folder, status, data and settings (not the controls' values)."""
    if job is None:
        return '<div class="plw-watched" data-run="">No run yet: the charts fill in once you press Start.</div>'
    started = history.started or {}
    config = started.get("config") or job.cfg.to_dict()
    name = Path(history.run_dir or job.run_dir).name or "(folder not created yet)"
    return (
        f'<div class="plw-watched" data-run="{html.escape(name)}"><span class="plw-run">{html.escape(name)}</span>'
        f"{run_settings_html(config, started.get('n_train'), started.get('n_val'))}</div>"
    )


class TrainTab:
    """The Train tab's components and handlers; `wire` connects them once every tab exists."""

    def __init__(self, ctx: AppContext, shared: SharedComponents) -> None:
        self.ctx, self.shared = ctx, shared
        base, specs = ctx.base, ctx.specs
        with gr.Tab("Train", id="train", elem_id="tab-train"):
            with gr.Row():
                with gr.Column(scale=1, min_width=340, elem_id="next-run-settings"):
                    gr.Markdown("### Settings for the next run")
                    self.next_run = gr.HTML("", elem_id="next-run")
                    self.controls: dict[str, Any] = {}
                    placed = set(SPECIAL) | set(HIDDEN) | set(DATA_OPTIONS)
                    for group, keys in TRAIN_LAYOUT.items():
                        with gr.Accordion(group, open=group == "Essentials"):
                            for key in keys:
                                self.controls[key] = make_control(key, specs[key], base.value(key))
                                placed.add(key)
                    rest = [k for k in specs if k not in placed]
                    with gr.Accordion("Advanced", open=False):
                        for section, heading in (
                            ("train", "Training"),
                            ("model", "Model"),
                            ("lora", "LoRA"),
                            ("eval", "Evaluation and comparison"),
                            ("data", "Data"),
                        ):
                            keys = [k for k in rest if specs[k]["section"] == section]
                            if keys:
                                gr.Markdown(f"**{heading}**")
                            for key in keys:
                                self.controls[key] = make_control(key, specs[key], base.value(key))
                    with gr.Accordion("All settings explained", open=False):
                        gr.Markdown(
                            settings_help_markdown(
                                {s: field_specs(s) for s in ("model", "data", "lora", "train", "eval")}
                            )
                        )
                    self.memory_note = gr.Markdown(memory.describe(base), elem_id="memory-estimate")
                with gr.Column(scale=2, elem_id="watched-column"):
                    with gr.Row():
                        self.start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                        self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                        self.cancel_btn = gr.Button("Leave the queue", elem_id="cancel-queued", interactive=False)
                    gr.Markdown(ctx.registry.limits.describe(), elem_id="app-limits")
                    self.msg = gr.HTML("", elem_id="train-msg")
                    gr.Markdown("### Watched run")
                    self.watched = gr.HTML(watched_html(History(), None), elem_id="watched-run")
                    self.queue = gr.HTML(queue_html(ctx.registry, None), elem_id="run-queue")
                    self.progress = gr.HTML(progress_html(History()), elem_id="progress")
                    self.advice_box = gr.HTML("", elem_id="advice")
                    self.loss_plot = gr.Plot(
                        loss_figure(History()), label="Loss", elem_id="loss-plot", show_label=False
                    )
                    with gr.Row():
                        self.acc_plot = gr.Plot(
                            accuracy_figure(History()), label="Accuracy", elem_id="acc-plot", show_label=False
                        )
                        self.dist_plot = gr.Plot(
                            predicted_distribution_figure(History()),
                            label="Predicted answers",
                            elem_id="dist-plot",
                            show_label=False,
                        )
                    self.stopping = StoppingView("train-stopping")

        shared.settings.update(self.controls)
        #: What the next run's summary line reads.
        self.next_inputs = {
            shared.plw,
            shared.data_state,
            *(shared.settings[k] for k in NEXT_RUN_KEYS if k in shared.settings),
        }
        shared.after_data_load.append((self.next_run_html, self.next_inputs, self.next_run))
        #: The charts: changed only when new events arrive (the progress line changes every second).
        self.chart_outputs = {self.advice_box, self.loss_plot, self.acc_plot, self.dist_plot, *self.stopping.outputs}
        #: What a visitor's place in the queue changes.
        self.queue_outputs = {self.queue, self.start_btn, self.cancel_btn}
        self.watch_outputs = {
            self.progress,
            self.watched,
            self.msg,
            self.stop_btn,
            shared.job_badge,
            *self.queue_outputs,
            *self.chart_outputs,
        }

    # -- events ------------------------------------------------------------------------------------

    def wire(self) -> None:
        """Start trains on the visitor's data with every setting; a job that ends refreshes the run lists."""
        shared = self.shared
        self.start_btn.click(
            self.on_start,
            {shared.seen_job, shared.visitor, shared.plw, shared.data_state, *shared.settings.values()},
            {self.msg, shared.seen_job, shared.visitor, *self.queue_outputs},
            concurrency_limit=4,
            api_name="start",
        )
        self.cancel_btn.click(self.on_cancel, {shared.visitor}, {self.msg, *self.queue_outputs}, api_name="cancel")
        lists = shared.run_lists
        shared.seen_job.change(
            self.watch,
            {shared.visitor},
            self.watch_outputs,
            concurrency_limit=None,
            show_progress="hidden",
            api_name="watch",
        ).then(lists.after_job, lists.inputs, lists.outputs)
        shared.job_timer.tick(
            self.running_job_id,
            {shared.seen_job, shared.visitor},
            shared.seen_job,
            show_progress="hidden",
            concurrency_limit=None,
        )
        self.stop_btn.click(
            self.on_stop, {shared.visitor}, {self.msg, self.stop_btn}, concurrency_limit=None, api_name="stop"
        )
        for control in self.next_inputs - {shared.data_state}:
            control.change(self.next_run_html, self.next_inputs, self.next_run, show_progress="hidden")
        sizing = [key for key in self.controls if key in MEMORY_SETTINGS]
        for key in sizing:
            self.controls[key].change(
                self.on_sizing, [self.controls[k] for k in sizing], self.memory_note, show_progress="hidden"
            )

    def wire_page_load(self, demo: gr.Blocks) -> None:
        # The visitor's token first: what the watcher shows (Start, Stop) depends on whose run it is.
        shared = self.shared
        visited = demo.load(self.visitor_token, shared.visitor, shared.visitor)
        visited.then(self.current_job_id, None, shared.seen_job)
        visited.then(self.on_return, {shared.visitor}, {self.msg, shared.plw, *shared.settings.values()})

    # -- handlers ----------------------------------------------------------------------------------

    def next_run_html(self, values: dict) -> str:
        """The next run's data with its train/validation split and its PLW, from what this visitor has loaded."""
        shared = self.shared
        dv: DataView | None = values[shared.data_state]
        settings = shared.setting_values(values)
        plw_line = f"PLW <b>{float(values[shared.plw]):g}</b> (the bar above)"
        if dv is None:
            return f'<div class="plw-next-run">data: none loaded yet (Data tab){SEP}{plw_line}</div>'
        n_train, n_val = split_sizes(
            dv.total,
            float(settings.get("data.val_size", dv.data["val_size"])),
            int(settings.get("data.val_max", dv.data.get("val_max", 0)) or 0),
        )
        return (
            f'<div class="plw-next-run">data: <b>{html.escape(dv.shown_source())}</b>, '
            f"{n_train:,} train / {n_val:,} validation"
            f"{SEP}{plw_line}</div>"
        )

    def build_config(self, values: dict) -> LabConfig:
        """The run's config: PLW, every setting's control and the data the visitor loaded."""
        shared, specs = self.shared, self.ctx.specs
        overrides: dict[str, Any] = {"train.prompt_loss_weight": float(values[shared.plw])}
        for key, value in shared.setting_values(values).items():
            overrides[key] = coerce_control(key, specs[key], value)
        dv: DataView | None = values.get(shared.data_state)
        if dv is not None:  # a server-side state the Data tab made; its source counts as an upload only if it was one
            for name in ("source", "format", "column_map", "hf_config", "hf_split"):
                overrides[f"data.{name}"] = dv.data[name]
        overrides["train.output_dir"] = str(self.ctx.runs_path)
        uploads = [dv.data["source"]] if dv is not None and dv.uploaded else []
        return self.ctx.visitor_config(overrides, uploads)

    def render_progress(self, history: History, job: TrainingJob | None, visitor: str | None) -> dict:
        """The parts that change every second: status, phase, ETA, elapsed time, buttons."""
        running = job is not None and job.running
        note = ""
        view = history
        if running and job.stop.is_set():
            view, note = dataclasses.replace(history, status="stopping"), STOPPING
        elif running and history.status == "idle":
            view = dataclasses.replace(history, status="starting")
        mine = job is not None and job.owner is not None and job.owner == visitor
        if running and not mine:
            note = (note + "\n" if note else "") + (OTHER_VISITOR if job.owner is not None else OUTSIDE_THE_PAGE)
        return {
            self.progress: progress_html(view, note),
            self.stop_btn: gr.update(interactive=running and mine and not job.stop.is_set()),
            self.shared.job_badge: badge_html(job, history),
            **self.render_queue(visitor),
        }

    def render_queue(self, visitor: str | None) -> dict:
        """The queue, and Start and Leave as the visitor's place in it allows (one waiting run each)."""
        registry = self.ctx.registry
        busy, waiting = registry.running() is not None, registry.queued(visitor) is not None
        return {
            self.queue: queue_html(registry, visitor),
            self.start_btn: gr.update(
                value="Queue this run" if busy else "Start training",
                interactive=not waiting and (not busy or registry.limits.max_queue > 0),
            ),
            self.cancel_btn: gr.update(interactive=waiting),
        }

    def render_job(self, history: History, job: TrainingJob | None, visitor: str | None) -> dict:
        error = ""
        if history.status == "failed":
            error = message_html(f"The run failed: {hide_paths(history.end_message)}")
        elif history.status == "stopped":
            error = message_html(
                f"Stopped at step {(history.last_step or {}).get('step', 0)}: {history.end_message}", "info"
            )
        elif history.status == "finished":
            error = message_html(f"Finished: {Path(history.run_dir).name}", "ok")
        return {
            **self.render_progress(history, job, visitor),
            self.watched: watched_html(history, job),
            self.advice_box: advice_html(history.advice),
            self.loss_plot: loss_figure(history),
            self.acc_plot: accuracy_figure(history),
            self.dist_plot: predicted_distribution_figure(history),
            # Once the run has ended: while it trains, every new evaluation could move the kept steps.
            **self.stopping.render(run_stopping(history.summary, history.evals) if history.done else None),
            self.msg: error,
        }

    def watch(self, values: dict):
        """Stream the current job's events into the charts until it ends (any visitor, any time); the
        progress line is redrawn every second so the elapsed time and the phase's own bar move."""
        visitor = values[self.shared.visitor]
        job = self.ctx.registry.current
        if job is None:
            yield self.render_job(History(), None, visitor)
            return
        history = History()
        cursor = 0
        first = True
        last_charts = last_progress = 0.0
        while True:
            new = job.events_since(cursor)
            cursor += len(new)
            known = set(history.advice_steps)
            history.extend(new)
            if not first:  # toasts only for advice that arrives while watching, once per message
                for message in history.advice_steps:
                    if message not in known:
                        warn(message)
            finished = not job.running and cursor >= job.n_events()
            now = time.time()
            if first or finished or (new and now - last_charts >= 0.8):
                yield self.render_job(history, job, visitor)
                last_charts = last_progress = now
                first = False
            elif now - last_progress >= 1.0:
                yield self.render_progress(history, job, visitor)
                last_progress = now
            if finished:
                return
            time.sleep(POLL_SECONDS)

    def on_start(self, values: dict):
        """Start a run owned by this visitor, or queue it while another trains; a caller without a visitor
        token (an API client, a page whose token has not arrived) gets one with the answer, so every run
        started here has an owner."""
        shared, registry = self.shared, self.ctx.registry
        seen = values[shared.seen_job]
        visitor = visitor_token(values.get(shared.visitor))
        try:
            job = registry.start(self.build_config(values), owner=visitor)
        except JobBusy as exc:
            warn(str(exc))
            running = registry.running()
            return {self.msg: message_html(str(exc), "info"), shared.seen_job: running.id if running else seen}
        except (*REFUSALS, ValueError) as exc:
            text = page_message(str(exc), self.ctx.specs)
            warn(text)
            return {self.msg: message_html(f"Cannot start: {text}")}
        if job.queued:
            place = registry.queued(visitor)
            text = f"Queued, position {place[0]}: it starts by itself when the runs before it end." if place else ""
            running = registry.running()
            return {
                self.msg: message_html(text, "info"),
                shared.seen_job: running.id if running else seen,
                shared.visitor: visitor,
                **self.render_queue(visitor),
            }
        return {
            self.msg: message_html("Training started.", "info"),
            shared.seen_job: job.id,
            shared.visitor: visitor,
        }

    def on_return(self, values: dict):
        """A visitor whose queued run a stopped app did not start is told so, with that run's settings
        back in the controls (the last one's, if several)."""
        shared = self.shared
        missed = self.ctx.registry.not_started(self.ctx.runs_path, values[shared.visitor])
        if not missed:
            return {}
        reason, cfg = missed[-1]
        text = (
            f"Your queued run (PLW {cfg.train.prompt_loss_weight:g}, data {cfg.data.source}) was not started: "
            f"{reason}. Its settings are back in the controls; press Start to queue it again."
        )
        restored = {
            control: control_value(self.ctx.specs[key], cfg.value(key)) for key, control in shared.settings.items()
        }
        return {self.msg: message_html(text, "info"), shared.plw: cfg.train.prompt_loss_weight, **restored}

    def on_cancel(self, values: dict):
        """Take this visitor's waiting run out of the queue."""
        visitor = values[self.shared.visitor]
        left = self.ctx.registry.cancel(visitor)
        text = "Your run left the queue; it was not started." if left else "You have no run waiting in the queue."
        return {self.msg: message_html(text, "info"), **self.render_queue(visitor)}

    def on_sizing(self, *values):
        """The memory line for the settings as they stand (before Start)."""
        sizing = [key for key in self.controls if key in MEMORY_SETTINGS]
        try:
            cfg = self.ctx.visitor_config({k: coerce_control(k, self.ctx.specs[k], v) for k, v in zip(sizing, values)})
        except ConfigError as exc:
            return f"Memory estimate: not available until the settings are valid ({exc})."
        return memory.describe(cfg)

    @staticmethod
    def visitor_token(token):
        """This browser's visitor token, made on its first visit (kept in the browser across reloads)."""
        return visitor_token(token)

    def current_job_id(self):
        """On page load: the latest job, running or not, so a reload re-attaches to it; a finished
        job whose run folder has since been deleted is not shown."""
        job = self.ctx.registry.current
        if job is None or (not job.running and job.run_dir and not Path(job.run_dir).exists()):
            return None
        return job.id

    def running_job_id(self, values: dict):
        """On each timer tick: a job that started since this page last looked, or the visitor's own run
        that left the queue (a short one may have ended between two ticks)."""
        job = self.ctx.registry.current
        if job is not None and (job.running or (job.owner is not None and job.owner == values[self.shared.visitor])):
            return job.id
        return values[self.shared.seen_job]

    def on_stop(self, values: dict):
        try:
            stopping = self.ctx.registry.stop(values[self.shared.visitor])
        except PermissionError as exc:
            warn(str(exc))
            return {self.msg: message_html(str(exc), "info")}
        if stopping:
            return {self.msg: message_html(STOPPING, "info"), self.stop_btn: gr.update(interactive=False)}
        return {self.msg: message_html("No training job is running.", "info")}
