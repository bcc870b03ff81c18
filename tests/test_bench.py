"""The benchmark script keeps running: its GPU section on the CPU with tiny models, and its live-view section.

Speed itself is measured by `benchmarks/bench.py`, never asserted in a test; this only keeps the
script from rotting while the lab changes under it.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_script_runs_and_reports_every_chosen_section(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--gpu-smoke", "--only", "6,7", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {r["section"] for r in rows} == {"6", "7"}
    assert not [r for r in rows if r["measured"].startswith("error")], rows
    # Section 6: lab against TRL for both architectures, padded and packed; QLoRA says why it cannot run on a CPU.
    gpu = [r for r in rows if r["section"] == "6"]
    for arch in ("SmolLM2-135M arch", "Qwen2.5-0.5B arch"):
        for layout in ("padded", "packed"):
            (row,) = [r for r in gpu if r["what"].startswith(f"{arch}, float32, lab {layout},")]
            assert " vs TRL padded " in row["measured"] and "useful TFLOP/s" in row["measured"] and row["ratio"] > 0
        (qlora,) = [r for r in gpu if r["what"] == f"{arch}, QLoRA 4-bit"]
        assert qlora["measured"] == "skipped: QLoRA needs a CUDA GPU and bitsandbytes"
    assert "== summary" in done.stdout
