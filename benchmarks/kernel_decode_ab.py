"""Whole decode on this int8_dot.cpp against another (an earlier commit's), in one process.

    git show HEAD~1:llmkit/kernels/int8_dot.cpp > /tmp/old_int8_dot.cpp
    python benchmarks/kernel_decode_ab.py --against /tmp/old_int8_dot.cpp [--weights int4] [--batch 1] [--rounds 6]

`benchmarks/cpu_kernels.py --against` times the two builds' operators alone; this measures what a kernel
change is worth to a user: SmolLM2-135M-Instruct, compiled, 2 threads, 128 new tokens greedy, two engines
on one model, one calling this checkout's kernels (built from llmkit/kernels/int8_dot.cpp under its own
operator namespace, like the other file), the other the other file's. Each engine's graphs are traced while
`llmkit.cpu_kernels.int4_linear` / `int8_linear` call its build (the second engine is a subclass, so that
TorchDynamo keeps its graphs apart), and every round sets them again for eager prefill. Both engines call
their steps guard-free as after `warm_up`; rounds alternate (the order swapped every round) so that the
host's drift hits both alike. Reports each build's median decode tok/s (all streams), the rounds this
build won and whether the greedy tokens are identical. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def build(source: Path) -> str:
    """`source` built as cpu_kernels.py --against does, with shapes registered for torch.compile's tracing."""
    import torch
    from cpu_kernels import load_other

    namespace = load_other(source)

    @torch.library.register_fake(f"{namespace}::int4_linear")
    def _(x, weight, in_features):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.register_fake(f"{namespace}::int8_linear")
    def _(x, weight, scales):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    return namespace


def use(namespace: str) -> None:
    """Route llmkit's int4/int8 layers to the operators of one build (the layers call these two functions)."""
    import torch
    import llmkit.cpu_kernels as cpu_kernels

    ops = getattr(torch.ops, namespace)
    cpu_kernels.int4_linear = lambda x, packed, in_features: ops.int4_linear(x, packed, in_features)
    cpu_kernels.int8_linear = lambda x, packed, scales: ops.int8_linear(x, packed, scales)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other int8_dot.cpp")
    parser.add_argument("--weights", default="int4", choices=["int8", "int4", "int4_head4"])
    parser.add_argument("--batch", type=int, default=1, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    import generate
    generate.setup_torch()
    import llmkit.cpu_kernels as cpu_kernels
    from llmkit.infer import Engine, SamplingParams

    if not cpu_kernels.available():
        sys.exit("llmkit's CPU kernels are not available here (see the message above)")
    if args.against.read_bytes() == (cpu_kernels.KERNELS / "int8_dot.cpp").read_bytes():
        sys.exit(f"{args.against} is this checkout's int8_dot.cpp: nothing to compare")
    namespaces = {"this": build(cpu_kernels.KERNELS / "int8_dot.cpp"), "other": build(args.against)}

    class OtherKernelsEngine(Engine):
        """The same step under another code object: its graphs call the other build."""

        def _decode_forward(self, tokens, positions, cache):
            return self.model(tokens, positions=positions, kv_cache=cache)[:, -1].float()

    model, tokenizer = generate.load_ours(args.weights)
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    options = dict(compile=True, max_batch_size=args.batch, prefix_cache_mib=0)
    engines = {"this": Engine(model, **options), "other": OtherKernelsEngine(model, **options)}

    def run(name: str) -> tuple[float, list[list[int]]]:
        use(namespaces[name])
        speed, requests = generate.timed_batch(engines[name], prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    first = generate.first_runs(engines, run)  # each engine's graphs traced on its own build's operators
    speeds, outputs, won = generate.alternating_rounds(run, ["this", "other"], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds; other: {args.against}")
    median = generate.rounds_table("kernels", {name: name for name in engines}, speeds, first)
    same = outputs["this"] == outputs["other"]
    print(f"this / other: {median['this'] / median['other']:.3f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "kernel_decode_ab", "weights": args.weights, "batch": args.batch,
                      "rounds": args.rounds, "this_tok_s": median["this"], "other_tok_s": median["other"],
                      "rounds_won": won, "identical": same}))


if __name__ == "__main__":
    main()
