"""Decode with and without dynamo's guard evaluation, one warmed-up engine, in one process.

    python benchmarks/guards_ab.py [--weights int4] [--batch 1] [--rounds 8]

After `llmkit.infer.compiled.warm_up` (what `llmkit serve --compile` runs before it answers) the engine
calls its compiled decode step without evaluating dynamo's guards (`call_warmed`). This measures what
that is worth: SmolLM2-135M-Instruct, compiled, 2 threads, 128 new tokens greedy, the same engine and the
same graphs, rounds alternating `engine.warmed_up` on and off (their order swapped every round), so the
host's drift hits both alike (BENCHMARKS.md: on a noisy host separate runs cannot tell 6% apart).
Reports each setting's median decode tok/s (all streams), the rounds the guard-free one won, and whether
the greedy tokens are identical. Prints a table, then one JSON line.
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
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    generate.setup_torch()
    from llmkit.infer import Engine, SamplingParams
    from llmkit.infer.compiled import warm_up

    model, tokenizer = generate.load_ours(args.weights)
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    engine = Engine(model, compile=True, max_batch_size=max(args.batch, 2), prefix_cache_mib=0,
                    prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    print(f"warm-up (the server's): {warm_up(engine):.0f} s", file=sys.stderr)

    def run(skip: bool) -> tuple[float, list[list[int]]]:
        engine.warmed_up = skip
        speed, requests = generate.timed_batch(engine, prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    run(True)  # the batch's own shapes, if the warm-up's cache differed
    speeds, outputs, won = generate.alternating_rounds(run, [True, False], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds")
    median = generate.rounds_table("guards", {True: "skipped (after warm_up)", False: "evaluated"}, speeds)
    same = outputs[True] == outputs[False]
    print(f"skipped / evaluated: {median[True] / median[False]:.2f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "guards_ab", "weights": args.weights, "batch": args.batch,
                      "rounds": args.rounds, "skipped_tok_s": median[True], "evaluated_tok_s": median[False],
                      "rounds_won": won, "identical": same}))


if __name__ == "__main__":
    main()
