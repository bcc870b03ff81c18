"""The lab's services: the functions the CLI, the app and the notebooks all call.

Each front door parses its own input and renders the result; everything in between (reading and
encoding data with its report, loading a run with its model and split, evaluating it, comparing the
adapter on and off, the frozen-feature probe, one example's outputs, sweeps and their verdict) is
here, once. Every setting a service uses comes from the config object it is given or the run's own
config.yaml, never from a parameter default, so a recomputed comparison is the one the run made.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plw_lab.core.config import LabConfig
from plw_lab.core.data import DataError, Examples, load_examples
from plw_lab.core.masks import Encoded, Fitted, encode_fitted, prompt_text, render
from plw_lab.core.mixing import balanced_counts
from plw_lab.core.packing import packing_efficiency
from plw_lab.core.runs import Run, write_json
from plw_lab.core.runs import load_run as read_run
from plw_lab.core.stats import LengthStats, label_counts, length_stats, truncation_message
from plw_lab.core.sweep import resume_sweep
from plw_lab.core.sweep import run_sweep as sweep
from plw_lab.core.sweep_verdict import SHIPPED_LESSON, SHIPPED_LESSON_DATA, sweep_runs, sweep_verdict
from plw_lab.core.training import Prepared, StopRequest, TrainResult, check_run, prepare_for_run, resume, train

__all__ = [
    "DataReport",
    "Lesson",
    "LoadedRun",
    "StopRequest",
    "TrainResult",
    "check_run",
    "compare",
    "data_report",
    "evaluate",
    "example_outputs",
    "lesson",
    "load_run",
    "per_token_losses",
    "probe",
    "prompt_outputs",
    "resume",
    "resume_sweep",
    "sweep",
    "sweep_verdict_of",
    "train",
    "write_notebooks",
]


# -- data ---------------------------------------------------------------------------------------


@dataclass
class DataReport:
    """A data set as the lab will train on it: its examples encoded to the run's max length, and what
    that encoding keeps, cuts and skips. `lab inspect`, the app's Data tab and notebook 01 show this."""

    examples: Examples
    fitted: Fitted
    stats: LengthStats
    #: Real-token share of padded and of packed batches at train.batch_size (`packing_efficiency`).
    packing: dict
    labels: dict[str, int]
    #: The label counts data.balance leaves, when it balances; None otherwise.
    balanced: dict[str, int] | None
    #: One line each: what conversion left out, what was skipped, what max_length cuts.
    notes: list[str] = field(default_factory=list)

    @property
    def encoded(self) -> list[Encoded]:
        return self.fitted.encoded

    def by_source_index(self) -> dict[int, Encoded]:
        return {e.example.source_index: e for e in self.fitted.encoded}


def data_report(
    cfg: LabConfig, tokenizer, examples: Examples | None = None, limit: int | None = None, progress=None
) -> DataReport:
    """Read (unless `examples` are given) and encode `cfg.data`, at most `limit` examples encoded;
    `progress` may wrap the batches being encoded (`plw_lab.core.masks.encode_fitted`).

    Raises `DataError` when no example fits data.max_length, naming the first that does not."""
    d = cfg.data
    examples = load_examples(d) if examples is None else examples
    chosen = examples[:limit] if limit else examples
    fitted = encode_fitted(tokenizer, chosen, d.max_length, d.max_length_cap, d.train_eos, progress)
    if not fitted.encoded:
        first = f" (first: {fitted.skipped[0]})" if fitted.skipped else ""
        raise DataError(
            f"none of the {len(examples)} examples fits into data.max_length={fitted.max_length}{first}; "
            "raise data.max_length or shorten the completions"
        )
    labels = label_counts(examples)
    notes = list(examples.report.lines()) if isinstance(examples, Examples) else []
    if fitted.skipped:
        notes.append(f"{len(fitted.skipped)} skipped: {fitted.skipped[0]}" + (" …" if len(fitted.skipped) > 1 else ""))
    warning = truncation_message(fitted.truncation)
    if warning:
        notes.append(warning)
    return DataReport(
        examples=examples,
        fitted=fitted,
        stats=length_stats(fitted.encoded),
        packing=packing_efficiency([len(e) for e in fitted.encoded], fitted.max_length, cfg.train.batch_size),
        labels=labels,
        balanced=balanced_counts(labels, d.balance) if d.balance != "none" and labels else None,
        notes=notes,
    )


# -- runs ---------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run's model with its adapter, its tokenizer and (on first use) its data split.

    Models are not thread-safe: whoever shares one (the app's visitors) uses it under `lock`."""

    run: Run
    config: LabConfig
    model: Any
    tokenizer: Any
    #: The adapter folder loaded and the step it was saved at (None when unknown).
    adapter_dir: Path | None = None
    adapter_step: int | None = None
    #: The comparison saved with this adapter (compare.json), or the last one computed here.
    comparison: dict | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    data: Prepared | None = None
    token_losses: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run.path

    def prepared(self) -> Prepared:
        """The run's train and validation examples, checked against its split.json."""
        with self.lock:
            if self.data is None:
                self.data = prepare_for_run(self.config, self.run.path, self.tokenizer)
            return self.data

    def validation(self) -> list[Encoded]:
        return self.prepared().val


def load_run(path: str | Path, adapter: str = "", device: str | None = None) -> LoadedRun:
    """A run folder with its model and adapter loaded: `adapter` is final, best or last (default: the
    one summary.json keeps). Raises `DamagedRunError` naming a damaged file, `NoAdapterError` saying
    why a run has no adapter yet."""
    from plw_lab.core.models import load_adapter, load_model, load_tokenizer, pick_device

    run = read_run(path)
    if run.config is None:
        raise FileNotFoundError(f"{run.name}: the run's config.yaml was written by a lab this version cannot read")
    folder, step = run.require_adapter(adapter)
    model = load_adapter(load_model(run.config.model, pick_device(device or run.config.model.device)), folder)
    model.eval()
    # compare.json was made with the adapter the summary keeps; another adapter has no saved comparison.
    saved = run.comparison() if run.adapter(adapter) == run.adapter() else None
    return LoadedRun(run, run.config, model, load_tokenizer(run.config.model), folder, step, saved)


def loaded_from_result(result: TrainResult, config: LabConfig) -> LoadedRun:
    """A run that has just finished in this process, with the model it trained: no reload."""
    run = read_run(result.run_dir)
    loaded = LoadedRun(run, config, result.model, result.tokenizer, comparison=result.comparison)
    loaded.data = result.data
    return loaded


def evaluate(loaded: LoadedRun) -> dict[str, dict]:
    """The validation metrics with the adapter off and on: {"off": metrics, "on": metrics}."""
    from plw_lab.core.evaluation import adapter
    from plw_lab.core.evaluation import evaluate as evaluate_model

    cfg = loaded.config
    measured = {}
    with loaded.lock:
        val = loaded.validation()
        for side, enabled in (("off", False), ("on", True)):
            with adapter(loaded.model, enabled):
                measured[side] = evaluate_model(
                    loaded.model, val, loaded.tokenizer.pad_token_id, cfg.eval.batch_size, cfg.train.chunk_size
                )
    return measured


def compare(loaded: LoadedRun, recompute: bool = False) -> dict:
    """The adapter on vs off (`plw_lab.core.evaluation.compare`) with the run's own settings: the
    saved compare.json unless `recompute` or none was saved for this adapter."""
    from plw_lab.core.builtin import general_text
    from plw_lab.core.evaluation import compare as compare_model

    with loaded.lock:
        if loaded.comparison is None or recompute:
            cfg = loaded.config
            loaded.comparison = compare_model(
                loaded.model,
                loaded.tokenizer,
                loaded.validation(),
                cfg,
                probe_texts=general_text()[: cfg.eval.probe_texts],
            )
        return loaded.comparison


def probe(loaded: LoadedRun) -> dict:
    """The frozen-feature probe on the run's own split, written to the run's probe.json."""
    from plw_lab.core.probe import frozen_feature_probe

    cfg = loaded.config
    with loaded.lock:
        data = loaded.prepared()
        result = frozen_feature_probe(
            loaded.model, data.train, data.val, loaded.tokenizer.pad_token_id, cfg.eval.batch_size, cfg.train.seed
        )
    write_json(loaded.run.path / "probe.json", result)
    return result


@dataclass
class ExampleOutputs:
    """One prompt run through the model with the adapter on and off."""

    generations: dict[str, str]
    #: Log-probability of each candidate answer, per side; empty for free-form prompts.
    logprobs: dict[str, dict[str, float]]
    #: Per-token losses of a validation example, per side; empty for a prompt of one's own.
    token_losses: dict[str, list] = field(default_factory=dict)


def example_outputs(loaded: LoadedRun, index: int) -> tuple[Encoded, ExampleOutputs]:
    """Validation example `index` (clamped to the set): generations, answer log-probabilities and
    per-token losses with the adapter on and off."""
    from plw_lab.core.evaluation import adapter, choice_logprobs, generate

    cfg = loaded.config
    with loaded.lock:
        val = loaded.validation()
        if not val:
            raise DataError(f"{loaded.run.name} has no validation examples")
        enc = val[min(max(int(index), 0), len(val) - 1)]
        outputs = ExampleOutputs({}, {}, per_token_losses(loaded, enc))
        for side, enabled in (("on", True), ("off", False)):
            with adapter(loaded.model, enabled):
                outputs.generations[side] = generate(
                    loaded.model, loaded.tokenizer, [enc], cfg.eval.max_new_tokens, cfg.eval.batch_size
                )[0]
                if enc.example.choices:
                    prompt = prompt_text(loaded.tokenizer, enc.example)
                    outputs.logprobs[side] = choice_logprobs(
                        loaded.model, loaded.tokenizer, prompt, enc.example.choices
                    )
    return enc, outputs


def per_token_losses(loaded: LoadedRun, enc: Encoded) -> dict[str, list]:
    """Each token's loss with the adapter on and off, {"on": [...], "off": [...]}, kept per example so
    that recolouring a token view costs nothing."""
    from plw_lab.core.evaluation import adapter, token_losses

    key = tuple(enc.input_ids)
    with loaded.lock:
        if key not in loaded.token_losses:
            if len(loaded.token_losses) > 64:  # a visitor paging through the set keeps memory flat
                loaded.token_losses.clear()
            losses = {}
            for side, enabled in (("on", True), ("off", False)):
                with adapter(loaded.model, enabled):
                    losses[side] = token_losses(loaded.model, enc, loaded.config.train.chunk_size)
            loaded.token_losses[key] = losses
        return loaded.token_losses[key]


def prompt_outputs(loaded: LoadedRun, text: str) -> ExampleOutputs:
    """A prompt of one's own, sent as a user turn through the run's chat template (with its system
    prompt), generated with the adapter on and off; answer log-probabilities when the prompt lists
    the run's candidate answers."""
    from plw_lab.core.data import offered_choices
    from plw_lab.core.evaluation import adapter, choice_logprobs, generate_texts

    if not (text or "").strip():
        raise DataError("type a prompt first")
    cfg = loaded.config
    system = [{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []
    prompt = render(loaded.tokenizer, [*system, {"role": "user", "content": text}], add_generation_prompt=True)
    choices: tuple = ()
    if loaded.data is not None:
        choices = next((e.example.choices for e in loaded.data.val if e.example.choices), ())
    elif loaded.comparison and loaded.comparison["on"]["metrics"].get("predicted"):
        choices = tuple(loaded.comparison["on"]["metrics"]["predicted"])
    choices = offered_choices(text, choices)  # none for a free-form prompt: the letters mean nothing to it
    outputs = ExampleOutputs({}, {})
    with loaded.lock:
        for side, enabled in (("on", True), ("off", False)):
            with adapter(loaded.model, enabled):
                outputs.generations[side] = generate_texts(
                    loaded.model, loaded.tokenizer, [prompt], cfg.eval.max_new_tokens, cfg.eval.batch_size
                )[0]
                if choices:
                    outputs.logprobs[side] = choice_logprobs(loaded.model, loaded.tokenizer, prompt, choices)
    return outputs


# -- what sweeps support ------------------------------------------------------------------------


@dataclass
class Lesson:
    """What the finished runs of one or more sweeps support (`plw_lab.core.sweep_verdict`): the runs and
    their verdict; for the lesson shipped with the lab, also how it was measured (its `measured.json`:
    date, commit, machine, commands, wall time)."""

    runs: list[Run]
    verdict: dict
    measured: dict | None = None

    @property
    def label(self) -> str:
        """Where a measured lesson's numbers come from, as every front door heads them ("" for other sweeps)."""
        m = self.measured
        return f"measured on {SHIPPED_LESSON_DATA}, {m['date']}, commit {m['commit']}, {m['machine']}" if m else ""


def sweep_verdict_of(*folders: str | Path) -> Lesson:
    """The verdict of the finished runs in `folders` (sweep folders, run folders, folders of sweeps). Raises
    `FileNotFoundError` when they hold no finished run."""
    runs = sweep_runs(folders)
    if not runs:
        raise FileNotFoundError(f"no finished runs in {', '.join(Path(f).name for f in folders)} yet")
    return Lesson(runs, sweep_verdict(runs))


def lesson(folder: str | Path | None = None) -> Lesson:
    """The real-data PLW lesson shipped with the lab (`folder`: another copy of it), measured and not
    trained here. Raises `FileNotFoundError` saying so where this installation has none."""
    folder = Path(folder or SHIPPED_LESSON)
    if not (folder / "measured.json").is_file():
        raise FileNotFoundError(
            f"this installation holds no measured real-data lesson ({folder.name}/measured.json is missing)"
        )
    measured = json.loads((folder / "measured.json").read_text(encoding="utf-8"))
    return dataclasses.replace(sweep_verdict_of(folder), measured=measured)


# -- the teaching notebooks -----------------------------------------------------------------------

#: The teaching notebooks, shipped in the wheel as package data (`plw_lab/notebooks` links to the
#: checkout's notebooks/ folder), so `lab notebooks DIR` reaches them from a pip install.
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def write_notebooks(folder: str | Path) -> list[Path]:
    """Copy the teaching notebooks into `folder` (created if missing) and return their paths. Refuses,
    with a `FileExistsError` naming it and writing nothing, a folder that already holds one of them."""
    import shutil

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; name a folder for the notebooks")
    sources = sorted(NOTEBOOKS.glob("*.ipynb"))
    clashes = [folder / s.name for s in sources if (folder / s.name).exists()]
    if clashes:
        raise FileExistsError(f"{clashes[0]} already exists; name another folder (your edits there are kept)")
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(source, folder / source.name)) for source in sources]
