"""The app's Runs tab: every run in the runs folder as a table, overlaid curves, best metrics
against PLW, a PLW x seed sweep (`plw_lab.core.sweep`, run as the app's training job) with its figure, and
per run its details, its adapter as a zip, resuming it, or deleting it.

Its `refresh` also fills the Compare tab's run list, so the other tabs call it whenever the runs
may have changed (a job ended, a run was deleted, a Refresh button).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import gradio as gr
from huggingface_hub import get_token as hub_token

from plw_lab import api
from plw_lab.app.common import AppContext, RunLists, SharedComponents, frame, message_html, warn
from plw_lab.app.jobs import JobBusy, error_text
from plw_lab.app.visitors import require_owner, visitor_token
from plw_lab.core.card import ShareError, push
from plw_lab.core.runs import delete_run
from plw_lab.core.sweep import axes
from plw_lab.core.sweep_table import list_sweeps, read_csv
from plw_lab.views.charts import overlay_figure, plw_sweep_figure, sweep_figure
from plw_lab.views.lesson_charts import arm_curves_figure, verdict_figure
from plw_lab.views.text_views import measured_markdown, runs_rows, verdict_html


class RunsTab:
    """The Runs tab's components and handlers; built after the Compare tab, whose run list it fills."""

    def __init__(self, ctx: AppContext, shared: SharedComponents) -> None:
        self.ctx, self.shared = ctx, shared
        compare_run = shared.run_choice
        with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
            self.known_runs = gr.State(None)  # the run names this visitor has been shown (new ones join the overlay)
            with gr.Row():
                self.refresh_btn = gr.Button(
                    "\u21bb Refresh", size="sm", elem_id="runs-refresh", scale=0, min_width=100
                )
                gr.Markdown(f"Runs are read from `{ctx.runs_path}`.")
            self.table = gr.Dataframe(label="Runs", interactive=False, wrap=True, elem_id="runs-table")
            with gr.Row():
                self.overlay_runs = gr.Dropdown(
                    choices=[],
                    value=[],
                    multiselect=True,
                    label="Runs to overlay",
                    info="e.g. a PLW sweep",
                    elem_id="overlay-runs",
                    scale=3,
                )
                self.overlay_metric = gr.Dropdown(
                    choices=[
                        ("val completion loss", "completion_loss"),
                        ("val answer accuracy", "answer_accuracy"),
                        ("val prompt loss", "prompt_loss"),
                        ("val full-sequence loss", "full_loss"),
                        ("val token accuracy", "token_accuracy"),
                        ("train loss", "train_loss"),
                    ],
                    value="completion_loss",
                    label="metric",
                    elem_id="overlay-metric",
                    scale=1,
                )
            with gr.Row():
                self.overlay_plot = gr.Plot(
                    overlay_figure([]), label="Curves", elem_id="overlay-plot", show_label=False
                )
                self.sweep_plot = gr.Plot(
                    plw_sweep_figure([]), label="Best metrics against PLW", elem_id="sweep-plot", show_label=False
                )
            with gr.Accordion("PLW sweep: PLW values x seeds on one split", open=False):
                base = ctx.base
                gr.Markdown(
                    f"Trains one run per PLW value and seed with the app's base settings (data `{base.data.source}`, "
                    f"model `{base.model.name}`, {base.train.max_steps} steps), on one validation split: the seeds "
                    "vary the adapter initialisation and the data order only. Runs one after another as the app's "
                    "training job (watch the current run in the Train tab, stop it there); the figure fills in as runs "
                    "finish."
                )
                with gr.Row():
                    self.sweep_plws = gr.Textbox("0, 0.01, 0.1, 1", label="PLW values", elem_id="sweep-plws", scale=2)
                    self.sweep_seeds = gr.Textbox("0, 1", label="seeds", elem_id="sweep-seeds", scale=1)
                    self.sweep_btn = gr.Button("Run PLW sweep", variant="primary", elem_id="sweep-btn", scale=1)
                    self.sweep_pick = gr.Dropdown(choices=[], value=None, label="Sweep", elem_id="sweep-pick", scale=2)
                    self.sweep_overlay_btn = gr.Button(
                        "Overlay this sweep's runs", elem_id="sweep-overlay-btn", scale=1
                    )
                self.sweep_msg = gr.HTML("", elem_id="sweep-msg")
                # Shown for a sweep that varies more than PLW; the other settings become the figure's series.
                self.sweep_x = gr.Dropdown(
                    choices=[], value=None, label="x-axis", elem_id="sweep-x", visible=False, interactive=True
                )
                self.sweep_figure = gr.Plot(sweep_figure([]), label="Sweep", elem_id="sweep-figure")
                self.sweep_verdict = gr.HTML("", elem_id="sweep-verdict")
                self.sweep_verdict_plot = gr.Plot(
                    label="Verdict", elem_id="sweep-verdict-plot", show_label=False, visible=False
                )
            with gr.Accordion("Real-data lesson (measured)", open=False, elem_id="lesson"):
                # Read on page load, never trained here: the runs shipped with the lab, measured once.
                self.lesson_label = gr.Markdown("", elem_id="lesson-label")
                # Hidden until the lesson is read: an installation without one shows only the line saying so.
                self.lesson_plot = gr.Plot(elem_id="lesson-verdict-plot", show_label=False, visible=False)
                with gr.Row():
                    self.lesson_prompt = gr.Plot(elem_id="lesson-prompt-loss", show_label=False, visible=False)
                    self.lesson_answer = gr.Plot(elem_id="lesson-answer-loss", show_label=False, visible=False)
                self.lesson_verdict = gr.HTML("", elem_id="lesson-verdict")
            self.lesson_outputs = {
                self.lesson_label,
                self.lesson_plot,
                self.lesson_prompt,
                self.lesson_answer,
                self.lesson_verdict,
            }
            with gr.Row():
                self.run_pick = gr.Dropdown(choices=[], value=None, label="Run", elem_id="run-pick", scale=2)
                self.zip_btn = gr.Button("Download adapter (.zip)", elem_id="zip-btn", scale=1)
                self.resume_btn = gr.Button("Resume run", elem_id="resume-btn", scale=1)
                self.confirm_delete = gr.Checkbox(
                    label="yes, delete it", value=False, elem_id="confirm-delete", scale=1
                )
                self.delete_btn = gr.Button("Delete run", variant="stop", elem_id="delete-btn", scale=1)
            self.zip_file = gr.File(label="Adapter", visible=False, elem_id="zip-file", interactive=False)
            # Pushing needs the token of whoever runs the app, so the row exists only when there is one.
            with gr.Row(visible=hub_token() is not None):
                self.push_repo = gr.Textbox(
                    label="Hub repository", placeholder="your-name/adapter-name", scale=2, elem_id="push-repo"
                )
                self.push_btn = gr.Button("Push adapter, card and config to the hub", elem_id="push-btn", scale=1)
            self.msg = gr.HTML("", elem_id="runs-msg")
            with gr.Accordion("Run details", open=False):
                self.details = gr.JSON(label="config and summary", elem_id="run-details")
        #: What `refresh` reads and updates, for every event that refreshes the run lists.
        self.inputs = {self.overlay_runs, self.overlay_metric, compare_run, self.run_pick, self.known_runs}
        self.outputs = {
            self.table,
            self.overlay_runs,
            self.overlay_plot,
            self.sweep_plot,
            self.run_pick,
            compare_run,
            self.known_runs,
        }
        shared.run_lists = RunLists(self.refresh, self.after_job, self.inputs, self.outputs)

    # -- events ------------------------------------------------------------------------------------

    def wire(self) -> None:
        visitor = self.shared.visitor
        self.sweep_btn.click(
            self.on_sweep, {self.sweep_plws, self.sweep_seeds, visitor}, {self.sweep_msg, self.sweep_figure, visitor}
        )
        sweep_in = {self.sweep_pick, self.sweep_x}
        self.sweep_pick.change(self.on_sweep_pick, sweep_in, self.sweep_view)
        self.sweep_x.input(self.on_sweep_pick, sweep_in, self.sweep_view)
        self.refresh_btn.click(self.sweep_choices, sweep_in, {self.sweep_pick, *self.sweep_view})
        overlay_in, overlay_out = {self.overlay_runs, self.overlay_metric}, {self.overlay_plot, self.sweep_plot}
        self.sweep_overlay_btn.click(self.on_overlay_sweep, {self.sweep_pick}, self.overlay_runs)
        self.refresh_btn.click(self.refresh, self.inputs, self.outputs, api_name="runs")
        self.overlay_runs.change(self.on_overlay, overlay_in, overlay_out)
        self.overlay_metric.change(self.on_overlay, overlay_in, overlay_out)
        self.run_pick.change(self.on_pick, self.run_pick, self.details)
        self.zip_btn.click(self.on_zip, self.run_pick, [self.zip_file, self.msg])
        self.push_btn.click(self.on_push, [self.run_pick, self.push_repo], self.msg)
        # A resumed run becomes the job this page watches, so it streams into the Train tab.
        self.resume_btn.click(
            self.on_resume, {self.run_pick, visitor}, {self.msg, self.shared.seen_job}, concurrency_limit=4
        )
        self.delete_btn.click(
            self.on_delete,
            {self.confirm_delete, visitor, *self.inputs},
            {self.msg, self.confirm_delete, *self.outputs},
        )

    def wire_page_load(self, demo: gr.Blocks) -> None:
        demo.load(self.refresh, self.inputs, self.outputs)
        demo.load(self.sweep_choices, None, {self.sweep_pick, *self.sweep_view})
        demo.load(self.lesson_view, None, self.lesson_outputs)

    # -- sweeps ------------------------------------------------------------------------------------

    @property
    def sweep_view(self) -> set:
        """What showing a sweep updates: its figure, its x-axis picker, its verdict."""
        return {self.sweep_figure, self.sweep_x, self.sweep_verdict, self.sweep_verdict_plot}

    def sweep_choices(self, values: dict | None = None) -> dict:
        """The sweep folders in the runs folder (newest first) and the chosen one's view (`on_sweep_pick`)."""
        values = values or {}
        names = [p.name for p in list_sweeps(self.ctx.runs_path)]
        chosen = values.get(self.sweep_pick)
        pick = chosen if chosen in names else (names[0] if names else None)
        return {
            self.sweep_pick: gr.update(choices=names, value=pick),
            **self.on_sweep_pick({self.sweep_pick: pick, self.sweep_x: values.get(self.sweep_x)}),
        }

    def on_sweep_pick(self, values: dict) -> dict:
        """The sweep's figure against the x-axis chosen (PLW where the sweep does not vary it), the x-axis
        picker (the sweep's varied numbers, shown where there is more than one), and the verdict of its
        finished runs."""
        folder = self.ctx.find_sweep(values[self.sweep_pick])
        rows = read_csv(folder) if folder else []
        choices = axes(rows)
        x = values[self.sweep_x] if values[self.sweep_x] in choices else "plw"
        picker = gr.update(
            choices=[("PLW", c) if c == "plw" else (c, c) for c in choices], value=x, visible=len(choices) > 1
        )
        lesson, text = None, ""
        if folder:
            try:
                lesson = api.sweep_verdict_of(folder)
                text = f"<b>What its {len(lesson.runs)} finished runs support:</b>" + verdict_html(
                    lesson.verdict["sentences"]
                )
            except FileNotFoundError as exc:
                text = message_html(error_text(exc), "info")
        return {
            self.sweep_figure: sweep_figure(rows, x),
            self.sweep_x: picker,
            self.sweep_verdict: text,
            self.sweep_verdict_plot: gr.update(value=verdict_figure(lesson.verdict), visible=True)
            if lesson
            else gr.update(visible=False),
        }

    def lesson_view(self) -> dict:
        """The real-data lesson shipped with the lab: where and when it was measured, how to reproduce it, its
        verdict and its prompt- and answer-loss curves; where this installation has none, a line saying so."""
        try:
            lesson = api.lesson()
        except FileNotFoundError as exc:
            return {self.lesson_label: f"No measured lesson to show: {error_text(exc)}."}
        return {
            self.lesson_label: measured_markdown(lesson.label, lesson.measured["commands"]),
            self.lesson_plot: gr.update(value=verdict_figure(lesson.verdict), visible=True),
            self.lesson_prompt: gr.update(value=arm_curves_figure(lesson.runs, "prompt_loss"), visible=True),
            self.lesson_answer: gr.update(value=arm_curves_figure(lesson.runs, "answer_loss"), visible=True),
            self.lesson_verdict: verdict_html(lesson.verdict["sentences"]),
        }

    def on_sweep(self, values: dict):
        """Start a sweep owned by this visitor (a caller without a token gets one with the answer)."""
        visitor = visitor_token(values.get(self.shared.visitor))
        try:
            plws = [float(v) for v in str(values[self.sweep_plws]).replace(";", ",").split(",") if v.strip()]
            seeds = [int(v) for v in str(values[self.sweep_seeds]).replace(";", ",").split(",") if v.strip()]
            if not plws or not seeds or any(not 0 <= p <= 1 for p in plws):
                raise ValueError("give PLW values in [0, 1] and at least one seed, as comma lists")
            cfg = self.ctx.base.override({"train.output_dir": str(self.ctx.runs_path)})
            job = self.ctx.registry.start(cfg, owner=visitor, sweep=(plws, seeds))
        except (JobBusy, ValueError) as exc:
            warn(error_text(exc))
            return {self.sweep_msg: message_html(error_text(exc))}
        return {
            self.sweep_msg: message_html(
                f"Sweep started: {len(plws) * len(seeds)} runs (job {job.id}). Refresh to see finished runs.", "info"
            ),
            self.sweep_figure: sweep_figure([]),
            self.shared.visitor: visitor,
        }

    # -- handlers ----------------------------------------------------------------------------------

    def refresh(self, values: dict, keep_compare: bool = True) -> dict:
        """Refresh the runs table, the overlay (runs new to this visitor join it) and the run pickers."""
        compare_run = self.shared.run_choice
        selected_overlay, metric = values[self.overlay_runs], values[self.overlay_metric]
        compare_value = values[compare_run] if keep_compare else None
        pick_value, known = values[self.run_pick], values[self.known_runs]
        runs = self.ctx.list_runs()
        names = [r.name for r in runs]
        with_adapter = [
            r.name
            for r in runs
            if r.adapter_dir() is not None and r.status != "running" and not self.ctx.registry.owns(r.path)
        ]
        rows = runs_rows(runs)
        new = [n for n in names if n not in (known or [])] if known is not None else []
        chosen = list(dict.fromkeys(new + [n for n in (selected_overlay or []) if n in names])) or names[:8]
        chosen_runs = [r for r in runs if r.name in chosen]
        compare_choice = compare_value if compare_value in with_adapter else (with_adapter[0] if with_adapter else None)
        pick = pick_value if pick_value in names else (names[0] if names else None)
        return {
            self.table: frame(rows if rows else [{"run": "no runs yet", "status": ""}]),
            self.overlay_runs: gr.update(choices=names, value=chosen),
            self.overlay_plot: overlay_figure(chosen_runs, metric),
            self.sweep_plot: plw_sweep_figure(chosen_runs),
            self.run_pick: gr.update(choices=names, value=pick),
            compare_run: gr.update(choices=with_adapter, value=compare_choice),
            self.known_runs: names,
        }

    def after_job(self, values: dict) -> dict:
        """Refresh the Runs and Compare lists; the newest run becomes the one to compare."""
        return self.refresh(values, keep_compare=False)

    def on_overlay(self, values: dict):
        selected, metric = values[self.overlay_runs], values[self.overlay_metric]
        runs = [r for r in self.ctx.list_runs() if r.name in (selected or [])]
        return {self.overlay_plot: overlay_figure(runs, metric), self.sweep_plot: plw_sweep_figure(runs)}

    def on_overlay_sweep(self, values: dict):
        """Overlay exactly the chosen sweep's runs (the overlay's change event redraws the curves)."""
        sweep = values[self.sweep_pick]
        return gr.update(value=[r.name for r in self.ctx.list_runs() if sweep and r.group == sweep])

    def on_pick(self, name):
        if not name:
            return None
        try:
            run = self.ctx.find_run(name)
        except ValueError:
            return None
        return {"summary": run.summary, "config": run.config.to_dict() if run.config else None}

    def on_zip(self, name):
        try:
            run = self.ctx.find_run(name)
            adapter_dir = run.adapter_dir()
            if adapter_dir is None:
                raise ValueError(f"{name} has no saved adapter")
            folder = Path(tempfile.mkdtemp(prefix="plw-adapter-"))
            target = folder / f"{run.path.name}-{adapter_dir.name}.zip"
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(adapter_dir.rglob("*")):
                    # The adapter only: a checkpoint's optimiser and trainer state stay on the server.
                    if path.is_file() and (path.name.startswith("adapter_") or path.name == "README.md"):
                        zf.write(path, Path(adapter_dir.name) / path.relative_to(adapter_dir))
                for extra in ("config.yaml", "summary.json"):
                    if (run.path / extra).exists():
                        zf.write(run.path / extra, extra)
        except Exception as exc:
            warn(error_text(exc))
            return gr.update(visible=False), message_html(error_text(exc))
        return gr.update(value=str(target), visible=True), message_html(f"{target.name} is ready to download.", "ok")

    def on_push(self, name, repo):
        try:
            if not (repo or "").strip():
                raise ValueError("enter the hub repository to push to, e.g. your-name/adapter-name")
            url = push(self.ctx.find_run(name).path, repo.strip())
        except Exception as exc:
            text = str(exc) if isinstance(exc, ShareError) else error_text(exc)
            warn(text)
            return message_html(text)
        return message_html(f"Pushed {name} to {url}.", "ok")

    def on_delete(self, values: dict):
        name = values[self.run_pick]
        try:
            if not values[self.confirm_delete]:
                raise ValueError("tick 'yes, delete it' to confirm")
            run = self.ctx.find_run(name)
            require_owner(run.path, values.get(self.shared.visitor), "delete")
            if self.ctx.registry.owns(run.path):
                raise ValueError("this run is still training; stop it first")
            self.ctx.models.forget(run.path)
            delete_run(run.path)  # refuses a run that any live process trains
            self.ctx.registry.forget(run.path)
        except Exception as exc:
            warn(error_text(exc))
            return {self.msg: message_html(error_text(exc))}
        compare_run = self.shared.run_choice
        refreshed = {**values, self.run_pick: None}
        if values[compare_run] == name:
            refreshed[compare_run] = None
        return {self.msg: message_html(f"Deleted {name}.", "ok"), self.confirm_delete: False, **self.refresh(refreshed)}

    def on_resume(self, values: dict):
        """Continue a stopped, interrupted or failed run from its last checkpoint; the Train tab shows it.
        Only the visitor who started the run may resume it."""
        name, visitor = values[self.run_pick], values.get(self.shared.visitor)
        try:
            run = self.ctx.find_run(name)
            require_owner(run.path, visitor, "resume")
            job = self.ctx.registry.resume(run, owner=visitor)
        except JobBusy as exc:
            warn(str(exc))
            return {self.msg: message_html(str(exc), "info")}
        except Exception as exc:
            warn(error_text(exc))
            return {self.msg: message_html(error_text(exc))}
        return {
            self.msg: message_html(f"Resuming {name}; follow it in the Train tab.", "ok"),
            self.shared.seen_job: job.id,
        }
