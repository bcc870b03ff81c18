"""Section 3 of bench.py, the measured side: peak memory of one forward+backward of the loss.

bench.py runs this file in a fresh process per mode, so each measurement starts from a clean heap. It
imports only torch and the lab's loss, so that process starts in seconds:

    python benchmarks/bench_memory.py lab|naive BATCH LENGTH HIDDEN VOCAB THREADS   # prints RESULT {json}
"""

from __future__ import annotations

import gc
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def rss_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB."""
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def memory_probe(mode: str, batch: int, length: int, hidden: int, vocab: int) -> dict:
    """Run in a fresh process: peak RSS above the inputs of one forward+backward of the loss."""
    import torch.nn.functional as F

    from plw_lab.core.loss import weighted_ce, weighted_ce_from_logits

    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch, length, hidden, generator=g).requires_grad_(True)
    head = torch.randn(vocab, hidden, generator=g) * 0.02  # frozen (tied) output layer, as under LoRA
    y = torch.randint(0, vocab, (batch, length), generator=g)
    w = torch.ones(batch, length)  # every position weighted (PLW > 0): the worst case for the lab
    gc.collect()
    base = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    t = time.perf_counter()
    if mode == "naive":
        loss = weighted_ce_from_logits(F.linear(h, head), y, w) / w.sum()
    else:
        loss = weighted_ce(h, head, y, w) / w.sum()
    loss.backward()
    seconds = time.perf_counter() - t
    return {
        "peak_mb": rss_mb("VmHWM") - base,
        "seconds": seconds,
        "loss": float(loss),
        "grad_norm": float(h.grad.norm()),
    }


if __name__ == "__main__":
    mode, *sizes, threads = sys.argv[1:]
    torch.set_num_threads(int(threads))
    print("RESULT", json.dumps(memory_probe(mode, *map(int, sizes))))
