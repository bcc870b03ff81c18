"""The ray backend of `lab sweep`: every cell of the grid a Ray Tune trial, optionally pruned by ASHA.

Imported only when `sweep.backend` is 'ray' (`plw_lab.core.sweep.ray_backend`), so the lab needs
Ray only for this. Each trial is an actor that calls the lab's own `train()` (or `resume()`) in a
thread; the run writes its folder under the sweep folder exactly as on the local backend, and the
driver builds sweep.csv from those folders. On a cluster the sweep folder must therefore be on a
filesystem every node sees at the same path (docs/sweeps.md).

Each evaluation before a run's last step is one Tune result: the run's early-stopping metric
(`OBJECTIVE`, signed so that higher is better) at its step. The run waits at it until Tune asks
for the next result, so ASHA's verdict lands at that step: carry on, or stop the trial, which
requests the run's `StopRequest` and waits for the run to end as a stopped run with its adapter,
checkpoint and summary (`LabTrial.cleanup`).

The lab speaks for the sweep, not Ray Tune: a set `stop` (SIGINT or SIGTERM in `lab sweep`) stops
every running trial the same way through `StopAll`, in place of Tune's own Ctrl-C handling, whose
closing hint (`Tuner.restore(...)`) is not how a lab sweep resumes; and a trial whose worker died
is reported as its run's row ('interrupted'), not as Tune's traceback.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import ray
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler

from plw_lab.core.config import LabConfig
from plw_lab.core.events import Eval, Started
from plw_lab.core.metrics import metric
from plw_lab.core.sweep_table import Cell, SweepTable, folder_row
from plw_lab.core.training import StopRequest, resume, train

#: The result key ASHA compares: the run's early-stopping metric, negated where lower is better.
OBJECTIVE = "objective"
STOPPED_BY_TUNE = "stopped by the sweep (Ray Tune ended its trial: pruned, or the sweep was stopped)"
#: ASHA needs a longest run; a run of train.epochs has no step count before its data is loaded,
#: and rungs beyond the steps a run trains are simply never reached.
UNBOUNDED_STEPS = 2**31
#: Ray Tune's switches (read while `Tuner.fit` runs) for its own Ctrl-C handler, which the lab's
#: `stop` replaces, and for logging each failed trial's traceback, which the lab's row replaces.
TUNE_QUIET = {"TUNE_DISABLE_SIGINT_HANDLER": "1", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}


class LabTrial(tune.Trainable):
    """One sweep run as a Ray Tune trial: `train()` in a thread, its evaluations as Tune results."""

    def setup(self, config: dict, examples=None) -> None:
        cell = config["cell"]
        self.results: queue.Queue = queue.Queue()
        self.carry_on = threading.Semaphore(0)
        self.waiting = False
        self.stop_request = StopRequest()
        self.total_steps = 0
        self.metric = ""
        self.objective = math.nan
        self.thread = threading.Thread(target=self._run, args=(cell, examples), name=cell["name"], daemon=True)
        self.thread.start()

    def _run(self, cell: dict, examples) -> None:
        try:
            if cell["resume"]:
                result = resume(cell["run_dir"], subscribers=[self._watch], stop=self.stop_request, compare=False)
            else:
                result = train(
                    LabConfig.from_dict(cell["config"]),
                    subscribers=[self._watch],
                    stop=self.stop_request,
                    examples=examples,
                    compare=False,
                )
            ending = {"step": int(result.summary.get("steps") or 0), OBJECTIVE: self.objective, "status": result.status}
            self.results.put({**ending, "done": True})
        except BaseException as exc:  # raised again by `step`, so Tune records the trial as failed
            self.results.put(exc)

    def _watch(self, event) -> None:
        if isinstance(event, Started):
            self.total_steps, self.metric = event.total_steps, event.early_stopping_metric
        if not isinstance(event, Eval) or self.metric not in event.metrics:
            return
        value = event.metrics[self.metric]
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.objective = value if metric(self.metric).higher_is_better else -value
        # Step 0 is the base model, the same for every run; the last step ends the trial by itself.
        if 0 < event.step < self.total_steps and not self.stop_request.is_set():
            self.results.put({"step": event.step, OBJECTIVE: self.objective, self.metric: value})
            self.carry_on.acquire()  # until Tune asks for the next result or stops the trial

    def step(self) -> dict:
        if self.waiting:
            self.carry_on.release()
        item = self.results.get()
        if isinstance(item, BaseException):
            raise item
        self.waiting = not item.get("done", False)
        return item

    def cleanup(self) -> None:
        if self.thread.is_alive():  # Tune stops the trial before the run ended: the run stops cleanly
            self.stop_request.request(STOPPED_BY_TUNE)
            self.carry_on.release()
            self.thread.join()


class PruningScheduler(AsyncHyperBandScheduler):
    """ASHA that remembers the runs it stopped and the step of the result that stopped them."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pruned: dict[str, int] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP:
            self.pruned[trial.config["cell"]["name"]] = int(result["step"])
        return decision


class StopAll(tune.Stopper):
    """Ends the whole sweep once `stop` is set: Tune stops every trial as ASHA stops one (`LabTrial.cleanup`).

    Tune pickles its run config for `Tuner.restore`, which a lab sweep never uses (`lab sweep --resume`
    reads the sweep folder); the event, which holds a lock, stays out of that copy.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop: threading.Event | None = stop

    def __getstate__(self) -> dict:
        return {"stop": None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stop is not None and self.stop.is_set()


class TableCallback(tune.Callback):
    """Records a run's row in sweep.csv as soon as its trial ends, and hands it to `on_run`."""

    def __init__(self, rows: Callable[[str, bool], dict | None], table: SweepTable, on_run) -> None:
        self.rows, self.table, self.on_run = rows, table, on_run

    def _ended(self, trial, failed: bool) -> None:
        row = self.rows(trial.config["cell"]["name"], failed)
        if row is None:
            return
        self.table.record(row)
        if self.on_run:
            self.on_run(row)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, failed=True)


def cell_spec(cell: Cell) -> dict:
    """What a trial needs to train `cell`, with absolute paths: a Ray worker runs in its own folder."""
    return {
        "name": cell.name,
        "values": cell.values,
        "config": _absolute(cell.cfg).to_dict() if cell.cfg is not None else None,
        "run_dir": str(cell.run_dir.resolve()),
        "resume": cell.resume,
    }


def _absolute(cfg: LabConfig) -> LabConfig:
    """`cfg` with the run folder and every local file it names as absolute paths."""
    local = lambda path: bool(path) and not path.startswith(("builtin:", "hf:")) and Path(path).expanduser().exists()
    resolved = lambda path: str(Path(path).expanduser().resolve()) if local(path) else path
    return cfg.override(
        {
            "train.output_dir": str(Path(cfg.train.output_dir).expanduser().resolve()),
            "data.source": resolved(cfg.data.source),
            "data.val_source": resolved(cfg.data.val_source),
            "data.mix": {resolved(source): ratio for source, ratio in cfg.data.mix.items()},
            "model.name": resolved(cfg.model.name),
        }
    )


def run_cells(
    cfg: LabConfig,
    cells: Sequence[Cell],
    table: SweepTable,
    on_run=None,
    examples=None,
    stop: threading.Event | None = None,
) -> None:
    """Train `cells` as Ray Tune trials on the cluster `cfg.sweep` names; record every run's row.
    A set `stop` stops every running trial's run cleanly; trials not started by then get no row."""
    if not cells:
        return
    stopper = StopAll(stop or threading.Event())
    sweep = cfg.sweep
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=sweep.address or None)
    try:
        gpus = sweep.gpus_per_run if ray.cluster_resources().get("GPU", 0) else 0
        scheduler = None
        if sweep.prune == "asha":
            longest = max((c.cfg.train.max_steps for c in cells if c.cfg is not None), default=0)
            scheduler = PruningScheduler(
                time_attr="step",
                metric=OBJECTIVE,
                mode="max",
                max_t=longest if all(c.cfg is not None and c.cfg.train.max_steps for c in cells) else UNBOUNDED_STEPS,
                grace_period=sweep.grace_steps,
                reduction_factor=sweep.reduction_factor,
            )
        by_name = {cell.name: cell for cell in cells}
        pruned = scheduler.pruned if scheduler is not None else {}

        def row(name: str, failed: bool) -> dict | None:
            cell = by_name[name]
            if stopper.stop_all() and not (cell.run_dir / "config.yaml").exists():
                return None  # stopped before it started: `--resume` starts it
            return cell_row(cell, pruned.get(name), failed)

        trainable = tune.with_resources(
            tune.with_parameters(LabTrial, examples=examples), {"cpu": sweep.cpus_per_run, "gpu": gpus}
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search([cell_spec(c) for c in cells])},
            tune_config=tune.TuneConfig(
                scheduler=scheduler,
                reuse_actors=False,
                trial_name_creator=lambda trial: trial.config["cell"]["name"],
                trial_dirname_creator=lambda trial: trial.config["cell"]["name"],
            ),
            run_config=tune.RunConfig(
                name="ray",
                storage_path=str(table.path.parent.resolve()),
                verbose=0,
                # The runs keep their own checkpoints (last_adapter/), which `--resume` continues from.
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                callbacks=[TableCallback(row, table, on_run)],
                failure_config=tune.FailureConfig(max_failures=0),
                stop=stopper,
            ),
        )
        with mock.patch.dict(os.environ, TUNE_QUIET):
            results = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    # A pruned run ends after Tune reported it: its row is read again now that its folder is final.
    for result in results:
        final = row(result.config["cell"]["name"], result.error is not None)
        if final is not None:
            table.record(final)


def cell_row(cell: Cell, pruned_step: int | None, failed: bool) -> dict:
    """The sweep.csv row of a trial that ended: the run's own row, marked pruned where ASHA stopped it.

    A failed trial whose run never wrote its ending (its worker died, or the trial raised before
    the run could) is 'interrupted': resumable from its last checkpoint.
    """
    if not (cell.run_dir / "config.yaml").exists():
        return {**cell.values, "status": "failed", "run": str(cell.run_dir)}
    row = folder_row(cell.values, cell.run_dir)
    if pruned_step is not None:
        return {**row, "status": "pruned", "pruned_step": pruned_step}
    if failed and row["status"] not in ("failed", "stopped", "finished"):
        row["status"] = "interrupted"
    return row
