"""The speed of `llmkit inspect` against the issue's target: attention, the logit lens and neighbours for
a 64-token text on SmolLM2-135M-Instruct in under a second each on 2 threads.

    python benchmarks/inspect_speed.py                  # smollm2, fp32 (as `llmkit inspect` loads it), 2 threads
    python benchmarks/inspect_speed.py --threads 4 --repeats 9

Each job is timed as a user's call runs it, from the text to the result: attention = every layer's and
head's weights (`attention_maps`), lens = the top-k at every layer and every position (`logit_lens`),
neighbours = the 10 nearest words of " king" in the input embeddings (the word space built once per
model, as `llm.neighbours` keeps it). One plain forward of the same tokens is timed beside them as the
machine's yardstick: on a shared machine the absolute times move with the load, the ratios much less.
Median of --repeats after one warm-up. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed

STORY = ("The mouse ran across the kitchen floor, stopped beside the table and looked up at the cheese that "
         "the cook had left there before going out to the market early in the morning, when the streets were "
         "still empty and quiet, and the baker in the next street was only just lighting his ovens for the "
         "first bread of the day.")
TARGET_S = 1.0


def sixty_four_tokens(tokenizer) -> str:
    """The story cut to 63 tokens, so that with the BOS the text is 64 tokens long."""
    text = tokenizer.decode(tokenizer.encode(STORY)[:63])
    return text


def timed(job, repeats: int) -> list[float]:
    job()  # warm-up: first-call allocations, lazily built tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=5, help="lens: tokens kept per layer and position")
    args = parser.parse_args()

    import torch

    from llmkit.inspect.attention import attention_maps
    from llmkit.inspect.commands import load_model_and_tokenizer
    from llmkit.inspect.embeddings import input_embeddings
    from llmkit.inspect.lens import logit_lens

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model, "cpu", "float32")
    text = sixty_four_tokens(tokenizer)
    ids = tokenizer.encode(text, add_bos=True)
    start = time.perf_counter()
    space = input_embeddings(model, tokenizer)
    build_s = time.perf_counter() - start

    def forward():
        with torch.inference_mode():
            model(torch.tensor([ids]))

    # The lens's floor: the output head's matmul alone for every layer and position (the same rows, in the
    # same chunks, into a preallocated buffer; no norm, top-k or logsumexp). No implementation of the exact
    # lens can take less; its FLOP rate is the machine's fp32 matmul speed on this shape.
    from llmkit.inspect.lens import LOGITS_CHUNK_BYTES

    head = model.lm_head.weight.detach()
    lens_rows = (model.config.n_layers + 1) * len(ids)
    rows_per_chunk = max(1, LOGITS_CHUNK_BYTES // (4 * head.shape[0]))
    hidden_rows = torch.randn(lens_rows, head.shape[1])
    buffer = torch.empty(rows_per_chunk, head.shape[0])
    head_flop = 2 * lens_rows * head.shape[0] * head.shape[1]

    def head_matmul():
        for start in range(0, lens_rows, rows_per_chunk):
            chunk = hidden_rows[start:start + rows_per_chunk]
            torch.mm(chunk, head.t(), out=buffer[:chunk.shape[0]])

    jobs = {
        "forward": forward,
        "head matmul (lens floor)": head_matmul,
        "attention": lambda: attention_maps(model, tokenizer, text),
        "lens": lambda: logit_lens(model, tokenizer, text, top=args.top),
        "neighbours": lambda: space.neighbours("king", 10),
    }
    results = {name: timed(job, args.repeats) for name, job in jobs.items()}
    medians = {name: statistics.median(times) for name, times in results.items()}
    load = os.getloadavg()

    print(f"{args.model}, {len(ids)} tokens, fp32, {torch.get_num_threads()} threads, median of {args.repeats} "
          f"after a warm-up; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| job | median s | min s | / forward | target < 1 s |")
    print("| --- | --- | --- | --- | --- |")
    for name, times in results.items():
        ratio = medians[name] / medians["forward"]
        verdict = "-" if name in ("forward", "head matmul (lens floor)") else ("met" if medians[name] < TARGET_S else "missed")
        print(f"| {name} | {medians[name]:.3f} | {min(times):.3f} | {ratio:.2f} | {verdict} |")
    floor = medians["head matmul (lens floor)"]
    print(f"(the word space for neighbours: built once per model in {build_s:.2f} s; the lens's head matmul: "
          f"{head_flop / 1e9:.0f} GFLOP at {head_flop / floor / 1e9:.0f} GFLOP/s, so the exact lens of every layer "
          f"and position cannot take under {floor:.2f} s here; the lens takes {medians['lens'] / floor:.2f}x that)")
    print(json.dumps({"benchmark": "inspect_speed", "model": args.model, "tokens": len(ids),
                      "threads": torch.get_num_threads(), "repeats": args.repeats, "top": args.top,
                      **{f"{name.split()[0] if name.startswith('head') else name}_s": round(medians[name], 4)
                         for name in medians},
                      "head_gflop": round(head_flop / 1e9, 1), "head_gflops": round(head_flop / floor / 1e9, 1),
                      "word_space_build_s": round(build_s, 3),
                      "target_met": all(medians[n] < TARGET_S for n in ("attention", "lens", "neighbours")),
                      "load_average": [round(x, 2) for x in load]}))


if __name__ == "__main__":
    main()
