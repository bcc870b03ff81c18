"""Performance benchmarks of the lab (issue 5), both sides of every comparison in one process run.

    python benchmarks/bench.py                 # quick CPU mode (about 6 minutes on an idle 2-core CPU)
    python benchmarks/bench.py --full          # more steps and rounds, the whole validation set
    python benchmarks/bench.py --only 1,3      # some sections only
    python benchmarks/bench.py --gpu           # section 6 alone, on a CUDA machine (random-weight models)
    python benchmarks/bench.py --gpu-smoke --only 6   # section 6's code on the CPU with tiny models

Sections (targets from the issue):
  1. lab vs TRL SFTTrainer(completion_only_loss=True): training tokens/s at PLW 0 and 0.1, same
     model (embedded SmolLM2-135M), LoRA config (the lab's default, layers_to_transform included),
     batch, max length and examples, no packing, float32 and no gradient checkpointing on both sides.
  2. packing vs padding on RACE rows mixed with short instructions: useful tokens/s, same loss.
  3. peak memory of the loss (forward+backward from hidden states) for 8 x 2048 tokens, vocabulary
     49,152, hidden 576: the lab's chunked loss vs the naive float32 logits path (peak RSS, measured
     in a fresh subprocess for each).
  4. evaluation: answer accuracy from candidate log-probs (one forward pass) vs greedy generation.
  5. the app's default run, `train(LabConfig())`: wall time and answer accuracy gain over step 0.
  6. GPU only: tokens/s and MFU of LoRA SFT against TRL's SFTTrainer, the embedded architecture and a
     0.5B one (random weights), bfloat16 and QLoRA 4-bit, padded and packed.
  7. live views: one refresh of the Train tab's progress bar and charts for a long run.
  8. encoding the default data set (masks, answer positions) with the embedded model's tokenizer,
     cold and from the per-run encoding cache.

Every comparison interleaves its sides in rounds on the same batches, takes each step's fastest
round and reports ratios (with the median-of-rounds and CPU-time ratios as cross-checks), so
ratios hold when other jobs share the machine; absolute numbers move with the load. Everything
runs with torch's default threads, as the app and CLI do; on a busy machine `--threads 1` keeps
timings steadier (two threads on shared cores mostly wait for each other), and both sides of a
comparison always get the same count. Throughput comparisons leave the lab's frozen-layer cache
(`plw_lab.core.prefix`) off, since their rounds repeat the same batches.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from bench_data import RACE, default_examples, race_examples, reading_mc, short_instructions, to_trl_records  # noqa: E402
from bench_memory import rss_mb  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from plw_lab.core.collate import EncodedDataset  # noqa: E402
from plw_lab.core.config import LabConfig  # noqa: E402
from plw_lab.core.masks import encode_fitted  # noqa: E402
from plw_lab.core.models import attach_lora  # noqa: E402
from plw_lab.core.packing import packing_efficiency  # noqa: E402
from plw_lab.core.training import PLWTrainer, make_collator, training_arguments  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
try:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
except ImportError:  # pragma: no cover
    datasets = None


@dataclass
class Row:
    section: str
    what: str
    measured: str
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        if OVERRIDES:  # a smoke run proves the code runs; its figures judge nothing
            row.ok = None
        self.rows.append(row)
        mark = {True: "PASS", False: "FAIL", None: "----"}[row.ok]
        ratio = "" if row.ratio is None else f"  ratio {row.ratio:.2f}"
        note = "  " + row.note if row.note else ""
        print(f"  -> [{mark}] {row.what}: {row.measured}{ratio}  (target {row.target or '-'}){note}", flush=True)

    def table(self) -> str:
        head = ("#", "comparison", "measured", "ratio", "target", "result")
        lines = [head]
        for r in self.rows:
            lines.append(
                (
                    r.section,
                    r.what,
                    r.measured,
                    "" if r.ratio is None else f"{r.ratio:.2f}x",
                    r.target,
                    {True: "PASS", False: "FAIL", None: "-"}[r.ok],
                )
            )
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
        out = []
        for n, line in enumerate(lines):
            out.append(" | ".join(str(v).ljust(w) for v, w in zip(line, widths)))
            if n == 0:
                out.append("-+-".join("-" * w for w in widths))
        notes = list(dict.fromkeys(f"  [{r.section}] {r.note}" for r in self.rows if r.note))
        return "\n".join(out + (["notes:"] + notes if notes else []))


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


#: `--smoke`: every CPU section on the tiny random-weight model and a few examples, to prove the code
#: runs (its figures mean nothing and no target is judged).
SMOKE = {
    "model.name": "tiny-random",
    "data.limit": 60,
    "data.val_max": 8,
    "train.max_steps": 2,
    "train.eval_interval": 1,
    "eval.generations": 1,
    "eval.max_new_tokens": 4,
    "eval.answer_tokens": 2,
    "eval.probe_texts": 2,
}
OVERRIDES: dict = {}


def lab_config() -> LabConfig:
    """The lab's default config (the tiny model and a few examples under `--smoke`)."""
    return LabConfig().override(OVERRIDES) if OVERRIDES else LabConfig()


def load_tokenizer():
    from plw_lab.core.models import load_tokenizer as lab_tokenizer

    return lab_tokenizer(lab_config().model)


def load_base(dtype=torch.float32):
    from plw_lab.core.models import load_model

    base = load_model(lab_config().model, torch.device("cpu"))
    return base.to(dtype)


def fitted_examples(cfg: LabConfig, tokenizer, examples):
    """`examples` encoded at the length the lab fits them to (`data.max_length` 0 is auto)."""
    d = cfg.data
    fitted = encode_fitted(tokenizer, examples, d.max_length, d.max_length_cap, d.train_eos)
    return fitted.encoded, fitted.max_length


def fitting(encoded, max_length):
    """Examples the encoder did not truncate (TRL truncates from the right, the lab from the left)."""
    return [e for e in encoded if not e.truncated and len(e) <= max_length]


# -- step timing inside the Trainer ---------------------------------------------------------------


class MeteredCollator:
    """Wraps a collator: records real tokens and collate time (wall, CPU) of every batch it builds."""

    def __init__(self, inner):
        self.inner = inner
        self.reset()

    def __call__(self, batch):
        t, c = time.perf_counter(), time.process_time()
        out = self.inner(batch)
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        lengths = [len(e["input_ids"]) if isinstance(e, dict) else len(e) for e in batch]
        self.lengths.append(lengths)
        self.tokens.append(sum(lengths))
        return out

    def reset(self):
        self.tokens, self.wall, self.cpu, self.lengths = [], [], [], []


class StepTimer(TrainerCallback):
    """Wall and process CPU time from the start to the end of each optimiser step (optimizer included)."""

    def __init__(self):
        self.wall, self.cpu, self.started = [], [], (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self.started[0])
        self.cpu.append(time.process_time() - self.started[1])


class Side:
    """One side of a throughput comparison: a trainer run for a few steps at a time.

    Every run starts from the same adapter weights and draws the same batches, so round r's step
    j does exactly the work of every other round's step j; the machine is shared, so each step's
    time is taken as its fastest round (best-of-R), and the median is kept as a cross-check."""

    def __init__(self, name, trainer, meter, timer, restore=None):
        self.name, self.trainer, self.meter, self.timer, self.restore = name, trainer, meter, timer, restore
        self.rounds: list[list[tuple[int, float, float]]] = []  # per round: (tokens, wall s, cpu s) per step
        self.lengths: list[list[int]] = []  # each step's example lengths (every round draws the same batches)

    def run(self, steps: int, seed: int, count: bool = True) -> None:
        if self.restore:
            self.restore()
        self.meter.reset()
        self.timer.wall, self.timer.cpu = [], []
        self.trainer.args.max_steps = steps
        self.trainer.args.seed = self.trainer.args.data_seed = seed
        self.trainer.train()
        if count:
            m, t = self.meter, self.timer
            self.rounds.append([(m.tokens[j], t.wall[j] + m.wall[j], t.cpu[j] + m.cpu[j]) for j in range(len(t.wall))])
            self.lengths = self.lengths or m.lengths[: len(t.wall)]

    def _rate(self, column: int, pick) -> float:
        if not self.rounds:
            return float("nan")
        steps = range(min(len(r) for r in self.rounds))
        tokens = sum(self.rounds[0][j][0] for j in steps)
        return tokens / sum(pick([r[j][column] for r in self.rounds]) for j in steps)

    @property
    def tokens_per_second(self) -> float:
        """Best-of-rounds wall-clock tokens/s."""
        return self._rate(1, min)

    @property
    def median_tokens_per_second(self) -> float:
        return self._rate(1, statistics.median)

    @property
    def cpu_tokens_per_second(self) -> float:
        """Tokens per second of process CPU time (less sensitive to other users of the cores)."""
        return self._rate(2, statistics.median)


def interleave(sides: list[Side], rounds: int, steps: int, seed: int = 0) -> None:
    """A warm-up step per side, then `rounds` rounds of `steps` steps, the sides taking turns
    on the same batches (one round under `--smoke`)."""
    rounds = 1 if OVERRIDES else rounds
    for side in sides:
        t = time.perf_counter()
        side.run(1, seed, count=False)
        print(f"  warm-up {side.name}: {time.perf_counter() - t:.1f}s", flush=True)
    for r in range(rounds):
        for side in sides:
            side.run(steps, seed)
        print(
            f"  round {r + 1}: "
            + ", ".join(
                f"{s.name} {sum(x[0] for x in s.rounds[-1]) / sum(x[1] for x in s.rounds[-1]):.0f} tok/s" for s in sides
            ),
            flush=True,
        )


def ratio_note(a: Side, b: Side) -> str:
    return (
        f"{a.name}/{b.name}: median-of-rounds {a.median_tokens_per_second / b.median_tokens_per_second:.2f}x, "
        f"CPU-time {a.cpu_tokens_per_second / b.cpu_tokens_per_second:.2f}x"
    )


class RecordingPLWTrainer(PLWTrainer):
    """PLWTrainer that keeps every training loss it computes (for loss equality checks)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.recorded = getattr(self, "recorded", [])
        self.recorded.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss


def lab_side(name, cfg, model, tokenizer, encoded, workdir, restore=None, device=None, dtype=torch.float32) -> Side:
    device = device or torch.device("cpu")
    meter, timer = MeteredCollator(make_collator(cfg, tokenizer, model)), StepTimer()
    trainer = RecordingPLWTrainer(
        model=model,
        args=training_arguments(cfg, Path(workdir) / name, device, dtype),
        train_dataset=EncodedDataset(encoded),
        data_collator=meter,
        callbacks=[timer],
        lab_config=cfg,
    )
    trainer.remove_callback(PrinterCallback)
    return Side(name, trainer, meter, timer, restore)


def adapter_snapshot(model):
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def restore():
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    return restore


# -- 1. lab vs TRL ----------------------------------------------------------------------------------


def bench_vs_trl(report: Report, full: bool, workdir: str) -> None:
    section("1. training throughput: lab vs TRL SFTTrainer (completion_only_loss=True)")
    if importlib.util.find_spec("trl") is None:
        report.add(Row("1", "lab vs TRL", "skipped: trl not installed", note="pip install trl"))
        return
    tokenizer = load_tokenizer()
    examples, source = default_examples(lab_config())
    encoded, max_length = fitted_examples(lab_config(), tokenizer, examples)
    cfg = lab_config().override({"data.max_length": max_length})
    encoded = fitting(encoded, max_length)
    n = cfg.train.batch_size * (8 if full else 4)
    encoded = encoded[:n]
    examples = [e.example for e in encoded]
    lengths = [len(e) for e in encoded]
    print(
        f"  data: {source}; {len(encoded)} examples, {min(lengths)}-{max(lengths)} tokens "
        f"(mean {statistics.mean(lengths):.0f}); batch {cfg.train.batch_size}, max_length {cfg.data.max_length} "
        f"(fitted), LoRA r={cfg.lora.r} {cfg.lora.layers} {len(cfg.lora.target_modules)} modules",
        flush=True,
    )

    sides = []
    torch.manual_seed(0)
    lab_model = attach_lora(load_base(), cfg.lora)
    restore = adapter_snapshot(lab_model)
    for plw in (0.0, 0.1):
        c = cfg.override({"train.prompt_loss_weight": plw})
        sides.append(lab_side(f"lab_plw{plw:g}", c, lab_model, tokenizer, encoded, workdir, restore))

    torch.manual_seed(0)
    trl_model = attach_lora(load_base(), cfg.lora)  # the same PEFT model, built the same way
    # TRL applies the chat template itself here (conversational records), from the same examples.
    trl = _trl_side(
        "trl",
        trl_model,
        tokenizer,
        encoded,
        cfg,
        workdir,
        on_gpu=False,
        dtype=torch.float32,
        packing=False,
        restore=None,
        records=to_trl_records(examples),
    )
    trl.restore = adapter_snapshot(trl.trainer.model)  # the adapter as the trainer holds it
    sides.append(trl)

    interleave(sides, rounds=4 if full else 3, steps=2 if full else 1, seed=cfg.train.seed)
    trl_tps = sides[-1].tokens_per_second
    for side, target, bar in ((sides[0], ">= 1.2x", 1.2), (sides[1], ">= 1.5x", 1.5)):
        ratio = side.tokens_per_second / trl_tps
        ok = ratio >= bar
        report.add(
            Row(
                "1",
                f"train tok/s, {side.name} vs TRL",
                f"{side.tokens_per_second:.0f} vs {trl_tps:.0f} tok/s",
                ratio,
                target,
                ok,
                note=ratio_note(side, sides[-1]),
            )
        )
    del sides, trl, lab_model, trl_model
    gc.collect()


# -- 2. packing vs padding ---------------------------------------------------------------------------


def _losses_by_plw(model, batch, plws, mode):
    """The engine's weighted loss of one batch at several PLWs, from one forward pass (no gradient)."""
    from plw_lab.core.compat import output_layer
    from plw_lab.core.forward import final_hidden
    from plw_lab.core.loss import normalizer, shift_for_targets, token_weights, weighted_ce
    from plw_lab.core.packing import model_kwargs

    weight, bias = output_layer(model)
    with torch.no_grad():
        hidden = final_hidden(model, batch["input_ids"], **model_kwargs(batch))
        out = {}
        for plw in plws:
            w = shift_for_targets(token_weights(batch["prompt_mask"], batch["completion_mask"], plw))
            out[plw] = float(
                weighted_ce(hidden[:, :-1], weight, batch["input_ids"][:, 1:], w, 1024, bias) / normalizer(w, mode)
            )
    return out


def bench_packing(report: Report, full: bool, workdir: str) -> None:
    section("2. packing vs padding on a mixed-length set")
    tokenizer = load_tokenizer()
    # What packing would do for the app's default data (the app and CLI show the same numbers).
    default_ex, default_source = default_examples(lab_config())
    default_enc, default_length = fitted_examples(lab_config(), tokenizer, default_ex)
    d_eff = packing_efficiency([len(e) for e in default_enc], default_length, lab_config().train.batch_size)
    report.add(
        Row(
            "2",
            f"non-padding share, default data ({default_source})",
            f"padded {d_eff['padded']:.0%}, packed {d_eff['packed']:.0%}",
            d_eff["speedup"],
            "report",
            None,
        )
    )
    n_long = 8 if full else 4
    race = race_examples(n_long, seed=0)
    if race is None:
        print(f"  {RACE} is absent: using generated long reading questions instead of RACE")
        long_ex, long_name = reading_mc(n_long, seed=3), "generated reading questions"
    else:
        long_ex, long_name = race, "RACE"
    short_ex = short_instructions(3 * n_long, seed=0)
    mixed = long_ex + short_ex  # one long example for three short ones
    import random

    random.Random(0).shuffle(mixed)
    encoded, max_length = fitted_examples(lab_config(), tokenizer, mixed)
    cfg = lab_config().override({"data.max_length": max_length})
    lengths = [len(e) for e in encoded]
    eff = packing_efficiency(lengths, cfg.data.max_length, cfg.train.batch_size)
    print(
        f"  data: {len(encoded)} examples ({long_name} 1 : 3 short), {min(lengths)}-{max(lengths)} tokens; "
        f"non-padding share padded {eff['padded']:.0%}, packed {eff['packed']:.0%} "
        f"(expected speed-up {eff['speedup']:.2f}x in computed slots)",
        flush=True,
    )
    torch.manual_seed(0)
    model = attach_lora(load_base(), cfg.lora)
    restore = adapter_snapshot(model)
    for plw in (0.0, 0.1) if full else (cfg.train.prompt_loss_weight,):
        c = cfg.override({"train.prompt_loss_weight": plw})
        padded = lab_side("padded", c, model, tokenizer, encoded, workdir, restore)
        packed = lab_side("packed", c.override({"train.packing": True}), model, tokenizer, encoded, workdir, restore)
        # every round is one epoch over the whole mixed set: the gain of the set, not of one lucky batch
        interleave(
            [padded, packed], rounds=3 if full else 2, steps=math.ceil(len(encoded) / cfg.train.batch_size), seed=0
        )
        a, b = padded.trainer.recorded, packed.trainer.recorded
        diff = max(abs(x - y) / max(abs(x), 1e-8) for x, y in zip(a, b))
        ratio = packed.tokens_per_second / padded.tokens_per_second
        report.add(
            Row(
                "2",
                f"useful tok/s, packed vs padded (PLW {plw:g})",
                f"{packed.tokens_per_second:.0f} vs {padded.tokens_per_second:.0f} tok/s",
                ratio,
                ">= 2x",
                ratio >= 2.0,
                note=f"{long_name} 1:3 short, batch {cfg.train.batch_size}, max_length {cfg.data.max_length}; "
                f"non-padding share of the set {eff['padded']:.0%} -> {eff['packed']:.0%} "
                f"({eff['speedup']:.2f}x fewer slots); {ratio_note(packed, padded)}",
            )
        )
        report.add(
            Row(
                "2",
                f"same training loss, packed vs padded (PLW {plw:g})",
                f"max rel diff {diff:.1e} over {len(a)} steps",
                None,
                "identical",
                diff <= 1e-5,
            )
        )
    # The weighted loss itself at other PLWs, on the first micro-batch: one forward per layout.
    first = encoded[: cfg.train.batch_size]
    plws = (0.0, 0.1, 1.0)
    restore()
    by_layout = {}
    for packing in (False, True):
        c = cfg.override({"train.packing": packing})
        by_layout[packing] = _losses_by_plw(
            model, make_collator(c, tokenizer, model)(first), plws, c.train.loss_normalization
        )
    diffs = {p: abs(by_layout[True][p] - by_layout[False][p]) / abs(by_layout[False][p]) for p in plws}
    report.add(
        Row(
            "2",
            "same loss at PLW 0 / 0.1 / 1, packed vs padded (one batch)",
            " / ".join(f"{by_layout[False][p]:.5f} vs {by_layout[True][p]:.5f}" for p in plws),
            None,
            "identical",
            max(diffs.values()) <= 1e-5,
            note=f"max rel diff {max(diffs.values()):.1e}",
        )
    )
    del padded, packed, model
    gc.collect()


# -- 3. loss memory ---------------------------------------------------------------------------------


def _mem_available_mb() -> float:
    return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024


def bench_memory(report: Report, full: bool, workdir: str) -> None:
    section("3. peak memory of the loss: chunked (lab) vs naive float32 logits, forward+backward")
    batch, length, hidden, vocab = (2, 64, 32, 1000) if OVERRIDES else (8, 2048, 576, 49152)
    logits_mb = batch * length * vocab * 4 / 2**20
    need = 3.2 * logits_mb
    if _mem_available_mb() < need + 2048:
        length = 512
        print(
            f"  only {_mem_available_mb():.0f} MB available (the naive path needs ~{need:.0f} MB): "
            f"measuring 8 x {length} instead"
        )
    results = {}
    for mode in ("lab", "naive"):
        sizes = [str(n) for n in (batch, length, hidden, vocab, torch.get_num_threads())]
        probe = [sys.executable, str(Path(__file__).parent / "bench_memory.py"), mode, *sizes]
        proc = subprocess.run(probe, capture_output=True, text=True, cwd=str(ROOT))
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            raise RuntimeError(f"the {mode} loss memory probe failed (rc {proc.returncode})")
        results[mode] = json.loads(line[7:])
        print(
            f"  {mode}: peak +{results[mode]['peak_mb']:.0f} MB, {results[mode]['seconds']:.1f}s, "
            f"loss {results[mode]['loss']:.6f}",
            flush=True,
        )
    ratio = results["lab"]["peak_mb"] / results["naive"]["peak_mb"]
    same = abs(results["lab"]["loss"] - results["naive"]["loss"]) <= 1e-4 * abs(results["naive"]["loss"])
    report.add(
        Row(
            "3",
            f"loss peak memory {batch}x{length}, V={vocab}, H={hidden}",
            f"{results['lab']['peak_mb']:.0f} MB vs {results['naive']['peak_mb']:.0f} MB naive",
            ratio,
            "<= 0.25x",
            ratio <= 0.25 and same,
            note=f"peak RSS above inputs, every position weighted; logits alone {logits_mb:.0f} MB; "
            f"time lab {results['lab']['seconds']:.1f}s vs naive {results['naive']['seconds']:.1f}s; same loss: {same}",
        )
    )


# -- 4. evaluation: log-prob scoring vs greedy generation --------------------------------------------


def _generated_choice(text: str, choices) -> str | None:
    stripped = text.strip()
    for c in sorted(choices, key=len, reverse=True):
        if stripped.startswith(c):
            return c
    m = re.search(r"\b(" + "|".join(re.escape(c.strip("()")) for c in choices) + r")\b", stripped)
    if m:
        return next((c for c in choices if c.strip("()") == m.group(1)), None)
    return None


def bench_eval(report: Report, full: bool, workdir: str) -> None:
    section("4. evaluation: candidate log-probs (one forward pass) vs greedy generation")
    from plw_lab.core import evaluation
    from plw_lab.core.config import layer_indices
    from plw_lab.core.models import num_layers
    from plw_lab.core.prefix import FrozenPrefix
    from plw_lab.core.training import prepare

    cfg = lab_config()
    tokenizer = load_tokenizer()
    examples, source = default_examples(cfg)
    val = [e for e in prepare(cfg, tokenizer, examples).val if e.answer_position is not None]
    if not full:
        val = val[:16]
    torch.manual_seed(0)
    model = attach_lora(load_base(), cfg.lora).eval()  # a fresh adapter: the model of the step-0 evaluation
    bs = cfg.eval.batch_size
    print(
        f"  data: {source}, {len(val)} validation examples (mean {statistics.mean(len(e) for e in val):.0f} tokens); "
        f"embedded model with a fresh adapter; batch {bs}",
        flush=True,
    )
    prefix = FrozenPrefix.for_model(model, layer_indices(cfg.lora.layers, num_layers(model.get_base_model())))

    def scoring(cache=None):
        # Answers only: the output layer runs at the one position where the candidates differ.
        return evaluation.evaluate(
            model, val, tokenizer.pad_token_id, bs, cfg.train.chunk_size, details=True, prefix=cache, losses=False
        )

    def generating(max_new):
        return evaluation.generate(model, tokenizer, val, max_new, bs)

    scoring()  # warm-up (one-time kernel setup)
    if prefix is not None:
        scoring(prefix)  # fills the frozen-layer cache, as the step-0 evaluation of a run does
    variants = [
        ("score", scoring),
        ("gen", lambda: generating(cfg.eval.max_new_tokens)),
        ("gen1", lambda: generating(1)),
    ]
    if prefix is not None:
        variants.insert(1, ("score_cached", lambda: scoring(prefix)))
    times = {k: [] for k, _ in variants}
    out = {}
    for _ in range(3):  # alternating rounds, fastest of each: the timings ride out other jobs' bursts
        for key, fn in variants:
            t = time.perf_counter()
            out[key] = fn()
            times[key].append(time.perf_counter() - t)
    print("  rounds (s): " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in times.items()), flush=True)
    best = {k: min(v) for k, v in times.items()}
    scored = {x["index"]: x["predicted"] for x in out["score"]["examples"]}
    choices = val[0].example.choices
    for key in ("gen", "gen1"):
        agree = valid = 0
        for e, text in zip(val, out[key]):
            got = _generated_choice(text, choices)
            if got is not None:
                valid += 1
                agree += got == scored[e.example.source_index]
        out[key + "_agree"] = (agree, valid)
    ratio = best["gen"] / best["score"]
    report.add(
        Row(
            "4",
            f"eval speed: log-prob scoring (one pass) vs greedy generation (max_new_tokens={cfg.eval.max_new_tokens})",
            f"{best['score']:.1f}s vs {best['gen']:.1f}s for {len(val)} examples",
            ratio,
            ">= 3x",
            ratio >= 3.0,
            note=f"answers-only scoring (evaluate(losses=False)); greedy generation cut to the answer token "
            f"(max_new_tokens=1) takes {best['gen1']:.1f}s ({best['gen1'] / best['score']:.2f}x of scoring); "
            f"greedy output e.g. {out['gen'][0][:40]!r}",
        )
    )
    if prefix is not None:
        if out["score_cached"]["examples"] != out["score"]["examples"]:
            print("  warning: cached scoring differs from the plain pass")
        r2 = best["gen"] / best["score_cached"]
        report.add(
            Row(
                "4",
                "eval speed: the same scoring with the frozen-layer cache (every evaluation after the first)",
                f"{best['score_cached']:.1f}s vs {best['gen']:.1f}s",
                r2,
                ">= 3x",
                r2 >= 3.0,
                note=f"plw_lab.core.prefix.FrozenPrefix reuses layers below {cfg.lora.layers}; vs 1-token generation "
                f"{best['gen1'] / best['score_cached']:.2f}x; same answers and log-probs as the plain pass: "
                f"{out['score_cached']['examples'] == out['score']['examples']}",
            )
        )
    agree, valid = out["gen_agree"]
    a1, v1 = out["gen1_agree"]
    report.add(
        Row(
            "4",
            "same predictions, scoring vs greedy",
            f"{agree}/{valid} agree ({len(val) - valid} generations name no option); 1-token: {a1}/{v1}",
            None,
            "same",
            valid > 0 and agree == valid and a1 == v1,
        )
    )
    gc.collect()


# -- 5. the app's default run -------------------------------------------------------------------------


class _EventClock:
    """Times a run from its events: evaluations report their own seconds; the comparison is the gap
    between the last event before `finished` and `finished`."""

    def __init__(self):
        self.last = self.started = time.perf_counter()
        self.eval_seconds = self.compare_seconds = 0.0
        self.steps = self.total_steps = 0

    def __call__(self, event):
        now = time.perf_counter()
        if event.kind == "started":
            self.started, self.total_steps = now, getattr(event, "total_steps", 0)
        elif event.kind == "eval":
            self.eval_seconds += event.seconds
        elif event.kind == "step":
            self.steps = event.step
        elif event.kind == "finished":
            self.compare_seconds = now - self.last
        self.last = now


def default_run_probe(workdir: str, limit: float) -> dict:
    """Run in a fresh process (so its peak memory is the run's own): `train()` of the default config."""
    import threading

    from plw_lab.core.training import train

    cfg = lab_config().override({"train.output_dir": str(Path(workdir) / "runs")})  # only where it writes differs
    print(
        f"  {cfg.data.source}, {cfg.train.epochs:g} epoch(s), max_steps {cfg.train.max_steps}, "
        f"batch {cfg.train.batch_size}, eval every {cfg.train.eval_interval} steps, packing {cfg.train.packing}; "
        f"stopped if still running after {limit:.0f} s",
        flush=True,
    )
    stop = threading.Event()
    timer = threading.Timer(limit, stop.set)
    timer.daemon = True
    clock = _EventClock()
    t = time.perf_counter()
    timer.start()
    try:
        result = train(cfg, subscribers=[clock], stop=stop)
    finally:
        timer.cancel()
    s = result.summary
    comparison = (result.comparison or {}).get
    evals = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("type") == "eval"]
    return {
        "seconds": time.perf_counter() - t,
        "status": result.status,
        "why": "hit the bench's time limit" if stop.is_set() else s.get("error", "")[:80],
        "steps": clock.steps,
        "total_steps": clock.total_steps,
        "n_train": s.get("n_train"),
        "n_val": s.get("n_val"),
        "before_start": clock.started - t,
        "eval_seconds": clock.eval_seconds,
        "compare_seconds": clock.compare_seconds,
        "n_evals": len(evals),
        "n_generated": sum("answer_accuracy_generated" in e["metrics"] for e in evals),
        "first": (s.get("first_eval") or {}).get("answer_accuracy", float("nan")),
        "final": (s.get("final_eval") or {}).get("answer_accuracy", float("nan")),
        "off": ((comparison("off") or {}).get("metrics") or {}).get("answer_accuracy", float("nan")),
        "on": ((comparison("on") or {}).get("metrics") or {}).get("answer_accuracy", float("nan")),
        "peak_mb": rss_mb("VmHWM"),
        "threads": torch.get_num_threads(),
    }


def bench_default_run(report: Report, full: bool, workdir: str, limit: float = 600.0) -> None:
    section("5. the app's default run: train(LabConfig()) with evaluations, in a fresh process")
    code = (
        f"import json,sys; sys.path[:0]=[{str(ROOT)!r},{str(Path(__file__).parent)!r}]; import bench; "
        f"bench.OVERRIDES.update({OVERRIDES!r}); "
        f"print('RESULT', json.dumps(bench.default_run_probe({workdir!r}, {limit!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("RESULT ")), flush=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the default run's process failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
    r = json.loads(line[7:])
    load = os.getloadavg()
    finished = r["status"] == "finished"
    seconds, share = r["seconds"], r["eval_seconds"] / r["seconds"]
    context = f"{r['threads']} threads, load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) at the end"
    measured = f"{seconds:.0f} s, {r['steps']} steps, {r['n_train']} train / {r['n_val']} val"
    if not finished:
        measured = f"{r['status']} after {seconds:.0f} s at step {r['steps']}/{r['total_steps']} ({r['why']})"
    report.add(
        Row(
            "5",
            "default run wall time (load, encode, train, evals, compare)",
            measured,
            None,
            "<= 120 s",
            finished and seconds <= 120,
            note=f"before the first event (load, encode) {r['before_start']:.0f} s; {context}",
        )
    )
    # A run stopped by the time limit still says where its time went and how much memory it took.
    report.add(
        Row(
            "5",
            "default run: evaluations' share of the wall time",
            f"{share:.0%} ({r['eval_seconds']:.0f} s for {r['n_evals']} evaluations, generated answers at "
            f"{r['n_generated']})" + ("" if finished else f", up to step {r['steps']}"),
            None,
            "<= 35%",
            finished and share <= 0.35 and r["n_evals"] >= 10 and r["n_generated"] >= 2,
            note=f"final on/off comparison a further {r['compare_seconds']:.0f} s; {context}",
        )
    )
    report.add(
        Row(
            "5",
            "default run peak memory (whole process, RSS high-water mark)",
            f"{r['peak_mb'] / 1024:.2f} GB" + ("" if finished else f", up to step {r['steps']}"),
            None,
            "<= 2.2 GB",
            r["peak_mb"] <= 2.2 * 1024,
        )
    )
    if not finished:
        return
    delta = r["final"] - r["first"]
    report.add(
        Row(
            "5",
            "default run answer accuracy, final vs step 0 (adapter off)",
            f"{r['first']:.1%} -> {r['final']:.1%} ({100 * delta:+.1f} points)",
            None,
            ">= +20 points",
            delta >= 0.20,
            note=f"compare(): adapter on {r['on']:.1%}, off {r['off']:.1%}",
        )
    )


# -- 8. encoding ----------------------------------------------------------------------------------------


def bench_encode(report: Report, full: bool, workdir: str) -> None:
    section("8. encoding the default data set (masks, answer positions) with the model's tokenizer")
    from plw_lab.core import masks

    cfg = lab_config()
    tokenizer = load_tokenizer()
    examples, source = default_examples(cfg)
    d = cfg.data
    masks._cache.clear()
    t = time.perf_counter()
    fitted = encode_fitted(tokenizer, examples, d.max_length, d.max_length_cap, d.train_eos)
    first = time.perf_counter() - t
    t = time.perf_counter()
    encode_fitted(tokenizer, examples, d.max_length, d.max_length_cap, d.train_eos)
    again = time.perf_counter() - t
    load = os.getloadavg()
    report.add(
        Row(
            "8",
            f"encode {source} ({len(examples)} examples)",
            f"{first:.1f} s, {len(fitted.encoded)} encoded at max_length {fitted.max_length}",
            None,
            "< 5 s",
            first < 5.0,
            note=f"the same set again (the Data tab, then Train) {again:.2f} s from the encoding cache; "
            f"load average {load[0]:.1f}",
        )
    )


# -- 7. live views ----------------------------------------------------------------------------------


def bench_live_views(report: Report, full: bool, workdir: str) -> None:
    section("7. live views: one refresh of the Train tab's progress and charts")
    from plw_lab.core import events as ev
    from plw_lab.views.charts import accuracy_figure, loss_figure, predicted_distribution_figure
    from plw_lab.views.history import History
    from plw_lab.views.text_views import progress_html

    steps = 1000
    log = [ev.Started(run_dir=workdir, config={}, n_train=8 * steps, n_val=48, total_steps=steps)]
    for step in range(1, steps + 1):
        log.append(
            ev.Step(
                step=step,
                epoch=step / 100,
                learning_rate=1e-3,
                train_loss=2.0 / step**0.5,
                grad_norm=1.0,
                tokens_per_second=500.0,
                tokens_seen=800 * step,
                elapsed=float(step),
                total_steps=steps,
            )
        )
        if step % 20 == 0:
            log.append(
                ev.Eval(
                    step=step,
                    epoch=step / 100,
                    metrics={
                        "prompt_loss": 3.9,
                        "completion_loss": 1.0 / step**0.3,
                        "full_loss": 3.8,
                        "answer_accuracy": min(0.9, step / 1000),
                        "token_accuracy": 0.5,
                        "predicted": {"A": 20, "B": 28},
                        "answers": {"A": 24, "B": 24},
                        "majority_baseline": 0.5,
                    },
                )
            )
    history = History.from_events(log)

    def refresh():
        return (
            progress_html(history, ""),
            loss_figure(history),
            accuracy_figure(history),
            predicted_distribution_figure(history),
        )

    refresh()  # plotly builds its validators on first use
    times = []
    for _ in range(10):
        t = time.perf_counter()
        out = refresh()
        times.append(time.perf_counter() - t)
    payload = sum(len(fig.to_json()) for fig in out[1:])
    report.add(
        Row(
            "7",
            f"live view refresh, {steps}-step run with {steps // 20} evaluations",
            f"{1000 * statistics.median(times):.0f} ms (median of 10), {payload / 1000:.0f} kB of figures",
            None,
            "report",
            None,
            note="the app refreshes at most every 0.8 s and only when new events arrived",
        )
    )


# -- 6. GPU ----------------------------------------------------------------------------------------


def _arch(hub_id: str) -> dict:
    from plw_lab.core.presets import find_preset

    return dict(find_preset(hub_id).config)


#: The embedded model's architecture and a 0.5B one, from the model presets (random weights).
GPU_ARCHS = (
    ("SmolLM2-135M arch", _arch("HuggingFaceTB/SmolLM2-135M-Instruct")),
    ("Qwen2.5-0.5B arch", _arch("Qwen/Qwen2.5-0.5B-Instruct")),
)
TINY_ARCH = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 1000,
}
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def _random_model_dir(spec: dict, folder: Path, dtype) -> Path:
    """A random-weight model of the architecture, saved so the lab's own loader (QLoRA included) reads it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(spec)
    config = AutoConfig.for_model(spec.pop("model_type"), pad_token_id=0, bos_token_id=1, eos_token_id=1, **spec)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def _id_tokenizer():
    """A tokenizer with only padding and end-of-text: the batches are token ids already, the trainers need a pad id."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>")),
        pad_token="<pad>",
        eos_token="<eos>",
    )


def _useful_flops(config, seq_lens: list[int], kept: int, lowest_adapted: int) -> float:
    """Matmul FLOPs one LoRA training step needs on real tokens (padding excluded).

    Forward: 2 x (linear weights of every layer) per token, causal attention 2 x L(L+1) x d per layer
    and example, the output layer 2 x H x V at the `kept` positions. Backward: the gradient of the
    activations through the adapted layers (1x their linear FLOPs, 2x their attention) and of the
    output layer at the kept positions; LoRA's own matmuls are left out (under 2 percent).
    """
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter
    tokens = sum(seq_lens)
    attn = sum(2 * L * (L + 1) * heads * hd for L in seq_lens)
    adapted = layers - lowest_adapted
    forward = 2 * per_layer * layers * tokens + attn * layers + 2 * h * config.vocab_size * kept
    backward = 2 * per_layer * adapted * tokens + 2 * attn * adapted + 2 * h * config.vocab_size * kept
    return float(forward + backward)


def _flops_per_token(side: Side, config, lowest: int) -> float:
    """Useful FLOPs per real token of the batches a side trained on (PLW 0.1: every position is weighted)."""
    flops = sum(_useful_flops(config, lens, sum(n - 1 for n in lens), lowest) for lens in side.lengths)
    return flops / max(1, sum(map(sum, side.lengths)))


def _gpu_examples(n: int, max_length: int, vocab: int, seed: int = 0) -> list:
    """Mixed lengths: a quarter long (half to all of max_length), the rest short; completions 10% of each."""
    from plw_lab.core.data import Example
    from plw_lab.core.masks import Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lo, hi = (max_length // 2, max_length) if i % 4 == 0 else (max(4, max_length // 64), max_length // 8)
        length = int(torch.randint(lo, hi, (1,), generator=g))
        completion = max(2, length // 10)
        ids = torch.randint(2, vocab, (length,), generator=g).tolist()
        out.append(
            Encoded(
                ids,
                [1] * (length - completion) + [0] * completion,
                [0] * (length - completion) + [1] * completion,
                [],
                "",
                Example([]),
            )
        )
    return out


def _trl_side(
    name, model, tokenizer, encoded, cfg, workdir, on_gpu: bool, dtype, packing: bool, restore, records=None
) -> Side:
    """TRL's SFTTrainer on the same LoRA model, batch and length: on the lab's token ids and completion masks,
    or on `records` (e.g. conversational prompt/completion records, which TRL tokenizes itself) when given.
    float32 and bfloat16 as `dtype` says (TRL's own default is bf16), no gradient checkpointing (TRL's default
    is on; the lab does not checkpoint), completion-only loss."""
    from trl import SFTConfig, SFTTrainer

    t = cfg.train
    args = SFTConfig(
        output_dir=str(Path(workdir) / name),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=not on_gpu,
        bf16=dtype == torch.bfloat16,
        gradient_checkpointing=False,
        completion_only_loss=True,
        max_length=cfg.data.max_length,
        packing=packing,
        padding_free=packing,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if records is None:
        records = [{"input_ids": list(e.input_ids), "completion_mask": list(e.completion_mask)} for e in encoded]
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(records), processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    meter, timer = MeteredCollator(trainer.data_collator), StepTimer()
    trainer.data_collator = meter
    trainer.add_callback(timer)
    return Side(name, trainer, meter, timer, restore)


def bench_gpu(report: Report, full: bool, workdir: str, device: str = "cuda") -> None:
    """Tokens/s and MFU of the lab against TRL's SFTTrainer: two architectures x bfloat16 and QLoRA x padded
    and packed, PLW 0.1, the same random-weight model, LoRA, batches and lengths on both sides."""
    section("6. GPU: LoRA SFT tokens/s and MFU, lab vs TRL, bf16 and QLoRA, packing on/off")
    if device == "cuda" and not torch.cuda.is_available():
        report.add(
            Row(
                "6",
                "GPU throughput / MFU",
                "skipped: no CUDA device in this session",
                None,
                "report only",
                None,
                note="run `python benchmarks/bench.py --gpu` on a GPU machine",
            )
        )
        return

    from plw_lab.core.config import layer_indices
    from plw_lab.core.models import compute_dtype, load_model

    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    name = torch.cuda.get_device_name(dev) if on_gpu else "cpu (smoke test)"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if on_gpu else None
    qlora = on_gpu and importlib.util.find_spec("bitsandbytes") is not None
    # flash-attention varlen when installed: packing then sends one flat row (cu_seqlens from position_ids),
    # and TRL's padding-free packing is exact too; without it only the lab packs (block-diagonal 4D mask).
    flash = on_gpu and importlib.util.find_spec("flash_attn") is not None
    attn = "flash_attention_2" if flash else "sdpa"
    print(
        f"  device {name}, dtype {dtype}, attention {attn}, "
        f"QLoRA {'yes' if qlora else 'no (needs CUDA and bitsandbytes)'}",
        flush=True,
    )
    batch_size, max_length = (16, 2048) if on_gpu else (4, 64)
    rounds, steps = (3 if full else 2, 5 if full else 3) if on_gpu else (1, 1)
    tokenizer = _id_tokenizer()
    for arch_name, spec in GPU_ARCHS:
        spec = spec if on_gpu else {**spec, **TINY_ARCH}
        folder = _random_model_dir(spec, Path(workdir) / f"gpu-{arch_name.split()[0]}", dtype)
        encoded = _gpu_examples(batch_size * (steps + 1), max_length, spec["vocab_size"])
        for quant in ("none", "4bit"):
            label = f"{arch_name}, {'QLoRA 4-bit' if quant == '4bit' else str(dtype).removeprefix('torch.')}"
            if quant == "4bit" and not qlora:
                report.add(Row("6", label, "skipped: QLoRA needs a CUDA GPU and bitsandbytes", None, "report", None))
                continue
            cfg = LabConfig().override(
                {
                    "model.name": str(folder),
                    "model.device": device,
                    "model.dtype": str(dtype).removeprefix("torch."),
                    "model.quantization": quant,
                    "train.prompt_loss_weight": 0.1,
                    "train.batch_size": batch_size,
                    "data.max_length": max_length,
                    "train.cache_frozen_layers": False,
                }
            )
            train_dtype = compute_dtype(cfg.model, dev)

            def adapted_model(cfg=cfg):
                torch.manual_seed(0)
                base = load_model(cfg.model, dev)
                base.set_attn_implementation(attn)
                return attach_lora(base, cfg.lora)

            lab_model = adapted_model()
            restore = adapter_snapshot(lab_model)
            sides = [
                lab_side(
                    f"lab {'packed' if p else 'padded'}",
                    cfg.override({"train.packing": p}),
                    lab_model,
                    tokenizer,
                    encoded,
                    workdir,
                    restore,
                    dev,
                    train_dtype,
                )
                for p in (False, True)
            ]
            trl_model = adapted_model()
            trl_restore = adapter_snapshot(trl_model)
            sides.append(
                _trl_side(
                    "trl padded", trl_model, tokenizer, encoded, cfg, workdir, on_gpu, train_dtype, False, trl_restore
                )
            )
            if flash:
                sides.append(
                    _trl_side(
                        "trl packed",
                        trl_model,
                        tokenizer,
                        encoded,
                        cfg,
                        workdir,
                        on_gpu,
                        train_dtype,
                        True,
                        trl_restore,
                    )
                )
            interleave(sides, rounds=rounds, steps=steps)
            lowest = (layer_indices(cfg.lora.layers, lab_model.config.num_hidden_layers) or [0])[0]
            trl_by_layout = {s.name.split()[1]: s for s in sides if s.name.startswith("trl")}
            for side in sides[:2]:
                layout = side.name.split()[1]
                flops_per_second = side.tokens_per_second * _flops_per_token(side, lab_model.config, lowest)
                mfu = flops_per_second / peak if peak else None
                trl = trl_by_layout.get(layout) or trl_by_layout["padded"]
                ratio = side.tokens_per_second / trl.tokens_per_second
                measured = (
                    f"{side.tokens_per_second:,.0f} vs TRL {trl.name.split()[1]} {trl.tokens_per_second:,.0f} tok/s, "
                    f"{flops_per_second / 1e12:.3g} useful TFLOP/s"
                )
                if mfu is not None:
                    measured += f", MFU {mfu:.1%}"
                bf16_packed = layout == "packed" and quant == "none" and on_gpu
                report.add(
                    Row(
                        "6",
                        f"{label}, lab {layout}, bs {batch_size}, <= {max_length} tokens, PLW 0.1",
                        measured,
                        ratio,
                        ">= 1.0x TRL" + (", MFU >= 30%" if bf16_packed else ""),
                        (ratio >= 1.0 and (mfu is None or not bf16_packed or mfu >= 0.30)) if on_gpu else None,
                        note=""
                        if mfu is not None
                        else ("MFU needs a known GPU peak" if on_gpu else "CPU smoke test: figures mean nothing"),
                    )
                )
            del sides, lab_model, trl_model
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()


# -- main ------------------------------------------------------------------------------------------


SECTIONS = {
    "1": bench_vs_trl,
    "2": bench_packing,
    "3": bench_memory,
    "4": bench_eval,
    "5": bench_default_run,
    "6": bench_gpu,
    "7": bench_live_views,
    "8": bench_encode,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more steps, rounds and examples")
    parser.add_argument("--only", default="", help="comma list of sections to run, e.g. 1,3")
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="run section 6 (GPU) only; without --gpu it still runs last, or prints a note when there is no GPU",
    )
    parser.add_argument(
        "--gpu-smoke", action="store_true", help="run section 6's code on the CPU with tiny models (checks the script)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every CPU section (and section 6's code on the CPU) on the tiny random-weight model with a few examples: "
        "proves the script runs (under 2 minutes); exits 1 when any section raises",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument(
        "--default-run-limit",
        type=float,
        default=600.0,
        help="stop section 5's run after this many seconds (reported as a failure)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the comparisons (default 0: torch's default, all cores, as the app and CLI run). "
        "On cores shared with other jobs, --threads 1 keeps timings steadier; both sides of a comparison always "
        "use the same count. Section 5 always runs with torch's default, as the app does.",
    )
    args = parser.parse_args(argv)
    # A GPU machine may not have the embedded model (it does not travel): --gpu runs section 6 alone.
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or (
        ["6"] if args.gpu or args.gpu_smoke else ["8", "5", "1", "2", "3", "4", "7", "6"]
    )
    unknown = [key for key in chosen if key not in SECTIONS]
    if unknown:
        parser.error(f"--only: no section {', '.join(unknown)}; sections are {', '.join(sorted(SECTIONS))}")
    if args.smoke:
        OVERRIDES.update(SMOKE)
    report = Report()
    default_threads = torch.get_num_threads()
    args.threads = args.threads or default_threads
    torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "full" if args.full else "quick"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {_commit()}, load average {_load()}; torch {torch.__version__}, "
        f"{args.threads} thread(s) for comparisons ({default_threads} for the default run), mode {mode}; "
        f"sections {','.join(chosen)}",
        flush=True,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plw-bench-") as workdir:
        for key in chosen:
            t = time.perf_counter()
            try:
                torch.set_num_threads(default_threads if key == "5" else args.threads)
                if key == "6":
                    bench_gpu(report, args.full, workdir, "cpu" if args.gpu_smoke or args.smoke else "cuda")
                elif key == "5":
                    bench_default_run(report, args.full, workdir, args.default_run_limit)
                else:
                    SECTIONS[key](report, args.full, workdir)
            except Exception as exc:  # one broken section must not hide the others
                import traceback

                traceback.print_exc()
                report.add(Row(key, f"section {key}", f"error: {type(exc).__name__}: {exc}"[:120], ok=False))
            print(f"  ({time.perf_counter() - t:.0f}s, load average {_load()})", flush=True)
    print(
        f"\n== summary ({time.perf_counter() - started:.0f}s, {mode} mode; {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"commit {_commit()}, load average {_load()}) =="
    )
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in report.rows], indent=2))
    errors = [r for r in report.rows if r.measured.startswith("error")]
    return 1 if errors else 0


def _commit() -> str:
    """The checked-out commit, marked when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return (head.stdout.strip() or "unknown") + (" (modified)" if dirty.stdout.strip() else "")


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


if __name__ == "__main__":
    sys.exit(main())
