"""SmolLM2-135M-Instruct on five zero-shot multiple-choice / schema tasks: accuracy and scoring speed.

    python benchmarks/eval_tasks.py --limit 200          # the first 200 examples of each task
    python benchmarks/eval_tasks.py                      # the full files (2-core CPU: about an hour)

Tasks: arc_easy, arc_challenge, piqa, copa, winogrande from ../shared/data/eval/core (the Mosaic Eval
Gauntlet files), zero-shot, scored by llmkit.eval (batched, shared contexts computed once). No BOS is
put before the text unless --bos: SmolLM2's BOS is `<|im_start|>`, its chat-turn marker, not a document
start, and lm-evaluation-harness / lighteval (the model card's figures: ARC 43.9 avg, PIQA 68.4,
WinoGrande 51.3, zero-shot, char-normalised, for the base model; Instruct: ARC 37.3, PIQA 66.3) add none.
Prints a table, then one JSON line: per task `TASK_acc`, `TASK_acc_norm`, `TASK_examples_per_s`, and
`TASK_row_tokens_ratio` (tokens run through the model / tokens were each option run alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed

TASKS = ["arc_easy", "arc_challenge", "piqa", "copa", "winogrande"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--limit", type=int, default=None, help="the first N examples of each task")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eval" / "core"))
    parser.add_argument("--bos", action="store_true", help="start every sequence with the tokenizer's BOS")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="also write the run directory (results, per-example records)")
    args = parser.parse_args()

    import torch

    import llmkit
    from llmkit.eval import evaluate_tasks, format_table, parse_task_list, write_run
    from llmkit.eval.prompts import build_requests
    from llmkit.eval.scoring import encode_options, pack_example
    from llmkit.eval.tasks import read_examples

    llm = llmkit.load(args.model, device=args.device)
    specs = parse_task_list(",".join(TASKS), args.data, shots=0)
    started = time.perf_counter()
    run = evaluate_tasks(llm.model, llm.tokenizer, specs, limit=args.limit, add_bos=args.bos)
    run["model"] = args.model
    total_s = time.perf_counter() - started
    if args.out:
        write_run(args.out, run)
    print(format_table(run))

    figures = {"model": args.model, "limit": args.limit, "add_bos": args.bos, "threads": torch.get_num_threads(),
               "device": str(llm.device), "total_s": round(total_s, 1)}
    for spec in specs:
        task = run["tasks"][spec.name]
        # what sharing the context saves: the packed rows' tokens against each option's own sequence
        examples = read_examples(spec.path, spec.kind)
        indices = list(range(task["n"]))
        grouped = [encode_options(llm.tokenizer, r.pairs, llm.model.config.max_seq_len, args.bos)
                   for r in build_requests(spec, examples, indices)]
        rows = sum(len(pack_example(options).tokens) for options in grouped)
        alone = sum(len(o.tokens) - 1 for options in grouped for o in options)
        figures.update({f"{spec.name}_n": task["n"],
                        f"{spec.name}_acc": round(task["metrics"]["acc"]["value"], 4),
                        f"{spec.name}_acc_norm": round(task["metrics"]["acc_norm"]["value"], 4),
                        f"{spec.name}_examples_per_s": round(task["examples_per_s"], 2),
                        f"{spec.name}_row_tokens_ratio": round(rows / alone, 3)})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
