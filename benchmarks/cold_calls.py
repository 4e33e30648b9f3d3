"""What an operator call costs once a weight stream has gone through the caches: the same call timed warm
(called again and again) and right after reading M MiB of other memory, as every call of a batch-1
decode step is (SmolLM2-135M's int8 weights are ~135 MB a token, ~3.5 MB a decoder layer; the CPU's
last-level cache is tens of MB).

    flock /tmp/llmkit-heavy.lock python benchmarks/cold_calls.py [--mib 0 1 4 16 64 128] [--calls 200]

Calls timed, each from Python through torch.ops (so Python's own dispatch is in every figure):
- `panel_rows`: llmkit's kernels' smallest operator, a constant: no parallel region, no tensor;
- `parallel_threads`: one OpenMP region over 64 near-empty items (each notes its thread) on the build's threads;
- `int8_linear`, 1 row x 576 inputs, 576 outputs (SmolLM2-135M's o layer): checks, activation rounding, an
  output allocated, a parallel region over 331 KB of int8 weights (read from cache when warm).
The memory read between calls is a 1-thread numpy sum (its own time is not counted). Median of `--calls`
calls per column, in microseconds. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[0, 1, 4, 16, 64, 128],
                        help="MiB read between two timed calls (0: the call warm)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per column (default 200)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from llmkit import cpu_kernels

    torch.set_num_threads(2)
    if not cpu_kernels.available():
        sys.exit("cold_calls.py: llmkit's CPU kernels are not built here (a C++ compiler with OpenMP is needed)")
    ops = torch.ops.llmkit_cpu
    x = torch.randn(1, 576)
    packed = cpu_kernels.pack_int8(torch.randint(-127, 128, (576, 576), dtype=torch.int8))
    scales = torch.full((576,), 0.01)
    calls = {"panel_rows": ops.panel_rows, "parallel_threads": ops.parallel_threads,
             "int8_linear": lambda: ops.int8_linear(x, packed, scales)}
    other = np.ones(max(args.mib) * 2**20 // 8, dtype=np.int64)

    def timed(call, mib: int) -> float:
        part, times = other[: mib * 2**20 // 8], []
        for _ in range(args.calls):
            if mib:
                part.sum()
            start = time.perf_counter_ns()
            call()
            times.append(time.perf_counter_ns() - start)
        return statistics.median(times) / 1000

    for call in calls.values():  # first calls: lazy initialisation, out of the figures
        call()
    results = {name: {mib: timed(call, mib) for mib in args.mib} for name, call in calls.items()}
    print(f"{'call (us)':<18}" + "".join(f"{f'{mib} MiB before':>15}" for mib in args.mib))
    for name, row in results.items():
        print(f"{name:<18}" + "".join(f"{row[mib]:15.2f}" for mib in args.mib))
    print(json.dumps({f"{name}_after_{mib}mib_us": round(us, 2) for name, row in results.items() for mib, us in row.items()}))


if __name__ == "__main__":
    main()
