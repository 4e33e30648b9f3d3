"""The decode step compiled ahead of time (AOTInductor, the default for int8/int4 on a CPU) against the same
step under `torch.compile`, in one process.

    python benchmarks/ahead_ab.py [--weights int8] [--batch 1] [--rounds 8] [--against jit|proxy]

`llmkit.infer.ahead` exports the engine's decode step once, with every changing size symbolic, and
AOTInductor builds it into a library the engine calls with five tensors; under `torch.compile` (with its
C++ wrapper, guards skipped after warm-up, as `compiled.py` runs it) each call still goes through
dynamo's entry, AOTAutograd's wrappers and inductor's Python shim. SmolLM2-135M-Instruct, 2 threads, 128
new tokens greedy, two engines on one model (the second a subclass whose step is `torch.compile`'s),
rounds alternating (their order swapped every round) so that the host's drift hits both alike. Reports
each engine's median decode tok/s (all streams), the rounds the ahead-of-time one won, whether the greedy
tokens are identical, and each engine's first (compiling) run. Prints a table, then one JSON line.

`--against proxy`: against the program as it was first built (2026-12-06): the kernels called through
AOTInductor's proxy executor (no C functions) and inductor's own kernels in OpenMP regions (its default
`cpp.min_chunk_size`), to measure what `ahead.build_configs` adds.
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
    parser.add_argument("--weights", default="int8", choices=["int8", "int4", "int4_head4"])
    parser.add_argument("--batch", type=int, default=1, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--against", default="jit", choices=["jit", "proxy"])
    args = parser.parse_args()
    generate.setup_torch()
    from llmkit.infer import Engine, SamplingParams, ahead
    from llmkit.infer.compiled import compile_for_inference

    class JitEngine(Engine):
        """The same step compiled by torch.compile (the engine's way before ahead.py, and still on a GPU)."""

        def __init__(self, model, **options):
            super().__init__(model, **options)
            self.ahead = None
            self._decode_fn = compile_for_inference(self._decode_forward, model)

    model, tokenizer = generate.load_ours(args.weights)
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    options = dict(compile=True, max_batch_size=args.batch, prefix_cache_mib=0,
                   prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    other = args.against
    engines = {"ahead": Engine(model, **options),
               other: JitEngine(model, **options) if other == "jit" else Engine(model, **options)}
    assert engines["ahead"].ahead is not None, "this model's engine does not compile its step ahead of time"
    configs = ahead.build_configs

    def run(name: str) -> tuple[float, list[list[int]]]:
        if name == "proxy" and not engines[name].ahead.built:  # its build: the first settings
            ahead.build_configs = lambda: {"aot_inductor.package_constants_in_so": False}
        try:
            speed, requests = generate.timed_batch(engines[name], prompt, params, args.batch)
        finally:
            ahead.build_configs = configs
        return speed, [r.output_ids for r in requests]

    first = generate.first_runs(engines, run)
    speeds, outputs, won = generate.alternating_rounds(run, ["ahead", other], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds")
    labels = {"ahead": "AOTInductor (ahead.py)", "jit": "torch.compile, C++ wrapper, guards skipped",
              "proxy": "AOTInductor, kernels through the proxy executor, inductor's kernels parallel"}
    median = generate.rounds_table("decode step", {name: labels[name] for name in engines}, speeds, first)
    same = outputs["ahead"] == outputs[other]
    print(f"ahead / {other}: {median['ahead'] / median[other]:.3f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "ahead_ab", "weights": args.weights, "batch": args.batch, "against": other,
                      "rounds": args.rounds, "ahead_tok_s": median["ahead"], f"{other}_tok_s": median[other],
                      "ratio": round(median["ahead"] / median[other], 4), "rounds_won": won, "identical": same}))


if __name__ == "__main__":
    main()
