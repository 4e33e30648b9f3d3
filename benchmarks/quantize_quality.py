"""What weight-only quantization costs in quality: bits per byte of SmolLM2-135M-Instruct on the
Shakespeare validation plays (Hamlet, Macbeth, The Tempest), fp32 against bf16, int8 and int4, with
PyTorch's weight-only kernels (bf16 activations) and with llmkit's int8-activation kernels (the `_a8` rows),
and (the `_kv32` / `_kv16` / `_kv8` rows, by --only) through a float32, float16 or int8 KV cache as the engine
runs them.

    flock /tmp/llmkit-heavy.lock python benchmarks/quantize_quality.py            # ~15 minutes on 2 cores
    flock /tmp/llmkit-heavy.lock python benchmarks/quantize_quality.py --max-chars 40000   # a quicker subset

Each configuration is the same fp32 checkpoint (converted from the Q4_1 GGUF) quantized in memory
exactly as `llmkit quantize` does it, then scored with `llmkit.eval.bpb.evaluate_texts` (each play one
document, non-overlapping 1,024-token windows). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

VAL = Path(__file__).resolve().parents[2] / "shared/data/shakespeare/val"
CONFIGS = {  # name: (bits, lm_head_bits, activation dtype, int8 activations)
    "fp32": (None, None, torch.float32, False),
    "bf16": (None, None, torch.bfloat16, False),
    "int8": (8, 8, torch.bfloat16, False),
    "int4": (4, 8, torch.bfloat16, False),
    "int4_head4": (4, 4, torch.bfloat16, False),
    # llmkit's int8-activation CPU kernels (llmkit/cpu_kernels.py): fp32 activations rounded to int8
    # in blocks of 32 inside each Linear, int4 scales and mins in fp16
    "int8_a8": (8, 8, torch.float32, True),
    "int4_a8": (4, 8, torch.float32, True),
    "int4_head4_a8": (4, 4, torch.float32, True),
}
# the same, scored as the engine runs them: through a KV cache of that dtype, prompts prefilled in chunks
# of 512 tokens (every query reads its keys and values back from the cache, rounded to its dtype)
CACHED = {"int4_a8_kv32": ("int4_a8", torch.float32), "int4_a8_kv16": ("int4_a8", torch.float16),
          "int4_a8_kv8": ("int4_a8", torch.int8), "int8_a8_kv16": ("int8_a8", torch.float16),
          "int8_a8_kv8": ("int8_a8", torch.int8)}


class ThroughCache(torch.nn.Module):
    """model(x) for bpb.evaluate_texts, computed through a fresh KV cache of `dtype` in chunks."""

    def __init__(self, model, dtype: torch.dtype, chunk: int = 512):
        super().__init__()
        self.model, self.dtype, self.chunk, self.config = model, dtype, chunk, model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from llmkit.infer.kv_cache import KVCache

        seq = x.shape[1]
        cache = KVCache(self.config, 1, seq, x.device, self.dtype)
        logits = []
        for start in range(0, seq, self.chunk):
            stop = min(seq, start + self.chunk)
            cache.bind(0, 1, stop)
            positions = torch.arange(start, stop, device=x.device)[None]
            logits.append(self.model(x[:, start:stop], positions=positions, kv_cache=cache))
        return torch.cat(logits, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-chars", type=int, default=0, help="score only the first N characters of each play")
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS) + list(CACHED))
    args = parser.parse_args()
    torch.set_num_threads(2)

    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.convert import resolve_model
    from llmkit.eval.bpb import evaluate_texts
    from llmkit.infer import quantize_model

    directory = resolve_model("smollm2")
    tokenizer = load_tokenizer(directory)
    files = sorted(VAL.glob("*.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.max_chars:  # the same subset for every configuration
            subset = []
            for f in files:
                (Path(tmp) / f.name).write_text(f.read_text()[: args.max_chars])
                subset.append(Path(tmp) / f.name)
            files = subset
        results = {}
        for name in args.only:
            base, cache_dtype = CACHED.get(name, (name, None))
            bits, head_bits, dtype, int8_activations = CONFIGS[base]
            model = load_model(directory)
            if bits:
                quantize_model(model, bits, group_size=32, lm_head_bits=head_bits, int8_activations=int8_activations)
            model.to(dtype)
            if cache_dtype is not None:
                model = ThroughCache(model, cache_dtype)
            start = time.perf_counter()
            with torch.inference_mode():
                result = evaluate_texts(model, tokenizer, files, torch.device("cpu"), seq_len=1024)
            results[name] = {"bpb": result.bpb, "tokens": result.tokens, "seconds": time.perf_counter() - start}
            print(f"{name}: {result.bpb:.4f} bits/byte over {result.tokens:,} tokens "
                  f"({results[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    base = results.get("fp32", {}).get("bpb")
    print(f"SmolLM2-135M-Instruct, bits per byte on {', '.join(f.name for f in files)}"
          + (f" (first {args.max_chars:,} characters of each)" if args.max_chars else ""))
    print(f"{'weights':<14} {'bits/byte':>10} {'change vs fp32':>15}")
    for name, r in results.items():
        change = f"{r['bpb'] - base:+.4f} ({(r['bpb'] / base - 1):+.2%})" if base else "-"
        print(f"{name:<14} {r['bpb']:10.4f} {change:>15}")
    print(json.dumps({f"{name}_bpb": round(r["bpb"], 5) for name, r in results.items()}))


if __name__ == "__main__":
    main()
