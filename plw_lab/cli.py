"""`lab`: train, evaluate, compare and inspect from the terminal.

    lab train --plw 0.1 --set train.max_steps=60
    lab train --resume runs/<run>       # continue a stopped, interrupted or failed run from its checkpoint
    lab inspect -n 2                    # tokens coloured by weight, with labels
    lab eval runs/<run>                 # validation metrics, adapter on and off
    lab compare runs/<run>              # generations, answers and forgetting probe, on vs off
    lab probe runs/<run>                # a linear probe on the frozen base model, beside the adapter
    lab sweep --plws 0,0.1,1 --seeds 0,1  # a PLW x seed grid on one split: runs/sweep-*/sweep.csv
    lab config > my.yaml                # every setting with its default; edit, then --config my.yaml
    lab memory --presets                # the memory a run needs, and the model presets' sizes
    lab push runs/<run> --repo you/name # adapter, model card and config to the Hugging Face hub
    lab app                             # the web app on http://127.0.0.1:7860 (pip install 'plw-lab[app]')
    lab notebooks lessons               # the teaching notebooks into ./lessons, for `jupyter lab lessons`

Multi-GPU: `accelerate launch -m plw_lab train ...` (DDP, FSDP or DeepSpeed as accelerate is configured).

SIGTERM and Ctrl-C stop `lab train` like the app's Stop button: the current optimiser step
finishes, the adapter and checkpoint are saved, summary.json says `stopped`, and the exit code is
128 + the signal number (143 for SIGTERM, 130 for Ctrl-C). A second Ctrl-C quits at once; the run
then resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time

from plw_lab.core.config import ConfigError, LabConfig, hf_names_help, parse_overrides
from plw_lab.core.metrics import RANKED, metric
from plw_lab.core.metrics import label as metric_label
from plw_lab.core.version import __version__

# Shortcut flags for the settings changed most often; everything else goes through --set.
SHORTCUTS = {
    "model": "model.name",
    "data": "data.source",
    "plw": "train.prompt_loss_weight",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "lr": "train.learning_rate",
    "output_dir": "train.output_dir",
}


SHORTCUT_FLAGS = {f"--{flag.replace('_', '-')}" for flag in SHORTCUTS}


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--lr -1e-3` as `--lr=-1e-3`.

    argparse takes a value such as '-1e-3' for an unknown flag and stops with "expected one
    argument"; joined, the value reaches the config, whose range check says what is allowed.
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in SHORTCUT_FLAGS and arg.startswith("-") and _is_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON config file (see `lab config`)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override any setting"
    )
    for flag, key in SHORTCUTS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, help=f"shortcut for --set {key}=...")


def build_config(args) -> LabConfig:
    cfg = LabConfig.load(args.config) if args.config else LabConfig()
    overrides = parse_overrides(args.set)
    for flag, key in SHORTCUTS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    return cfg.override(overrides) if overrides else cfg


# -- printing ---------------------------------------------------------------------------------

ANSI = {
    "RESET": "\033[0m",
    "DIM": "\033[2m",
    "BOLD": "\033[1m",
    "GREEN": "\033[32m",
    "CYAN": "\033[36m",
    "YELLOW": "\033[33m",
    "RED": "\033[31m",
}
RESET = DIM = BOLD = GREEN = CYAN = YELLOW = RED = ""  # set by `set_colour`; empty means plain text


def colour_wanted(stream) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything (https://no-color.org)."""
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def set_colour(enabled: bool) -> None:
    """Turn the escape codes every print uses on or off."""
    globals().update({name: code if enabled else "" for name, code in ANSI.items()})


def colour_tokens(tokenizer, enc, plw: float, colour: bool = True) -> str:
    """The example's text token by token: completion in green, prompt dimmed unless PLW > 0."""
    out = []
    for token_id, completion in zip(enc.input_ids, enc.completion_mask):
        piece = tokenizer.decode([token_id]).replace("\n", "↵\n")
        if not colour or not RESET:
            out.append(f"[{piece}]" if completion else piece)
        elif completion:
            out.append(f"{BOLD}{GREEN}{piece}{RESET}")
        else:
            out.append(f"{CYAN}{piece}{RESET}" if plw > 0 else f"{DIM}{piece}{RESET}")
    return "".join(out)


def token_table(tokenizer, enc, plw: float, completion_weight: float = 1.0) -> str:
    """One row a token: position, id, text, label (the target it is trained on) and weight
    (PLW and the completion weight lambda_r, times the data's record and message weights)."""
    from plw_lab.core.weights import token_weight_values

    rows = [f"{'pos':>4} {'id':>6}  {'token':<18} {'label':>6} {'weight':>6}"]
    weights = token_weight_values(
        enc.prompt_mask, enc.completion_mask, plw, completion_weight, getattr(enc, "data_weight", None)
    )
    for i, (token_id, weight) in enumerate(zip(enc.input_ids, weights)):
        # Position i's label is token i itself as the target predicted from position i-1; -100 when unweighted.
        label = token_id if weight > 0 else -100
        rows.append(f"{i:>4} {token_id:>6}  {tokenizer.decode([token_id])!r:<18} {label:>6} {weight:>6.3g}")
    return "\n".join(rows)


def print_event(event, stream=None) -> None:
    stream = stream or sys.stdout
    kind = event.kind
    if kind == "started":
        stopping = (
            f", best adapter by {event.early_stopping_metric}" if getattr(event, "early_stopping_metric", "") else ""
        )
        print(
            f"run {event.run_dir}: {event.n_train} train / {event.n_val} validation examples, "
            f"{event.total_steps} steps{stopping}",
            file=stream,
        )
        processes = f"{event.world_size} process" + ("es" if event.world_size > 1 else "")
        print(f"{processes}, {event.global_batch} examples per optimiser step", file=stream)
        for name, path in event.paths.items():
            print(f"  {name}: {path}", file=stream)
        for note in event.data_report.get("notes", []):
            print(f"{YELLOW}data: {note}{RESET}", file=stream)
        for note in event.skipped[:5]:
            print(f"{YELLOW}skipped: {note}{RESET}", file=stream)
        cut = event.truncation or {}
        if cut:
            print(
                f"max_length {cut['max_length']}: {cut['examples_cut']} of {cut['examples']} examples cut "
                f"({cut['tokens_cut']} tokens, {cut['prompt_share_cut']:.1%} of prompt tokens), "
                f"{cut['examples_skipped']} skipped",
                file=stream,
            )
    elif kind == "advice":
        print(f"{YELLOW}note: {event.message}{RESET}", file=stream)
    elif kind == "step":
        print(
            f"step {event.step:>4}/{event.total_steps}  loss {event.train_loss:.4f}  lr {event.learning_rate:.2e}  "
            f"{event.tokens_per_second:,.0f} tok/s",
            file=stream,
        )
    elif kind == "eval":
        m = event.metrics
        shown = [
            f"{name} {metric(name).format_with_interval(m)}"
            for name in (*RANKED, "unparseable", "majority_baseline", "chance")
            if m.get(name) is not None
        ]
        if m.get("predicted"):
            shown.append(f"predicted {m['predicted']}")
        print(
            f"{BOLD}eval step {event.step:>4}{RESET}  " + "  ".join(shown) + ("  *best*" if event.is_best else ""),
            file=stream,
        )
    elif kind in ("finished", "stopped"):
        print(
            f"{GREEN}{kind} at step {event.step}{RESET}" + (f": {event.reason}" if kind == "stopped" else ""),
            file=stream,
        )
    elif kind == "failed":
        print(f"{RED}failed at step {event.step}: {event.error}{RESET}", file=stream)


class ProgressBar:
    """A tqdm bar over a run's steps on stderr, naming the phase (loading, evaluating step N,
    training, final evaluation, comparing) with its elapsed time and the ETA evaluations included;
    every event is printed above it. Where the stream is not a terminal (a log file) there is no
    bar: each new phase is printed as a line instead."""

    def __init__(self, printer=None, stream=None) -> None:
        from tqdm import tqdm

        from plw_lab.views.history import History

        self.stream = stream or sys.stderr
        self.printer = printer or print_event
        self.history = History()
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(
            total=0,
            file=self.stream,
            unit="step",
            dynamic_ncols=True,
            leave=True,
            disable=not self.live,
            bar_format="{desc}: {bar} {n_fmt}/{total_fmt} steps{postfix}",
        )

    def __call__(self, event) -> None:
        self.history.add(event)
        if self.live:
            with self.bar.external_write_mode():
                self.printer(event)
            self.refresh()
        else:
            self.printer(event)
            if event.kind == "phase":
                print(f"{DIM}\u2026 {self.history.phase_progress(time.time())[0]}{RESET}", file=sys.stdout)

    def refresh(self, now: float | None = None) -> None:
        from plw_lab.views.text_views import format_duration

        now = time.time() if now is None else now
        history, bar = self.history, self.bar
        if history.total_steps and bar.total != history.total_steps:
            bar.total = history.total_steps
        step = int((history.last_step or {}).get("step") or 0)
        if step != bar.n:
            bar.n = step
        what, _ = history.phase_progress(now)
        bar.set_description_str(history.status if history.done else (what or "starting"), refresh=False)
        eta = history.eta(now)
        postfix = f" | elapsed {format_duration(history.elapsed(now))}"
        if not history.done:
            postfix += f" | ETA {format_duration(eta)}" if eta is not None else ""
        bar.set_postfix_str(postfix.lstrip(" |"), refresh=False)
        bar.refresh()

    def close(self) -> None:
        self.bar.close()


def print_stopping(report: dict | None, stream=None) -> None:
    """The stopping-criterion report: a line per curve, then the sentence with the paired test."""
    from plw_lab.views.stopping_view import stopping_rows, stopping_sentences

    rows = stopping_rows(report)
    if not rows:
        return
    stream = stream or sys.stdout
    print("\nstopping on each validation curve keeps:", file=stream)
    for row in rows:
        print(f"  {row['stop on']:34}step {row['kept step']:<6}{row['answer accuracy there']}", file=stream)
    print(stopping_sentences(report), file=stream)


def print_comparison(comparison: dict, stream=None) -> None:
    stream = stream or sys.stdout
    on, off = comparison["on"], comparison["off"]
    print(f"{'':28}{'adapter off':>22}{'adapter on':>22}", file=stream)
    for key in (*RANKED, "unparseable", "majority_baseline", "chance"):
        a, b = off["metrics"].get(key), on["metrics"].get(key)
        if a is not None or b is not None:
            m = metric(key)
            print(
                f"{key:28}{m.format_with_interval(off['metrics']):>22}{m.format_with_interval(on['metrics']):>22}",
                file=stream,
            )
    if off.get("probe_perplexity") is not None:
        print(
            f"{'forgetting probe perplexity':28}{off['probe_perplexity']:>22.2f}{on['probe_perplexity']:>22.2f}",
            file=stream,
        )
    if "predicted" in off["metrics"]:
        print(
            f"{'predicted answers':28}{json.dumps(off['metrics']['predicted']):>22} "
            f"{json.dumps(on['metrics']['predicted'])}",
            file=stream,
        )
    for key, test in (comparison.get("paired") or {}).items():
        print(
            f"{BOLD}{key}, adapter off vs on{RESET} (exact McNemar on the same {test['n']} examples): right only off "
            f"{test['first_only']}, right only on {test['second_only']}, p = {test['p_value']:.3g}: {test['verdict']}",
            file=stream,
        )
    if comparison.get("format_vs_task"):
        print(comparison["format_vs_task"]["text"], file=stream)
    for i, example in enumerate(comparison.get("examples", [])):
        print(f"\n{BOLD}example {i}{RESET} (reference: {example['reference']!r})", file=stream)
        print(f"  off: {off['generations'][i]!r}\n  on:  {on['generations'][i]!r}", file=stream)


# -- commands ---------------------------------------------------------------------------------


def stop_on_signals(stop) -> dict:
    """SIGTERM and the first Ctrl-C ask `stop` (a `StopRequest`) to stop the run after the current
    step; a second Ctrl-C raises KeyboardInterrupt at once. Returns the previous handlers. Signal
    handlers exist only in the main thread, so elsewhere (an app's training thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signal = signum
        stop.request(f"stopped by {name}")
        print(
            f"\n{YELLOW}{name}: stopping after the current optimiser step and saving"
            f"{' (Ctrl-C again quits at once)' if signum == signal.SIGINT else ''}{RESET}",
            file=sys.stderr,
        )

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def cmd_train(args) -> int:
    from plw_lab.core.models import check_model
    from plw_lab.core.runs import load_run
    from plw_lab.core.training import StopRequest, is_main_process, resume, train

    stop = StopRequest()
    if args.resume and (args.config or args.set or any(getattr(args, flag, None) is not None for flag in SHORTCUTS)):
        raise ConfigError(
            "--resume continues a run with its own config.yaml; leave out --config, --set and the shortcut flags"
        )
    bar = ProgressBar() if is_main_process() and not args.no_progress else None
    from transformers.utils import logging as transformers_logging

    # Like the lab's own bar, the weight-loading and download bars are for a terminal: a log file, or
    # --no-progress, gets the events alone (and a refused run its one error line).
    hub_bars = transformers_logging.is_progress_bar_enabled()
    if hub_bars and (args.no_progress or not getattr(sys.stderr, "isatty", lambda: False)()):
        transformers_logging.disable_progress_bar()
    previous = stop_on_signals(stop)
    try:
        subscribers = [bar or print_event]
        if args.resume:
            result = resume(args.resume, subscribers=subscribers, stop=stop)
        else:
            cfg = build_config(args)
            # A model that cannot load ends here, before its memory is estimated; `train` refuses every
            # other bad setting, record or template (exit code 2) before a run folder exists.
            check_model(cfg.model)
            if is_main_process():
                from plw_lab.core.memory import describe

                print(describe(cfg))
            result = train(cfg, subscribers=subscribers, stop=stop)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if bar is not None:
            bar.close()
        if hub_bars:
            transformers_logging.enable_progress_bar()
    if is_main_process():  # under `accelerate launch` every process gets here; one report is enough
        if result.comparison:
            print()
            print_comparison(result.comparison)
        print_stopping(result.summary.get("stopping"))
        print(f"\nrun folder: {result.run_dir}")
        still_there = (result.run_dir / "config.yaml").exists()  # a run folder deleted while it trained is gone
        if result.status in ("stopped", "failed") and still_there and load_run(result.run_dir).resumable:
            print(f"resume with: lab train --resume {result.run_dir}")
    if result.status == "failed":
        return 1
    return 128 + stop.signal if stop.signal else 0


def _load(run_dir: str, which: str = ""):
    from plw_lab import api

    loaded = api.load_run(run_dir, which)
    step = loaded.adapter_step if loaded.adapter_step is not None else "unknown"
    print(f"adapter: {loaded.adapter_dir} (step {step})")
    return loaded


def cmd_eval(args) -> int:
    from plw_lab import api

    loaded = _load(args.run, args.adapter)
    measured = api.evaluate(loaded)
    print(f"{BOLD}{loaded.run.name}{RESET}: {len(loaded.validation())} validation examples")
    print(metrics_table(measured["off"], measured["on"]))
    return 0


def metrics_table(off: dict, on: dict) -> str:
    """Validation metrics with the adapter off and on, one row a metric, in the registry's labels and formats
    (accuracies with their 95% interval)."""
    rows = [
        (metric_label(name), metric(name).format_with_interval(off), metric(name).format_with_interval(on))
        for name in (*RANKED, "unparseable", "majority_baseline", "chance")
        if off.get(name) is not None
    ]
    for key in ("predicted", "answers"):
        if off.get(key):
            rows.append((key.replace("_", " "), json.dumps(off[key]), json.dumps(on.get(key))))
    width = max([len("metric")] + [len(r[0]) for r in rows])
    cols = [max([len("adapter off")] + [len(r[1]) for r in rows]), max([len("adapter on")] + [len(r[2]) for r in rows])]
    lines = [
        f"{'metric':<{width}}  {'adapter off':>{cols[0]}}  {'adapter on':>{cols[1]}}",
        f"{'-' * width}  {'-' * cols[0]}  {'-' * cols[1]}",
    ]
    lines += [f"{a:<{width}}  {b:>{cols[0]}}  {c:>{cols[1]}}" for a, b, c in rows]
    return "\n".join(lines)


def cmd_compare(args) -> int:
    from plw_lab import api
    from plw_lab.core.runs import load_run

    run = load_run(args.run)
    saved = None if args.recompute or args.adapter and run.adapter(args.adapter) != run.adapter() else run.comparison()
    if saved is not None:  # no model to load: compare.json was made with the adapter the summary keeps
        kept = run.summary.get("adapter")
        step = run.summary.get("adapter_step")
        where = run.path / kept if kept else "the one kept at the end of training"
        print(f"adapter: {where} (step {step}; from compare.json)")
        print_comparison(saved)
        return 0
    print_comparison(api.compare(_load(args.run, args.adapter), recompute=True))
    return 0


def cmd_probe(args) -> int:
    from plw_lab import api
    from plw_lab.views.text_views import probe_rows

    loaded = _load(args.run)
    data = loaded.prepared()
    print(
        f"{BOLD}{loaded.run.name}{RESET}: probing the frozen base model on {len(data.train)} training and "
        f"{len(data.val)} validation examples"
    )
    rows = probe_rows(api.probe(loaded), loaded.comparison)
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(f"{c:<{w}}" for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{str(r.get(c, '')):<{w}}" for c, w in zip(columns, widths)))
    if loaded.comparison is None:
        print("(the run has no compare.json: `lab compare` adds the adapter's rows)")
    return 0


#: Seconds of reading or encoding data before `lab inspect` says on stderr what it is doing.
PROGRESS_DELAY = 1.0


@contextlib.contextmanager
def said_if_slow(text: str, stream=None):
    """Print `text` on stderr if the block takes over PROGRESS_DELAY seconds (a step with no progress of its own)."""
    timer = threading.Timer(PROGRESS_DELAY, lambda: print(text, file=stream or sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def with_progress(items, what: str, stream=None, unit: str = "example"):
    """`items`, with a progress bar on stderr once going through them takes over PROGRESS_DELAY seconds."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    # A log file gets a line every ten seconds, not the ten a second a terminal redraws in place.
    every = 0.1 if getattr(stream, "isatty", lambda: False)() else 10.0
    return tqdm(items, desc=what, unit=unit, file=stream, delay=PROGRESS_DELAY, mininterval=every, leave=False)


def inspected_plw(cfg: LabConfig, step: int | None) -> float:
    """The PLW the token view shows: at optimiser step `step` (0-based) under train.plw_schedule, else the first."""
    from plw_lab.core.weights import plw_at

    t = cfg.train
    if step is None or t.plw_schedule == "constant":
        return t.prompt_loss_weight
    if t.max_steps <= 0:
        raise ConfigError(
            "--step under a train.plw_schedule needs train.max_steps above 0 (with epochs the step count depends on "
            "the split)"
        )
    if not 0 <= step < t.max_steps:
        raise ConfigError(f"--step is an optimiser step from 0 to {t.max_steps - 1} (train.max_steps); got {step}")
    return plw_at(t.plw_schedule, t.prompt_loss_weight, t.plw_end, step, t.max_steps)


def cmd_inspect(args) -> int:
    from plw_lab import api
    from plw_lab.core.data import load_examples
    from plw_lab.core.masks import ENCODE_BATCH
    from plw_lab.core.models import load_tokenizer
    from plw_lab.core.stats import truncation_message

    if args.n < 0:
        raise ConfigError(f"-n is how many examples to show, 0 or more; got {args.n}")
    cfg = build_config(args)
    tokenizer = load_tokenizer(cfg.model)
    with said_if_slow(f"reading {cfg.data.source} ..."):
        examples = load_examples(cfg.data)
    # Every example is encoded: the lengths, what max_length cuts and the auto max_length are over all of them.
    encoding = f"encoding examples ({ENCODE_BATCH} a batch)"
    report = api.data_report(
        cfg, tokenizer, examples, progress=lambda items: with_progress(items, encoding, unit="batch")
    )
    plw, d = inspected_plw(cfg, args.step), cfg.data
    colour = colour_wanted(sys.stdout) or args.colour
    set_colour(colour)
    fitted, cut, s = report.fitted, report.fitted.truncation, report.stats.summary()
    print(
        f"{len(fitted.encoded)} examples ({len(fitted.skipped)} skipped as too long): prompt tokens mean "
        f"{s['prompt_tokens']['mean']:.1f} as written, completion tokens mean {s['completion_tokens']['mean']:.1f}, "
        f"generation ratio Rg mean {s['rg_mean']:.4g}, geometric mean {s['rg_geomean']:.4g}; "
        f"label balance {report.labels or 'n/a'}"
    )
    for note in report.examples.report.lines():
        print(f"{YELLOW}data: {note}{RESET}")
    print(
        f"max_length {fitted.max_length}{' (auto)' if not d.max_length else ''}: {cut['examples_cut']} examples cut, "
        f"{cut['tokens_cut']} tokens, {cut['prompt_share_cut']:.1%} of prompt tokens; "
        f"{cut['examples_skipped']} skipped; longest example {cut['longest']} tokens"
    )
    warning = truncation_message(cut)
    if warning:
        print(f"{YELLOW}warning: {warning}{RESET}")
    packing = report.packing
    print(
        f"packing efficiency at batch {cfg.train.batch_size}: padded {packing['padded']:.0%} real tokens, "
        f"packed {packing['packed']:.0%}\n"
    )
    by_index = report.by_source_index()
    for example in report.examples[: args.n]:
        enc = by_index.get(example.source_index)
        if enc is None:
            print(
                f"{BOLD}example {example.source_index}{RESET}: skipped, too long for max_length {fitted.max_length}\n"
            )
            continue
        cut_note = f", {enc.truncated} cut from the left" if enc.truncated else ""
        print(
            f"{BOLD}example {example.source_index}{RESET}: {enc.n_prompt} prompt + {enc.n_completion} completion "
            f"tokens{cut_note}; PLW {plw:g}; end-of-turn trained: {d.train_eos}"
        )
        print(colour_tokens(tokenizer, enc, plw, colour))
        if args.table:
            print(token_table(tokenizer, enc, plw, cfg.train.completion_loss_weight))
        print()
    return 0


def print_sweep_row(row: dict, stream=None) -> None:
    from plw_lab.views.text_views import sweep_row_text

    print(sweep_row_text(row), file=stream or sys.stdout)


#: `lab sweep` flags for the sweep.* settings (each also settable with --set or in a config file).
SWEEP_FLAGS = {
    "backend": "sweep.backend",
    "gpus_per_run": "sweep.gpus_per_run",
    "cpus_per_run": "sweep.cpus_per_run",
    "address": "sweep.address",
    "prune": "sweep.prune",
    "grace_steps": "sweep.grace_steps",
}


def cmd_sweep(args) -> int:
    """Run or resume a sweep. SIGTERM and Ctrl-C stop it as they stop `lab train` (each running run
    saved as `stopped`, exit code 128 + the signal number); `lab sweep --resume` finishes it."""
    from plw_lab import api
    from plw_lab.core.sweep import make_grid, points
    from plw_lab.core.sweep_table import DONE, Grid, read_csv
    from plw_lab.core.training import StopRequest
    from plw_lab.views.text_views import cell_text, grid_text

    settings = {key: getattr(args, flag) for flag, key in SWEEP_FLAGS.items() if getattr(args, flag) is not None}
    stop, started = StopRequest(), []  # `started`: the sweep folder, once it exists
    if args.resume:
        grid_flags = [f"--{f}" for f in ("config", "set", "plws", "seeds", "grid", "name") if getattr(args, f)]
        grid_flags += [f"--{flag.replace('_', '-')}" for flag in SHORTCUTS if getattr(args, flag, None) is not None]
        if grid_flags:
            raise ConfigError(
                f"--resume finishes the sweep with its own grid and config; leave out {', '.join(grid_flags)} "
                "(the sweep.* flags such as --backend may change)"
            )
        started.append(args.resume)
    else:
        cfg = build_config(args)
        cfg = cfg.override(settings) if settings else cfg
        varied = parse_overrides(args.grid)
        grid = make_grid(cfg, args.plws, args.seeds, varied)
        where = ""
        if cfg.sweep.backend == "ray":
            where = f" on Ray ({cfg.sweep.address})" if cfg.sweep.address else " on Ray"
    previous = stop_on_signals(stop)
    try:
        if args.resume:
            print(f"sweep: finishing the runs of {args.resume} that did not finish")
            folder = api.resume_sweep(args.resume, settings, stop=stop, on_run=print_sweep_row)
        else:
            print(
                f"sweep: {grid_text(grid)} = {len(grid.cells())} runs "
                f"of {cfg.train.max_steps} steps on one split (data.split_seed {cfg.data.split_seed}){where}"
            )
            # Ray's workers print their runs' own messages; the local runs' notes are printed here.
            notes = lambda event: print_event(event) if event.kind in ("advice", "failed") else None
            subscribers = [notes] if cfg.sweep.backend == "local" else []
            folder = api.sweep(
                cfg,
                args.plws,
                args.seeds,
                args.name,
                subscribers=subscribers,
                stop=stop,
                on_run=print_sweep_row,
                grid=varied,
                on_folder=started.append,
            )
    except KeyboardInterrupt:  # a second Ctrl-C: each run keeps its last checkpoint
        hint = f"; `lab sweep --resume {started[0]}` finishes the sweep" if started else ""
        print(f"\n{RED}interrupted{hint}{RESET}", file=sys.stderr)
        return 130
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

    rows = read_csv(folder)
    acc = points(rows)
    for m in acc["means"]:
        interval = (
            f" (95% t interval {m['low']:.1%} to {m['high']:.1%})"
            if m["low"] is not None
            else " (one seed: no interval)"
        )
        print(f"{cell_text(m, seed=False)}: mean best answer accuracy {m['mean']:.1%} over {m['n']} seed(s){interval}")
    for r in (r for r in acc["runs"] if r["excluded"]):
        print(f"{YELLOW}left out of the means: {cell_text(r)} ({r['excluded']}){RESET}")
    for f in acc["fits"]:
        of = f" ({cell_text(f['series'], seed=False)})" if f["series"] else ""
        print(f"quadratic fit{of}: accuracy = {f['a']:.3f} + {f['b']:.3f} PLW + {f['c']:.3f} PLW^2 (R^2 {f['r2']:.2f})")
    if any(r["status"] == "finished" for r in rows):
        print_verdict(api.sweep_verdict_of(folder))
    print(f"\nsweep folder: {folder} (sweep.csv)")
    left = len(Grid.load(folder).cells()) - sum(r["status"] in DONE for r in rows)
    if left:
        print(f"{YELLOW}{left} run(s) did not finish; finish them with: lab sweep --resume {folder}{RESET}")
    if stop.signal:
        return 128 + stop.signal
    return 1 if any(r["status"] in ("failed", "interrupted") for r in rows) else 0


def print_verdict(lesson) -> None:
    """What the finished runs of an `api.Lesson` support, in sentences."""
    print(f"\nwhat {len(lesson.runs)} finished run(s) support:")
    for sentence in lesson.verdict["sentences"]:
        print(sentence)


def cmd_verdict(args) -> int:
    from plw_lab import api

    if args.folders:
        print_verdict(api.sweep_verdict_of(*args.folders))
        return 0
    lesson = api.lesson()
    print(f"The real-data PLW lesson shipped with the lab, {lesson.label}; reproduce it with:")
    for line in lesson.measured["commands"]:
        print(f"  {line}")
    print_verdict(lesson)
    return 0


def cmd_config(args) -> int:
    import yaml

    print(yaml.safe_dump(build_config(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_memory(args) -> int:
    from plw_lab.core.memory import count, estimate, gib
    from plw_lab.core.models import ModelError
    from plw_lab.core.presets import PRESETS

    cfg = build_config(args)
    # The estimate is what was asked for: a model it cannot size is an error here, not a note.
    print(estimate(cfg, device=args.device).describe())
    if args.presets:
        print(f"\n{'model':<38}{'parameters':>12}{'to train (' + (args.device or 'cuda') + ')':>22}")
        for preset in PRESETS:
            try:
                e = estimate(cfg.override({"model.name": preset.hub_id}), device=args.device or "cuda")
            except ModelError as exc:  # e.g. lora.layers naming a layer a smaller preset lacks
                print(f"{preset.hub_id:<38}{'':>12}  {exc}")
                continue
            gated = "  (gated: needs HF_TOKEN)" if preset.gated else ""
            print(f"{preset.hub_id:<38}{count(e.parameters):>12}{gib(e.total):>22}{gated}")
    return 0


def cmd_app(argv: list[str]) -> int:
    from plw_lab.core.extras import MissingExtraError, require

    try:
        require("app", "lab app")
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from plw_lab.app.main import main as serve

    serve(argv, prog="lab app")
    return 0


def cmd_notebooks(args) -> int:
    from plw_lab import api

    try:
        written = api.write_notebooks(args.folder)
    except OSError as exc:  # the folder is a file, holds the notebooks already, or cannot be written
        print(f"error: {f'{exc.filename}: {exc.strerror}' if exc.strerror else exc}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in written))
    print(f'open them with `jupyter lab {args.folder}` (needs `pip install "plw-lab[notebooks]"`)')
    return 0


def cmd_push(args) -> int:
    from plw_lab.core.card import push

    print(f"pushed {args.run} to {push(args.run, args.repo, private=args.private)}")
    return 0


#: Two or three examples per command, shown by `lab COMMAND --help`.
EXAMPLES = {
    "train": """examples:
  lab train --plw 0.1 --set train.max_steps=60        # PLW 0.1 on the built-in set, 60 steps
  lab train --data my.jsonl --model tiny-random --plw 0
  lab train --config my.yaml --no-progress > log.txt   # events only, no progress bar""",
    "eval": """examples:
  lab eval runs/20260101-120000-plw0.1                # the metrics table, adapter off and on
  lab eval "$(ls -d runs/* | tail -1)"                 # the newest run""",
    "compare": """examples:
  lab compare runs/<run>                  # reads the comparison saved when the run finished
  lab compare runs/<run> --recompute      # evaluates again (e.g. after editing eval.* settings)""",
    "verdict": """examples:
  lab verdict                                          # the real-data PLW lesson shipped with the lab
  lab verdict runs/plw-lesson                          # after `lab sweep --config plw-lesson --name plw-lesson`
  lab verdict runs/sweep-a runs/sweep-b                # two sweeps taken together""",
    "probe": """examples:
  lab probe runs/<run>                    # logistic regression on the frozen base model's features, same split""",
    "inspect": """examples:
  lab inspect -n 2 --plw 0.1 --table      # two examples token by token, with label and weight per token
  lab inspect --data my.csv --model tiny-random -n 1
  NO_COLOR=1 lab inspect -n 1             # completion tokens in [brackets] instead of colour""",
    "sweep": """examples:
  lab sweep --plws 0,0.01,0.1,1 --seeds 0,1,2 --max-steps 40   # 12 runs on one validation split
  lab sweep --model tiny-random --plws 0,1 --seeds 0 --name smoke
  lab sweep --config plw-lesson            # the real-data lesson: its grid and arms are in the recipe
  lab sweep --plws 0,0.1,1 --grid train.completion_loss_weight=0.1,1 --seeds 0,1 \\
      --set train.loss_normalization=count_nonzero   # the WIT grid: prompt x completion weights
  lab sweep --plws 0,0.01,0.1,1 --seeds 0,1,2 --backend ray --prune asha --grace-steps 10   # see docs/sweeps.md
  lab sweep --resume runs/sweep-20260101-120000   # finish the runs that did not finish""",
    "config": """examples:
  lab config > my.yaml                    # every setting with its default
  lab config --plw 0.5 --set lora.r=16    # see what the overrides change
  lab config --set per_device_train_batch_size=4 --config trl.yaml   # transformers/TRL names work too"""
    + "\n\n"
    + hf_names_help(),
    "memory": """examples:
  lab memory --model Qwen/Qwen2.5-1.5B-Instruct --set train.batch_size=4 --device cuda
  lab memory --presets                    # every preset's size and the memory a run of this config needs
  lab memory --config race-plw-1b-24gb    # a recipe shipped with the lab, by name""",
    "app": """examples:
  lab app                                 # the lab in the browser on http://127.0.0.1:7860
  lab app --model tiny-random --port 8080 # every option: lab app --help""",
    "notebooks": """examples:
  lab notebooks lessons                   # the three teaching notebooks, into ./lessons
  jupyter lab lessons                     # then open them (pip install "plw-lab[notebooks]")""",
    "push": """examples:
  HF_TOKEN=hf_... lab push runs/<run> --repo your-name/smollm2-plw0-race
  lab push runs/<run> --repo your-name/adapter --private""",
}


def main(argv: list[str] | None = None) -> int:
    set_colour(colour_wanted(sys.stdout))
    parser = argparse.ArgumentParser(
        prog="lab",
        description="PLW Lab: prompt-loss-weighted fine-tuning.",
        epilog="examples:\n" + __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str):
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("train", "train a LoRA adapter and compare it with the base model")
    _config_args(p)
    p.add_argument("--no-progress", action="store_true", help="print the events only, without the progress bar")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped, interrupted or failed run from its last checkpoint"
    )
    p.set_defaults(func=cmd_train)
    adapter_help = (
        "which adapter: final (adapter/), best (best_adapter/) or last (last_adapter/); "
        "default: the one summary.json keeps"
    )
    p = command("eval", "validation metrics of a run, adapter on and off")
    p.add_argument("run", help="run folder")
    p.add_argument("--adapter", choices=("final", "best", "last"), default="", help=adapter_help)
    p.set_defaults(func=cmd_eval)
    p = command("compare", "adapter on vs off: generations, answers, forgetting probe")
    p.add_argument("run", help="run folder")
    p.add_argument("--adapter", choices=("final", "best", "last"), default="", help=adapter_help)
    p.add_argument("--recompute", action="store_true", help="recompute instead of reading compare.json")
    p.set_defaults(func=cmd_compare)
    p = command("probe", "a frozen-feature probe: logistic regression on the base model's hidden states")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_probe)
    p = command("inspect", "show examples token by token with their masks and weights")
    _config_args(p)
    p.add_argument("-n", type=int, default=3, help="how many examples")
    p.add_argument("--table", action="store_true", help="also print one row per token: id, label, weight")
    p.add_argument("--colour", action="store_true", help="colour even when not writing to a terminal")
    p.add_argument(
        "--step", type=int, help="show the weights of optimiser step STEP (0-based) under train.plw_schedule"
    )
    p.set_defaults(func=cmd_inspect)
    from plw_lab.core.sweep import DEFAULT_SEEDS

    p = command("sweep", "train a grid of PLW values x seeds (x any settings) on one split; write sweep.csv")
    _config_args(p)
    p.add_argument(
        "--plws",
        help="comma list of PLW values, short for --grid train.prompt_loss_weight=... "
        "(default: the config's sweep.plws, else the PLW presets 0, 0.01, 0.1, 0.5, 1)",
    )
    p.add_argument(
        "--seeds",
        help="comma list of seeds (LoRA initialisation and data order), short for --grid train.seed=... "
        f"(default: the config's sweep.seeds, else {', '.join(map(str, DEFAULT_SEEDS))}); "
        "the means are taken over them",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.FIELD=V1,V2",
        help="also vary this setting over these values (repeatable; the grid crosses them all, with the "
        "config's sweep.grid); each value is read as --set reads it",
    )
    p.add_argument("--name", default="", help="name of the sweep folder under train.output_dir")
    p.add_argument(
        "--resume", metavar="SWEEP_DIR", help="finish the runs of this sweep that did not finish (with either backend)"
    )
    p.add_argument("--backend", help="local (one run after another, the default) or ray (runs as Ray Tune trials)")
    p.add_argument("--gpus-per-run", help="ray: GPUs each run reserves where the cluster has GPUs (default 1)")
    p.add_argument("--cpus-per-run", help="ray: CPU cores each run reserves (default 1)")
    p.add_argument(
        "--address", help="ray: the cluster to join ('auto', 'ray://HOST:10001'; default: RAY_ADDRESS or a local Ray)"
    )
    p.add_argument("--prune", help="ray: 'asha' stops hopeless runs early on train.early_stopping_metric")
    p.add_argument("--grace-steps", help="ray: steps every run trains before --prune may stop it (default 10)")
    p.set_defaults(func=cmd_sweep)
    p = command("verdict", "what sweeps support: accuracy per arm with intervals, the stopping contrast, paired tests")
    p.add_argument(
        "folders", nargs="*", help="sweep or run folders, taken together (default: the real-data lesson the lab ships)"
    )
    p.set_defaults(func=cmd_verdict)
    p = command("config", "print the full config (defaults plus overrides) as YAML")
    _config_args(p)
    p.set_defaults(func=cmd_config)
    p = command("memory", "estimate the memory a training run needs, from the model's config alone")
    _config_args(p)
    p.add_argument(
        "--device", choices=("cuda", "cpu"), help="estimate for this device (default: where the run would train)"
    )
    p.add_argument("--presets", action="store_true", help="also list the model presets with their size and memory")
    p.set_defaults(func=cmd_memory)
    # Listed here for `lab --help`; `lab app ...` is handed to the app's own parser before this one runs.
    command("app", "serve the lab's web app (needs `pip install 'plw-lab[app]'`)")
    p = command("notebooks", "write the teaching notebooks into a folder, to open with Jupyter")
    p.add_argument("folder", help="folder to write them into (created if missing)")
    p.set_defaults(func=cmd_notebooks)
    p = command("push", "upload a run's adapter, model card and config to the Hugging Face hub")
    p.add_argument("run", help="run folder")
    p.add_argument("--repo", required=True, help="hub model repository, e.g. your-name/smollm2-plw0-race")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_push)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:
        return cmd_app(argv[1:])
    args = parser.parse_args(_join_negative_values(argv))
    from plw_lab.core.card import ShareError
    from plw_lab.core.data import DataError
    from plw_lab.core.models import ModelError
    from plw_lab.core.runs import DamagedRunError, ResumeError

    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that left shows here, where it is handled, not in Python's exit
        return code
    except BrokenPipeError:  # `lab inspect | head` stopped reading: what it read was all it wanted
        # Python would complain again when it flushes stdout at exit; point stdout at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # a second Ctrl-C: the run keeps its last checkpoint
        red, reset = (ANSI["RED"], ANSI["RESET"]) if colour_wanted(sys.stderr) else ("", "")
        print(
            f"\n{red}interrupted; `lab train --resume RUN_DIR` continues from the last checkpoint{reset}",
            file=sys.stderr,
        )
        return 130
    except (ConfigError, DataError, ModelError, ResumeError, DamagedRunError, ShareError, FileNotFoundError) as exc:
        red, reset = (ANSI["RED"], ANSI["RESET"]) if colour_wanted(sys.stderr) else ("", "")
        # One line, even where the message quotes a multi-line cause (a hub error, a template's own text).
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{red}error: {message}{reset}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
