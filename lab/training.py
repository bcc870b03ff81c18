"""Prompt-loss-weighted LoRA training on transformers' Trainer, reported as typed events.

The story of a run, top to bottom in `train`: write the config, read and encode the data, load
the model and attach LoRA, train with `PLWTrainer` (our loss, normalised over the whole
optimiser step) while `EventCallback` evaluates, keeps the best adapter and honours stop
requests, then compare the adapter on and off and write the summary. Whatever happens, the run
folder keeps the config, the events and the last adapter.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from . import advice, evaluation
from .collate import Collator, EncodedDataset
from .config import LabConfig, layer_indices
from .data import DataError, Example, load_examples, make_split, write_split
from .events import (
    Advice,
    CheckpointSaved,
    Eval,
    EventBus,
    Failed,
    Finished,
    JsonlLog,
    Started,
    Step,
    Stopped,
)
from .forward import final_hidden, logits_at, output_layer, supports_hidden_loss
from .loss import normalizer, shift_for_targets, token_weights, weighted_ce, weighted_ce_from_logits
from .masks import Encoded, encode_fitted
from .models import attach_lora, load_model, load_tokenizer, num_layers, pick_device
from .prefix import FrozenPrefix
from .packing import PackingCollator, attention_kind, model_kwargs, num_tokens
from .metrics import best_of, metric
from .runs import new_run_dir, write_json
from .stats import truncation_message


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the adapter from the step before is kept."""


@dataclass
class Prepared:
    train: list[Encoded]
    val: list[Encoded]
    skipped: list[str]
    #: Which records went where (`lab.data.split_record`), written to the run's split.json.
    split: dict = field(default_factory=dict)
    #: What max_length cuts (`lab.stats.truncation_report`), over train and validation together.
    truncation: dict = field(default_factory=dict)
    #: Warnings for the run's start: what is cut, validation groups seen in training.
    notes: list[str] = field(default_factory=list)


def prepare(cfg: LabConfig, tokenizer, examples: list[Example] | None = None) -> Prepared:
    """Read, split and encode the data; raise a `DataError` when nothing trainable is left."""
    examples = load_examples(cfg.data) if examples is None else examples
    train_ex, val_ex, record = make_split(examples, cfg.data)
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
        raise DataError("no validation examples: raise data.val_size or add data")
    notes = [note for note in (truncation_message(fitted.truncation),) if note]
    if record["shared_groups"]:
        notes.append(
            f"{record['shared_groups']} validation groups (data.group_by {record['group_by']}) also occur in training: "
            "validation measures memorised passages there"
        )
    return Prepared(train, val, skipped, record, fitted.truncation, notes)


class PLWTrainer(Trainer):
    """Trainer whose loss is the prompt-loss-weighted cross-entropy of `lab.loss`.

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

    def _weights(self, batch) -> torch.Tensor:
        weights = token_weights(batch["prompt_mask"], batch["completion_mask"], self.lab.train.prompt_loss_weight)
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
        weights = self._weights(inputs)
        targets = inputs["input_ids"][:, 1:]
        kwargs = model_kwargs(inputs)  # attention mask, and position ids when packed
        if self.use_hidden_loss:
            # The frozen-layer cache is keyed by example, so it serves padded batches only.
            prefix = self.prefix if "position_ids" not in kwargs else None
            hidden = final_hidden(model, inputs["input_ids"], prefix=prefix, **kwargs)
            head_weight, head_bias = output_layer(model)
            loss_sum = weighted_ce(hidden[:, :-1], head_weight, targets, weights, self.lab.train.chunk_size, head_bias)
        else:
            keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
            keep[:, :-1] = weights > 0
            logits = logits_at(model, inputs["input_ids"], keep=keep, **kwargs)
            loss_sum = weighted_ce_from_logits(logits, targets[keep[:, :-1]], weights[keep[:, :-1]])
        if num_items_in_batch is None:  # evaluation-style call outside the training loop
            num_items_in_batch = normalizer(weights, self.lab.train.loss_normalization)
        # DDP averages gradients over processes; the normaliser already spans them, so undo the average.
        loss = loss_sum / num_items_in_batch.clamp_min(1e-8) * self.accelerator.num_processes
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}; lower train.learning_rate "
                "or use float32 (model.dtype)"
            )
        self.tokens_seen += num_tokens(inputs)
        return (loss, None) if return_outputs else loss


class EventCallback(TrainerCallback):
    """Turns the Trainer's progress into events, evaluates, keeps the best adapter, honours stops."""

    def __init__(self, trainer_ref: dict, run: "RunContext"):
        self.ref = trainer_ref  # filled after the Trainer exists (it needs the callback first)
        self.run = run
        self.step_started = time.time()
        self.step_seconds = 0.0
        self.tokens_at_step_start = 0
        self.eval_due = False
        self.evals_without_improvement = 0

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
                )
            )
        if self.run.stop.is_set():
            control.should_training_stop = True
        if self.eval_due and not control.should_training_stop:
            self.eval_due = False
            if not self.run.evaluate(state.global_step, float(state.epoch or 0.0)):
                self.evals_without_improvement += 1
                patience = self.run.cfg.train.patience
                if patience and self.evals_without_improvement >= patience:
                    self.run.stop_reason = f"early stopping: no improvement in {patience} evaluations"
                    control.should_training_stop = True
            else:
                self.evals_without_improvement = 0
        return control


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
    collapse_reported: bool = False
    details: dict = field(default_factory=dict)

    def emit(self, event) -> None:
        if self.is_main:
            self.bus.emit(event)

    def evaluate(self, step: int, epoch: float) -> bool:
        """Evaluate, emit the event, keep the adapter if it is the best; return whether it improved."""
        t = self.cfg.train
        started = time.perf_counter()
        # Per-example answers are kept so the final comparison can reuse them (step 0 is the base model).
        metrics = evaluation.evaluate(self.model, self.data.val, self.tokenizer.pad_token_id, self.cfg.eval.batch_size, t.chunk_size, details=True, prefix=self.prefix)
        self.details[step] = metrics.pop("examples")
        self.last_eval_step = step
        improved = False
        value = metrics.get(t.early_stopping_metric)
        if t.early_stopping_metric != "none" and value is not None and value == value:
            improved = metric(t.early_stopping_metric).better(value, self.best_value)
            if improved:
                self.best_value, self.best_step = value, step
                self.best_state = adapter_state(self.model)
                self.save_adapter("best_adapter", step)
        event = Eval(step=step, epoch=epoch, metrics=metrics, is_best=improved, seconds=time.perf_counter() - started)
        self.evals.append(event)
        self.emit(event)
        warning = advice.collapse(metrics)
        if warning and step > 0 and not self.collapse_reported:
            self.collapse_reported = True  # once per run: the curves show whether it persists
            self.emit(Advice(message=warning, step=step))
        return improved

    def kept_step(self, last_step: int) -> int:
        """The step whose adapter the run ends with: the best evaluation's when restoring it."""
        return self.best_step if self.cfg.train.restore_best and self.best_state is not None else last_step

    def save_adapter(self, name: str, step: int) -> None:
        if self.is_main:
            path = self.run_dir / name
            self.model.save_pretrained(path)
            self.emit(CheckpointSaved(step=step, path=str(path), label={"adapter": "final"}.get(name, name.removesuffix("_adapter"))))

    def summary(self, status: str, step: int, error: str = "") -> dict:
        return {
            "status": status,
            "steps": step,
            "error": error,
            "stop_reason": self.stop_reason,
            "elapsed_seconds": time.time() - self.started,
            "early_stopping_metric": self.cfg.train.early_stopping_metric,
            "adapter_step": self.kept_step(step),
            "best": best_of(self.evals),
            "first_eval": self.evals[0].metrics if self.evals else None,
            "final_eval": self.evals[-1].metrics if self.evals else None,
            "n_train": len(self.data.train) if self.data else 0,
            "n_val": len(self.data.val) if self.data else 0,
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
        return PackingCollator(tokenizer.pad_token_id, attention_kind(model), mask_dtype=next(model.parameters()).dtype)
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


def train(
    cfg: LabConfig,
    subscribers=(),
    stop: threading.Event | None = None,
    examples: list[Example] | None = None,
    compare: bool = True,
) -> TrainResult:
    """Run one training job as `cfg` describes. Never loses the config, the events or the last adapter."""
    cfg.validate()
    is_main = is_main_process()
    # Only the main process writes the run folder; the others train into a scratch folder they never fill.
    run_dir, cfg = new_run_dir(cfg) if is_main else (Path(tempfile.mkdtemp(prefix="plw-lab-rank")), cfg)
    bus = EventBus()
    run = RunContext(cfg, run_dir, bus, stop or threading.Event())
    run.is_main = is_main
    if run.is_main:
        bus.subscribe(JsonlLog(run_dir / "events.jsonl"))
    for callback in subscribers:
        bus.subscribe(callback)
    step = 0
    try:
        device = pick_device(cfg.model.device)
        run.tokenizer = tokenizer = load_tokenizer(cfg.model)
        run.data = data = prepare(cfg, tokenizer, examples)
        if run.is_main:
            write_split(run_dir / "split.json", data.split)
        torch.manual_seed(cfg.train.seed)
        base = load_model(cfg.model, device)
        run.model = model = attach_lora(base, cfg.lora)
        args = training_arguments(cfg, run_dir, device, base.dtype)
        steps = total_steps(cfg, len(data.train), args.world_size)
        run.emit(Started(run_dir=str(run_dir), config=cfg.to_dict(), n_train=len(data.train), n_val=len(data.val), total_steps=steps, skipped=data.skipped, truncation=data.truncation))
        for note in [*data.notes, *advice.before_training(cfg, len(data.train), steps)]:
            run.emit(Advice(message=note))
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
            run.prefix = trainer.prefix = FrozenPrefix.for_model(model, layer_indices(cfg.lora.layers, num_layers(base)))
        run.evaluate(0, 0.0)  # step 0 is the base model: LoRA starts as a zero update
        try:
            trainer.train()
        finally:
            step = trainer.state.global_step
            run.save_adapter("last_adapter", step)
        if run.last_eval_step != step:
            run.evaluate(step, float(trainer.state.epoch or 0.0))
        if run.kept_step(step) != step:
            load_adapter_state(model, run.best_state)
        run.save_adapter("adapter", step)
        comparison = None
        if compare and not run.stop.is_set():
            comparison = compare_adapter(run)
        stopped = run.stop.is_set() or bool(run.stop_reason)
        status = "stopped" if stopped else "finished"
        summary = run.summary(status, step)
        if run.is_main:
            write_json(run_dir / "summary.json", summary)
        if stopped:
            run.emit(Stopped(step=step, reason=run.stop_reason or "stopped by the user", summary=summary))
        else:
            run.emit(Finished(step=step, summary=summary))
        return TrainResult(run_dir, status, summary, model, tokenizer, data, comparison)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if run.is_main:
            (run_dir / "traceback.txt").write_text(traceback.format_exc())
        summary = run.summary("failed", step, error)
        if run.is_main:
            write_json(run_dir / "summary.json", summary)
        run.emit(Failed(step=step, error=error, summary=summary))
        return TrainResult(run_dir, "failed", summary, run.model, run.tokenizer, run.data)


def compare_adapter(run: RunContext) -> dict:
    from .builtin import general_text

    cfg = run.cfg
    probe = general_text()[: cfg.eval.probe_texts]
    # Step 0 is the base model and the kept step's evaluation is the adapter the run ends with.
    by_step = {e.step: {**e.metrics, "examples": run.details[e.step]} for e in run.evals}
    known = {"off": by_step.get(0), "on": by_step.get(run.kept_step(run.last_eval_step))}
    result = evaluation.compare(
        run.model, run.tokenizer, run.data.val, probe, cfg.eval.generations, cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.train.chunk_size, run.prefix, known
    )
    if run.is_main:
        write_json(run.run_dir / "compare.json", result)
    return result


def is_main_process() -> bool:
    # `accelerate launch` sets RANK before any process group exists.
    return int(os.environ.get("RANK", "0")) == 0
