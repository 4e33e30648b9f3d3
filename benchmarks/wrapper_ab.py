"""Decode with inductor's C++ wrapper (the engine's default on a CPU) against its Python one, in one process.

    python benchmarks/wrapper_ab.py [--weights int4] [--batch 1] [--rounds 6]

A compiled decode step's wrapper is the code that allocates its buffers and calls its kernels and
operators one after another: Python by default, generated as C++ with inductor's `cpp_wrapper`, which
`llmkit.infer.compiled.compile_for_inference` sets on a CPU. This measures what that is worth:
SmolLM2-135M-Instruct, compiled, 2 threads, 128 new tokens greedy, two engines on one model (the second
a subclass, so that TorchDynamo keeps its graphs apart), both calling their steps guard-free as after
`warm_up`, rounds alternating (their order swapped every round) so that the host's drift hits both
alike. Reports each wrapper's median decode tok/s (all streams), the rounds the C++ one won, whether the
greedy tokens are identical, and each engine's first (compiling) run. Prints a table, then one JSON line.
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
    parser.add_argument("--weights", default="int4", choices=generate.WEIGHT_KINDS)
    parser.add_argument("--batch", type=int, default=1, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    generate.setup_torch()
    from llmkit.infer import Engine, SamplingParams
    from llmkit.infer.compiled import compile_for_inference

    class PythonWrapperEngine(Engine):
        """The same step under another code object, compiled with inductor's Python wrapper."""

        def __init__(self, model, **options):
            super().__init__(model, **options)
            self._decode_fn = compile_for_inference(self._decode_forward, model, cpp_wrapper=False)

        def _decode_forward(self, tokens, positions, cache):
            return self.model(tokens, positions=positions, kv_cache=cache)[:, -1].float()

    model, tokenizer = generate.load_ours(args.weights)
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    options = dict(compile=True, max_batch_size=args.batch, prefix_cache_mib=0,
                   prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    engines = {"C++": Engine(model, **options), "Python": PythonWrapperEngine(model, **options)}

    def run(name: str) -> tuple[float, list[list[int]]]:
        speed, requests = generate.timed_batch(engines[name], prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    first = generate.first_runs(engines, run)
    speeds, outputs, won = generate.alternating_rounds(run, ["C++", "Python"], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds")
    median = generate.rounds_table("wrapper", {name: name for name in engines}, speeds, first)
    same = outputs["C++"] == outputs["Python"]
    print(f"C++ / Python: {median['C++'] / median['Python']:.2f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "wrapper_ab", "weights": args.weights, "batch": args.batch,
                      "rounds": args.rounds, "cpp_tok_s": median["C++"], "python_tok_s": median["Python"],
                      "rounds_won": won, "identical": same}))


if __name__ == "__main__":
    main()
