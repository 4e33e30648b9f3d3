"""What packing the fp32 weights for oneDNN buys an eager forward (llmkit/infer/packed.py): whole SmolLM2-135M
forwards, `nn.Linear` (MKL's sgemm, which repacks the row-major weight every call) against `PackedLinear`
(the weight blocked once, `mkldnn._linear_pointwise`), in one process on the same inputs.

    python benchmarks/packed_linears.py          # ~2 minutes on 2 idle cores

Shapes: rows x tokens per forward, the head on the last token only (as the engine runs it): 1 x 1, 16 x 1
and 32 x 1 are decode steps without a cache, 16 x 40 a wave of short chat prompts prefilled together, 1 x 512
one long prompt. Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import time

import torch

THREADS = 2
SHAPES = [(1, 1), (16, 1), (32, 1), (16, 40), (1, 512)]


def time_forward(model, rows: int, tokens: int) -> float:
    ids = torch.randint(0, 1000, (rows, tokens), generator=torch.Generator().manual_seed(0))
    reps = max(3, 64 // (rows * tokens) + 1)
    with torch.inference_mode():
        for _ in range(2):
            model(ids, last_token_only=True)
        start = time.perf_counter()
        for _ in range(reps):
            model(ids, last_token_only=True)
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    import llmkit
    from llmkit.infer.packed import pack_linears

    torch.set_num_threads(THREADS)
    model = llmkit.load("smollm2", dtype="float32").model.eval()
    plain = {shape: time_forward(model, *shape) for shape in SHAPES}
    swapped = pack_linears(model)
    packed = {shape: time_forward(model, *shape) for shape in SHAPES}
    print(f"SmolLM2-135M-Instruct, fp32, eager, {THREADS} threads; {swapped} Linears packed")
    print("| rows x tokens | nn.Linear ms | packed ms | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for shape in SHAPES:
        print(f"| {shape[0]} x {shape[1]} | {plain[shape]:.1f} | {packed[shape]:.1f} | {plain[shape] / packed[shape]:.2f}x |")
    print(json.dumps({"benchmark": "packed_linears", "threads": THREADS,
                      "rows": [{"rows": r, "tokens": t, "linear_ms": round(plain[(r, t)], 2),
                                "packed_ms": round(packed[(r, t)], 2),
                                "speedup": round(plain[(r, t)] / packed[(r, t)], 3)} for r, t in SHAPES]}))


if __name__ == "__main__":
    main()
