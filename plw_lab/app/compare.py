"""The app's Compare tab: one run's model with its adapter on and off, side by side.

Validation metrics, the forgetting probe, predicted answers and generations for the whole
validation set; then one validation example (generations, answer log-probabilities, per-token
loss) and a prompt of the visitor's own. The run's model is loaded once through the process's
`RunModels`; every computation is a `plw_lab.api` service.
"""

from __future__ import annotations

import gradio as gr

from plw_lab import api
from plw_lab.app.common import AppContext, SharedComponents, StoppingView, frame, message_html, warn
from plw_lab.app.jobs import error_text
from plw_lab.core.runs import run_plw
from plw_lab.core.stopping import run_stopping
from plw_lab.views.charts import answer_distribution_figure, empty_figure, logprob_figure
from plw_lab.views.text_views import generations_html, metrics_comparison_rows, probe_rows, show_generation
from plw_lab.views.tokens_view import token_loss_html


def comparison_outputs(comparison: dict):
    """The comparison's table, predicted-answer figure and generations."""
    on, off = comparison["on"], comparison["off"]
    rows = metrics_comparison_rows(
        on["metrics"],
        off["metrics"],
        on.get("probe_perplexity"),
        off.get("probe_perplexity"),
        comparison.get("paired"),
        comparison.get("format_vs_task"),
    )
    predicted = {
        "adapter off": off["metrics"].get("predicted") or {},
        "adapter on": on["metrics"].get("predicted") or {},
    }
    dist = (
        answer_distribution_figure(predicted, on["metrics"].get("answers"))
        if any(predicted.values())
        else empty_figure("Free-form data: no answer distribution")
    )
    gens = [
        {**ex, "off": g_off, "on": g_on}
        for ex, g_off, g_on in zip(
            comparison.get("examples", []), off.get("generations", []), on.get("generations", [])
        )
    ]
    return frame(rows), dist, generations_html(gens)


class CompareTab:
    """The Compare tab's components and handlers; `wire` connects them once every tab exists."""

    def __init__(self, ctx: AppContext, shared: SharedComponents) -> None:
        self.ctx, self.shared = ctx, shared
        with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
            with gr.Row():
                self.run = gr.Dropdown(
                    choices=[],
                    value=None,
                    label="Run",
                    info="Runs with a saved adapter, newest first.",
                    elem_id="compare-run",
                    scale=3,
                )
                self.refresh_btn = gr.Button("\u21bb Refresh", size="sm", scale=0, min_width=100)
                self.compare_btn = gr.Button(
                    "Compare adapter on vs off", variant="primary", elem_id="compare-btn", scale=1
                )
            self.msg = gr.HTML("", elem_id="compare-msg")
            self.stopping = StoppingView("compare-stopping")
            with gr.Row():
                # hidden until there is a comparison to show (an empty table would show placeholder headers)
                self.table = gr.Dataframe(
                    label="Validation metrics and forgetting probe",
                    interactive=False,
                    elem_id="compare-table",
                    scale=3,
                    wrap=True,
                    visible=False,
                    column_widths=["40%", "20%", "20%", "20%"],
                )
                self.dist = gr.Plot(
                    empty_figure("Predicted answers, adapter on vs off"),
                    label="Predicted answers",
                    elem_id="compare-dist",
                    scale=2,
                    show_label=False,
                )
            self.gens = gr.HTML("", elem_id="compare-gens")
            gr.Markdown(
                "### Frozen-feature probe\nDoes fine-tuning beat a linear classifier on the frozen base model? "
                "A logistic regression on the base model's final hidden states of each prompt (mean over its "
                "tokens, or its last token), fitted on the run's own training split and scored on the same "
                "validation examples, with the same metrics and 95% intervals as the adapter."
            )
            with gr.Row():
                self.probe_btn = gr.Button("Run the frozen-feature probe", elem_id="probe-btn", scale=0, min_width=240)
                self.probe_table = gr.Dataframe(
                    label="Frozen-feature probe vs the adapter",
                    interactive=False,
                    elem_id="probe-table",
                    wrap=True,
                    scale=4,
                    visible=False,
                )
            gr.Markdown("### One validation example")
            with gr.Row():
                self.val_idx = gr.Slider(0, 1, value=0, step=1, label="Validation example", elem_id="val-idx", scale=3)
                self.val_btn = gr.Button("Show", elem_id="val-show", scale=0, min_width=100)
            with gr.Row(equal_height=True):
                with gr.Column():
                    gr.HTML('<div class="plw-side-title">Adapter off (base model)</div>')
                    self.gen_off = gr.Textbox(
                        label="greedy generation, adapter off", lines=3, elem_id="gen-off", interactive=False
                    )
                with gr.Column():
                    gr.HTML('<div class="plw-side-title">Adapter on (fine-tuned)</div>')
                    self.gen_on = gr.Textbox(
                        label="greedy generation, adapter on", lines=3, elem_id="gen-on", interactive=False
                    )
            with gr.Row():
                self.lp_plot = gr.Plot(
                    empty_figure("Answer log-probabilities"),
                    label="Answer log-probabilities",
                    elem_id="lp-plot",
                    show_label=False,
                )
            self.loss_mode = gr.Radio(
                ["on", "off", "diff"],
                value="diff",
                label="Per-token loss: adapter on, off, or on \u2212 off",
                elem_id="loss-mode",
            )
            self.val_tokens = gr.HTML("", elem_id="val-tokens")
            gr.Markdown("### Your prompt")
            with gr.Row():
                self.own_prompt = gr.Textbox(
                    label="Prompt (sent as a user turn through the chat template)",
                    lines=3,
                    elem_id="own-prompt",
                    scale=4,
                )
                self.own_btn = gr.Button("Generate both", elem_id="own-btn", scale=1)
            with gr.Row(equal_height=True):
                self.own_off = gr.Textbox(
                    label="adapter off (base model)", lines=3, elem_id="own-off", interactive=False
                )
                self.own_on = gr.Textbox(label="adapter on (fine-tuned)", lines=3, elem_id="own-on", interactive=False)
            # shown only for a prompt that lists the run's candidate answers (A. ... B. ...)
            self.own_lp = gr.Plot(
                empty_figure("Answer log-probabilities for your prompt"),
                label="Answer log-probabilities",
                elem_id="own-lp",
                visible=False,
                show_label=False,
            )
        shared.run_choice = self.run

    # -- events ------------------------------------------------------------------------------------

    def wire(self) -> None:
        """Refresh updates the run lists of this tab and the Runs tab together."""
        example_in = {self.run, self.val_idx, self.loss_mode}
        example_out = {self.gen_off, self.gen_on, self.lp_plot, self.val_tokens}
        # the message box too: a prompt that cannot be answered says why there
        own_in, own_out = {self.run, self.own_prompt}, {self.own_off, self.own_on, self.own_lp, self.msg}
        shown = {self.msg, self.table, self.dist, self.gens, self.val_idx}
        self.compare_btn.click(self.on_compare, {self.run}, shown, concurrency_limit=2, api_name="compare").then(
            self.on_val_example, example_in, example_out
        )
        self.run.change(self.on_choose, {self.run}, {*shown, *self.stopping.outputs}, show_progress="hidden")
        self.val_btn.click(self.on_val_example, example_in, example_out, concurrency_limit=2)
        self.val_idx.release(self.on_val_example, example_in, example_out, trigger_mode="always_last")
        self.loss_mode.change(self.on_val_example, example_in, example_out)
        self.own_btn.click(self.on_own_prompt, own_in, own_out, concurrency_limit=2)
        self.probe_btn.click(self.on_probe, {self.run}, {self.msg, self.probe_table}, concurrency_limit=1)
        self.own_prompt.submit(self.on_own_prompt, own_in, own_out, concurrency_limit=2)
        lists = self.shared.run_lists
        self.refresh_btn.click(lists.refresh, lists.inputs, lists.outputs)

    # -- handlers ----------------------------------------------------------------------------------

    def _load(self, run_name: str | None, progress_):
        """The chosen run's loaded model, or a clear error when no run is chosen or it cannot be loaded."""
        if not run_name:
            raise ValueError("choose a run (train one first, or refresh the list)")
        run_path = self.ctx.find_run(run_name).path  # a visitor's text never becomes a path of its own
        if not self.ctx.models.is_loaded(run_path):  # the first action on a run takes a while
            progress_(0.05, desc=f"loading {run_name}'s model and adapter (once per run)")
        return self.ctx.models.get(run_path)

    def on_compare(self, values: dict, progress_=gr.Progress()):
        ctx = self.ctx
        run_name = values[self.run]
        try:
            loaded = self._load(run_name, progress_)
            if loaded.comparison is None:
                progress_(0.4, desc="evaluating with the adapter on and off")
            comparison = api.compare(loaded)
            rows, dist, gens = comparison_outputs(comparison)
            n_val = len(comparison["on"]["metrics"].get("examples") or []) or len(loaded.validation())
        except Exception as exc:
            warn(error_text(exc))
            return {self.msg: message_html(error_text(exc))}
        plw_value = run_plw(ctx.find_run(run_name))
        note = f"{run_name}: PLW {plw_value:g}, {n_val} validation examples." if plw_value is not None else run_name
        return {
            self.msg: message_html(note, "ok"),
            self.table: gr.update(value=rows, visible=True),
            self.dist: dist,
            self.gens: gens,
            self.val_idx: gr.update(
                maximum=max(n_val - 1, 1), value=0, label=f"Validation example (0\u2013{max(n_val - 1, 0)})"
            ),
        }

    def on_choose(self, values: dict):
        """A chosen run shows its stopping report and the comparison saved when it finished, without loading
        its model."""
        run_name = values[self.run]
        empty = {
            self.table: gr.update(visible=False),
            self.dist: empty_figure("Predicted answers, adapter on vs off"),
            self.gens: "",
            **self.stopping.render(None),
        }
        if not run_name:
            return {self.msg: "", **empty}
        try:
            run = self.ctx.find_run(run_name)
        except ValueError as exc:
            return {self.msg: message_html(error_text(exc)), **empty}
        stopping = self.stopping.render(run_stopping(run.summary, run.evals))
        comparison = run.comparison()
        if comparison is None:
            return {
                self.msg: message_html(
                    f"{run_name} has no saved comparison (it was stopped before comparing): press Compare to make one.",
                    "info",
                ),
                **empty,
                **stopping,
            }
        rows, dist, gens = comparison_outputs(comparison)
        n_val = len(comparison["on"]["metrics"].get("examples") or []) or (run.summary or {}).get("n_val") or 0
        plw_value = run_plw(run)
        note = (
            f"{run_name}: PLW {plw_value:g}, the comparison saved when it finished."
            if plw_value is not None
            else run_name
        )
        out = {
            self.msg: message_html(note, "ok"),
            self.table: gr.update(value=rows, visible=True),
            self.dist: dist,
            self.gens: gens,
            **stopping,
        }
        if n_val:
            out[self.val_idx] = gr.update(
                maximum=max(n_val - 1, 1), value=0, label=f"Validation example (0\u2013{n_val - 1})"
            )
        return out

    def on_probe(self, values: dict, progress_=gr.Progress()):
        run_name = values[self.run]
        try:
            loaded = self._load(run_name, progress_)
            progress_(0.3, desc="reading the base model's features of the training and validation prompts")
            result = api.probe(loaded)
            rows = probe_rows(result, loaded.comparison)
        except Exception as exc:
            warn(error_text(exc))
            return {self.msg: message_html(error_text(exc))}
        note = f"{run_name}: probe fitted on {result['n_train']} training examples, scored on {result['n_val']}."
        if loaded.comparison is None:
            note += " Compare the run to add the adapter's rows."
        return {self.msg: message_html(note, "ok"), self.probe_table: gr.update(value=frame(rows), visible=True)}

    def on_val_example(self, values: dict, progress_=gr.Progress()):
        run_name, index, mode = values[self.run], values[self.val_idx], values[self.loss_mode]
        try:
            if not run_name:
                raise ValueError("choose a run and press Compare first")
            loaded = self._load(run_name, progress_)
            enc, outputs = api.example_outputs(loaded, int(index or 0))
        except Exception as exc:
            warn(error_text(exc))
            return {self.val_tokens: message_html(error_text(exc))}
        lps, gens = outputs.logprobs, outputs.generations
        on, off = outputs.token_losses["on"], outputs.token_losses["off"]
        figure = logprob_figure(list(enc.example.choices), lps.get("on"), lps.get("off"), enc.example.answer)
        tokens = token_loss_html(
            enc,
            on,
            off,
            mode or "diff",
            loaded.config.train.prompt_loss_weight,
            special_ids=set(loaded.tokenizer.all_special_ids),
        )
        reference = enc.example.messages[-1]["content"]
        return {
            self.gen_off: show_generation(gens["off"]),
            self.gen_on: show_generation(gens["on"]),
            self.lp_plot: figure,
            self.val_tokens: message_html(f"reference answer: {reference}", "info") + tokens,
        }

    def on_own_prompt(self, values: dict, progress_=gr.Progress()):
        run_name, text = values[self.run], values[self.own_prompt]
        try:
            if not run_name:
                raise ValueError("choose a run first")
            if not (text or "").strip():  # before loading a model that would only answer nothing
                raise ValueError("type a prompt first")
            outputs = api.prompt_outputs(self._load(run_name, progress_), text)
        except Exception as exc:
            warn(error_text(exc))
            return {self.msg: message_html(error_text(exc))}
        lps = outputs.logprobs
        return {
            self.own_off: show_generation(outputs.generations["off"]),
            self.own_on: show_generation(outputs.generations["on"]),
            self.own_lp: gr.update(value=logprob_figure(list(lps["on"]), lps.get("on"), lps.get("off")), visible=True)
            if lps
            else gr.update(visible=False),
        }
