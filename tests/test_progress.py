"""A run's phases, ETA and elapsed time as the app's progress bar and the CLI's bar read them from `History`."""

from __future__ import annotations

from plw_lab.core import events as ev
from plw_lab.views import text_views
from plw_lab.views.history import History


def _run_to_step(step: int) -> list:
    """A 10-step run evaluated every 5 steps: loading at t=100, started at 110, a 4 s base-model
    evaluation ending at 114, then one optimiser step every 2 s."""
    out = [
        ev.Phase(name="loading", time=100.0),
        ev.Started(
            run_dir="runs/x", config={"train": {"eval_interval": 5}}, n_train=20, n_val=4, total_steps=10, time=110.0
        ),
        ev.Phase(name="evaluating", step=0, time=110.0),
        ev.Eval(step=0, epoch=0.0, metrics={"completion_loss": 2.0}, seconds=4.0, time=114.0),
    ]
    for s in range(1, step + 1):
        out.append(
            ev.Step(
                step=s,
                epoch=s / 10,
                learning_rate=1e-3,
                train_loss=1.0,
                grad_norm=None,
                tokens_per_second=50.0,
                tokens_seen=10 * s,
                elapsed=14.0 + 2 * s,
                total_steps=10,
                time=114.0 + 2 * s,
            )
        )
    return out


def test_eta_counts_the_evaluations_still_to_come():
    history = History.from_events(_run_to_step(3))
    assert history.phase == "training"
    assert history.step_seconds() == 2.0  # (120 - 114) / 3: the base-model evaluation is not a step
    assert history.evals_left() == 2  # steps 5 and 10
    # 7 steps of 2 s and two evaluations of 4 s
    assert history.eta(now=121.0) == 7 * 2 + 2 * 4
    assert history.elapsed(now=121.0) == 21.0 and history.elapsed(now=130.0) == 30.0  # the clock ticks without events


def test_an_evaluation_is_a_phase_with_its_own_progress():
    history = History.from_events(_run_to_step(5) + [ev.Phase(name="evaluating", step=5, time=124.0)])
    what, fraction = history.phase_progress(now=126.0)
    assert what == "evaluating at step 5" and fraction == 0.5  # 2 s into an evaluation that took 4 s before
    # 5 steps of 2 s, the evaluation at step 10, and the 2 s left of this one
    assert history.eta(now=126.0) == 5 * 2 + 4 + 2
    history.add(ev.Eval(step=5, epoch=0.5, metrics={"completion_loss": 1.0}, seconds=4.0, time=128.0))
    assert history.phase == "training"


def test_the_base_model_evaluation_and_the_comparison_are_named():
    history = History.from_events(_run_to_step(0)[:3])
    assert history.phase_progress(now=111.0) == ("evaluating the base model (step 0)", None)
    assert history.eta(now=111.0) is None  # nothing timed yet
    html = text_views.progress_html(history, now=112.0)
    assert 'data-phase="evaluating"' in html and "evaluating the base model (step 0)" in html and "elapsed 12s" in html
    done = _run_to_step(10) + [ev.Phase(name="comparing", step=10, time=140.0)]
    history = History.from_events(done)
    assert history.phase_progress(now=150.0)[0].startswith("comparing adapter on and off")
    html = text_views.progress_html(history, now=150.0)
    assert "comparing adapter on and off" in html and "elapsed 50s" in html and 'data-fraction=""' in html


def test_a_loading_run_and_a_finished_run():
    loading = History.from_events(_run_to_step(0)[:1])
    assert loading.phase_progress(now=101.0) == ("loading the model and the data", None)
    finished = History.from_events(_run_to_step(10) + [ev.Finished(step=10, summary={}, time=150.0)])
    html = text_views.progress_html(finished, now=999.0)
    assert "elapsed 50s" in html and "ETA" not in html and "plw-phase-bar" not in html
