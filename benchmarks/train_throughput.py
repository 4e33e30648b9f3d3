"""Training throughput and MFU of the reference shape through the real Trainer.

Reference shape (GPT-2 style): 6 layers, 6 heads, d_model 384, context 256, micro-batch 8, vocab 8192,
learned positions, LayerNorm, GELU, tied head; data: the built-in Shakespeare shards. MFU divides
achieved model FLOPs (Transformer.flops_per_token: 6N + 12 L H Q T, PaLM appendix B) by the peak of a
2048x2048 bf16 matmul measured in the same process (llmkit.train.progress.measure_peak_flops).

    python benchmarks/train_throughput.py [--steps 60] [--no-compile] [--dtype bf16] [--nanogpt DIR] [overrides ...]

--nanogpt DIR also times the reference, nanoGPT's `model.py` from a checkout in DIR (github.com/karpathy/
nanoGPT; not shipped here), at the same shape, precision, compile setting and step counts, with the loop
of its train.py (AdamW from its configure_optimizers, clipping at 1.0), against the same peak.

Prints a table, then one JSON line: tokens_per_s, mfu, peak_flops (and nanogpt_tokens_per_s, vs_nanogpt).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the average (compile, caches)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: time its model.py too, as the reference")
    parser.add_argument("overrides", nargs="*", help="extra TrainConfig field=value overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llmkit.train.config import TrainConfig, merge_overrides
    from llmkit.train.pretrain import pretrain

    log_every = 10
    with tempfile.TemporaryDirectory() as out:
        data = {"model": "gpt2-cpu", "data": "shakespeare", "vocab_size": 8192, "seq_len": 256, "micro_batch": 8,
                "max_steps": args.steps, "log_every": log_every, "eval_every": 0, "ckpt_every": 0,
                "compile": not args.no_compile, "dtype": args.dtype, "warmup_steps": 10, "plot": False,
                "threads": args.threads}
        config = TrainConfig.from_dict(merge_overrides(data, args.overrides), source="benchmark")
        result = pretrain(config, out)
        records = [json.loads(line) for line in open(f"{out}/metrics.jsonl") if '"loss"' in line]
    measured = [r for r in records if r["step"] > args.warmup_steps]
    # tokens/s over the measured windows: total tokens / total time (each record covers log_every steps)
    tokens = sum(log_every * 8 * 256 for _ in measured)
    seconds = sum(log_every * 8 * 256 / r["tokens_per_s"] for r in measured)
    tokens_per_s = tokens / seconds
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    with torch.device("meta"):
        model = Transformer(ModelConfig.preset("gpt2-cpu", vocab_size=8192))
    flops_per_token = model.flops_per_token(256)
    mfu = tokens_per_s * flops_per_token / result.peak_flops
    rows = [("model", f"gpt2-cpu, {model.num_params() / 1e6:.2f}M params, {flops_per_token / 1e6:.1f} MFLOP/token"),
            ("precision", f"{args.dtype} autocast, compile={not args.no_compile}, {args.threads} threads"),
            ("steps measured", f"{len(measured) * log_every} (after {args.warmup_steps} warm-up)"),
            ("tokens/s", f"{tokens_per_s:,.0f}"),
            ("peak matmul", f"{result.peak_flops / 1e12:.2f} TFLOP/s"),
            ("MFU", f"{mfu:.1%}")]
    summary = {"tokens_per_s": round(tokens_per_s, 1), "mfu": round(mfu, 4), "peak_flops": round(result.peak_flops),
               "compile": not args.no_compile, "dtype": args.dtype}
    if args.nanogpt:
        reference = nanogpt_tokens_per_s(args.nanogpt, args)
        rows += [("nanoGPT tokens/s", f"{reference:,.0f} (MFU {reference * flops_per_token / result.peak_flops:.1%})"),
                 ("llmkit / nanoGPT", f"{tokens_per_s / reference:.2f}x")]
        summary |= {"nanogpt_tokens_per_s": round(reference, 1), "vs_nanogpt": round(tokens_per_s / reference, 3)}
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps(summary))


def nanogpt_tokens_per_s(checkout: Path, args) -> float:
    """Tokens/s of nanoGPT's GPT at the reference shape, timed like the Trainer's steps (wall clock per
    optimizer step, warm-up steps left out). Random tokens: throughput does not depend on the text."""
    if not (checkout / "model.py").is_file():
        sys.exit(f"--nanogpt {checkout}: no model.py there; pass a checkout of github.com/karpathy/nanoGPT")
    sys.path.insert(0, str(checkout))
    from model import GPT, GPTConfig  # nanoGPT's own module

    from llmkit.train.trainer import resolve_autocast_dtype

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=8192, n_layer=6, n_head=6, n_embd=384, dropout=0.0, bias=True))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    runner = model if args.no_compile else torch.compile(model)
    dtype = resolve_autocast_dtype(args.dtype, torch.device("cpu"))  # as the Trainer reads --dtype
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    x, y = torch.randint(0, 8192, (8, 256)), torch.randint(0, 8192, (8, 256))
    seconds = 0.0
    for step in range(args.steps):
        start = time.perf_counter()
        with autocast:
            _, loss = runner(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if step >= args.warmup_steps:
            seconds += time.perf_counter() - start
    return (args.steps - args.warmup_steps) * 8 * 256 / seconds


if __name__ == "__main__":
    sys.exit(main())
