"""Tool use (issue 21): SmolLM2-135M-Instruct on held-out arithmetic word problems, closed-book against the same
model taught to call the calculator, and GSM8K with and without the calculator.

    python benchmarks/tool_use.py [--train 1000] [--test 100] [--time-limit 2100] [--untaught 20] [--gsm8k 30]

1. Data: `llmkit.rag.tool_data` problems (two to four operations on three- and four-digit numbers) — the
   training set from seed 0, the test set from seed 1 with any problem text that is also in the training
   set dropped, so every test problem is unseen.
2. Closed-book: the problem as the user's message, greedy, the last number of the reply against the answer.
3. The calculator offered to the untaught model (`llm.chat_with_tools`, the template's tools branch), on the
   first --untaught test problems.
4. Taught: LoRA SFT (`llmkit sft --preset sft-tools-smollm2-lora`, at most --time-limit seconds) on the training problems,
   whose solutions call the calculator (TRL messages with tool_calls); then the same tool loop on the test set.
   The share of well-formed calls is calls run / (calls run + malformed calls), and the share of problems
   with at least one call.
5. GSM8K test, the first --gsm8k questions (../shared/data/eval/gsm8k): closed-book with the untaught model,
   and the taught model with the calculator; the final number of the reply against the gold answer.

Accuracies with Wilson 95% intervals; closed-book vs taught-with-the-tool paired by problem (McNemar exact
p). The evaluations are greedy and sequential through the product's tool loop (a problem is 2-3 engine
calls). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit
GSM8K = ROOT.parent / "shared" / "data" / "eval" / "gsm8k" / "test.jsonl"


def problems(train_n: int, test_n: int) -> tuple[list[dict], list[tuple[str, int]]]:
    """(training examples, test (problem, answer) pairs unseen in training)."""
    import random

    from llmkit.rag.tool_data import arithmetic_problem, tool_examples

    train = tool_examples(train_n, seed=0)
    seen = {example["messages"][0]["content"] for example in train}
    rng, test = random.Random(1), []
    while len(test) < test_n:
        text, _, answer = arithmetic_problem(rng)
        if text not in seen:
            test.append((text, answer))
            seen.add(text)
    return train, test


def closed_book(llm, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy replies to each question as a user message, batched on the engine."""
    ids = [llm.tokenizer.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
    params = llm.sampling_params(max_new_tokens=max_new_tokens, temperature=0)
    return [llm.tokenizer.decode(c.token_ids) for c in llm.engine.generate_batch(ids, params)]


def with_calculator(llm, questions: list[str], max_new_tokens: int) -> tuple[list[str], dict]:
    """Replies through the tool loop with the calculator offered; call statistics."""
    replies, calls, errors, used = [], 0, 0, 0
    for question in questions:
        chat = llm.chat_with_tools([{"role": "user", "content": question}], ["calculator"], max_tool_rounds=3,
                                   max_new_tokens=max_new_tokens, temperature=0)
        replies.append(chat.reply)
        calls, errors, used = calls + chat.calls, errors + chat.errors, used + (chat.calls > 0)
    return replies, {"calls": calls, "malformed": errors, "problems_with_a_call": used,
                     "well_formed_share": calls / (calls + errors) if calls + errors else 0.0}


def graded(replies: list[str], answers: list[str]) -> list[bool]:
    """Right when the reply's last number is the answer."""
    from llmkit.eval.extract import extract_flexible, normalize_number

    found = [extract_flexible(r) for r in replies]
    return [f is not None and f == normalize_number(str(a)) for f, a in zip(found, answers)]


def row(name: str, correct: list[bool], seconds: float, note: str = "") -> dict:
    from llmkit.eval.stats import wilson_interval

    k, n = sum(correct), len(correct)
    low, high = wilson_interval(k, n)
    print(f"  {name}: {k}/{n} = {k / n:.1%} [{low:.1%}, {high:.1%}] in {seconds:.0f} s {note}", flush=True)
    return {"name": name, "correct": correct, "n": n, "accuracy": k / n, "ci95": [low, high], "seconds": seconds}


def teach(args, train: list[dict]) -> float:
    """LoRA SFT on the training problems; returns the training time in seconds."""
    from llmkit.atomic import atomic_write_text

    data = args.run_dir.with_name(args.run_dir.name + "-data.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(data, "".join(json.dumps(example) + "\n" for example in train))
    command = [sys.executable, "-m", "llmkit.cli", "sft", "--preset", "sft-tools-smollm2-lora", "--out", str(args.run_dir),
               f"init_from={args.model}", f"data={data}", f"time_limit_s={args.time_limit}", "eval_every=0",
               f"threads={args.threads}", "plot=false", "ckpt_every=0", *args.sft]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--train", type=int, default=1000, help="training problems (seed 0)")
    parser.add_argument("--test", type=int, default=100, help="held-out problems (seed 1, none seen in training)")
    parser.add_argument("--time-limit", type=float, default=2100, help="at most these seconds of LoRA SFT "
                        "(1,000 problems take ~1,600 s on 2 cores)")
    parser.add_argument("--untaught", type=int, default=20, help="test problems for the untaught model with the "
                        "calculator offered (it rambles to the token limit: ~7 s each on 2 cores)")
    parser.add_argument("--gsm8k", type=int, default=30, help="GSM8K test questions (the first N); 0 skips them")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "tool-sft")
    parser.add_argument("--sft", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for the sft-tools-smollm2-lora preset (e.g. lora_rank=8 lr=5e-4)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate an existing --run-dir")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import llmkit
    from llmkit.eval.extract import gsm8k_gold
    from llmkit.eval.stats import paired_comparison

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    train, test = problems(args.train, args.test)
    questions, answers = [q for q, _ in test], [a for _, a in test]
    gsm = [json.loads(line) for line in GSM8K.read_text().splitlines()[:args.gsm8k]] if args.gsm8k else []
    gold = [gsm8k_gold(q["answer"]) for q in gsm]
    rows, calls = {}, {}

    def measure(key: str, name: str, job, grading_answers) -> None:
        t0 = time.perf_counter()
        replies = job()
        if isinstance(replies, tuple):
            replies, calls[key] = replies
        rows[key] = row(name, graded(replies, grading_answers), time.perf_counter() - t0,
                        json.dumps(calls.get(key, "")))

    base = llmkit.load(args.model, device="cpu")
    measure("closed_book", "SmolLM2 closed-book", lambda: closed_book(base, questions, 96), answers)
    if args.untaught:
        measure("untaught_tool", f"SmolLM2 + calculator offered (untaught), first {args.untaught}",
                lambda: with_calculator(base, questions[:args.untaught], 96), answers[:args.untaught])
    if gsm:
        measure("gsm8k_closed_book", f"GSM8K first {len(gsm)}: SmolLM2 closed-book",
                lambda: closed_book(base, [q["question"] for q in gsm], 256), gold)
    base = None  # (its memory back before the taught model loads)

    train_s = 0.0 if args.skip_train else teach(args, train)
    taught = llmkit.load(args.run_dir, device="cpu")
    measure("taught_tool", "SmolLM2 + LoRA taught, with the calculator", lambda: with_calculator(taught, questions, 64),
            answers)
    if gsm:
        measure("gsm8k_taught_tool", f"GSM8K first {len(gsm)}: taught + calculator",
                lambda: with_calculator(taught, [q["question"] for q in gsm], 256), gold)

    paired = paired_comparison(rows["closed_book"]["correct"], rows["taught_tool"]["correct"])
    print(f"\nheld-out arithmetic word problems: {len(test)} (training problems: {len(train)}); LoRA SFT {train_s:.0f} s")
    print(f"{'method':<52} {'accuracy':>9} {'95% CI':>16} {'time s':>8}")
    for r in rows.values():
        print(f"{r['name']:<52} {r['accuracy']:>9.1%} {r['ci95'][0]:>7.1%}-{r['ci95'][1]:<8.1%} {r['seconds']:>8.0f}")
    print(f"closed-book vs taught with the calculator: only closed-book right {paired.only_a}, only taught right "
          f"{paired.only_b}, McNemar exact p = {paired.p_value:.2g}")
    for key, stats in calls.items():
        print(f"calls, {key}: {stats}")
    print(f"machine load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(json.dumps({"benchmark": "tool_use", "train": len(train), "test": len(test), "gsm8k": len(gsm),
                      "sft_s": round(train_s, 1),
                      **{f"{k}_acc": round(r["accuracy"], 4) for k, r in rows.items()},
                      **{f"{k}_ci95": [round(x, 4) for x in r["ci95"]] for k, r in rows.items()},
                      "calls": calls, "mcnemar_p": paired.p_value}))


if __name__ == "__main__":
    main()
