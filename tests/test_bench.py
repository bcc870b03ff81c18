"""The benchmark script keeps running: every CPU section on tiny random-weight models (`--smoke`).

Speed itself is measured by `benchmarks/bench.py`, never asserted in a test; this only keeps the
script from rotting while the lab changes under it. It launches several processes, so it is slow.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"

pytestmark = pytest.mark.slow


def test_the_smoke_run_reports_every_section_without_an_error(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {r["section"] for r in rows} == {"1", "2", "3", "4", "5", "6", "7", "8"}
    assert not [r for r in rows if r["measured"].startswith("error")], rows
    assert all(r["ok"] is None for r in rows)  # tiny models judge no target
    # Section 1 runs with the default (auto) max_length and reports both TRL ratios.
    trl = [r for r in rows if r["section"] == "1"]
    assert [r["what"] for r in trl] == ["train tok/s, lab_plw0 vs TRL", "train tok/s, lab_plw0.1 vs TRL"]
    assert all(r["ratio"] > 0 for r in trl)
    # Section 5: wall time, evaluation share, peak memory of the default run (here the tiny one).
    default = {r["what"].split(" (")[0]: r for r in rows if r["section"] == "5"}
    assert "default run: evaluations' share of the wall time" in default
    assert (
        " 3 evaluations, generated answers at 2)"
        in default["default run: evaluations' share of the wall time"]["measured"]
    )
    assert default["default run peak memory"]["measured"].endswith(" GB")
    # Section 6: lab against TRL for both architectures, padded and packed; QLoRA says why it cannot run on a CPU.
    gpu = [r for r in rows if r["section"] == "6"]
    for arch in ("SmolLM2-135M arch", "Qwen2.5-0.5B arch"):
        for layout in ("padded", "packed"):
            (row,) = [r for r in gpu if r["what"].startswith(f"{arch}, float32, lab {layout},")]
            assert " vs TRL padded " in row["measured"] and "useful TFLOP/s" in row["measured"] and row["ratio"] > 0
        (qlora,) = [r for r in gpu if r["what"] == f"{arch}, QLoRA 4-bit"]
        assert qlora["measured"] == "skipped: QLoRA needs a CUDA GPU and bitsandbytes"
    summary = done.stdout[done.stdout.index("== summary") :]
    assert "commit " in summary and "load average " in summary


def test_a_section_that_raises_makes_the_run_fail_and_an_unknown_section_is_refused(tmp_path):
    # Section 3 measures in child processes of the benchmark's own interpreter: a broken one is an error row.
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH.parent)!r}); import bench; "
        f"bench.sys.executable = {str(broken)!r}; sys.exit(bench.main(['--smoke', '--only', '3']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "error: RuntimeError: the lab loss memory probe failed (rc 3)" in done.stdout
    refused = subprocess.run([sys.executable, str(BENCH), "--only", "9"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--only: no section 9" in refused.stderr
