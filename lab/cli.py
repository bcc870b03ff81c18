"""`lab`: train, evaluate, compare and inspect from the terminal.

    lab train --plw 0.1 --set train.max_steps=60
    lab inspect -n 2                    # tokens coloured by weight, with labels
    lab eval runs/<run>                 # validation metrics, adapter on and off
    lab compare runs/<run>              # generations, answers and forgetting probe, on vs off
    lab sweep --plws 0,0.1,1 --seeds 0,1  # a PLW x seed grid on one split: runs/sweep-*/sweep.csv
    lab config > my.yaml                # every setting with its default; edit, then --config my.yaml

Multi-GPU: `accelerate launch -m lab train ...` (DDP, FSDP or DeepSpeed as accelerate is configured).
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, LabConfig, parse_overrides
from .metrics import RANKED, format_value

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


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON config file (see `lab config`)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override any setting")
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

RESET, DIM, BOLD, GREEN, CYAN, YELLOW, RED = "\033[0m", "\033[2m", "\033[1m", "\033[32m", "\033[36m", "\033[33m", "\033[31m"


def colour_tokens(tokenizer, enc, plw: float, colour: bool = True) -> str:
    """The example's text token by token: completion in green, prompt dimmed unless PLW > 0."""
    out = []
    for token_id, prompt, completion in zip(enc.input_ids, enc.prompt_mask, enc.completion_mask):
        piece = tokenizer.decode([token_id]).replace("\n", "↵\n")
        if not colour:
            out.append(f"[{piece}]" if completion else piece)
        elif completion:
            out.append(f"{BOLD}{GREEN}{piece}{RESET}")
        else:
            out.append(f"{CYAN}{piece}{RESET}" if plw > 0 else f"{DIM}{piece}{RESET}")
    return "".join(out)


def token_table(tokenizer, enc, plw: float) -> str:
    """One row a token: position, id, text, label (the target it is trained on) and weight."""
    rows = [f"{'pos':>4} {'id':>6}  {'token':<18} {'label':>6} {'weight':>6}"]
    for i, token_id in enumerate(enc.input_ids):
        weight = plw * enc.prompt_mask[i] + enc.completion_mask[i]
        # Position i's label is token i itself as the target predicted from position i-1; -100 when unweighted.
        label = token_id if (i > 0 and weight > 0) else -100
        rows.append(f"{i:>4} {token_id:>6}  {tokenizer.decode([token_id])!r:<18} {label:>6} {weight:>6.3g}")
    return "\n".join(rows)


def print_event(event, stream=None) -> None:
    stream = stream or sys.stdout
    kind = event.kind
    if kind == "started":
        print(f"run {event.run_dir}: {event.n_train} train / {event.n_val} validation examples, {event.total_steps} steps", file=stream)
        for note in event.skipped[:5]:
            print(f"{YELLOW}skipped: {note}{RESET}", file=stream)
        cut = event.truncation or {}
        if cut:
            print(f"max_length {cut['max_length']}: {cut['examples_cut']} of {cut['examples']} examples cut "
                  f"({cut['tokens_cut']} tokens, {cut['prompt_share_cut']:.1%} of prompt tokens), "
                  f"{cut['examples_skipped']} skipped", file=stream)
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
        shown = [f"{name} {format_value(name, m[name])}" for name in (*RANKED, "majority_baseline") if m.get(name) is not None]
        if m.get("predicted"):
            shown.append(f"predicted {m['predicted']}")
        print(f"{BOLD}eval step {event.step:>4}{RESET}  " + "  ".join(shown) + ("  *best*" if event.is_best else ""), file=stream)
    elif kind in ("finished", "stopped"):
        print(f"{GREEN}{kind} at step {event.step}{RESET}" + (f": {event.reason}" if kind == "stopped" else ""), file=stream)
    elif kind == "failed":
        print(f"{RED}failed at step {event.step}: {event.error}{RESET}", file=stream)


def print_comparison(comparison: dict, stream=None) -> None:
    stream = stream or sys.stdout
    on, off = comparison["on"], comparison["off"]
    print(f"{'':28}{'adapter off':>14}{'adapter on':>14}", file=stream)
    for key in (*RANKED, "majority_baseline"):
        a, b = off["metrics"].get(key), on["metrics"].get(key)
        if a is not None:
            print(f"{key:28}{format_value(key, a):>14}{format_value(key, b):>14}", file=stream)
    if off.get("probe_perplexity") is not None:
        print(f"{'forgetting probe perplexity':28}{off['probe_perplexity']:>14.2f}{on['probe_perplexity']:>14.2f}", file=stream)
    if "predicted" in off["metrics"]:
        print(f"{'predicted answers':28}{json.dumps(off['metrics']['predicted']):>14} {json.dumps(on['metrics']['predicted'])}", file=stream)
    for i, example in enumerate(comparison.get("examples", [])):
        print(f"\n{BOLD}example {i}{RESET} (reference: {example['reference']!r})", file=stream)
        print(f"  off: {off['generations'][i]!r}\n  on:  {on['generations'][i]!r}", file=stream)


# -- commands ---------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from .training import is_main_process, train

    cfg = build_config(args)
    result = train(cfg, subscribers=[print_event])
    if is_main_process():  # under `accelerate launch` every process gets here; one report is enough
        if result.comparison:
            print()
            print_comparison(result.comparison)
        print(f"\nrun folder: {result.run_dir}")
    return 1 if result.status == "failed" else 0


def _load_run_model(run_dir: str):
    from .evaluation import device_of
    from .models import load_adapter, load_model, load_tokenizer
    from .runs import load_run
    from .training import prepare

    run = load_run(run_dir)
    if run.config is None or run.adapter_dir() is None:
        raise SystemExit(f"{run_dir}: the run has no readable config or no saved adapter")
    tokenizer = load_tokenizer(run.config.model)
    model = load_adapter(load_model(run.config.model), run.adapter_dir())
    data = prepare(run.config, tokenizer)
    return run, model, tokenizer, data, device_of(model)


def cmd_eval(args) -> int:
    from .evaluation import adapter, evaluate

    run, model, tokenizer, data, _ = _load_run_model(args.run)
    for label, enabled in (("adapter off", False), ("adapter on", True)):
        with adapter(model, enabled):
            metrics = evaluate(model, data.val, tokenizer.pad_token_id, run.config.eval.batch_size, run.config.train.chunk_size)
        print(f"{BOLD}{label}{RESET}: " + json.dumps({k: v for k, v in metrics.items()}, default=str))
    return 0


def cmd_compare(args) -> int:
    from .builtin import general_text
    from .evaluation import compare
    from .runs import load_run

    run = load_run(args.run)
    comparison = None if args.recompute else run.comparison()
    if comparison is None:
        run, model, tokenizer, data, _ = _load_run_model(args.run)
        e = run.config.eval
        comparison = compare(model, tokenizer, data.val, general_text()[: e.probe_texts], e.generations, e.max_new_tokens, e.batch_size, run.config.train.chunk_size)
    print_comparison(comparison)
    return 0


def cmd_inspect(args) -> int:
    from .data import load_examples
    from .masks import encode_fitted
    from .models import load_tokenizer
    from .packing import packing_efficiency
    from .stats import label_counts, length_stats, truncation_message

    cfg = build_config(args)
    tokenizer = load_tokenizer(cfg.model)
    examples = load_examples(cfg.data)
    plw = cfg.train.prompt_loss_weight
    colour = sys.stdout.isatty() or args.colour
    d = cfg.data
    fitted = encode_fitted(tokenizer, examples, d.max_length, d.max_length_cap, d.train_eos)
    encoded, skipped, cut = fitted.encoded, fitted.skipped, fitted.truncation
    s = length_stats(encoded).summary()
    print(
        f"{len(encoded)} examples ({len(skipped)} skipped as too long): prompt tokens mean {s['prompt_tokens']['mean']:.1f} "
        f"as written, completion tokens mean {s['completion_tokens']['mean']:.1f}, generation ratio Rg mean {s['rg_mean']:.4g}, "
        f"geometric mean {s['rg_geomean']:.4g}; label balance {label_counts(examples) or 'n/a'}"
    )
    print(
        f"max_length {fitted.max_length}{' (auto)' if not d.max_length else ''}: {cut['examples_cut']} examples cut, "
        f"{cut['tokens_cut']} tokens, {cut['prompt_share_cut']:.1%} of prompt tokens; {cut['examples_skipped']} skipped; "
        f"longest example {cut['longest']} tokens"
    )
    warning = truncation_message(cut)
    if warning:
        print(f"{YELLOW}warning: {warning}{RESET}")
    packing = packing_efficiency([len(e) for e in encoded], fitted.max_length, cfg.train.batch_size)
    print(f"packing efficiency at batch {cfg.train.batch_size}: padded {packing['padded']:.0%} real tokens, packed {packing['packed']:.0%}\n")
    by_index = {e.example.source_index: e for e in encoded}
    for example in examples[: args.n]:
        enc = by_index.get(example.source_index)
        if enc is None:
            print(f"{BOLD}example {example.source_index}{RESET}: skipped, too long for max_length {fitted.max_length}\n")
            continue
        print(f"{BOLD}example {example.source_index}{RESET}: {enc.n_prompt} prompt + {enc.n_completion} completion tokens"
              f"{f', {enc.truncated} cut from the left' if enc.truncated else ''}; PLW {plw:g}; end-of-turn trained: {d.train_eos}")
        print(colour_tokens(tokenizer, enc, plw, colour))
        if args.table:
            print(token_table(tokenizer, enc, plw))
        print()
    return 0


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected a comma list of numbers, got {text!r}") from None


def print_sweep_row(row: dict, stream=None) -> None:
    low, high = row.get("answer_accuracy_ci_low"), row.get("answer_accuracy_ci_high")
    interval = f" [{format_value('answer_accuracy', low)}, {format_value('answer_accuracy', high)}]" if low is not None else ""
    print(
        f"{BOLD}PLW {row['plw']:g} seed {row['seed']}{RESET}: {row['status']} after {row['steps']} steps; best answer accuracy "
        f"{format_value('answer_accuracy', row['best_answer_accuracy'])}{interval} at step {row['best_answer_accuracy_step']}, "
        f"best answer loss {'n/a' if row['best_answer_loss'] is None else format(row['best_answer_loss'], '.4f')} "
        f"at step {row['best_answer_loss_step']}",
        file=stream or sys.stdout,
    )


def cmd_sweep(args) -> int:
    from .config import field_specs
    from .sweep import points, run_sweep

    cfg = build_config(args)
    presets = next(f for f in field_specs("train") if f["name"] == "prompt_loss_weight")["presets"]
    plws = _numbers(args.plws, float, "--plws") if args.plws else list(presets)
    seeds = _numbers(args.seeds, int, "--seeds")
    bad = [p for p in plws if not 0 <= p <= 1]
    if bad or not plws or not seeds:
        raise ConfigError(f"--plws takes values in [0, 1] (got {bad or 'none'}) and --seeds at least one seed")
    print(f"sweep: PLW {', '.join(f'{p:g}' for p in plws)} x seeds {', '.join(map(str, seeds))} = {len(plws) * len(seeds)} runs "
          f"of {cfg.train.max_steps} steps on one split (data.split_seed {cfg.data.split_seed})")
    notes = lambda event: print_event(event) if event.kind in ("advice", "failed") else None
    folder = run_sweep(cfg, plws, seeds, args.name, subscribers=[notes], on_run=print_sweep_row)
    from .sweep import read_csv

    rows = read_csv(folder)
    acc = points(rows)
    for m in acc["means"]:
        interval = f" (95% t interval {m['low']:.1%} to {m['high']:.1%})" if m["low"] is not None else " (one seed: no interval)"
        print(f"PLW {m['plw']:<5g} mean best answer accuracy {m['mean']:.1%} over {m['n']} seed(s){interval}")
    left_out = [r for r in acc["runs"] if r["excluded"]]
    for r in left_out:
        print(f"{YELLOW}left out of the means: PLW {r['plw']:g} seed {r['seed']} ({r['excluded']}){RESET}")
    if acc["fit"]:
        f = acc["fit"]
        print(f"quadratic fit: accuracy = {f['a']:.3f} + {f['b']:.3f} PLW + {f['c']:.3f} PLW^2 (R^2 {f['r2']:.2f})")
    print(f"\nsweep folder: {folder} (sweep.csv)")
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def cmd_config(args) -> int:
    import yaml

    print(yaml.safe_dump(build_config(args).to_dict(), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab", description="PLW Lab: prompt-loss-weighted fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a LoRA adapter and compare it with the base model")
    _config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="validation metrics of a run, adapter on and off")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("compare", help="adapter on vs off: generations, answers, forgetting probe")
    p.add_argument("run", help="run folder")
    p.add_argument("--recompute", action="store_true", help="recompute instead of reading compare.json")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("inspect", help="show examples token by token with their masks and weights")
    _config_args(p)
    p.add_argument("-n", type=int, default=3, help="how many examples")
    p.add_argument("--table", action="store_true", help="also print one row per token: id, label, weight")
    p.add_argument("--colour", action="store_true", help="colour even when not writing to a terminal")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("sweep", help="train a grid of PLW values x seeds on one split; write sweep.csv")
    _config_args(p)
    p.add_argument("--plws", help="comma list of PLW values (default: the PLW presets 0, 0.01, 0.1, 0.5, 1)")
    p.add_argument("--seeds", default="0,1", help="comma list of train.seed values (LoRA initialisation and data order)")
    p.add_argument("--name", default="", help="name of the sweep folder under train.output_dir")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("config", help="print the full config (defaults plus overrides) as YAML")
    _config_args(p)
    p.set_defaults(func=cmd_config)
    args = parser.parse_args(argv)
    from .data import DataError
    from .models import ModelError

    try:
        return args.func(args)
    except (ConfigError, DataError, ModelError, FileNotFoundError) as exc:
        print(f"{RED}error: {exc}{RESET}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
