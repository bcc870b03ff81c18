"""Prompt-loss-weighted LoRA training on transformers' Trainer, reported as typed events.

The story of a run, top to bottom in `train`: `plan` checks every setting, reads and encodes the
data, loads the model and attaches LoRA, all before anything is written, so bad input is refused
(a `ConfigError`, `DataError` or `ModelError`) with no run folder left behind. Only then is the
run folder made and the config written; `PLWTrainer` trains (our loss, normalised over the whole
optimiser step) while `EventCallback` evaluates, keeps the best adapter and honours stop
requests, then the adapter is compared on and off and the summary written. Whatever happens from
there, the run folder keeps the config, the events and the last adapter.

Checkpoints: every `train.save_interval_steps` steps or `train.save_interval_seconds` seconds, and
when the run stops or fails, `last_adapter/` is replaced whole by the adapter plus what resuming
needs (the Trainer's optimiser, scheduler, RNG and state files, and the lab's own `lab_state.json`
and best adapter). `train(..., resume_from=RUN_DIR)` continues such a run from it, exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from plw_lab.core import advice, card, compat, evaluation, memory, tracking
from plw_lab.core.collate import Collator, EncodedDataset
from plw_lab.core.compat import output_layer
from plw_lab.core.config import ConfigError, LabConfig, layer_indices
from plw_lab.core.data import DataError, Example, Examples, as_examples, load_examples
from plw_lab.core.events import (
    Advice,
    CheckpointSaved,
    Eval,
    EventBus,
    Failed,
    Finished,
    JsonlLog,
    Phase,
    Started,
    Step,
    Stopped,
)
from plw_lab.core.forward import final_hidden, logits_at, supports_hidden_loss
from plw_lab.core.loss import (
    lora_update_sq_norm,
    normalizer,
    shift_for_targets,
    token_weights,
    weighted_ce,
    weighted_ce_from_logits,
    weighted_kl,
    weighted_kl_from_logits,
)
from plw_lab.core.masks import Encoded, check_chat_template, encode_fitted
from plw_lab.core.metrics import best_of, metric, stopping_metric
from plw_lab.core.mixing import training_split
from plw_lab.core.models import (
    ModelError,
    attach_lora,
    check_model,
    check_quantization,
    compute_dtype,
    load_model,
    load_tokenizer,
    lora_factors,
    num_layers,
    pick_device,
)
from plw_lab.core.packing import PackingCollator, attention_kind, model_kwargs, num_tokens
from plw_lab.core.prefix import FrozenPrefix
from plw_lab.core.runs import (
    LIVE_MARK,
    ROOM_BYTES,
    WRITE_ERRORS,
    ResumeError,
    RunFolderGone,
    clear_running,
    free_room,
    keep_room,
    load_run,
    mark_running,
    new_run_dir,
    read_run_json,
    replace_folder,
    write_error_text,
    write_json,
)
from plw_lab.core.stats import truncation_message
from plw_lab.core.stopping import stopping_report
from plw_lab.core.weights import plw_at, plw_range

#: Files the lab adds to a checkpoint folder beside the Trainer's own.
LAB_STATE, BEST_STATE = "lab_state.json", "lab_best_adapter.safetensors"


#: The metrics of the kept adapter that `summary.json` carries at its top level.
HEADLINE = (
    "answer_loss",
    "format_loss",
    "completion_loss",
    "answer_accuracy",
    "answer_accuracy_ci",
    "answer_accuracy_generated",
    "answer_accuracy_generated_ci",
    "unparseable",
    "candidate_mass",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "majority_baseline",
    "chance",
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the adapter from the step before is kept."""


class StopRequest(threading.Event):
    """A stop request (the Stop button, SIGTERM, Ctrl-C) that can say who asked."""

    reason: str = ""
    signal: int = 0  # the signal that asked, if one did

    def request(self, reason: str) -> None:
        self.reason = reason
        self.set()


@dataclass
class Prepared:
    train: list[Encoded]
    val: list[Encoded]
    skipped: list[str]
    #: What conversion left out of the records (`DataReport.to_dict`); empty for examples built by hand.
    data_report: dict = field(default_factory=dict)
    #: Which records went where (`plw_lab.core.data.split_record`), written to the run's split.json.
    split: dict = field(default_factory=dict)
    #: What max_length cuts (`plw_lab.core.stats.truncation_report`), over train and validation together.
    truncation: dict = field(default_factory=dict)
    #: Warnings for the run's start: what is cut, validation groups seen in training.
    notes: list[str] = field(default_factory=list)


def prepare(cfg: LabConfig, tokenizer, examples: list[Example] | None = None) -> Prepared:
    """Read, split and encode the data; raise a `DataError` when nothing trainable is left.

    `examples` replaces data.source: `Example`s, or records (a list of dicts, a `datasets.Dataset` or
    `DatasetDict`) read as a data file's would be.
    """
    examples = load_examples(cfg.data) if examples is None else as_examples(examples, cfg.data)
    record: dict = {}
    train_ex, val_ex = training_split(cfg, examples, record)
    d = cfg.data
    fitted = encode_fitted(tokenizer, train_ex + val_ex, d.max_length, d.max_length_cap, d.train_eos)
    train = [e for e, i in zip(fitted.encoded, fitted.positions) if i < len(train_ex)]
    val = [e for e, i in zip(fitted.encoded, fitted.positions) if i >= len(train_ex)]
    skipped = fitted.skipped
    if not train:
        raise DataError(
            f"no valid training examples out of {len(train_ex)}" + (f"; first problem: {skipped[0]}" if skipped else "")
        )
    if not val:
        raise DataError(f"no validation examples: {_too_few(cfg, examples, len(train_ex) + len(val_ex))}")
    if not any(_trains(cfg, e) for e in train):
        raise DataError(
            "every training token has weight 0 (the records' or messages' 'weight' field is 0), so nothing would "
            "be trained; give the records a positive weight, or leave the field out (weight 1)"
        )
    notes = [note for note in (truncation_message(fitted.truncation),) if note]
    if record["shared_groups"]:
        notes.append(
            f"{record['shared_groups']} validation groups (data.group_by {record['group_by']}) also occur in training: "
            "validation measures memorised passages there"
        )
    report = examples.report.to_dict() if isinstance(examples, Examples) else {}
    return Prepared(train, val, skipped, report, record, fitted.truncation, notes)


def _trains(cfg: LabConfig, encoded: Encoded) -> bool:
    """Whether any target of `encoded` carries loss weight under `cfg` (PLW, lambda_r and the data's weights)."""
    t = cfg.train
    weights = token_weights(
        torch.tensor(encoded.prompt_mask),
        torch.tensor(encoded.completion_mask),
        plw_range(t.plw_schedule, t.prompt_loss_weight, t.plw_end)[1],
        t.completion_loss_weight,
        torch.tensor(encoded.data_weights()),
    )
    return bool(shift_for_targets(weights).gt(0).any())


def _too_few(cfg: LabConfig, examples: list[Example], n: int) -> str:
    """Why the validation split came out empty, and the settings that fix it."""
    d = cfg.data
    if d.val_source.strip():
        return f"data.val_source {d.val_source} gave none; name a data set with records in it"
    if d.val_size == 0:
        return "data.val_size is 0; set a fraction such as 0.2, a number of examples, or data.val_source"
    report = examples.report if isinstance(examples, Examples) else None
    if report and report.duplicates:
        have = f"the {report.records} records hold {n} distinct example(s) ({len(report.duplicates)} exact duplicates)"
    elif d.limit:
        have = f"data.limit={d.limit} keeps {n} example(s)"
    else:
        have = f"{n} example(s)"
    return (
        f"{have}, too few to split at data.val_size={d.val_size:g}; a run needs examples to train on and to "
        "validate on: add data, raise data.val_size"
        + (" or data.limit" if d.limit else "")
        + ", or name a data.val_source"
    )


def prepare_for_run(cfg: LabConfig, run_dir: Path, tokenizer) -> Prepared:
    """A finished run's data, checked against the split.json it wrote, so that evaluating, comparing or
    probing it later never scores other validation examples than the run did (a data file edited since
    the run would otherwise split differently without a word)."""
    data = prepare(cfg, tokenizer)
    recorded = read_run_json(Path(run_dir) / "split.json")
    if recorded is not None:
        for side in ("train", "val"):
            changed = recorded.get(side) is not None and recorded[side] != data.split.get(side)
            recorded_hash = (recorded.get("fingerprint") or {}).get(side)
            if changed or (recorded_hash and recorded_hash != data.split["fingerprint"][side]):
                raise DataError(
                    f"{Path(run_dir).name}: the data no longer splits as the run's split.json records "
                    f"(its {side} examples differ): {cfg.data.source} changed since the run; restore it, "
                    "or train a new run on it"
                )
    return data


class PLWTrainer(Trainer):
    """Trainer whose loss is the prompt-loss-weighted cross-entropy of `plw_lab.core.loss`.

    `get_batch_samples` sees every micro-batch of an optimiser step before any is run, so it
    computes the normaliser (sum of weights, or count of weighted tokens) over the whole step
    and all processes; each micro-batch's loss is its weighted sum divided by that number,
    which makes accumulation and data parallelism exact.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, lab_config: LabConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.lab = lab_config
        self.tokens_seen = 0
        self.prefix = None  # a lab.prefix.FrozenPrefix, set by `train` when it applies
        self.use_hidden_loss = supports_hidden_loss(self.model) and self.accelerator.distributed_type.value not in (
            "FSDP",
            "DEEPSPEED",
        )

    def plw(self, step: int) -> float:
        """The PLW of optimiser step `step` (0-based) under `train.plw_schedule`."""
        t = self.lab.train
        return plw_at(t.plw_schedule, t.prompt_loss_weight, t.plw_end, step, self.state.max_steps)

    def _weights(self, batch) -> torch.Tensor:
        t = self.lab.train
        # `global_step` counts the steps already taken, so it is the 0-based index of the step in progress.
        weights = token_weights(
            batch["prompt_mask"],
            batch["completion_mask"],
            self.plw(self.state.global_step),
            t.completion_loss_weight,
            batch.get("data_weight"),
        )
        return shift_for_targets(weights)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        mode = self.lab.train.loss_normalization
        total = sum(normalizer(self._weights(b), mode) for b in batches).to(device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return batches, total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t = self.lab.train
        weights = self._weights(inputs)
        targets = inputs["input_ids"][:, 1:]
        kwargs = model_kwargs(inputs)  # attention mask, and position ids when packed
        if self.use_hidden_loss:
            # The frozen-layer cache is keyed by example, so it serves padded batches only.
            prefix = self.prefix if "position_ids" not in kwargs else None
            hidden = final_hidden(model, inputs["input_ids"], prefix=prefix, **kwargs)
            head_weight, head_bias = output_layer(model)
            loss_sum = weighted_ce(hidden[:, :-1], head_weight, targets, weights, t.chunk_size, head_bias)
            if t.kl_weight > 0:
                with torch.no_grad(), _adapter_off(model) as base:
                    base_hidden = final_hidden(base, inputs["input_ids"], prefix=prefix, **kwargs)
                kl_sum = weighted_kl(hidden[:, :-1], base_hidden[:, :-1], head_weight, weights, t.chunk_size, head_bias)
                loss_sum = loss_sum + t.kl_weight * kl_sum
        else:
            keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
            keep[:, :-1] = weights > 0
            logits = logits_at(model, inputs["input_ids"], keep=keep, **kwargs)
            kept_weights = weights[keep[:, :-1]]
            loss_sum = weighted_ce_from_logits(logits, targets[keep[:, :-1]], kept_weights)
            if t.kl_weight > 0:
                with torch.no_grad(), _adapter_off(model) as base:
                    base_logits = logits_at(base, inputs["input_ids"], keep=keep, **kwargs)
                loss_sum = loss_sum + t.kl_weight * weighted_kl_from_logits(logits, base_logits, kept_weights)
        if num_items_in_batch is None:  # evaluation-style call outside the training loop
            num_items_in_batch = normalizer(weights, t.loss_normalization)
        # DDP averages gradients over processes; the normaliser already spans them, so undo the average.
        loss = loss_sum / num_items_in_batch.clamp_min(1e-8) * self.accelerator.num_processes
        if t.l2_to_base > 0:
            # Once per optimiser step: each micro-batch adds its share, and every process the same term.
            loss = (
                loss + t.l2_to_base * lora_update_sq_norm(lora_factors(model)) / self.args.gradient_accumulation_steps
            )
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}; lower train.learning_rate "
                "or use float32 (model.dtype)"
            )
        self.tokens_seen += num_tokens(inputs)
        return (loss, None) if return_outputs else loss


@contextlib.contextmanager
def _adapter_off(model):
    """The PEFT model inside `model` (DDP unwrapped) with its adapter disabled: the base model, no copy."""
    while hasattr(model, "module"):
        model = model.module
    with evaluation.adapter(model, False) as base:
        yield base


class EventCallback(TrainerCallback):
    """Turns the Trainer's progress into events, evaluates, keeps the best adapter, honours stops."""

    def __init__(self, trainer_ref: dict, run: RunContext):
        self.ref = trainer_ref  # filled after the Trainer exists (it needs the callback first)
        self.run = run
        self.step_started = time.time()
        self.step_seconds = 0.0
        self.tokens_at_step_start = 0
        self.eval_due = False

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a first checkpoint, so even a run killed at once can be resumed
            self.run.save_checkpoint(self.ref["trainer"])
            self.run.check_writes()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.time()
        self.tokens_at_step_start = self.ref["trainer"].tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds = time.time() - self.step_started
        self.eval_due = state.global_step % self.run.cfg.train.eval_interval == 0
        if self.run.stop.is_set():
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        trainer = self.ref["trainer"]
        if logs and "loss" in logs:
            tokens = trainer.tokens_seen - self.tokens_at_step_start
            self.run.emit(
                Step(
                    step=state.global_step,
                    epoch=float(state.epoch or 0.0),
                    learning_rate=float(logs.get("learning_rate", 0.0)),
                    train_loss=float(logs["loss"]),
                    grad_norm=None if logs.get("grad_norm") is None else float(logs["grad_norm"]),
                    tokens_per_second=tokens * args.world_size / max(self.step_seconds, 1e-9),
                    tokens_seen=trainer.tokens_seen * args.world_size,
                    elapsed=time.time() - self.run.started,
                    total_steps=state.max_steps,
                    plw=trainer.plw(state.global_step - 1),
                )
            )
        if self.run.stop.is_set():
            control.should_training_stop = True
        if self.eval_due and not control.should_training_stop:
            self.eval_due = False
            final = state.global_step >= state.max_steps
            if not self.run.evaluate(state.global_step, float(state.epoch or 0.0), generate=final):
                self.run.evals_without_improvement += 1
                patience = self.run.cfg.train.patience
                if patience and self.run.evals_without_improvement >= patience:
                    self.run.stop_reason = f"early stopping: no improvement in {patience} evaluations"
                    control.should_training_stop = True
            else:
                self.run.evals_without_improvement = 0
        # The last step and a stop are saved by `train` itself once the loop has ended.
        if (
            not control.should_training_stop
            and state.global_step < state.max_steps
            and self.run.checkpoint_due(state.global_step)
        ):
            self.run.save_checkpoint(self.ref["trainer"])
        self.run.check_writes()
        return control


class WriteRefusedError(RuntimeError):
    """The disk refused a file of the run (a full disk); the message names the first one."""


@dataclass
class RunContext:
    """What a run carries while it trains: where it writes, who listens, what is best so far."""

    cfg: LabConfig
    run_dir: Path
    bus: EventBus
    stop: threading.Event
    model: object = None
    tokenizer: object = None
    data: Prepared | None = None
    prefix: FrozenPrefix | None = None
    started: float = field(default_factory=time.time)
    is_main: bool = True
    evals: list = field(default_factory=list)
    best_value: float | None = None
    best_step: int | None = None
    best_state: dict | None = None
    last_eval_step: int | None = None
    stop_reason: str = ""
    collapse: advice.CollapseWatch = field(default_factory=advice.CollapseWatch)
    details: dict = field(default_factory=dict)
    evals_without_improvement: int = 0
    #: Adapter folders on disk and the step each holds; the summary names only these.
    saved: dict = field(default_factory=dict)
    last_checkpoint: tuple = (-1, 0.0)  # (step, time) of the last checkpoint written
    resumed_from: int | None = None
    #: The base model's final states on the validation batches, for `kl_to_base` (see `evaluation.evaluate`).
    base_states: dict = field(default_factory=dict)
    #: What the disk refused (an adapter, a checkpoint, a file), as told in the advice; the summary carries it.
    write_failures: list = field(default_factory=list)

    def emit(self, event) -> None:
        if self.is_main:
            self.bus.emit(event)

    @property
    def stopping_metric(self) -> str:
        """`train.early_stopping_metric` resolved for this data ("auto": answer loss where answers exist)."""
        has_answers = bool(self.data) and any(e.n_answer for e in self.data.val)
        return stopping_metric(self.cfg.train.early_stopping_metric, has_answers)

    def evaluate(self, step: int, epoch: float, generate: bool = False, phase: str = "evaluating") -> bool:
        """Evaluate, emit the event, keep the adapter if it is the best; return whether it improved.

        `generate` adds the generated-answer accuracy (greedy decoding: the expensive part), which
        runs only at the first and the last evaluation. An evaluation repeated at the same step
        (to add generated answers after an early stop) replaces the earlier one.
        """
        t = self.cfg.train
        self.emit(Phase(name=phase, step=step))
        started = time.perf_counter()
        # Per-example answers are kept so the final comparison can reuse them (step 0 is the base model).
        generating = (generate or step == 0) and self.cfg.eval.generated_accuracy
        metrics = evaluation.evaluate(
            self.model,
            self.data.val,
            self.tokenizer.pad_token_id,
            self.cfg.eval.batch_size,
            t.chunk_size,
            details=True,
            prefix=self.prefix,
            base_states=self.base_states if self.cfg.eval.kl_to_base else None,
            follow=generating,
        )
        followed = metrics.pop("followed", None)
        if generating and metrics.get("answer_accuracy") is not None:
            metrics = evaluation.with_generated(
                metrics,
                evaluation.generate_answers(
                    self.model,
                    self.tokenizer,
                    self.data.val,
                    self.cfg.eval.answer_tokens,
                    self.cfg.eval.batch_size,
                    followed=followed,
                ),
            )
        self.details[step] = metrics.pop("examples")
        self.last_eval_step = step
        improved = False
        name = self.stopping_metric
        value = metrics.get(name)
        if name != "none" and value is not None and value == value:
            improved = metric(name).better(value, self.best_value)
        scored = sorted((ex for ex in self.details[step] if "predicted" in ex), key=lambda ex: ex["index"])
        event = Eval(
            step=step,
            epoch=epoch,
            metrics=metrics,
            is_best=improved,
            seconds=time.perf_counter() - started,
            correct="".join("1" if ex["predicted"] == ex["answer"] else "0" for ex in scored),
        )
        # Recorded before the best adapter is saved: its model card reads this evaluation.
        self.evals = [e for e in self.evals if e.step != step] + [event]
        if improved:
            self.best_value, self.best_step = value, step
            self.best_state = adapter_state(self.model)
            self.save_or_advise("best_adapter", step)
        self.emit(event)
        warning = self.collapse.check(metrics, step)
        if warning:
            self.emit(Advice(message=warning, step=step))
        return improved

    def kept_step(self, last_step: int) -> int:
        """The step whose adapter the run ends with: the best evaluation's when restoring it."""
        return self.best_step if self.cfg.train.restore_best and self.best_state is not None else last_step

    def save_adapter(self, name: str, step: int, write=None, trained_steps: int | None = None) -> None:
        """Swap in `run_dir/name` holding the model's adapter of `step` (and whatever `write` adds); emit the
        checkpoint event. `trained_steps`: the steps the run has trained, where it is past `step` (the kept best)."""
        if not self.is_main:
            return

        def write_with_card(folder: Path) -> None:
            (write or self.model.save_pretrained)(folder)
            card.write(
                folder,
                self.cfg,
                name,
                step if trained_steps is None else trained_steps,
                step,
                self.stopping_metric,
                self.best_value,
                self.evals,
                len(self.data.train),
                len(self.data.val),
            )

        path = replace_folder(self.run_dir, name, write_with_card)
        self.saved[name] = step
        self.emit(
            CheckpointSaved(
                step=step, path=str(path), label={"adapter": "final"}.get(name, name.removesuffix("_adapter"))
            )
        )

    def checkpoint_due(self, step: int) -> bool:
        t = self.cfg.train
        last_step, last_time = self.last_checkpoint
        by_steps = t.save_interval_steps > 0 and step - last_step >= t.save_interval_steps
        by_time = t.save_interval_seconds > 0 and time.time() - last_time >= t.save_interval_seconds
        return by_steps or by_time

    def save_checkpoint(self, trainer) -> bool:
        """Replace last_adapter/ with the adapter and everything resuming needs. A full disk keeps the
        previous checkpoint and says so; an adapter that is no longer finite (a NaN loss) is not saved."""
        step = trainer.state.global_step
        if not self.is_main or self.last_checkpoint[0] == step:
            return False
        if not all(torch.isfinite(p).all() for p in self.model.parameters() if p.requires_grad):
            kept = self.saved.get("last_adapter")
            self.emit(
                Advice(message=f"the adapter at step {step} is not finite; last_adapter/ keeps step {kept}", step=step)
            )
            return False
        resumable = trainer.args.world_size == 1  # FSDP/DeepSpeed checkpoints need every process; one process only

        def write(folder: Path) -> None:
            if resumable:
                compat.write_trainer_checkpoint(trainer, folder)
                write_json(folder / LAB_STATE, self.resume_state(trainer))
                if self.best_state is not None:
                    from safetensors.torch import save_file

                    save_file({k: v.contiguous().cpu() for k, v in self.best_state.items()}, folder / BEST_STATE)
            else:
                self.model.save_pretrained(folder)

        saved = self.save_or_advise("last_adapter", step, write)
        # A refused checkpoint counts too: a full disk is tried again at the next interval, not at every step.
        self.last_checkpoint = (step, time.time())
        return saved

    def save_or_advise(self, name: str, step: int, write=None, trained_steps: int | None = None) -> bool:
        """`save_adapter`, but a failed write (a full disk) keeps the previous folder and becomes advice;
        the run fails at its next `check_writes`."""
        try:
            self.save_adapter(name, step, write, trained_steps=trained_steps)
            return True
        except RunFolderGone:
            raise
        except WRITE_ERRORS as exc:
            kept = self.saved.get(name)
            if kept is not None:
                keeps = f"{name}/ keeps step {kept}"
            else:
                other, other_step = self.kept_adapter()
                keeps = f"there is no {name}/ yet" + (
                    f"; the run keeps {other}/ (step {other_step})" if other else "; no adapter is saved yet"
                )
            self.advise_write_failure(f"could not save {name}/ at step {step} ({write_error_text(exc)}); {keeps}", step)
            return False

    def advise_write_failure(self, message: str, step: int = 0) -> None:
        self.write_failures.append(message)
        self.emit(Advice(message=message, step=step))

    def check_writes(self) -> None:
        """Fail the run once the disk has refused a write: training on would lose what it learns, and
        a run whose files are missing must not end as finished."""
        if self.write_failures:
            raise WriteRefusedError(f"the disk refused the run's files ({self.write_failures[0]}); free disk space")

    def write_or_advise(self, name: str, data: dict, step: int = 0, consequence: str = "") -> bool:
        """Write the JSON file `run_dir/name` whole; a failed write (a full disk) becomes advice, and the run
        fails at its next `check_writes`."""
        if not self.is_main:
            return False
        try:
            write_json(self.run_dir / name, data)
            return True
        except WRITE_ERRORS as exc:
            self.advise_write_failure(
                f"could not write {name} ({write_error_text(exc)})" + (f"; {consequence}" if consequence else ""), step
            )
            return False

    def write_summary(self, summary: dict) -> None:
        """summary.json, into the room the run kept for it; when the disk refuses it even so, the summary
        the ending event carries says so."""
        if self.is_main:
            free_room(self.run_dir)
        consequence = "the run folder shows the run as interrupted" + (
            f", its adapter is {summary['adapter']}/ (step {summary['adapter_step']})" if summary.get("adapter") else ""
        )
        if self.is_main and not self.write_or_advise("summary.json", summary, summary.get("steps", 0), consequence):
            summary["write_failures"] = list(self.write_failures)

    def log_failed(self, reason: str) -> None:
        """events.jsonl refused a line (`JsonlLog.on_error`): the other subscribers hear it."""
        self.advise_write_failure(
            f"could not append to events.jsonl ({reason}); the log misses events from here until the disk has room"
        )

    def resume_state(self, trainer) -> dict:
        """What the lab itself needs to continue where it stopped (the Trainer saves its own state)."""
        return {
            "step": trainer.state.global_step,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "last_eval_step": self.last_eval_step,
            "evals_without_improvement": self.evals_without_improvement,
            "collapsed_answer": self.collapse.answer,
            "tokens_seen": trainer.tokens_seen,
            "elapsed_seconds": time.time() - self.started,
            "saved": {k: v for k, v in self.saved.items() if k == "best_adapter"},
        }

    def restore(self, folder: Path) -> int:
        """Take the lab's state back from a checkpoint folder; return its step."""
        state = json.loads((folder / LAB_STATE).read_text())
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.last_eval_step = state["last_eval_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.collapse.answer = state["collapsed_answer"]
        self.started = time.time() - state["elapsed_seconds"]
        if (folder / BEST_STATE).exists():
            from safetensors.torch import load_file

            self.best_state = load_file(folder / BEST_STATE)
        self.resumed_from = state["step"]
        self.saved = {**state["saved"], "last_adapter": state["step"]}
        self.last_checkpoint = (state["step"], time.time())
        return state["step"]

    def kept_adapter(self) -> tuple[str | None, int | None]:
        """The adapter folder the run ends with that is really on disk, and its step."""
        preferred = [
            "adapter",
            "best_adapter" if self.cfg.train.restore_best else "last_adapter",
            "last_adapter",
            "best_adapter",
        ]
        for name in preferred:
            if name in self.saved:
                return name, self.saved[name]
        return None, None

    def summary(self, status: str, step: int, error: str = "", comparison: dict | None = None) -> dict:
        """The run's outcome. The answer-level metrics of the adapter it ends with sit at the top level
        (from the on/off comparison when there is one, which adds generated answers to a best step
        evaluated mid-run), the base model's under `first_eval`."""
        adapter, adapter_step = self.kept_adapter()
        # The adapter on disk, which is the one in memory unless the disk refused to save that.
        on_disk = adapter_step if adapter is not None else self.kept_step(step)
        kept = next((e.metrics for e in self.evals if e.step == on_disk), None)
        if comparison and on_disk == self.kept_step(step):
            kept = {k: v for k, v in comparison["on"]["metrics"].items() if k != "examples"}
        headline = {name: kept[name] for name in HEADLINE if kept and kept.get(name) is not None}
        return {
            "status": status,
            "steps": step,
            "error": error,
            "stop_reason": self.stop_reason,
            "elapsed_seconds": time.time() - self.started,
            "early_stopping_metric": self.stopping_metric,
            "adapter": adapter,
            "adapter_step": adapter_step,
            # Step 0 is the base model: LoRA starts as a zero update, so that adapter changes nothing.
            "adapter_is_base_model": adapter_step == 0,
            "resumed_from": self.resumed_from,
            **headline,
            "best": best_of(self.evals),
            "stopping": stopping_report(self.evals),
            "first_eval": self.evals[0].metrics if self.evals else None,
            "final_eval": self.evals[-1].metrics if self.evals else None,
            "n_train": len(self.data.train) if self.data else 0,
            "n_val": len(self.data.val) if self.data else 0,
            "write_failures": list(self.write_failures),
        }


def adapter_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_adapter_state(model, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def training_arguments(cfg: LabConfig, run_dir: Path, device: torch.device, dtype: torch.dtype) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=t.seed,
        data_seed=t.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16,
        disable_tqdm=True,
    )


def make_collator(cfg: LabConfig, tokenizer, model):
    """Padding, or packing laid out for the model's attention implementation (`train.packing`)."""
    if cfg.train.packing:
        return PackingCollator(
            tokenizer.pad_token_id,
            attention_kind(model),
            mask_dtype=next(model.parameters()).dtype,
            windows=compat.attention_windows(model),
        )
    return Collator(tokenizer.pad_token_id)


def total_steps(cfg: LabConfig, n_train: int, world_size: int = 1) -> int:
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps
    per_epoch = max(1, math.ceil(math.ceil(n_train / (t.batch_size * world_size)) / t.grad_accum))
    return max(1, math.ceil(per_epoch * t.epochs))


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished", "stopped" or "failed"
    summary: dict
    model: object = None
    tokenizer: object = None
    data: Prepared | None = None
    comparison: dict | None = None


@dataclass
class Plan:
    """What a run needs, checked and loaded by `plan` before anything is written."""

    device: torch.device
    tokenizer: object
    data: Prepared
    #: The model as loaded, before LoRA wraps it (its layer count places the frozen-layer cache).
    base: object
    #: The base model with a fresh LoRA adapter.
    model: object


def check(cfg: LabConfig, examples: list[Example] | None = None) -> tuple[torch.device, object, Prepared]:
    """`plan` without the model: every refusal of the settings, the machine, the tokenizer and the data,
    for a run that starts later (the app's queue) to be refused now as it would be then. Returns the device,
    the tokenizer and the prepared data."""
    cfg.validate()
    if compat.launcher_problem():
        raise ConfigError(compat.launcher_problem())
    preflight(cfg)
    device = pick_device(cfg.model.device)
    tokenizer = load_tokenizer(cfg.model)
    check_chat_template(tokenizer, cfg.model)
    return device, tokenizer, prepare(cfg, tokenizer, examples)


def check_run(cfg: LabConfig, examples: list[Example] | None = None) -> int:
    """Every refusal `train` makes before its run folder exists, the model's too, without loading the
    model: a run that starts later (the app's queue) is refused now as it would be then. Returns the run's
    optimiser steps."""
    check_output_dir(cfg)
    check_model(cfg.model)
    _, _, data = check(cfg, examples)
    return total_steps(cfg, len(data.train))


def plan(cfg: LabConfig, examples: list[Example] | None = None) -> Plan:
    """Check everything that can be checked without training, cheapest first, and load what the run needs:
    the settings, the machine (launcher, quantisation, tracker, device), the tokenizer and its chat template,
    the data (read, split, encoded), then the model with LoRA on the target modules and layers it names.

    Raises a `ConfigError`, `DataError` or `ModelError` naming the setting or record and the fix. Writes
    nothing, so a refused run leaves no folder behind.
    """
    device, tokenizer, data = check(cfg, examples)
    torch.manual_seed(cfg.train.seed)
    base = load_model(cfg.model, device)
    compat.use_fast_attention(base, device, cfg.train.packing)
    model = attach_lora(base, cfg.lora)
    if cfg.train.gradient_checkpointing:
        compat.enable_checkpointing(model)
    return Plan(device, tokenizer, data, base, model)


def train(
    cfg: LabConfig,
    subscribers=(),
    stop: threading.Event | None = None,
    examples: list[Example] | None = None,
    compare: bool = True,
    resume_from: str | Path | None = None,
    on_run_dir=None,
) -> TrainResult:
    """Run one training job as `cfg` describes. Never loses the config, the events or the last adapter.

    Bad input raises a `ConfigError`, `DataError`, `ModelError` or `ResumeError` from `plan`, before
    the run folder exists; once it exists, every failure is a `failed` result with the folder kept.
    `resume_from` continues the stopped, interrupted or failed run in that folder from its last
    checkpoint (its config.yaml is the config; see `resume`). `on_run_dir` is called with the run
    folder as soon as it exists, so whoever started the job knows it.
    """
    is_main = is_main_process()
    cfg.validate()  # before the output folder is looked up: its path may be too long to look up
    if resume_from is not None:
        if (
            int(os.environ.get("WORLD_SIZE", "1")) > 1
        ):  # checkpoints with optimiser state are written by one process only
            raise ResumeError("--resume runs on one process; start it without accelerate launch")
        check_resumable(Path(resume_from))
    elif is_main:
        check_output_dir(cfg)  # cheap, so before `plan` loads anything
    bus = EventBus()
    for callback in subscribers:
        bus.subscribe(callback)
    loading = Phase(name="loading")
    if is_main:
        bus.emit(loading)
    ready = plan(cfg, examples)
    if resume_from is not None:
        run_dir, checkpoint = prepare_resume(Path(resume_from))
    else:
        # Only the main process writes the run folder; the others train into a scratch folder they never fill.
        run_dir, cfg = new_run_dir(cfg) if is_main else (Path(tempfile.mkdtemp(prefix="plw-lab-rank")), cfg)
        # split.json names the data the run's config reads: the run folder's copy of a data file.
        ready.data.split["source"] = cfg.data.source
        checkpoint = None
    if on_run_dir is not None:
        on_run_dir(run_dir)
    run = RunContext(cfg, run_dir, bus, stop or StopRequest())
    run.is_main = is_main
    run.tokenizer, run.data, run.model = ready.tokenizer, ready.data, ready.model
    tokenizer, data, model, base, device = ready.tokenizer, ready.data, ready.model, ready.base, ready.device
    trainer = None
    try:
        if run.is_main:
            log = JsonlLog(run_dir / "events.jsonl", on_error=run.log_failed)
            log(loading)  # the watchers saw it while `plan` loaded, before the folder existed
            bus.subscribe(log, first=True)
            if cfg.train.report_to:
                bus.subscribe(tracking.Tracker(cfg, run_dir))
            try:
                keep_room(run_dir)
            except WRITE_ERRORS as exc:
                run.advise_write_failure(
                    f"could not keep {ROOM_BYTES // 1024} KB free for the run's summary ({write_error_text(exc)})"
                )
        run.write_or_advise(
            "split.json", data.split, consequence="`lab eval` cannot check that the data still splits the same"
        )
        run.check_writes()
        args = training_arguments(cfg, run_dir, device, compute_dtype(cfg.model, device))
        steps = total_steps(cfg, len(data.train), args.world_size)
        from_step = 0
        if checkpoint is not None:
            from_step = run.restore(checkpoint)
            # The evaluations up to the checkpoint count towards this run's best and its summary.
            run.evals = [e for e in load_run(run_dir).evals if e.step <= from_step]
        ref: dict = {}
        callback = EventCallback(ref, run)
        trainer = PLWTrainer(
            model=model,
            args=args,
            train_dataset=EncodedDataset(data.train),
            data_collator=make_collator(cfg, tokenizer, model),
            callbacks=[callback],
            lab_config=cfg,
        )
        trainer.remove_callback(PrinterCallback)  # events replace the Trainer's printed log dicts
        ref["trainer"] = trainer
        if cfg.train.cache_frozen_layers and trainer.use_hidden_loss:
            run.prefix = trainer.prefix = FrozenPrefix.for_model(
                model, layer_indices(cfg.lora.layers, num_layers(base))
            )
            if run.prefix is not None:
                run.prefix.share_head([e.input_ids for e in data.train])
                drawn = steps * cfg.train.batch_size * cfg.train.grad_accum * args.world_size
                if drawn <= len(data.train):  # no training example comes back: only evaluations reuse states
                    run.prefix.keep_only([e.input_ids for e in data.val])
        run.emit(
            Started(
                run_dir=str(run_dir),
                config=cfg.to_dict(),
                n_train=len(data.train),
                n_val=len(data.val),
                total_steps=steps,
                skipped=data.skipped,
                early_stopping_metric=run.stopping_metric,
                data_report=data.data_report,
                resumed=checkpoint is not None,
                from_step=from_step,
                paths=run_paths(cfg, model, trainer),
                world_size=args.world_size,
                global_batch=cfg.train.batch_size * cfg.train.grad_accum * args.world_size,
                truncation=data.truncation,
            )
        )
        if checkpoint is None:
            for note in [
                *data.notes,
                *advice.before_training(cfg, len(data.train), steps, has_answers=any(e.n_answer for e in data.val)),
            ]:
                run.emit(Advice(message=note))
            run.evaluate(0, 0.0)  # step 0 is the base model: LoRA starts as a zero update
        else:
            trainer.tokens_seen = json.loads((checkpoint / LAB_STATE).read_text())["tokens_seen"]
            if run.best_state is not None:  # best_adapter/ may hold a later best the resumed run has not reached yet
                load_adapter_state(model, run.best_state)
                run.save_or_advise("best_adapter", run.best_step)
        run.check_writes()
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        except Exception:
            run.save_checkpoint(trainer)  # the last completed step, when its adapter is still finite
            raise
        step = trainer.state.global_step
        run.save_checkpoint(trainer)
        final = run.evals[-1].metrics if run.evals else {}
        if run.last_eval_step != step or (
            final.get("answer_accuracy") is not None and final.get("answer_accuracy_generated") is None
        ):
            run.evaluate(step, float(trainer.state.epoch or 0.0), generate=True, phase="final evaluation")
        kept = run.kept_step(step)
        if kept != step:
            load_adapter_state(model, run.best_state)
        if kept == 0 and step > 0:
            # A run the user stopped early may simply not have trained long enough; the remedy is for runs
            # that ended by themselves.
            remedy = (
                ""
                if run.stop.is_set()
                else "; lower train.learning_rate, or turn train.restore_best off to keep the last step"
            )
            run.emit(
                Advice(
                    message="the best evaluation was step 0, before any training, so the kept adapter is the "
                    f"base model (a no-op){remedy}",
                    step=step,
                )
            )
        run.save_or_advise("adapter", kept, trained_steps=step)
        comparison = None
        if compare and not run.stop.is_set():
            run.emit(Phase(name="comparing", step=step))
            comparison = compare_adapter(run)
        run.check_writes()
        stopped = run.stop.is_set() or bool(run.stop_reason)
        status = "stopped" if stopped else "finished"
        if stopped and not run.stop_reason:
            run.stop_reason = getattr(run.stop, "reason", "") or "stopped by the user"
        summary = run.summary(status, step, comparison=comparison)
        run.write_summary(summary)
        if stopped:
            run.emit(Stopped(step=step, reason=run.stop_reason, summary=summary))
        else:
            run.emit(Finished(step=step, summary=summary))
        return TrainResult(run_dir, status, summary, model, tokenizer, data, comparison)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            error = out_of_memory_message(cfg, exc)
        step = trainer.state.global_step if trainer is not None else run.resumed_from or 0
        summary = run.summary("failed", step, error)
        if run.is_main and (run_dir / "config.yaml").exists():  # never recreate a deleted run folder
            run.write_summary(summary)
            with contextlib.suppress(OSError):  # a full disk: the summary and the events say what happened
                (run_dir / "traceback.txt").write_text(traceback.format_exc())
        run.emit(Failed(step=step, error=error, summary=summary))
        return TrainResult(run_dir, "failed", summary, run.model, run.tokenizer, run.data)
    finally:
        if run.is_main:
            free_room(run_dir)
            clear_running(run_dir)


def check_resumable(run_dir: Path):
    """The run in `run_dir` when it can be resumed, else a `ResumeError` saying why; changes nothing."""
    run = load_run(run_dir)
    if run.status in ("running", "finished"):
        raise ResumeError(f"{run.name} is {run.status}; only a stopped, interrupted or failed run can be resumed")
    if not run.resumable:
        why = (
            "it ended by early stopping"
            if run.summary.get("stop_reason", "").startswith("early stopping")
            else "it has no checkpoint (last_adapter/)"
        )
        raise ResumeError(f"{run.name} cannot be resumed: {why}")
    return run


def prepare_resume(run_dir: Path) -> tuple[Path, Path]:
    """Check again that the run in `run_dir` can be resumed (`plan` took a while), mark it running and
    clear the ending the resume replaces; return the folder and its checkpoint."""
    run = check_resumable(run_dir)
    try:
        mark_running(run_dir)
    except OSError as exc:
        raise ResumeError(
            f"{run.name}: cannot write {LIVE_MARK} ({write_error_text(exc)}); free disk space and resume again"
        ) from None
    checkpoint = run.checkpoint()
    if checkpoint.name != "last_adapter":  # a swap cut between its renames: put the complete copy back
        checkpoint.rename(run_dir / "last_adapter")
        checkpoint = run_dir / "last_adapter"
    for stale in ("summary.json", "compare.json"):
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "adapter", ignore_errors=True)
    return run_dir, checkpoint


def resume(run_dir: str | Path, **kwargs) -> TrainResult:
    """Continue the stopped, interrupted or failed run in `run_dir` from its last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ResumeError(f"{run_dir} is not a run folder (no config.yaml)")
    return train(LabConfig.load(run_dir / "config.yaml"), resume_from=run_dir, **kwargs)


def run_paths(cfg: LabConfig, model, trainer: PLWTrainer) -> dict:
    """Which computation path each part of the run takes, and why: the `paths` of the started event."""
    arch = compat.model_type(model)
    proven = compat.is_proven(model)
    paths = {
        "architecture": f"{arch}: proven by the lab's architecture tests"
        if proven
        else f"{arch}: not among the proven architectures ({', '.join(compat.PROVEN_DECODERS)}), so the plain path: "
        "no frozen-layer cache, no shared head",
    }
    if trainer.use_hidden_loss:
        paths["loss"] = "hidden states; the output layer runs in chunks at weighted positions only"
    else:
        why = (
            compat.hidden_loss_blocker(model) or f"{trainer.accelerator.distributed_type.value} shards the output layer"
        )
        paths["loss"] = f"the model's logits at weighted positions ({why})"
    if trainer.prefix is not None:
        paths["frozen_layer_cache"] = f"on: layers below {trainer.prefix.first_adapted} run once per example"
        if trainer.prefix.kept_rows is not None:
            paths["frozen_layer_cache"] += "; only the validation set's are kept, as no training example is drawn twice"
        if cfg.train.packing:
            paths["frozen_layer_cache"] += " (evaluation only: packed training rows are not per example)"
    else:
        paths["frozen_layer_cache"] = "off: " + (
            "train.cache_frozen_layers is off"
            if not cfg.train.cache_frozen_layers
            else "the loss goes through logits"
            if not trainer.use_hidden_loss
            else "the architecture is not proven"
            if not proven
            else "every layer is adapted (lora.layers)"
        )
    paths["shared_head"] = "on in evaluation" if proven else "off: the architecture is not proven"
    impl = compat.attention_implementation(model)
    layout = {
        "bool": "block-diagonal boolean 4D masks",
        "float": "block-diagonal additive 4D masks",
        "flat": "one flattened row, varlen via position_ids",
    }
    paths["attention"] = impl + (f"; packed rows with {layout[attention_kind(model)]}" if cfg.train.packing else "")
    paths["gradient_checkpointing"] = "on (non-reentrant)" if compat.checkpointing_enabled(model) else "off"
    return paths


def compare_adapter(run: RunContext) -> dict:
    from plw_lab.core.builtin import general_text

    cfg = run.cfg
    probe = general_text()[: cfg.eval.probe_texts]
    # Step 0 is the base model and the kept step's evaluation is the adapter the run ends with.
    # Evaluations from before a resume have no per-example details here; those are recomputed.
    by_step = {e.step: {**e.metrics, "examples": run.details[e.step]} for e in run.evals if e.step in run.details}
    known = {"off": by_step.get(0), "on": by_step.get(run.kept_step(run.last_eval_step))}
    result = evaluation.compare(
        run.model, run.tokenizer, run.data.val, cfg, probe_texts=probe, prefix=run.prefix, known=known
    )
    run.write_or_advise("compare.json", result, run.last_eval_step or 0, "`lab compare` recomputes the comparison")
    return result


def preflight(cfg: LabConfig) -> None:
    """What the machine must offer for `cfg` (quantisation, the tracker), checked before the run folder exists."""
    check_quantization(cfg.model)
    tracking.check(cfg.train.report_to)


def check_output_dir(cfg: LabConfig) -> None:
    """Refuse a `train.output_dir` that cannot receive a run folder (a file on its way, no permission to
    write) before anything is loaded, rather than after the data and the model."""
    base = Path(cfg.train.output_dir).expanduser()
    name = repr(str(base))
    try:
        existing = next(folder for folder in (base, *base.parents) if folder.exists())
    except OSError as exc:  # a folder on the way that may not be searched
        raise ConfigError(
            f"train.output_dir {name} cannot be looked up ({exc.strerror or exc}); choose another"
        ) from None
    if existing == base and not existing.is_dir():
        raise ConfigError(f"train.output_dir {name} is a file, not a folder; choose another folder for the runs")
    if not existing.is_dir():
        raise ConfigError(f"train.output_dir {name} cannot be made: {str(existing)!r} is a file; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir {name}: {str(existing)!r} is not writable here; choose another folder")


def out_of_memory_message(cfg: LabConfig, exc: BaseException) -> str:
    """A CUDA out-of-memory error as what the run needed and what to lower."""
    first_line = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
    try:
        estimate = memory.estimate(cfg, device="cuda")
    except ModelError:  # a hub model whose config is not readable here; the advice still holds
        return (
            f"The GPU ran out of memory ({first_line}). Lower train.batch_size (raise train.grad_accum to keep "
            "the optimiser batch), data.max_length or train.chunk_size, or set model.quantization: 4bit."
        )
    return (
        f"The GPU ran out of memory ({first_line}). {estimate.describe()} "
        f"To fit, lower: {estimate.what_to_lower()}. The run folder keeps the config, the events and the last adapter."
    )


def is_main_process() -> bool:
    # `accelerate launch` sets RANK before any process group exists.
    return int(os.environ.get("RANK", "0")) == 0
