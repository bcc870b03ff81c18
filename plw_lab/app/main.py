"""The PLW Lab web app: Data, Train, Compare and Runs tabs over the lab engine.

`build_app()` returns a Gradio Blocks app and has no side effects until it is launched. The
process keeps one `JobRegistry` (one training job at a time; every visitor can watch it, and a
reloaded page re-attaches to it) and one `RunModels` cache (the model of the run being compared,
shared by visitors and used under a lock). Everything a visitor loads (their data, the run they
compare) lives in `gr.State`, so visitors never see each other's choices.

This module assembles the page: the header, the PLW bar every tab uses, the four tabs (each built
and wired by its own module: `app_data`, `app_train`, `app_compare`, `app_runs`) and what runs on
page load. `main(argv)` is the command line of `lab app` and of the Space's `app.py`.
"""

from __future__ import annotations

import argparse
import functools
import html
import os
import signal
import sys
import threading
from pathlib import Path

import gradio as gr

from plw_lab.app.common import AppContext, SharedComponents, first_sentence, spec_index
from plw_lab.app.compare import CompareTab
from plw_lab.app.data import STATE_TTL_SECONDS, DataTab
from plw_lab.app.jobs import JobRegistry, Limits, RunModels
from plw_lab.app.runs import RunsTab
from plw_lab.app.train import TrainTab
from plw_lab.core.config import ConfigError, LabConfig, parse_overrides
from plw_lab.core.models import weights_note

#: Largest file a visitor may upload (Gradio rejects bigger ones before they reach the lab).
MAX_UPLOAD = "50mb"
#: Seconds a signalled app waits for its run to save and stop; Docker and Spaces kill it 10 s after SIGTERM.
STOP_GRACE = 8.0

CSS = """
#plw-header h1{margin:0;font-size:1.6em}
#plw-header p{margin:2px 0 0;color:#4b5563}
#plw-bar{border:1px solid #fed7aa;background:#fff7ed;border-radius:10px;padding:6px 10px;align-items:center}
#plw-presets button{min-width:3.4em;padding:0 6px;white-space:nowrap;overflow:visible;text-overflow:clip}
#runs-table th *,#preview th *,#compare-table th *{word-break:normal!important;overflow-wrap:normal!important;
hyphens:none}
.plw-msg-error{border:1px solid #fecaca;background:#fef2f2;color:#991b1b;border-radius:8px;padding:8px 12px;
white-space:pre-wrap}
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


def build_app(
    config: LabConfig | None = None,
    runs_dir: str | Path | None = None,
    title: str = "PLW Lab",
    allow_remote_code: bool = False,
    allow_local_paths: bool = False,
    limits: Limits | None = None,
) -> gr.Blocks:
    """The lab's Gradio app. `config` gives the starting values (defaults: `LabConfig()`); `runs_dir`
    is where runs are written and listed (default: the config's `train.output_dir`). Unless
    `allow_remote_code`, no run whose config sets `model.trust_remote_code` trains or loads here.
    Unless `allow_local_paths`, no setting a visitor sends names a file or folder of this machine
    (only uploads, built-in sets and hub ids; the starting config's own values stay). `limits`: what
    a shared app allows (the queue's length, steps and minutes a run)."""
    base = config or LabConfig()
    limits = limits or Limits()
    runs_path = Path(runs_dir or base.train.output_dir).expanduser().resolve()
    overrides = {"train.output_dir": str(runs_path)}
    if limits.max_steps and not 0 < base.train.max_steps <= limits.max_steps:
        overrides["train.max_steps"] = limits.max_steps  # the page starts within the limit
    base = base.override(overrides)
    registry = JobRegistry(allow_remote_code, allow_local_paths, limits)
    registry.check_remote_code(base, "the starting config")
    try:
        from plw_lab.core import builtin as builtin_sets
    except Exception:  # the built-in sets are optional for the app; files still work
        builtin_sets = None
    ctx = AppContext(base, runs_path, spec_index(), registry, RunModels(registry), builtin_sets)

    with gr.Blocks(title=title, analytics_enabled=False, fill_width=True) as demo:
        data_state = gr.State(None, time_to_live=STATE_TTL_SECONDS)
        seen_job = gr.State(None)
        job_timer = gr.Timer(3.0)

        with gr.Row(elem_id="plw-header"):
            gr.Markdown(
                f"# {html.escape(title)}\n"
                "Supervised fine-tuning where the **prompt-loss weight** is a knob you can see: each token's loss "
                "weight is PLW \u00d7 prompt_mask + completion_mask.\n\n"
                f"<small>Starting model: {html.escape(weights_note(base.model.name))}.</small>",
            )
            job_badge = gr.HTML("", elem_id="job-badge")

        plw_spec = ctx.specs["train.prompt_loss_weight"]
        with gr.Row(elem_id="plw-bar"):
            plw = gr.Slider(
                minimum=plw_spec.get("min", 0.0),
                maximum=plw_spec.get("max", 1.0),
                value=base.train.prompt_loss_weight,
                step=0.001,
                label="Prompt-loss weight (PLW)",
                info=first_sentence(plw_spec["help"], 200),
                elem_id="plw",
                scale=4,
            )
            with gr.Column(scale=2, min_width=260):
                gr.Markdown("Presets")
                with gr.Row(elem_id="plw-presets"):
                    for value in plw_spec["presets"]:
                        button = gr.Button(f"{value:g}", size="sm", elem_id=f"plw-preset-{value:g}".replace(".", "_"))
                        button.click(lambda v=value: v, None, plw, show_progress="hidden")
            _clamp_typed_values(plw)

        visitor = gr.BrowserState(None, storage_key="plw-lab-visitor")
        shared = SharedComponents(
            plw=plw, data_state=data_state, seen_job=seen_job, job_timer=job_timer, job_badge=job_badge, visitor=visitor
        )
        with gr.Tabs(elem_id="tabs"):
            data, train, compare = DataTab(ctx, shared), TrainTab(ctx, shared), CompareTab(ctx, shared)
            runs = RunsTab(ctx, shared)  # after Compare: it fills the Compare tab's run list

        # Events cross tabs through `shared` (the Data tab's token view uses the Compare tab's run,
        # Start reads the Data tab's options, a finished job refreshes the run lists), so each tab
        # is wired once every tab has registered its part.
        for tab in (data, train, compare, runs):
            tab.wire()
        for tab in (runs, train, data):  # the run lists first, the default data set last
            tab.wire_page_load(demo)
        _hide_internal_handlers(demo)

    demo.queue(default_concurrency_limit=4)
    demo.plw_registry = registry  # for tests and embedding: the process's job registry
    demo.plw_runs_dir = runs_path
    demo.plw_tabs = {
        "data": data,
        "train": train,
        "compare": compare,
        "runs": runs,
    }  # for tests: handlers without a browser
    _set_launch_defaults(demo)
    return demo


#: The endpoints a script may call (`gradio_client`), named where their event is wired.
PUBLIC_API = {"load_builtin", "load_file", "load_hub", "start", "cancel", "stop", "watch", "compare", "runs"}


def _hide_internal_handlers(demo: gr.Blocks) -> None:
    """Every other handler is the page's own (a slider's redraw, a page-load step): hidden from the API page
    and from clients. Gradio has no Blocks-wide default for `api_visibility`, so the rule is applied here
    once rather than at each of some sixty events."""
    named = {fn.api_name for fn in demo.fns.values()}
    missing = PUBLIC_API - named
    if missing:
        raise RuntimeError(f"public endpoints without an event: {sorted(missing)}")
    for fn in demo.fns.values():
        if fn.api_name not in PUBLIC_API:
            fn.api_visibility = "private"


def _clamp_typed_values(slider: gr.Slider) -> None:
    """A number typed outside the slider's range (PLW 5) is clamped, in every handler and in the box
    itself, so the box and the views agree (Gradio would refuse the value and leave the views behind)."""
    low, high = slider.minimum, slider.maximum
    slider.preprocess = lambda value: value if value is None else min(max(float(value), low), high)
    slider.change(
        None, slider, slider, js=f"(v) => Math.min(Math.max(Number(v) || 0, {low}), {high})", show_progress="hidden"
    )


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


USAGE = """examples:
  lab app                                # local only (127.0.0.1:7860)
  lab app --model tiny-random            # a fast random model, for trying the app out
  lab app --host 0.0.0.0 --port 8080 --runs-dir runs/shared
  lab app --share                        # a public Gradio link (explicit opt-in)
  lab app --allow-local-paths            # a single-user app: settings may name this machine's files
  lab app --max-queue 4 --max-steps 100 --max-minutes 10   # limits for a host many people share
  lab app --config space-cpu --set train.max_steps=50
(`python app.py` in a checkout takes the same options.)"""


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="PLW Lab: fine-tuning with a visible prompt-loss weight, in the browser.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # A Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0; everywhere else the default stays local.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    parser.add_argument("--model", default=None, help="starting model: 'embedded' (default), 'tiny-random' or a folder")
    parser.add_argument(
        "--runs-dir", default=None, help="folder for run outputs (default: the config's train.output_dir)"
    )
    parser.add_argument(
        "--config", default=None, help="a YAML/JSON lab config or a shipped recipe's name, giving the starting values"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a starting value, e.g. train.prompt_loss_weight=0.1 (repeatable)",
    )
    parser.add_argument("--max-file-size", default=MAX_UPLOAD, help=f"largest upload accepted (default {MAX_UPLOAD})")
    parser.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="let runs whose config sets model.trust_remote_code run their model's own Python code "
        "(off: such runs are refused)",
    )
    parser.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="let visitors name files and folders of this machine as data, validation data, mix sources or "
        "model (off: only uploads, built-in sets and hub ids; turn it on only for an app that you alone use)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=Limits.max_queue,
        help=f"runs that may wait while one trains, one per visitor (default {Limits.max_queue}; 0: no queue)",
    )
    parser.add_argument("--max-steps", type=int, default=0, help="optimiser steps a run may take (default 0: no limit)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=0,
        help="minutes a run may train before it is stopped with a checkpoint (default 0: no limit)",
    )
    args = parser.parse_args(argv)
    for flag in ("max_queue", "max_steps", "max_minutes"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be 0 or more")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse the command line, build the app and serve it until interrupted; bad settings exit with `error: ...`."""
    args = parse_args(argv, prog)
    try:
        overrides = parse_overrides(args.set)
        if args.model:
            overrides["model.name"] = args.model
        config = LabConfig.load(args.config) if args.config else LabConfig()
        if overrides:
            config = config.override(overrides)
        demo = build_app(
            config=config,
            runs_dir=args.runs_dir,
            allow_remote_code=args.allow_remote_code,
            allow_local_paths=args.allow_local_paths,
            limits=Limits(args.max_queue, args.max_steps, args.max_minutes),
        )
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(demo, server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size)


def serve(demo: gr.Blocks, **launch) -> None:
    """Serve `demo` until SIGTERM or SIGINT, then exit with 128 + the signal (143 for SIGTERM).

    A signal stops the running run after its current optimiser step with a checkpoint, as its Stop
    button does (so its owner can resume it after a restart), and records the queued runs as not
    started; the process exits once the run has saved, at most `STOP_GRACE` seconds later. It exits
    with `os._exit` from a helper thread: closing Gradio's server and the interpreter's own teardown
    take seconds that a container stopped with SIGKILL 10 s after SIGTERM does not have, and the
    training thread, joined first, is no longer there to abort the process ("terminate called without
    an active exception"). A second signal quits at once."""
    registry: JobRegistry = demo.plw_registry
    received: list[int] = []

    def exit_after(job, code: int) -> None:
        if job is not None:
            job.thread.join(STOP_GRACE)
            if job.running:
                print(
                    f"the run did not stop within {STOP_GRACE:g} s; it resumes from its last checkpoint",
                    file=sys.stderr,
                )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def handler(signum, frame):
        if received:
            os._exit(128 + signum)
        received.append(signum)
        job = registry.shutdown(signum)
        name = signal.Signals(signum).name
        print(
            f"{name}: " + ("stopping the run after its current step, then exiting" if job else "exiting"),
            file=sys.stderr,
        )
        threading.Thread(target=exit_after, args=(job, 128 + signum), name="plw-exit", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    demo.launch(**launch)
