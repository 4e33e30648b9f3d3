"""Decode attention alone (llmkit/kernels/attention.cpp) at a batch-32 SmolLM2 step's shape, with the KV
cache warm (one layer's cache called again and again: it stays in L2/L3) and cold (30 layers' caches in
turn, as a decode step reads them: from memory), against another build of attention.cpp.

    git show HEAD~1:llmkit/kernels/attention.cpp > /tmp/attention_old.cpp
    python benchmarks/attention_cache.py [--against /tmp/attention_old.cpp] [--threads 2]

Queries (32, 9, 1, 64) float32; keys and values (32, 3, 256, 64) float16 (the engine's cache: whole rows
of capacity 256 passed, the mask saying how many keys are attended); 64, 128 and 192 keys. Reports the
best call per build (of at least 5, over at least 0.5 s), the cold calls' read rate (the keys' and values'
bytes over the time) and whether both builds give the same bits. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed
sys.path.insert(0, str(ROOT / "benchmarks"))

BATCH, HEADS, KV_HEADS, HEAD_DIM, CAPACITY, LAYERS = 32, 9, 3, 64, 256, 30
KEYS = (64, 128, 192)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, default=None, help="another attention.cpp to compare with")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from llmkit import cpu_kernels
    from cpu_kernels import best_time, load_other  # benchmarks/cpu_kernels.py
    from machine import cpu_report
    if not cpu_kernels.available():
        sys.exit("llmkit's CPU kernels are not available here (see the message above)")
    builds = {"this": torch.ops.llmkit_cpu.attention}
    if args.against:
        builds["other"] = getattr(torch.ops, load_other(args.against)).attention
    generator = torch.Generator().manual_seed(0)
    caches = [(torch.randn(BATCH, KV_HEADS, CAPACITY, HEAD_DIM, generator=generator).half(),
               torch.randn(BATCH, KV_HEADS, CAPACITY, HEAD_DIM, generator=generator).half()) for _ in range(LAYERS)]
    q = torch.randn(BATCH, HEADS, 1, HEAD_DIM, generator=generator)
    scale = HEAD_DIM ** -0.5
    print(f"CPU: {cpu_report()['cpu']}; {args.threads} threads; queries ({BATCH}, {HEADS}, 1, {HEAD_DIM}), "
          f"fp16 cache ({BATCH}, {KV_HEADS}, {CAPACITY}, {HEAD_DIM}) x {LAYERS} layers")
    header = "| keys | " + " | ".join(f"{name} warm us | {name} cold us | {name} cold GB/s" for name in builds)
    header += " | cold speed-up (other / this) | same bits |" if len(builds) > 1 else " |"
    print(header)
    print("|" + " ---: |" * (header.count("|") - 1))
    rows = []
    for keys in KEYS:
        mask = torch.ones(BATCH, 1, 1, keys, dtype=torch.bool)
        megabytes = BATCH * KV_HEADS * keys * HEAD_DIM * 2 * 2 / 1e6
        record, line = {"keys": keys}, f"| {keys} |"
        for name, op in builds.items():
            warm = best_time(lambda: op(q, *caches[0], mask, scale))
            cold = best_time(lambda: [op(q, k, v, mask, scale) for k, v in caches]) / LAYERS
            record.update({f"{name}_warm_us": warm * 1e6, f"{name}_cold_us": cold * 1e6})
            line += f" {warm * 1e6:.0f} | {cold * 1e6:.0f} | {megabytes / cold / 1e3:.1f} |"
        if len(builds) > 1:
            same = torch.equal(builds["this"](q, *caches[0], mask, scale), builds["other"](q, *caches[0], mask, scale))
            record["identical"] = same
            line += f" {record['other_cold_us'] / record['this_cold_us']:.2f}x | {same} |"
        print(line, flush=True)
        rows.append(record)
    print(json.dumps({"benchmark": "attention_cache", "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
