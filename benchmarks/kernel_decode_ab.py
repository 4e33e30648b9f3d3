"""Whole decode on this checkout's build of a kernel source against another build (an earlier commit's),
in one process: llmkit/kernels/int8_dot.cpp (the int4/int8 linear layers) or attention.cpp.

    git show HEAD~1:llmkit/kernels/int8_dot.cpp > /tmp/old_int8_dot.cpp
    python benchmarks/kernel_decode_ab.py --against /tmp/old_int8_dot.cpp [--weights int4] [--batch 1] [--rounds 6]
    git show HEAD~1:llmkit/kernels/attention.cpp > /tmp/attention_old.cpp
    python benchmarks/kernel_decode_ab.py --kernel attention --against /tmp/attention_old.cpp --batch 32 --rounds 4

`benchmarks/cpu_kernels.py --against` times the linear operators alone; this measures what a kernel change
is worth to a user, on a host whose bandwidth swings too much for two runs of generate.py to tell a 10%
change (BENCHMARKS.md, 2026-12-04: 16-27 GB/s): SmolLM2-135M-Instruct, compiled, 2 threads, 128 new tokens
greedy, two engines on one model, each calling one build (this checkout's source and the other file, each
built under its own operator namespace). Each engine's graphs are traced while the `llmkit.cpu_kernels`
functions the model calls (`int4_linear` / `int8_linear`, or `attention`) call its build (the second engine
is a subclass, so that TorchDynamo keeps its graphs apart), and every round sets them again for eager
prefill. Where the other build packs its weights in other panels (int8_dot.cpp before 2026-12-05: 8 rows
each), its engine gets a second copy of the model, repacked. Both engines call their steps guard-free as
after `warm_up`; rounds alternate (the order swapped every round) so that the host's drift hits both
alike. Reports each build's median decode tok/s (all streams), the rounds this build won and whether the
greedy tokens are identical (they should be: a kernel change is meant to keep the bits). Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed
sys.path.insert(0, str(ROOT / "benchmarks"))


# per kernel source: the llmkit.cpu_kernels functions the model calls, each with its output's shape for tracing
OPERATORS = {
    "int8_dot": {"int4_linear": lambda x, weight, in_features: x.new_empty(*x.shape[:-1], weight.shape[0]),
                 "int8_linear": lambda x, weight, scales: x.new_empty(*x.shape[:-1], weight.shape[0]),
                 # SwiGLU gate/up layers (2026-12-06): silu(gate) * up, half the outputs
                 "int4_linear_swiglu": lambda x, weight, in_features: x.new_empty(*x.shape[:-1], weight.shape[0] // 2),
                 "int8_linear_swiglu": lambda x, weight, scales: x.new_empty(*x.shape[:-1], weight.shape[0] // 2)},
    "attention": {"attention": lambda q, k, v, mask, scale, *scales: q.new_empty(q.shape)},
}


def build(source: Path, kernel: str) -> str:
    """`source` built as cpu_kernels.py --against does, with shapes registered for torch.compile's tracing."""
    import torch
    from cpu_kernels import load_other

    namespace = load_other(source)
    missing = [name for name in OPERATORS[kernel] if not hasattr(getattr(torch.ops, namespace), name)]
    if missing:  # e.g. an int8_dot.cpp from before the SwiGLU operators: its gate/up layers would call ours
        raise SystemExit(f"kernel_decode_ab: {source} has no {', '.join(missing)}; compare builds that define "
                         f"every operator the model calls ({', '.join(OPERATORS[kernel])})")
    for name, shape in OPERATORS[kernel].items():
        torch.library.register_fake(f"{namespace}::{name}")(shape)
    return namespace


def use(namespace: str, kernel: str) -> None:
    """Route the model's calls of one kernel source's operators to one build (model.py and the quantized
    layers call them through the llmkit.cpu_kernels module)."""
    import torch
    import llmkit.cpu_kernels as cpu_kernels

    for name in OPERATORS[kernel]:
        setattr(cpu_kernels, name, getattr(getattr(torch.ops, namespace), name))


def main() -> None:
    import generate  # light: torch is imported when a model is loaded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="int8_dot", choices=list(OPERATORS), help="which kernel source")
    parser.add_argument("--against", type=Path, required=True, help="the other build's source file")
    parser.add_argument("--weights", default="int4", choices=generate.QUANTIZED_KINDS)
    parser.add_argument("--batch", type=int, default=1, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    generate.setup_torch()
    import llmkit.cpu_kernels as cpu_kernels
    from cpu_kernels import panel_rows_of, repacked  # benchmarks/cpu_kernels.py
    from llmkit.infer import Engine, SamplingParams
    from llmkit.infer.quantize import Int4Linear, Int8Linear

    if not cpu_kernels.available():
        sys.exit("llmkit's CPU kernels are not available here (see the message above)")
    this_source = cpu_kernels.KERNELS / f"{args.kernel}.cpp"
    if not args.against.is_file():
        sys.exit(f"{args.against}: no such file (give another {this_source.name}, e.g. "
                 f"`git show REV:llmkit/kernels/{this_source.name}`)")
    if args.against.read_bytes() == this_source.read_bytes():
        sys.exit(f"{args.against} is this checkout's {this_source.name}: nothing to compare")
    namespaces = {"this": build(this_source, args.kernel), "other": build(args.against, args.kernel)}

    class OtherKernelsEngine(Engine):
        """The same step under another code object: its graphs call the other build."""

        def _decode_forward(self, tokens, positions, cache):
            return self.model(tokens, positions=positions, kv_cache=cache)[:, -1].float()

    model, tokenizer = generate.load_ours(args.weights)
    other_model = model
    panel = panel_rows_of(namespaces["other"]) if args.kernel == "int8_dot" else cpu_kernels.panel_rows()
    if panel != cpu_kernels.panel_rows():  # the other build packs other panels: a second model in its layout
        other_model = generate.load_ours(args.weights)[0]
        for layer in other_model.modules():
            if isinstance(layer, (Int4Linear, Int8Linear)) and layer.int8_activations:
                setattr(layer, "packed" if isinstance(layer, Int4Linear) else "qweight", repacked(layer, panel))
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    options = dict(compile=True, max_batch_size=args.batch, prefix_cache_mib=0,
                   prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    engines = {"this": Engine(model, **options), "other": OtherKernelsEngine(other_model, **options)}

    def run(name: str) -> tuple[float, list[list[int]]]:
        use(namespaces[name], args.kernel)
        speed, requests = generate.timed_batch(engines[name], prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    first = generate.first_runs(engines, run)  # each engine's graphs traced on its own build's operators
    speeds, outputs, won = generate.alternating_rounds(run, ["this", "other"], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds; "
          f"{args.kernel}.cpp against {args.against}")
    median = generate.rounds_table("kernels", {name: name for name in engines}, speeds, first)
    same = outputs["this"] == outputs["other"]
    print(f"this / other: {median['this'] / median['other']:.3f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "kernel_decode_ab", "kernel": args.kernel, "weights": args.weights,
                      "batch": args.batch, "rounds": args.rounds, "this_tok_s": median["this"], "other_tok_s": median["other"],
                      "rounds_won": won, "identical": same}))


if __name__ == "__main__":
    main()
