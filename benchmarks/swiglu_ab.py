"""Decode with SwiGLU fused into the gate/up kernel and without, in one process.

    python benchmarks/swiglu_ab.py [--weights int8] [--batch 32] [--rounds 6] [--plain-first]

A quantized gate/up layer on the int8-activation kernels computes silu(gate) * up in its epilogue
(`int8_linear_swiglu` / `int4_linear_swiglu`, llmkit.infer.quantize.fused_swiglu); unfused, the kernel
writes the (rows, 2 d_ff) outputs and the compiled step's pointwise kernel reads them back. Two copies of
SmolLM2-135M-Instruct, one with fusion turned off in its gate/up layers, two compiled engines, 128 new
tokens greedy, 2 threads, rounds alternating (order swapped every round). Which copy is loaded first moved
batch-1 figures by ~1% (memory placement), so `--plain-first` swaps the load order: run both. The greedy tokens may differ (the kernel's silu is within a few ulp of PyTorch's, and a
network that rounds its activations to int8 can turn that into another token). Table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import generate  # light: torch is imported when a model is loaded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="int8", choices=generate.QUANTIZED_KINDS)
    parser.add_argument("--batch", type=int, default=32, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--plain-first", action="store_true", help="load the unfused copy first")
    args = parser.parse_args()
    generate.setup_torch()
    from llmkit.infer import Engine, SamplingParams
    from llmkit.infer.quantize import fused_swiglu

    engines, prompt = {}, None
    for fused in ([False, True] if args.plain_first else [True, False]):
        model, tokenizer = generate.load_ours(args.weights)
        layers = [m for name, m in model.named_modules() if name.endswith("gate_up")]
        if not all(fused_swiglu(layer) for layer in layers):
            raise SystemExit("swiglu_ab: this model's gate/up layers cannot fuse here (no int8-activation kernels?)")
        if not fused:
            for layer in layers:
                layer.kernel_panel = None  # fused_swiglu() is False: forward + the compiled pointwise kernel
        prompt = generate.chat_prompt(tokenizer)
        engines[fused] = Engine(model, compile=True, max_batch_size=args.batch, prefix_cache_mib=0,
                                prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)

    def run(fused: bool) -> tuple[float, list[list[int]]]:
        speed, requests = generate.timed_batch(engines[fused], prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    generate.first_runs(engines, run)
    speeds, outputs, won = generate.alternating_rounds(run, [True, False], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds, "
          f"{'unfused' if args.plain_first else 'fused'} copy loaded first")
    median = generate.rounds_table("SwiGLU", {True: "fused into gate/up", False: "separate pointwise"}, speeds)
    same = outputs[True] == outputs[False]
    print(f"fused / separate: {median[True] / median[False]:.3f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "swiglu_ab", "weights": args.weights, "batch": args.batch,
                      "rounds": args.rounds, "plain_first": args.plain_first, "fused_tok_s": median[True],
                      "separate_tok_s": median[False], "rounds_won": won, "identical": same}))


if __name__ == "__main__":
    main()
