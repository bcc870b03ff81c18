"""The service layer: the CLI, the app and the notebooks get the same answers from `plw_lab.api`,
with every setting read from the run's own config (never a parameter default)."""

import json

import pytest

import plw_lab
from plw_lab import api
from plw_lab.cli import main
from plw_lab.core.config import LabConfig

# Settings chosen away from every default, so a service that falls back on a default of its own shows.
EVAL = {"eval.answer_tokens": 3, "eval.generations": 2, "eval.max_new_tokens": 5, "eval.probe_texts": 2}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "data.source": "builtin:reading-mc",
            "data.limit": 40,
            "data.val_size": 8,
            "train.max_steps": 2,
            "train.eval_interval": 2,
            "train.output_dir": str(tmp_path_factory.mktemp("runs")),
            **EVAL,
        }
    )
    result = plw_lab.train(cfg)
    assert result.status == "finished", result.summary
    return result.run_dir


def _answers(side: dict) -> list:
    return [(e.get("predicted"), e.get("parsed"), e.get("correct")) for e in side["metrics"]["examples"]]


def test_a_recomputed_comparison_is_the_one_the_run_made(run_dir):
    saved = json.loads((run_dir / "compare.json").read_text())
    recomputed = api.compare(api.load_run(run_dir), recompute=True)
    for side in ("on", "off"):
        assert recomputed[side]["generations"] == saved[side]["generations"]
        assert len(recomputed[side]["generations"]) == EVAL["eval.generations"]
        assert _answers(recomputed[side]) == _answers(saved[side])
        for name in ("answer_accuracy", "answer_accuracy_generated", "answer_loss", "completion_loss"):
            assert recomputed[side]["metrics"][name] == pytest.approx(saved[side]["metrics"][name], abs=1e-5)
        assert recomputed[side]["probe_perplexity"] == pytest.approx(saved[side]["probe_perplexity"], rel=1e-5)
    assert recomputed["examples"] == saved["examples"]


def test_lab_compare_recompute_prints_what_the_saved_comparison_prints(run_dir, capsys):
    assert main(["compare", str(run_dir)]) == 0
    saved = capsys.readouterr().out.splitlines()[1:]  # the first line says where the adapter came from
    assert main(["compare", str(run_dir), "--recompute"]) == 0
    recomputed = capsys.readouterr().out.splitlines()[1:]
    assert recomputed == saved


def test_evaluate_reads_the_runs_validation_split(run_dir):
    loaded = api.load_run(run_dir)
    split = json.loads((run_dir / "split.json").read_text())
    assert [e.example.source_index for e in loaded.validation()] == split["val"]
    measured = api.evaluate(loaded)
    assert set(measured) == {"on", "off"}
    assert measured["on"]["answer_accuracy"] is not None


def test_the_app_compares_through_the_same_service(run_dir):
    from plw_lab.app.jobs import JobRegistry, RunModels

    loaded = RunModels(JobRegistry()).get(run_dir)
    assert isinstance(loaded, api.LoadedRun)
    assert loaded.comparison == json.loads((run_dir / "compare.json").read_text())


def test_one_example_and_a_prompt_of_ones_own_use_the_runs_generation_length(run_dir, tokenizer):
    loaded = api.load_run(run_dir)
    enc, outputs = api.example_outputs(loaded, 0)
    assert set(outputs.generations) == {"on", "off"}
    for side in ("on", "off"):
        assert len(tokenizer(outputs.generations[side], add_special_tokens=False).input_ids) <= 5
        assert len(outputs.token_losses[side]) == len(enc.input_ids)
        assert set(outputs.logprobs[side]) == set(enc.example.choices)
    own = api.prompt_outputs(loaded, "Which is right? A. yes B. no")
    assert set(own.logprobs["on"]) == {"A", "B"}
    with pytest.raises(plw_lab.api.DataError, match="type a prompt"):
        api.prompt_outputs(loaded, "  ")


def test_the_data_report_is_what_lab_inspect_prints(capsys, tokenizer):
    cfg = LabConfig().override({"model.name": "tiny-random", "data.source": "builtin:bbb", "data.limit": 30})
    report = api.data_report(cfg, tokenizer)
    assert (
        main(["inspect", "--model", "tiny-random", "--data", "builtin:bbb", "--set", "data.limit=30", "-n", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(f"{len(report.encoded)} examples ({len(report.fitted.skipped)} skipped as too long)")
    assert f"label balance {report.labels}" in out
    assert f"padded {report.packing['padded']:.0%} real tokens" in out


def test_the_public_api_loads_lazily_and_names_its_services():
    import subprocess
    import sys

    code = "import sys, plw_lab; print(plw_lab.__version__); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [plw_lab.__version__, "False"]  # `lab --version` need not load torch
    for name in ("train", "evaluate", "compare", "load_run", "sweep", "LabConfig", "data_report"):
        assert callable(getattr(plw_lab, name)), name
    with pytest.raises(AttributeError):
        plw_lab.no_such_service  # noqa: B018
