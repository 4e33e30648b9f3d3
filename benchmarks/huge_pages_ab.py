"""Decode with the weights and KV cache in 2 MB pages and in 4 KB pages, in one process.

    python benchmarks/huge_pages_ab.py [--weights int8] [--batch 1] [--rounds 8] [--plain-first]

A CPU engine copies its model's weights into memory advised for transparent huge pages and allocates its
KV cache there (llmkit/infer/huge_pages.py); LLMKIT_HUGE_PAGES=0 leaves both where PyTorch allocates them
(4 KB pages). Two copies of SmolLM2-135M-Instruct, one engine built (and its cache made) with
LLMKIT_HUGE_PAGES=0, two compiled engines, 128 new tokens greedy, 2 threads, rounds alternating (order
swapped every round); `--plain-first` swaps the load order (it moved batch-1 figures by ~3% in other
A/Bs): run both. Also the memory read bandwidth (benchmarks/machine.py) in both kinds of pages. The
greedy tokens must be identical: only where the bytes live changes. Table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import generate  # light: torch is imported when a model is loaded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="int8", choices=generate.WEIGHT_KINDS)
    parser.add_argument("--batch", type=int, default=1, help="requests decoding together")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--plain-first", action="store_true", help="load the 4 KB-page copy first")
    args = parser.parse_args()
    import machine
    generate.setup_torch()
    from llmkit.infer import Engine, SamplingParams, huge_pages

    if not huge_pages.available():
        raise SystemExit("huge_pages_ab: this kernel offers no transparent huge pages (not Linux, or "
                         "/sys/kernel/mm/transparent_hugepage/enabled is [never]): nothing to compare")

    def pages(huge: bool) -> None:
        os.environ["LLMKIT_HUGE_PAGES"] = "1" if huge else "0"

    bandwidth = {}
    for huge in (False, True):
        pages(huge)
        bandwidth[huge] = machine.read_bandwidth_gbs(generate.THREADS)
    engines, prompt = {}, None
    for huge in ([False, True] if args.plain_first else [True, False]):
        pages(huge)
        model, tokenizer = generate.load_ours(args.weights)
        prompt = generate.chat_prompt(tokenizer)
        engines[huge] = Engine(model, compile=True, max_batch_size=args.batch, prefix_cache_mib=0,
                               prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)

    def run(huge: bool) -> tuple[float, list[list[int]]]:
        pages(huge)  # a cache made (or grown) during this run follows the engine's setting
        speed, requests = generate.timed_batch(engines[huge], prompt, params, args.batch)
        return speed, [r.output_ids for r in requests]

    generate.first_runs(engines, run)
    for huge, engine in engines.items():
        placed = [huge_pages.in_huge_pages(engine.model.tok_emb.weight),
                  huge_pages.in_huge_pages(engine.scheduler.cache.key_store)]
        if placed != [huge, huge and engine.scheduler.cache.key_store.nbytes >= huge_pages.HUGE_PAGE]:
            raise SystemExit(f"huge_pages_ab: the {'2 MB' if huge else '4 KB'}-page engine's weights / cache "
                             f"are in huge pages: {placed}")
    speeds, outputs, won = generate.alternating_rounds(run, [True, False], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds, "
          f"{'4 KB' if args.plain_first else '2 MB'}-page copy loaded first; memory read bandwidth "
          f"{bandwidth[False]:.1f} GB/s in 4 KB pages, {bandwidth[True]:.1f} in 2 MB pages")
    median = generate.rounds_table("pages", {True: "2 MB (huge_pages.py)", False: "4 KB (LLMKIT_HUGE_PAGES=0)"},
                                   speeds)
    same = outputs[True] == outputs[False]
    print(f"2 MB / 4 KB: {median[True] / median[False]:.3f}x, won {won} of {args.rounds} rounds; "
          f"greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "huge_pages_ab", "weights": args.weights, "batch": args.batch,
                      "rounds": args.rounds, "plain_first": args.plain_first, "huge_tok_s": median[True],
                      "small_tok_s": median[False], "rounds_won": won, "identical": same,
                      "read_bandwidth_gbs_4k": round(bandwidth[False], 2),
                      "read_bandwidth_gbs_2m": round(bandwidth[True], 2)}))
    if not same:
        raise SystemExit("huge_pages_ab: the greedy tokens differ between the two copies")


if __name__ == "__main__":
    main()
