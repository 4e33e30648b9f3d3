"""llmkit's task scores against lm-evaluation-harness's on the same files, prompts and weights, and the speed of each.

    python benchmarks/lm_eval_parity.py --limit 200      # the first 200 examples of each task
    python benchmarks/lm_eval_parity.py                  # the full files (a 2-core CPU: hours)
    python benchmarks/lm_eval_parity.py --limit 100 --server   # also lm-eval's local-completions on llmkit serve

SmolLM2-135M-Instruct (the `smollm2` named model) is exported to a Hugging Face directory (`llmkit
convert smollm2 --to hf`), then for arc_easy, arc_challenge, piqa, copa and winogrande (the Mosaic
Eval Gauntlet files of ../shared/data/eval/core), zero-shot, each task runs through llmkit's evaluation
(`evaluate_tasks`) and through lm-eval's `hf` model (`simple_evaluate`, batch size 16) reading the
same JSONL file through a task YAML that builds llmkit's prompt (llmkit/eval/lm_eval_bridge.py says
how). Both run in this process on 2 threads, fp32, one after the other, so their speeds share the
machine's load. No BOS unless --bos (SmolLM2's BOS is its chat-turn marker; lm-eval adds none).

Prints a table per task (acc / acc_norm of each, the difference in points, the largest per-example
log-likelihood difference, examples/s of each and llmkit's speed over lm-eval's), then one JSON line.
lm-eval's WinoGrande reports acc only (see lm_eval_bridge.py); llmkit's acc_norm equals its acc there.

--server also starts `llmkit serve --model MODEL` (fp32) as a user would and runs the same tasks through
lm-eval's `local-completions` model against it: lm-eval tokenizes with the server's /tokenize and
/tokenizer_info (its remote tokenizer backend), sends context + continuation token ids with `echo`,
`logprobs` and `max_tokens: 1`, and reads the continuation's log-probabilities from the echoed prompt —
the way it scores vLLM or llama.cpp servers. Its accuracies and log-likelihoods are compared with
llmkit's in-process ones.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed

TASKS = ["arc_easy", "arc_challenge", "piqa", "copa", "winogrande"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="named model or llmkit checkpoint directory")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--limit", type=int, default=None, help="the first N examples of each task (default: all)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eval" / "core"))
    parser.add_argument("--bos", action="store_true", help="start every sequence with the tokenizer's BOS (both)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size")
    parser.add_argument("--server", action="store_true", help="also lm-eval's local-completions model against "
                        "`llmkit serve --model MODEL` (a subprocess on a free port)")
    parser.add_argument("--hf-dir", default=None, help="an existing Hugging Face export of --model (default: "
                        "export into a temporary directory)")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(args.threads)
    import llmkit
    from llmkit.convert import convert
    from llmkit.eval import evaluate_tasks, parse_task_list
    from llmkit.eval.lm_eval_bridge import hf_model, run_lm_eval, write_task_yamls

    work = Path(tempfile.mkdtemp(prefix="lm-eval-parity-"))
    hf_dir = Path(args.hf_dir) if args.hf_dir else work / "hf"
    if not args.hf_dir:
        started = time.perf_counter()
        convert(args.model, hf_dir, to="hf", dtype=torch.float32)
        print(f"exported {args.model} to {hf_dir} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    specs = parse_task_list(args.tasks, args.data, shots=0)
    names = write_task_yamls(specs, work / "tasks", cache_dir=work / "datasets")
    llm = llmkit.load(args.model, device="cpu", dtype=torch.float32)
    lm = hf_model(hf_dir, add_bos=args.bos, batch_size=args.batch_size, device="cpu", dtype="float32")
    torch.set_num_threads(args.threads)  # whatever loading the models did to it

    # warm-up (first-call costs of each side, not counted): two examples of the first task
    evaluate_tasks(llm.model, llm.tokenizer, specs[:1], limit=2, add_bos=args.bos, progress=False)
    run_lm_eval(lm, work / "tasks", names[0], limit=2)

    served = start_served(args.model, work) if args.server else None
    rows, figures = [], {"model": args.model, "limit": args.limit, "add_bos": args.bos, "threads": args.threads,
                         "lm_eval_batch_size": args.batch_size, "load_average": list(os.getloadavg())}
    for spec, name in zip(specs, names):
        ours = evaluate_tasks(llm.model, llm.tokenizer, [spec], limit=args.limit, add_bos=args.bos, progress=True)
        task, records = ours["tasks"][spec.name], ours["examples"][spec.name]
        theirs = run_lm_eval(lm, work / "tasks", name, limit=args.limit)
        if theirs.n != task["n"]:
            raise SystemExit(f"{spec.name}: llmkit scored {task['n']} examples, lm-eval {theirs.n}")
        ll_diff = _max_ll_diff(records, theirs)
        ours_acc = {m: task["metrics"][m]["value"] for m in ("acc", "acc_norm")}
        ratio = task["examples_per_s"] / theirs.examples_per_s
        row = {"task": spec.name, "n": task["n"], "llmkit": ours_acc, "lm_eval": theirs.metrics,
               "max_ll_diff": ll_diff, "llmkit_examples_per_s": task["examples_per_s"],
               "lm_eval_examples_per_s": theirs.examples_per_s, "speed_ratio": ratio}
        if served:
            remote = run_lm_eval(served[1], work / "tasks", name, limit=args.limit)
            row["served"] = {"metrics": remote.metrics, "examples_per_s": remote.examples_per_s,
                             "max_ll_diff": _max_ll_diff(records, remote)}
            figures.update({**{f"{spec.name}_served_{m}": round(v, 4) for m, v in remote.metrics.items()},
                            f"{spec.name}_served_max_ll_diff": float(f"{row['served']['max_ll_diff']:.3g}"),
                            f"{spec.name}_served_examples_per_s": round(remote.examples_per_s, 2)})
        rows.append(row)
        print(f"{spec.name}: {_line(row)}", file=sys.stderr, flush=True)
        figures.update({f"{spec.name}_n": task["n"],
                        **{f"{spec.name}_llmkit_{m}": round(v, 4) for m, v in ours_acc.items()},
                        **{f"{spec.name}_lm_eval_{m}": round(v, 4) for m, v in theirs.metrics.items()},
                        f"{spec.name}_max_ll_diff": float(f"{ll_diff:.3g}"),
                        f"{spec.name}_llmkit_examples_per_s": round(task["examples_per_s"], 2),
                        f"{spec.name}_lm_eval_examples_per_s": round(theirs.examples_per_s, 2),
                        f"{spec.name}_speed_ratio": round(ratio, 2)})
    figures["load_average_end"] = list(os.getloadavg())
    if served:
        served[0].terminate()
        served[0].wait(timeout=30)
    print(_table(rows))
    if served:
        print(_served_table(rows))
    print(json.dumps(figures))


def _max_ll_diff(records: list[dict], harness) -> float:
    """The largest difference between llmkit's and lm-eval's log-likelihood of any option of any example."""
    return max(abs(a - b) for r in records for a, b in zip(r["scores"], harness.loglikelihoods[r["index"]]))


def start_served(model: str, work: Path):
    """(`llmkit serve` process, lm-eval's local-completions model on it)."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from serve import start_llmkit  # benchmarks/serve.py

    process, url = start_llmkit(model, ["--dtype", "float32"], work / "serve.log")
    atexit.register(process.kill)  # however this run ends
    lm = LocalCompletionsAPI(base_url=f"{url}/completions", model=model, tokenizer_backend="remote",
                             tokenized_requests=True, batch_size=16, max_retries=1)
    return process, lm


def _served_table(rows: list[dict]) -> str:
    lines = ["| task | n | llmkit acc / acc_norm (in process) | lm-eval local-completions on llmkit serve, acc / "
             "acc_norm | diff (pts) | max abs log-lik diff | served ex/s |", "| --- | ---: | --- | --- | --- | ---: | ---: |"]
    for r in rows:
        ours, theirs = r["llmkit"], r["served"]["metrics"]
        norm = theirs.get("acc_norm")
        lines.append(f"| {r['task']} | {r['n']} | {ours['acc']:.4f} / {ours['acc_norm']:.4f} | {theirs['acc']:.4f} / "
                     f"{'-' if norm is None else f'{norm:.4f}'} | {_points(ours['acc'], theirs['acc'])} / "
                     f"{_points(ours['acc_norm'], norm)} | {r['served']['max_ll_diff']:.2g} | "
                     f"{r['served']['examples_per_s']:.2f} |")
    return "\n".join(lines)


def _points(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{100 * (a - b):+.2f}"


def _line(row: dict) -> str:
    return (f"acc {row['llmkit']['acc']:.4f} vs {row['lm_eval']['acc']:.4f}, max |ll diff| {row['max_ll_diff']:.2g}, "
            f"{row['llmkit_examples_per_s']:.2f} vs {row['lm_eval_examples_per_s']:.2f} examples/s")


def _table(rows: list[dict]) -> str:
    lines = ["| task | n | llmkit acc | llmkit acc_norm | lm-eval acc | lm-eval acc_norm | diff acc (pts) | "
             "diff acc_norm (pts) | max abs log-lik diff | llmkit ex/s | lm-eval ex/s | speed ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ours, theirs = r["llmkit"], r["lm_eval"]
        theirs_norm = theirs.get("acc_norm")
        lines.append(
            f"| {r['task']} | {r['n']} | {ours['acc']:.4f} | {ours['acc_norm']:.4f} | {theirs['acc']:.4f} | "
            f"{'-' if theirs_norm is None else f'{theirs_norm:.4f}'} | {_points(ours['acc'], theirs['acc'])} | "
            f"{_points(ours['acc_norm'], theirs_norm)} | {r['max_ll_diff']:.2g} | {r['llmkit_examples_per_s']:.2f} | "
            f"{r['lm_eval_examples_per_s']:.2f} | {r['speed_ratio']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
