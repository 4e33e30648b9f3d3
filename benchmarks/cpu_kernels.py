"""The int8-activation linear kernels alone (llmkit/kernels/int8_dot.cpp) against PyTorch's weight-only
kernels, on SmolLM2-135M's layer shapes, at 1 row (a decode step), 32 rows (a batch-32 step) and 256
rows (a prefill chunk).

Each layer is one `Int4Linear` / `Int8Linear` made from the same random fp32 weight twice: with int8
activations (llmkit's kernel) and without (PyTorch's `_weight_int4pack_mm_for_cpu` / `_weight_int8pack_mm`,
or a dequantized fp32 matmul from 32 rows on for int8, as the layer itself chooses). Reported: the best
of several timed calls, the kernel's GB/s at 1 row (the weight's bytes over the time: a decode step is
bound by reading them; also as a fraction of the measured read bandwidth) and its GMAC/s at 32 and 256 rows (compute-bound), and the speed ratio.

    python benchmarks/cpu_kernels.py [--threads 2] [--against OLD/int8_dot.cpp]

--against builds another copy of int8_dot.cpp (an earlier commit's) under its own operator namespace and
adds both builds' operators timed alone (no layer around them; at 1 row over the same copies, so the A/B
sees the weights come from memory too) and whether every output is bit-identical: an A/B of a kernel
change in one process. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# SmolLM2-135M: q/o (576 x 576), k/v (192 x 576), gate/up (1536 x 576), down (576 x 1536), the head
SHAPES = [("q, o", 576, 576), ("k, v", 192, 576), ("gate, up", 1536, 576), ("down", 576, 1536),
          ("head", 49152, 576)]
ROWS = (1, 32, 256)
CACHE_BYTES = 96 << 20  # more than any L3 a 2-core machine shares (the AVX2 EPYC: 32 MiB)


def best_time(fn, budget_s: float = 0.5, at_least: int = 5) -> float:
    fn()  # warm-up
    times, spent = [], 0.0
    while len(times) < at_least or spent < budget_s:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return min(times)


def load_other(source: Path) -> str:
    """Build another int8_dot.cpp with llmkit's own flags (cpu_kernels.build) under its own namespace."""
    from llmkit import cpu_kernels

    namespace = "llmkit_ab_" + hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    cpu_kernels.build("native", namespace, [source])
    return namespace


def panel_rows_of(namespace: str) -> int:
    """The rows of a full weight panel in another build's layout: its panel_rows(), or 8 for a build from
    before that operator (every build packed 8-row panels then)."""
    ops = getattr(torch.ops, namespace)
    return ops.panel_rows() if hasattr(ops, "panel_rows") else 8


def repacked(layer, panel: int) -> torch.Tensor:
    """A quantized layer's kernel weights (this build's layout) in panels of `panel` rows, for another build."""
    from llmkit import cpu_kernels
    from llmkit.infer.quantize import Int4Linear

    if isinstance(layer, Int4Linear):
        return cpu_kernels.pack_int4(*cpu_kernels.unpack_int4(layer.packed, layer.in_features), panel)
    return cpu_kernels.pack_int8(cpu_kernels.unpack_int8(layer.qweight), panel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--against", type=Path, default=None, help="another int8_dot.cpp to compare with (A/B)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from machine import machine_report
    from llmkit import cpu_kernels
    from llmkit.infer.quantize import Int4Linear, Int8Linear
    if not cpu_kernels.available():
        sys.exit("llmkit's CPU kernels are not available here (see the message above)")
    other = load_other(args.against) if args.against else None
    other_panel = panel_rows_of(other) if other else None
    machine = machine_report(args.threads)
    bandwidth = machine["read_bandwidth_gbs"]
    print(f"CPU: {machine['cpu']}; ISA: {', '.join(machine['isa'])}; llmkit's kernels: {cpu_kernels.isa()}; "
          f"{args.threads} threads; memory read bandwidth {bandwidth} GB/s")
    header = "| kind | layer (out x in) | rows | llmkit ms | PyTorch ms | speed ratio | llmkit GB/s or GMAC/s |"
    if other:
        header += " this build's op ms | other build's op ms | speed-up | bit-identical |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for kind in ("int4", "int8"):
        for name, n, k in SHAPES:
            dense = nn.Linear(k, n, bias=False)
            with torch.no_grad():
                dense.weight.copy_(torch.randn(n, k, generator=generator) * k ** -0.5)
                ours, theirs = ((Int4Linear.from_linear(dense, 32, True), Int4Linear.from_linear(dense, 32, False))
                                if kind == "int4" else
                                (Int8Linear.from_linear(dense, True), Int8Linear.from_linear(dense, False)))
            weight_bytes = (ours.packed if kind == "int4" else ours.qweight).numel()
            # at 1 row, copies of the layer that together exceed the caches, called in turn: a decode step
            # reads every layer's weights from memory (the same copy again would come from L3)
            copies = max(1, -(-CACHE_BYTES // weight_bytes))
            ours_all = [ours] + [copy.deepcopy(ours) for _ in range(copies - 1)]
            theirs_all = [theirs] + [copy.deepcopy(theirs) for _ in range(copies - 1)]
            for rows in ROWS:
                x = torch.randn(rows, k, generator=generator)
                with torch.inference_mode():
                    if rows == 1:
                        t_ours = best_time(lambda: [layer(x) for layer in ours_all]) / copies
                        t_theirs = best_time(lambda: [layer(x) for layer in theirs_all]) / copies
                    else:
                        t_ours = best_time(lambda: ours(x))
                        t_theirs = best_time(lambda: theirs(x))
                    rate = (f"{weight_bytes / t_ours / 1e9:.1f} GB/s ({weight_bytes / t_ours / 1e9 / bandwidth:.0%})"
                            if rows == 1
                            else f"{n * k * rows / t_ours / 1e9:.0f} GMAC/s")
                    line = (f"| {kind} | {name} ({n} x {k}) | {rows} | {t_ours * 1e3:.3f} | {t_theirs * 1e3:.3f} | "
                            f"{t_theirs / t_ours:.2f}x | {rate} |")
                    record = {"kind": kind, "layer": name, "n": n, "k": k, "rows": rows, "llmkit_ms": t_ours * 1e3,
                              "pytorch_ms": t_theirs * 1e3}
                    if other:  # the two builds' operators called directly, without the layer around them; at
                        # 1 row on every copy in turn, as above (weights from memory)
                        # (each build gets the weights in its own layout: the other may pack other panels)
                        def call(namespace, weights):
                            op = getattr(getattr(torch.ops, namespace), f"{kind}_linear")
                            if kind == "int4":
                                return lambda: [op(x, weight, k) for weight in weights]
                            return lambda: [op(x, weight, scales) for weight in weights]
                        scales = ours.scales.float() if kind == "int8" else None
                        layers = ours_all if rows == 1 else [ours]
                        this_weights = [layer.packed if kind == "int4" else layer.qweight for layer in layers]
                        other_weights = ([repacked(layer, other_panel) for layer in layers]
                                         if other_panel != cpu_kernels.panel_rows() else this_weights)
                        t_this = best_time(call("llmkit_cpu", this_weights)) / len(layers)
                        t_other = best_time(call(other, other_weights)) / len(layers)
                        same = torch.equal(call(other, other_weights[:1])()[0], call("llmkit_cpu", this_weights[:1])()[0])
                        line += f" {t_this * 1e3:.3f} | {t_other * 1e3:.3f} | {t_other / t_this:.2f}x | {same} |"
                        record.update(this_op_ms=t_this * 1e3, other_op_ms=t_other * 1e3, identical=same)
                print(line, flush=True)
                rows_out.append(record)
    print(json.dumps({"benchmark": "cpu_kernels", "machine": machine, "kernels": cpu_kernels.isa(),
                      "rows": rows_out}))


if __name__ == "__main__":
    main()
