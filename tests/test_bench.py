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
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--gpu-smoke", "--only", "6,7", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {r["section"] for r in rows} == {"6", "7"}
    assert not [r for r in rows if r["measured"].startswith("error")], rows
    assert "== summary" in done.stdout
