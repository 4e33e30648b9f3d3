"""A lone request's decode tokens in one parallel region (llmkit/infer/token_step.py, the default for a
Llama-type model on llmkit's CPU kernels) against the same engine's compiled graph step, in one process.

    python benchmarks/token_step_ab.py [--weights int8] [--rounds 8] [--against graph|plain] [--batch 1]

SmolLM2-135M-Instruct, 2 threads, 128 new tokens greedy from generate.py's chat prompt, two compiled engines on
one model, rounds alternating (their order swapped every round) so that the host's drift hits both alike:
- `--against graph` (batch 1): one engine's batch-1 step is TokenStep, the other's the AOTInductor program
  (`ahead.py`) of the same forward. Both give the same bits (tests/test_token_step.py): the greedy tokens must be
  identical.
- `--against plain`: the engine as it is against one whose model runs its plain modules (no layer operators,
  llmkit/kernel_layers.py, and so no TokenStep: the engine before them), at `--batch` requests decoding together.
  The operators round their own way, so the tokens may differ after a while (reported).
Reports each engine's median decode tok/s (all streams), the rounds the first won and the ratio. Prints a table,
then one JSON line.
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
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--against", default="graph", choices=["graph", "plain"])
    parser.add_argument("--batch", type=int, default=1, help="requests decoding together (--against plain)")
    args = parser.parse_args()
    if args.against == "graph" and args.batch != 1:
        parser.error("--against graph compares batch-1 steps: --batch 1")
    generate.setup_torch()
    import llmkit.kernel_layers as kernel_layers
    from llmkit.infer import Engine, SamplingParams

    model, tokenizer = generate.load_ours(args.weights)
    prompt = generate.chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=generate.NEW_TOKENS, temperature=0)
    options = dict(compile=True, max_batch_size=args.batch, prefix_cache_mib=0,
                   prefill_chunk=generate.batch_prefill_chunk(prompt, args.batch))
    first_name, other = ("region", "graph") if args.against == "graph" else ("now", "plain")
    engines = {first_name: Engine(model, **options), other: Engine(model, **options)}
    assert engines[first_name].token_step() is not None, "this model's engine has no one-region step"
    engines[other]._token_step = None  # the program's step
    fused = kernel_layers.runs_fused, kernel_layers.final_forward

    def run(name: str) -> tuple[float, list[list[int]]]:
        if name == "plain":  # the model's plain modules, in its prefill, its export and its eager steps
            kernel_layers.runs_fused, kernel_layers.final_forward = (lambda *a: False), (lambda *a: None)
        try:
            speed, requests = generate.timed_batch(engines[name], prompt, params, args.batch)
        finally:
            kernel_layers.runs_fused, kernel_layers.final_forward = fused
        return speed, [r.output_ids for r in requests]

    first = generate.first_runs(engines, run)
    speeds, outputs, won = generate.alternating_rounds(run, [first_name, other], args.rounds)
    print(f"batch {args.batch}, {args.weights}, compiled, {args.rounds} alternating rounds")
    labels = {"region": "one parallel region a token (token_step.py)",
              "graph": "the compiled graph of the same forward (AOTInductor program, ahead.py)",
              "now": "the engine (layer operators; batch 1: one parallel region a token)",
              "plain": "the model's plain modules compiled (the engine before kernel_layers.py)"}
    median = generate.rounds_table("decode step", {name: labels[name] for name in engines}, speeds, first)
    same = outputs[first_name] == outputs[other]
    ratio = median[first_name] / median[other]
    print(f"{first_name} / {other}: {ratio:.3f}x, won {won} of {args.rounds} rounds; greedy tokens identical: {same}")
    print(json.dumps({"benchmark": "token_step_ab", "weights": args.weights, "against": other, "batch": args.batch,
                      "rounds": args.rounds, f"{first_name}_tok_s": median[first_name],
                      f"{other}_tok_s": median[other], "ratio": round(ratio, 4), "rounds_won": won,
                      "identical": same}))


if __name__ == "__main__":
    main()
