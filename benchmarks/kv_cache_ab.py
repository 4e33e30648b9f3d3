"""Decode with KV caches of different dtypes (int8 against float16 by default), warmed-up engines, in one process.

    python benchmarks/kv_cache_ab.py [--dtypes int8 float16] [--weights int4] [--batch 32] [--rounds 4] [--prompt-tokens 0]

For models whose attention runs through llmkit's CPU kernel (int4/int8 weights with int8 activations) the
engine's cache is float16 by default (`kv_cache_dtype="auto"`): the kernel reads half float32's bytes, and
an int8 cache (`kv_cache_dtype="int8"`: one float32 scale per position and kv head) about half float16's.
This measures what that is worth: SmolLM2-135M-Instruct, compiled, 2 threads, 128 new tokens greedy, one
engine per cache dtype over the same model, rounds alternating between them (their order swapped every
round), so the host's drift hits both alike. --prompt-tokens N puts an N-token system prompt (the opening
of Hamlet) before the question: longer contexts read more cache a step. Reports each dtype's median decode
tok/s (all streams) and the rounds the first dtype beat the second. The tokens differ from the first ones
that the rounding of the keys and values moves (int8 activations: BENCHMARKS.md); the quality cost is
measured by `benchmarks/quantize_quality.py --only int4_a8_kv32 int4_a8_kv16 int4_a8_kv8`. Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = ["int8", "float16", "float32"]


def main() -> None:
    import generate  # light: torch is imported when a model is loaded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["int8", "float16"], choices=DTYPES,
                        help="cache dtypes, at least two; ratios are of each against the last")
    parser.add_argument("--weights", default="int4", choices=generate.QUANTIZED_KINDS)
    parser.add_argument("--batch", type=int, default=32, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=0, help="a system prompt of this many tokens (0: none)")
    args = parser.parse_args()
    if len(set(args.dtypes)) < 2:
        parser.error("--dtypes: name at least two different cache dtypes")
    dtypes = list(dict.fromkeys(args.dtypes))
    generate.setup_torch()
    from llmkit.infer import Engine, SamplingParams
    from llmkit.infer.compiled import warm_up

    model, tokenizer = generate.load_ours(args.weights)
    prompt = generate.chat_prompt(tokenizer)
    if args.prompt_tokens:
        prompt = tokenizer.encode(tokenizer.apply_chat_template(
            [{"role": "system", "content": generate.system_prompt(tokenizer, args.prompt_tokens)},
             {"role": "user", "content": "Summarise the text."}]))
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    engines = {}
    for dtype in dtypes:  # the whole batch's prompts prefilled in the first step (generate.timed_batch)
        engine = Engine(model, compile=True, max_batch_size=max(args.batch, 2), prefix_cache_mib=0,
                        kv_cache_dtype=dtype, prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
        print(f"{dtype}: warm-up {warm_up(engine):.0f} s", file=sys.stderr)
        generate.timed_batch(engine, prompt, params, args.batch)  # the batch's own shapes
        engines[dtype] = engine

    def run(dtype: str) -> tuple[float, None]:
        return generate.timed_batch(engines[dtype], prompt, params, args.batch)[0], None

    speeds, _, won = generate.alternating_rounds(run, dtypes, args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, prompt {len(prompt)} tokens, {args.rounds} alternating rounds")
    median = generate.rounds_table("KV cache", {dtype: dtype for dtype in dtypes}, speeds)
    reference = dtypes[-1]
    for dtype in dtypes[:-1]:
        print(f"{dtype} / {reference}: {median[dtype] / median[reference]:.2f}x")
    print(f"{dtypes[0]} beat {dtypes[1]} in {won} of {args.rounds} rounds")
    print(json.dumps({"benchmark": "kv_cache_ab", "weights": args.weights, "batch": args.batch,
                      "prompt_tokens": len(prompt), "rounds": args.rounds,
                      **{f"{dtype}_tok_s": median[dtype] for dtype in dtypes}, "rounds_won": won}))


if __name__ == "__main__":
    main()
