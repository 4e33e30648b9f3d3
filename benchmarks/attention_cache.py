"""Decode attention alone (llmkit/kernels/attention.cpp) at a batch-32 SmolLM2 step's shape, with the KV
cache warm (one layer's cache called again and again: it stays in L2/L3) and cold (30 layers' caches in
turn, as a decode step reads them: from memory), against another build of attention.cpp, or (--int8) an
int8 cache against the float16 one in this build.

    git show HEAD~1:llmkit/kernels/attention.cpp > /tmp/attention_old.cpp
    python benchmarks/attention_cache.py [--against /tmp/attention_old.cpp | --int8] [--threads 2]

Queries (32, 9, 1, 64) float32; keys and values (32, 3, 256, 64) float16 (the engine's cache: whole rows
of capacity 256 passed, the mask saying how many keys are attended); 64, 128 and 192 keys. Reports the
best call per build (of at least 5, over at least 0.5 s), the cold calls' read rate (the keys' and values'
bytes over the time) and whether both builds give the same bits. --int8: the same keys and values rounded
to int8 with a float32 scale a row (the engine's `kv_cache_dtype="int8"`), and the largest difference from
float32 keys and values holding value * scale (the kernel applies a row's scale to its score and its
weight, not to each value: a few float roundings apart). Prints a table, then one JSON line.
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
    parser.add_argument("--int8", action="store_true", help="an int8 cache against the float16 one, this build")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.int8 and args.against:
        parser.error("--int8 compares two caches in this build: leave out --against")
    torch.set_num_threads(args.threads)
    from llmkit import cpu_kernels
    from cpu_kernels import best_time, load_other  # benchmarks/cpu_kernels.py
    from machine import cpu_report
    if not cpu_kernels.available():
        sys.exit("llmkit's CPU kernels are not available here (see the message above)")
    from llmkit.infer.kv_cache import quantize_rows
    this = torch.ops.llmkit_cpu.attention
    generator = torch.Generator().manual_seed(0)
    caches = [(torch.randn(BATCH, KV_HEADS, CAPACITY, HEAD_DIM, generator=generator).half(),
               torch.randn(BATCH, KV_HEADS, CAPACITY, HEAD_DIM, generator=generator).half()) for _ in range(LAYERS)]
    q = torch.randn(BATCH, HEADS, 1, HEAD_DIM, generator=generator)
    scale = HEAD_DIM ** -0.5
    # name: (op, per layer the cache's arguments, its bytes per key and kv head); "this" first
    builds = {"this": (this, caches, HEAD_DIM * 2 * 2)}
    if args.against:
        builds["other"] = (getattr(torch.ops, load_other(args.against)).attention, caches, HEAD_DIM * 2 * 2)
    if args.int8:
        int8 = []
        for k, v in caches:
            (k8, k_scale), (v8, v_scale) = quantize_rows(k), quantize_rows(v)
            int8.append((k8, v8, k_scale, v_scale))
        builds["int8"] = (this, int8, (HEAD_DIM + 4) * 2)
    print(f"CPU: {cpu_report()['cpu']}; {args.threads} threads; queries ({BATCH}, {HEADS}, 1, {HEAD_DIM}), "
          f"fp16 cache ({BATCH}, {KV_HEADS}, {CAPACITY}, {HEAD_DIM}) x {LAYERS} layers" + (", and int8" if args.int8 else ""))
    labels = {name: "float16" if args.int8 and name == "this" else name for name in builds}
    header = "| keys | " + " | ".join(f"{labels[name]} warm us | {labels[name]} cold us | {labels[name]} cold GB/s"
                                      for name in builds)
    if args.int8:
        header += " | cold speed-up (float16 / int8) | max abs difference from float32 of equal value |"
    else:
        header += " | cold speed-up (other / this) | same bits |" if args.against else " |"
    print(header)
    print("|" + " ---: |" * (header.count("|") - 1))
    rows = []
    for keys in KEYS:
        mask = torch.ones(BATCH, 1, 1, keys, dtype=torch.bool)
        record, line = {"keys": keys}, f"| {keys} |"
        for name, (op, layers, key_bytes) in builds.items():
            megabytes = BATCH * KV_HEADS * keys * key_bytes / 1e6

            def call(cache):
                k, v, *scales = cache
                return op(q, k, v, mask, scale, *scales)

            warm = best_time(lambda: call(layers[0]))
            cold = best_time(lambda: [call(cache) for cache in layers]) / LAYERS
            record.update({f"{name}_warm_us": warm * 1e6, f"{name}_cold_us": cold * 1e6})
            line += f" {warm * 1e6:.0f} | {cold * 1e6:.0f} | {megabytes / cold / 1e3:.1f} |"
        if args.against:
            same = torch.equal(this(q, *caches[0], mask, scale), builds["other"][0](q, *caches[0], mask, scale))
            record["identical"] = same
            line += f" {record['other_cold_us'] / record['this_cold_us']:.2f}x | {same} |"
        if args.int8:  # the int8 cache against the float32 one holding value * scale
            k8, v8, k_scale, v_scale = builds["int8"][1][0]
            difference = float((this(q, k8, v8, mask, scale, k_scale, v_scale)
                                - this(q, k8.float() * k_scale, v8.float() * v_scale, mask, scale)).abs().max())
            record["max_difference"] = difference
            line += f" {record['this_cold_us'] / record['int8_cold_us']:.2f}x | {difference:.1e} |"
        print(line, flush=True)
        rows.append(record)
    print(json.dumps({"benchmark": "attention_cache", "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
