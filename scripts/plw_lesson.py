"""Ship the measured real-data PLW lesson and write its page from it.

    python scripts/plw_lesson.py collect RUNS/plw-lesson --commit abc1234 --wall 2700 --note "idle"
    python scripts/plw_lesson.py report        # docs/plw-on-real-data.md's tables and docs/images/plw-lesson-*.svg

`collect` copies what the lesson needs of each finished run (config.yaml, summary.json and
events.jsonl without the phase markers; no adapters) into the package's `lessons/plw-lesson/`, with
every path of the measuring machine replaced by the run's place in the sweep, and writes
`measured.json` (date, commit, machine, commands, wall time). `report` reads only the shipped copy,
so the page shows what a user's `lab verdict` shows. Its figures are the app's own
(`plw_lab.views.lesson_charts`), exported as SVG with kaleido, which drives the local Chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plw_lab.core.sweep import varied  # noqa: E402
from plw_lab.core.sweep_table import folder_row, is_setting, read_csv, write_csv  # noqa: E402
from plw_lab.core.sweep_verdict import SHIPPED_LESSON, sweep_runs, sweep_verdict  # noqa: E402

PAGE = ROOT / "docs" / "plw-on-real-data.md"
README = ROOT / "README.md"
IMAGES = ROOT / "docs" / "images"
COMMANDS = [
    "pip install 'plw-lab[demo]'",
    "lab sweep --config plw-lesson --name plw-lesson",
    "lab verdict runs/plw-lesson",
]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    import torch

    return f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, float32"


def _scrub(text: str, where: dict[str, str]) -> str:
    """`text` with each machine path replaced by what a user has (longest first: a sweep before its parent)."""
    for real in sorted(where, key=len, reverse=True):
        text = text.replace(real, where[real])
    return text


def collect(args) -> None:
    if SHIPPED_LESSON.exists():
        shutil.rmtree(SHIPPED_LESSON)
    seconds, machine_paths = [], set()
    for sweep in map(Path, args.sweeps):
        target = SHIPPED_LESSON / sweep.name
        target.mkdir(parents=True)
        # Every path of the measuring machine becomes the run's place under a user's runs/ folder.
        where = {str(sweep.resolve()): f"runs/{sweep.name}", str(sweep.resolve().parent): "runs"}
        machine_paths |= set(where)
        finished = sweep_runs([sweep])
        for run in finished:
            out = target / run.path.name
            out.mkdir()
            config = yaml.safe_load((run.path / "config.yaml").read_text())
            config["train"]["output_dir"] = f"runs/{sweep.name}"
            (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            summary = json.loads((run.path / "summary.json").read_text())
            seconds.append(summary["elapsed_seconds"])
            (out / "summary.json").write_text(_scrub(json.dumps(summary, indent=1), where))
            events = [
                _scrub(line, where)
                for line in (run.path / "events.jsonl").read_text().splitlines()
                if json.loads(line)["type"] != "phase"
            ]
            (out / "events.jsonl").write_text("\n".join(events) + "\n")
        # The finished runs' rows only (a sweep stopped to hand its last cells to another process keeps none of
        # them), each written afresh from the shipped run folder, so the table has every column of this version.
        names = {run.path.name for run in finished}
        rows = []
        for row in read_csv(sweep):
            name = Path(row["run"]).name
            if name in names:
                cell = {k: v for k, v in row.items() if k in ("plw", "seed") or is_setting(k)}
                rows.append({**folder_row(cell, target / name), "run": f"runs/{sweep.name}/{name}"})
        write_csv(target / "sweep.csv", rows, [key for key in varied(rows) if is_setting(key)])
    measured = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": args.commit,
        "machine": machine(),
        "commands": COMMANDS,
        "runs": len(seconds),
        "seconds_per_run": [round(s) for s in seconds],
        "wall_seconds": args.wall,
        "note": args.note,
    }
    (SHIPPED_LESSON / "measured.json").write_text(json.dumps(measured, indent=1) + "\n")
    leaked = [p for p in SHIPPED_LESSON.rglob("*") if p.is_file() and any(m in p.read_text() for m in machine_paths)]
    if leaked:
        raise SystemExit(f"a path of the measuring machine is still in {', '.join(map(str, leaked))}")
    print(f"{len(seconds)} runs into {SHIPPED_LESSON.relative_to(ROOT)}")


def arm_table(verdict: dict) -> str:
    rows = [
        "| arm | kept adapter: answer accuracy, mean of seeds [95% t interval] | seeds | stopping on "
        "full-sequence loss instead | exact McNemar, pooled | validation prompt loss, step 0 → end |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a in verdict["arms"]:
        kept, full, test = a["kept"], a["full_loss"], a["stopping_test"]
        interval = f" [{100 * kept['low']:.1f}–{100 * kept['high']:.1f}]" if kept["low"] is not None else ""
        seeds = ", ".join(f"{100 * v:.1f}" for v in a["kept_accuracy"])
        steps = ", ".join(str(s) for s in a["full_loss_steps"])
        prompt = f"{a['prompt_loss_first']['mean']:.2f} → {a['prompt_loss_last']['mean']:.2f}"
        rows.append(
            f"| {a['arm']} | {100 * kept['mean']:.1f}%{interval} | {seeds} | {100 * full['mean']:.1f}% (steps {steps}) "
            f"| p = {test['p_value']:.2g} | {prompt} |"
        )
    return "\n".join(rows)


def pair_table(verdict: dict) -> str:
    rows = [
        "| comparison | difference, paired by seed [95% t interval] | pooled McNemar p | Holm-adjusted | supported |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in verdict["pairs"]:
        d = p["difference"]
        interval = f" [{100 * d['low']:+.1f} to {100 * d['high']:+.1f}]" if d["low"] is not None else ""
        rows.append(
            f"| {p['first']} vs {p['second']} | {100 * d['mean']:+.1f} points{interval} | {p['test']['p_value']:.2g} "
            f"| {p['p_adjusted']:.2g} | {'yes' if p['supported'] else 'no'} |"
        )
    return "\n".join(rows)


def replace_block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content}\n{end}{rest.split(end, 1)[1]}"


def report(_args) -> None:
    from plw_lab.views.lesson_charts import arm_curves_figure, verdict_figure

    runs = sweep_runs([SHIPPED_LESSON])
    verdict = sweep_verdict(runs)
    measured = json.loads((SHIPPED_LESSON / "measured.json").read_text())
    per_run = measured["seconds_per_run"]
    text = PAGE.read_text()
    measured_line = (
        f"Measured {measured['date']} at commit `{measured['commit']}` on a {measured['machine']}: "
        f"{measured['runs']} runs, {min(per_run)}–{max(per_run)} s each, {measured['wall_seconds'] / 60:.0f} minutes "
        f"for the whole lesson ({measured['note']})."
    )
    text = replace_block(text, "lesson:measured", measured_line)
    text = replace_block(text, "lesson:arms", arm_table(verdict))
    text = replace_block(text, "lesson:pairs", pair_table(verdict))
    text = replace_block(text, "lesson:verdict", "\n".join(f"    {s}" for s in verdict["sentences"]))
    PAGE.write_text(text)
    readme = replace_block(README.read_text(), "lesson:readme", f"{measured_line}\n\n{arm_table(verdict)}")
    README.write_text(readme)
    figures = {
        "plw-lesson-accuracy.svg": verdict_figure(verdict, height=420),
        "plw-lesson-prompt-loss.svg": arm_curves_figure(runs, "prompt_loss", height=400),
        "plw-lesson-answer-loss.svg": arm_curves_figure(runs, "answer_loss", height=400),
        "plw-lesson-full-loss.svg": arm_curves_figure(runs, "full_loss", height=400),
    }
    for name, fig in figures.items():
        fig.write_image(IMAGES / name, width=860)
    print(f"wrote {PAGE.relative_to(ROOT)} and {len(figures)} figures")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="copy the measured sweeps into the package")
    p.add_argument("sweeps", nargs="+")
    p.add_argument("--commit", required=True)
    p.add_argument("--wall", type=float, required=True, help="wall seconds of the whole lesson")
    p.add_argument("--note", default="an idle machine")
    p.set_defaults(func=collect)
    sub.add_parser("report", help="write the docs page's tables and figures").set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
