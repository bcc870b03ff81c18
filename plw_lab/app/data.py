"""The app's Data tab: load a built-in set, a file or a hub dataset, then see its statistics and tokens.

What a visitor loads becomes a `DataView` in their own `gr.State`; the Train tab trains on it. The
token view colours each token by its loss weight at the current PLW, or by its loss under the run
chosen in the Compare tab.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from plw_lab import api
from plw_lab.app.common import (
    AppContext,
    SharedComponents,
    coerce_control,
    first_sentence,
    frame,
    make_control,
    message_html,
    page_message,
    warn,
)
from plw_lab.app.jobs import error_text
from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.data import DataError, detect_format, read_records, to_examples
from plw_lab.core.masks import encode
from plw_lab.core.stats import truncation_message
from plw_lab.views.charts import empty_figure, label_balance_figure, length_histogram, rg_histogram
from plw_lab.views.text_views import preview_rows, stats_markdown
from plw_lab.views.tokens_view import token_html, token_loss_html

#: Examples encoded for the statistics (the first N of the set).
STATS_LIMIT = 2000
#: Encoded examples a visitor's state keeps for the token view: the statistics are kept as numbers,
#: so each visitor's memory stays bounded whatever the size of the set.
VIEW_LIMIT = 200
#: A visitor's loaded data is freed this long after its last change, and an hour after the page closes.
STATE_TTL_SECONDS = 6 * 3600
#: lambda_r: the token view and the statistics read it from the Train tab beside the PLW slider.
COMPLETION_WEIGHT = "train.completion_loss_weight"
UPLOAD_TYPES = [".jsonl", ".json", ".csv", ".parquet", ".ndjson"]
#: Lab fields a column can be mapped to, by format.
MAPPABLE = {
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
    "multiple_choice": ("context", "question", "options", "answer"),
    "classification": ("text", "label"),
}
NOT_AN_UPLOAD = "Only a file uploaded through this box can be loaded; upload it again."
ALL_MAPPABLE = ("prompt", "completion", "messages", "context", "question", "options", "answer", "text", "label")
#: Data options shown in the Data tab (they change how records become examples and tokens).
DATA_OPTIONS = [
    "data.val_size",
    "data.limit",
    "data.train_eos",
    "data.system_prompt",
    "data.mc_template",
    "data.classification_template",
    "data.answer_format",
    "data.on_error",
    "data.balance",
]


def is_upload(path: str) -> bool:
    """Whether `path` is a file in Gradio's upload folder, where the upload box puts what a visitor sends
    (Gradio itself refuses any other path in a request; this holds for a handler called directly too)."""
    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())


@dataclass
class DataView:
    """What a visitor loaded in the Data tab: only what the views need, so its size is bounded."""

    data: dict  # DataConfig as a dict (source, format, column_map and options)
    model_name: str
    chat_template: str
    encoded: dict  # source_index -> Encoded, for the first VIEW_LIMIT examples (the token view)
    skipped: list  # the first few reasons
    n_skipped: int
    total: int
    info: dict
    columns: list
    fmt: str
    stats: object  # `LengthStats` of the first STATS_LIMIT examples
    packing: dict
    #: The max_length the examples were encoded to (data.max_length, or what 0 chose) and what it cut.
    max_length: int = 0
    truncation: dict = field(default_factory=dict)
    #: Whether the source is the visitor's upload: the one local file a run of theirs may read.
    uploaded: bool = False

    def example_indices(self) -> list[int]:
        return sorted(self.encoded)

    def shown_source(self) -> str:
        """The source as the page names it: builtin:NAME, hf:ID or the file's name."""
        source = self.data["source"]
        return source if source.startswith(("builtin:", "hf:")) else Path(source).name


class DataTab:
    """The Data tab's components and handlers; `wire` connects them once every tab exists."""

    def __init__(self, ctx: AppContext, shared: SharedComponents) -> None:
        self.ctx, self.shared = ctx, shared
        base, specs = ctx.base, ctx.specs
        builtin_names = list(ctx.builtin_sets.BUILTIN_SETS) if ctx.builtin_sets is not None else []
        default_source = base.data.source
        default_builtin = default_source.removeprefix("builtin:") if default_source.startswith("builtin:") else None
        if default_builtin not in builtin_names:
            default_builtin = builtin_names[0] if builtin_names else None

        with gr.Tab("Data", id="data", elem_id="tab-data"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    with gr.Tabs(elem_id="source-tabs"):
                        with gr.Tab("Built-in", id="src-builtin"):
                            self.builtin_dd = gr.Dropdown(
                                choices=builtin_names,
                                value=default_builtin,
                                label="Built-in set",
                                info="Offline data sets shipped with the lab.",
                                elem_id="builtin-set",
                            )
                            self.builtin_md = gr.Markdown(
                                self.builtin_description(default_builtin), elem_id="builtin-desc"
                            )
                            self.load_builtin_btn = gr.Button(
                                "Load built-in set", variant="primary", elem_id="load-builtin", interactive=False
                            )  # enabled once the page has loaded
                        with gr.Tab("Upload file", id="src-file"):
                            self.upload = gr.File(
                                label="JSONL, JSON, CSV or Parquet (at most 50 MB)",
                                file_types=UPLOAD_TYPES,
                                type="filepath",
                                elem_id="upload",
                            )
                            self.load_file_btn = gr.Button(
                                "Load file", variant="primary", elem_id="load-file", interactive=False
                            )
                        with gr.Tab("Hub dataset", id="src-hub"):
                            self.hub_id = gr.Textbox(
                                label="Hugging Face dataset id",
                                placeholder="ehovy/race",
                                info="Needs the internet; offline the lab says so.",
                                elem_id="hub-id",
                            )
                            with gr.Row():
                                self.hub_config = gr.Textbox(
                                    label="config",
                                    value=base.data.hf_config,
                                    info=first_sentence(specs["data.hf_config"]["help"]),
                                )
                                self.hub_split = gr.Textbox(label="split", value=base.data.hf_split)
                            self.load_hub_btn = gr.Button(
                                "Load hub dataset", variant="primary", elem_id="load-hub", interactive=False
                            )
                    self.fmt = gr.Dropdown(
                        choices=list(specs["data.format"]["choices"]),
                        value=base.data.format,
                        label="format",
                        info=first_sentence(specs["data.format"]["help"], 200),
                        elem_id="data-format",
                    )
                    with gr.Accordion(
                        "Column mapping (when your column names differ)", open=False, elem_id="mapping"
                    ) as self.mapping_acc:
                        gr.Markdown(
                            "Pick which of your columns holds each lab field; "
                            "leave '(same name)' where the names already match."
                        )
                        self.mapping = {
                            f: gr.Dropdown(
                                choices=["(same name)"],
                                value="(same name)",
                                label=f,
                                elem_id=f"map-{f}",
                                allow_custom_value=True,
                            )
                            for f in ALL_MAPPABLE
                        }
                    with gr.Accordion("Data options", open=False):
                        self.controls = {k: make_control(k, specs[k], base.value(k)) for k in DATA_OPTIONS}
                    self.msg = gr.HTML("", elem_id="data-msg")
                with gr.Column(scale=2):
                    self.stats_md = gr.Markdown("Load a data set to see its statistics.", elem_id="data-stats")
                    self.rg_plot = gr.Plot(
                        empty_figure("R<sub>g</sub> histogram"),
                        label="Generation ratio",
                        elem_id="rg-plot",
                        show_label=False,
                    )
                    with gr.Row():
                        self.len_plot = gr.Plot(
                            empty_figure("token lengths"), label="Token lengths", elem_id="len-plot", show_label=False
                        )
                        self.label_plot = gr.Plot(
                            empty_figure("label balance"), label="Label balance", elem_id="label-plot", show_label=False
                        )
            gr.Markdown(
                "### Token view\nEach token as the model sees it through its chat template, coloured by its "
                "loss weight at the current PLW. Hover a token for its text, id, label and weight."
            )
            with gr.Row():
                self.example_idx = gr.Slider(0, 1, value=0, step=1, label="Example", elem_id="example-idx", scale=3)
                self.colour_by = gr.Radio(
                    ["loss weight", "loss: adapter on", "loss: adapter off", "loss: on \u2212 off"],
                    value="loss weight",
                    label="Colour by",
                    info="The loss views use the run chosen in the Compare tab.",
                    elem_id="colour-by",
                    scale=2,
                )
            self.token_view = gr.HTML("", elem_id="token-view")
            with gr.Accordion("Examples", open=True, elem_id="preview-acc"):
                self.preview = gr.Dataframe(label="First examples", interactive=False, wrap=True, elem_id="preview")

        self.load_buttons = {self.load_builtin_btn, self.load_file_btn, self.load_hub_btn}
        #: Everything a load changes; a handler leaves out what it keeps.
        self.load_outputs = {
            shared.data_state,
            self.msg,
            self.stats_md,
            self.rg_plot,
            self.len_plot,
            self.label_plot,
            self.example_idx,
            self.preview,
            self.mapping_acc,
            *self.mapping.values(),
        }
        shared.settings.update(self.controls)

    # -- events ------------------------------------------------------------------------------------

    def load_inputs(self, *source_controls) -> set:
        """A load reads its source's controls, the format, the mapping, PLW, every setting and the data already
        loaded."""
        shared = self.shared
        return {
            *source_controls,
            self.fmt,
            shared.plw,
            shared.data_state,
            *self.mapping.values(),
            *shared.settings.values(),
        }

    def token_inputs(self) -> set:
        shared = self.shared
        return {
            shared.data_state,
            self.example_idx,
            self.colour_by,
            shared.plw,
            shared.run_choice,
            shared.settings[COMPLETION_WEIGHT],
        }

    def completion_weight(self, values: dict) -> float:
        """The Train tab's lambda_r, which the token view and the statistics state beside PLW."""
        return float(values[self.shared.settings[COMPLETION_WEIGHT]])

    def wire(self) -> None:
        """Loading reads the Train tab's model and data settings; the loss views use the Compare tab's run."""
        shared = self.shared
        tokens_in = self.token_inputs()
        self.builtin_dd.change(self.builtin_description, self.builtin_dd, self.builtin_md)
        self.fmt.change(self.on_format, self.fmt, set(self.mapping.values()), show_progress="hidden")
        for btn, fn, inputs, name in (
            (self.load_builtin_btn, self.on_load_builtin, [self.builtin_dd], "load_builtin"),
            (self.load_file_btn, self.on_load_file, [self.upload], "load_file"),
            (self.load_hub_btn, self.on_load_hub, [self.hub_id, self.hub_config, self.hub_split], "load_hub"),
        ):
            self.after_load(
                btn.click(fn, self.load_inputs(*inputs), self.load_outputs, concurrency_limit=4, api_name=name)
            )
        for weight in (shared.plw, shared.settings[COMPLETION_WEIGHT]):
            weight.change(
                self.on_plw,
                tokens_in,
                {self.token_view, self.stats_md},
                show_progress="hidden",
                trigger_mode="always_last",
                concurrency_limit=None,
            )
        self.example_idx.change(
            self.render_tokens, tokens_in, self.token_view, show_progress="hidden", trigger_mode="always_last"
        )
        self.colour_by.change(self.render_tokens, tokens_in, self.token_view)

    def wire_page_load(self, demo: gr.Blocks) -> None:
        # The default set loads by itself; the Load buttons wait for it so it can never overwrite a visitor's choice.
        self.after_load(demo.load(self.on_page_load, self.load_inputs(self.builtin_dd), self.load_outputs)).then(
            lambda: {b: gr.update(interactive=True) for b in self.load_buttons}, None, self.load_buttons
        )

    def after_load(self, event):
        """Chain what follows every load: the token view, then whatever other tabs registered."""
        event = event.then(self.render_tokens, self.token_inputs(), self.token_view)
        for fn, inputs, outputs in self.shared.after_data_load:
            event = event.then(fn, inputs, outputs, show_progress="hidden")
        return event

    # -- handlers ----------------------------------------------------------------------------------

    def on_format(self, fmt_value):
        return {
            control: gr.update(visible=fmt_value == "auto" or name in MAPPABLE.get(fmt_value, ()))
            for name, control in self.mapping.items()
        }

    def builtin_description(self, name: str | None) -> str:
        builtin_sets = self.ctx.builtin_sets
        if not name or builtin_sets is None or name not in builtin_sets.BUILTIN_SETS:
            return ""
        spec = builtin_sets.BUILTIN_SETS[name]
        labels = f" Labels: {', '.join(spec.labels)}." if getattr(spec, "labels", None) else ""
        return f"**{name}** ({spec.format.replace('_', ' ')}): {spec.description}{labels}"

    def _load_config(self, source: str, values: dict, hf_cfg="", hf_split_="train", upload=False) -> LabConfig:
        """The config a load reads and tokenises with: the source, the mapping, the data settings and the
        model the Train tab names (its tokenizer), refused where a setting names a file of the server."""
        specs = self.ctx.specs
        column_map = {f: values[c] for f, c in self.mapping.items() if values[c] and values[c] != "(same name)"}
        overrides = {
            "data.source": source,
            "data.format": values[self.fmt],
            "data.column_map": column_map,
            "data.hf_config": hf_cfg or "",
            "data.hf_split": hf_split_ or "train",
        }
        for key, value in self.shared.setting_values(values).items():
            # the model's tokenizer encodes the examples; an empty model box keeps the starting model
            if key.startswith("data.") or key == "model.chat_template" or (key == "model.name" and value):
                overrides[key] = coerce_control(key, specs[key], value)
        return self.ctx.visitor_config(overrides, [source] if upload else [])

    def failed_load(self, text: str, values: dict, updates: dict | None = None) -> dict:
        """A load that failed: the message in the page's words, saying that the data already loaded stays."""
        previous: DataView | None = values[self.shared.data_state]
        text = page_message(text, self.ctx.specs)
        if previous is not None:
            text += (
                f"\nThe data loaded before ({previous.shown_source()}, {previous.total:,} examples) is still loaded."
            )
        warn(text)
        return {self.msg: message_html(text), **(updates or {})}

    def load_data(self, source: str, values: dict, hf_cfg="", hf_split_="train", upload=False):
        """Read, convert and encode a data set; every problem becomes a message and keeps the data loaded
        before. `upload`: `source` is the file the visitor uploaded (Gradio hands the handler only files
        in its upload folder)."""
        # A visitor sees an upload by its file name, never the server's temporary folder.
        shown = Path(source).name if not source.startswith(("builtin:", "hf:")) else source
        try:
            cfg = self._load_config(source, values, hf_cfg, hf_split_, upload)
            dcfg = cfg.data
            with self.ctx.registry.reading():
                records, info = read_records(dcfg)
        except (DataError, ConfigError) as exc:
            return self.failed_load(error_text(exc), values)
        except Exception as exc:  # a damaged file may raise anything
            return self.failed_load(f"Could not read {shown}: {error_text(exc)}", values)
        columns = sorted({str(k) for r in records[:200] for k in r if k is not None} | set(dcfg.column_map.values()))
        mapping_updates = {
            control: gr.update(choices=["(same name)"] + columns, value=dcfg.column_map.get(f, "(same name)"))
            for f, control in self.mapping.items()
        }
        try:
            fmt_used = dcfg.format if dcfg.format != "auto" else info.get("format") or detect_format(records)
            examples = to_examples(records, dataclasses.replace(dcfg, format=fmt_used), info.get("labels"))
        except DataError as exc:
            # Mapping is what is needed: open the section with the file's columns to choose from.
            return self.failed_load(
                f"{error_text(exc)}\nColumns in {shown}: {', '.join(columns)}.",
                values,
                {self.mapping_acc: gr.update(open=True), **mapping_updates},
            )
        model_name, chat_template = cfg.model.name, cfg.model.chat_template
        try:
            tokenizer = self.ctx.models.tokenizer(model_name, chat_template)
            report = api.data_report(cfg, tokenizer, examples, limit=STATS_LIMIT)
        except Exception as exc:
            return self.failed_load(error_text(exc), values, mapping_updates)
        fitted, skipped = report.fitted, report.fitted.skipped
        dv = DataView(
            data=dataclasses.asdict(dcfg),
            model_name=model_name,
            chat_template=chat_template,
            encoded={e.example.source_index: e for e in fitted.encoded[:VIEW_LIMIT]},
            skipped=skipped[:5],
            n_skipped=len(skipped),
            total=len(examples),
            info=info,
            columns=columns,
            fmt=fmt_used,
            stats=report.stats,
            packing=report.packing,
            max_length=fitted.max_length,
            truncation=fitted.truncation,
            uploaded=upload,
        )
        note = f"Loaded {len(examples)} examples from {dv.shown_source()} as {fmt_used.replace('_', ' ')}."
        for line in examples.report.lines():
            note += f" {line[0].upper()}{line[1:]}."
        if skipped:
            note += f" {len(skipped)} skipped: {skipped[0]}" + (" \u2026" if len(skipped) > 1 else "")
        warning = truncation_message(fitted.truncation)
        if warning:
            warn(warning)
            note += f" Truncation: {warning}"
        indices = dv.example_indices()
        return {
            self.shared.data_state: dv,
            self.msg: message_html(note, "info" if warning else "ok"),
            self.stats_md: stats_markdown(
                report.stats,
                values[self.shared.plw],
                len(skipped),
                len(examples),
                dv.packing,
                self.completion_weight(values),
            ),
            self.rg_plot: rg_histogram(report.stats.rg),
            self.len_plot: length_histogram(report.stats, max_length=fitted.max_length),
            self.label_plot: label_balance_figure(
                report.labels, after=report.balanced, after_label=f"after {dcfg.balance}"
            ),
            self.example_idx: gr.update(
                minimum=0,
                maximum=max(len(indices) - 1, 1),
                value=0,
                step=1,
                label=f"Example (0\u2013{len(indices) - 1} of the first {len(indices)})",
            ),
            self.preview: frame(preview_rows(examples, dv.encoded)),
            **mapping_updates,
        }

    def _unchanged(self, text: str, kind: str = "error"):
        """A message and no other change, for a load with nothing to load."""
        return {self.msg: message_html(text, kind)}

    def on_load_builtin(self, values: dict):
        name = values[self.builtin_dd]
        if not name:
            warn("Choose a built-in set first.")
            return self._unchanged("Choose a built-in set first.")
        return self.load_data(f"builtin:{name}", values)

    def on_load_file(self, values: dict):
        path = values[self.upload]
        if not path:
            warn("Upload a file first.")
            return self._unchanged("Upload a JSONL, JSON, CSV or Parquet file first.")
        if not self.ctx.registry.allow_local_paths and not is_upload(str(path)):
            warn(NOT_AN_UPLOAD)
            return self._unchanged(NOT_AN_UPLOAD)
        return self.load_data(str(path), values, upload=True)

    def on_load_hub(self, values: dict):
        dataset_id = (values[self.hub_id] or "").strip().removeprefix("hf:")
        if not dataset_id:
            warn("Type a dataset id such as ehovy/race.")
            return self._unchanged("Type a dataset id such as ehovy/race.")
        return self.load_data(f"hf:{dataset_id}", values, values[self.hub_config], values[self.hub_split])

    def on_page_load(self, values: dict):
        name = values[self.builtin_dd]
        if not name:
            return self._unchanged("No built-in sets are installed; upload a file.", "info")
        return self.load_data(f"builtin:{name}", values)

    def render_tokens(self, values: dict) -> str:
        shared = self.shared
        dv: DataView | None = values[shared.data_state]
        index, mode, plw_value, run_name = (
            values[self.example_idx],
            values[self.colour_by],
            values[shared.plw],
            values[shared.run_choice],
        )
        if dv is None or not dv.encoded:
            return message_html("Load a data set to see its tokens.", "info")
        indices = dv.example_indices()
        i = min(max(int(index or 0), 0), len(indices) - 1)
        enc = dv.encoded[indices[i]]
        tokenizer = self.ctx.models.tokenizer(dv.model_name, dv.chat_template)
        special = set(tokenizer.all_special_ids)
        weights = token_html(
            enc, float(plw_value), special_ids=special, completion_weight=self.completion_weight(values)
        )
        if mode == "loss weight" or not mode:
            return weights
        if not run_name:
            return message_html("Choose a trained run in the Compare tab to colour tokens by loss.", "info") + weights
        try:
            loaded = self.ctx.models.get(self.ctx.find_run(run_name).path)
            enc2 = enc
            if (loaded.config.model.name, loaded.config.model.chat_template) != (dv.model_name, dv.chat_template):
                enc2 = encode(loaded.tokenizer, enc.example, dv.max_length, dv.data.get("train_eos", True))
            losses = api.per_token_losses(loaded, enc2)
            on, off = losses["on"], losses["off"]
        except Exception as exc:
            return message_html(f"Cannot compute token losses with run {run_name}: {error_text(exc)}")
        loss_mode_value = {"loss: adapter on": "on", "loss: adapter off": "off"}.get(mode, "diff")
        return token_loss_html(
            enc2, on, off, loss_mode_value, float(plw_value), special_ids=set(loaded.tokenizer.all_special_ids)
        )

    def on_plw(self, values: dict):
        dv: DataView | None = values[self.shared.data_state]
        out = {self.token_view: self.render_tokens(values)}
        if dv is not None and dv.encoded:
            out[self.stats_md] = stats_markdown(
                dv.stats,
                float(values[self.shared.plw]),
                dv.n_skipped,
                dv.total,
                dv.packing,
                self.completion_weight(values),
            )
        return out
