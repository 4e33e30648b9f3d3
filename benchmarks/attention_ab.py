"""Whole-decode A/B of two builds of the attention kernel (llmkit/kernels/attention.cpp), in one process.

    git show HEAD~1:llmkit/kernels/attention.cpp > /tmp/attention_old.cpp
    python benchmarks/attention_ab.py /tmp/attention_old.cpp [--batch 32] [--rounds 4]

On a host whose memory bandwidth swings from one minute to the next (BENCHMARKS.md, 2026-12-04: 16-27
GB/s), two runs of `benchmarks/generate.py` cannot tell a 10% change from the neighbours. Here both
builds serve SmolLM2-135M-Instruct int4 (int8 head), compiled, 2 threads, 128 new tokens greedy, from two
engines in one process: the current source as `torch.ops.llmkit_cpu`, the other under its own operator
namespace, each engine compiled while the model calls its build. Rounds alternate the two, so drift
hits both alike. Reports each build's median decode tok/s (all streams), the rounds each won, and
whether their greedy tokens are identical (they should be: a kernel change is meant to keep the bits).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OTHER = "llmkit_attention_other"  # operator namespace of the other build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="another attention.cpp (an earlier commit's)")
    parser.add_argument("--batch", type=int, default=32, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if not args.other.is_file():
        sys.exit(f"{args.other}: no such file (give another attention.cpp, e.g. `git show REV:llmkit/kernels/attention.cpp`)")
    import generate
    torch = generate.setup_torch()
    from llmkit import cpu_kernels
    from llmkit.infer import Engine, SamplingParams
    if not cpu_kernels.available():
        sys.exit("llmkit's CPU kernels are not available here (see the message above)")
    cpu_kernels.build("native", OTHER, [args.other])
    torch.library.register_fake(f"{OTHER}::attention")(lambda q, k, v, mask, scale: q.new_empty(q.shape))

    class OtherEngine(Engine):
        """The same step under another code object: TorchDynamo keeps its compiled graphs apart."""

        def _decode_forward(self, tokens, positions, cache):
            return self.model(tokens, positions=positions, kv_cache=cache)[:, -1].float()

    model, tokenizer = generate.load_ours("int4")
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    this_build = cpu_kernels.attention
    other_build = getattr(torch.ops, OTHER).attention
    options = dict(compile=True, max_batch_size=args.batch, prefix_cache_mib=0)
    builds = {"this": (Engine(model, **options), this_build), "other": (OtherEngine(model, **options), other_build)}

    def run(name: str) -> tuple[float, list[list[int]]]:
        engine, kernel = builds[name]
        cpu_kernels.attention = kernel  # model.py calls it through the module: each engine traced its own
        speed, requests = generate.timed_batch(engine, prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    for name in builds:  # compile each engine's graphs while its build is the one called
        run(name)
    speeds, outputs, won = generate.alternating_rounds(run, ["this", "other"], args.rounds)
    cpu_kernels.attention = this_build
    print(f"batch {args.batch}, int4, compiled, {args.rounds} alternating rounds")
    median = generate.rounds_table("build", {"this": "this source", "other": str(args.other)}, speeds)
    same = outputs["this"] == outputs["other"]
    print(f"this / other: {median['this'] / median['other']:.2f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "attention_ab", "batch": args.batch, "rounds": args.rounds,
                      "this_tok_s": median["this"], "other_tok_s": median["other"], "rounds_won": won,
                      "identical": same}))


if __name__ == "__main__":
    main()
