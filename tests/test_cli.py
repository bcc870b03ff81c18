"""The CLI: inspect shows masks and weights, train writes a run that eval and compare read back."""

import json

from plw_lab.cli import main


def test_inspect_prints_tokens_with_labels_and_weights(data_file, capsys):
    assert (
        main(
            [
                "inspect",
                "--model",
                "tiny-random",
                "--data",
                str(data_file),
                "-n",
                "1",
                "--plw",
                "0.1",
                "--table",
                "--colour",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "packing efficiency at batch 8: padded" in out and "generation ratio Rg mean" in out
    assert "\033[1m\033[32m" in out and "\033[36m" in out  # completion bold green; prompt cyan at PLW > 0
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    weights = {float(r[-1]) for r in rows}
    assert weights == {0.0, 0.1, 1.0}
    assert rows[0][-2:] == ["-100", "0"]  # the first token is never a target
    assert all(float(r[-1]) > 0 for r in rows[1:])


def test_train_then_eval_and_compare_a_run(data_file, tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "tiny-random",
            "--data",
            str(data_file),
            "--max-steps",
            "2",
            "--output-dir",
            str(tmp_path / "runs"),
            "--set",
            "train.run_name=cli",
            "--set",
            "train.batch_size=4",
            "--set",
            "eval.generations=1",
            "--set",
            "eval.probe_texts=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "eval step    0" in out and "finished at step 2" in out and "adapter off" in out
    run = tmp_path / "runs" / "cli"
    # The stopping report of this free-form data: each curve's kept step, printed and in summary.json.
    stopping = json.loads((run / "summary.json").read_text())["stopping"]
    assert stopping["full_loss"]["step"] in (0, 2) and stopping["completion_loss"]["step"] in (0, 2)
    assert stopping["test"] is None  # no right or wrong answers to pair
    assert "stopping on each validation curve keeps:" in out
    assert f"Stopping on full-sequence loss keeps step {stopping['full_loss']['step']} (" in out
    assert main(["eval", str(run)]) == 0
    assert "adapter on" in capsys.readouterr().out
    assert main(["compare", str(run)]) == 0
    assert "forgetting probe perplexity" in capsys.readouterr().out
    # The run reads its own copy of the file, so editing the original changes nothing; data that changed anyway
    # (the copy edited, a hub dataset's new revision) no longer matches split.json, and eval refuses to score
    # other validation examples than the run did.
    data_file.write_text("")
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    copy = run / "data" / data_file.name
    copy.write_text("\n".join(copy.read_text().splitlines()[::-1]) + "\n")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no longer splits as the run's split.json records" in err and "Traceback" not in err


def test_bad_setting_exits_with_a_clear_message(capsys):
    assert main(["inspect", "--plw", "2"]) == 2
    assert "train.prompt_loss_weight must be at most 1.0" in capsys.readouterr().err


def test_notebooks_writes_the_teaching_notebooks_and_never_overwrites_them(tmp_path, capsys):
    from pathlib import Path

    shipped = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
    assert main(["notebooks", str(tmp_path / "lessons")]) == 0
    for source in shipped:
        assert (tmp_path / "lessons" / source.name).read_bytes() == source.read_bytes()
    assert f"jupyter lab {tmp_path / 'lessons'}" in capsys.readouterr().out
    (tmp_path / "lessons" / shipped[0].name).write_text("my edits")
    assert main(["notebooks", str(tmp_path / "lessons")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'lessons' / shipped[0].name} already exists; name another folder (your edits there "
        "are kept)\n"
    )
    assert (tmp_path / "lessons" / shipped[0].name).read_text() == "my edits"
