"""The most a batch-1 decode step built on llmkit's tiles could read, and what a whole token in one parallel
region would give: SmolLM2-135M's linear layers alone in one region, and a prototype decode token in one
region (both in `weight_stream.cpp`, appended to llmkit/kernels/int8_dot.cpp and built like it), against
the compiled engine's decode of the same model, in the same rounds, each as a fraction of the memory read
bandwidth measured right before and right after it.

    flock /tmp/llmkit-heavy.lock python benchmarks/weight_stream.py [--kinds int8 int4] [--rounds 8]

Why: issue 25 asks batch-1 decode for >= 75% of the measured bandwidth. The engine's step makes ~280 calls a
token: 151 of llmkit's operators (each layer's linear layers and attention), each its own parallel region,
and 130 of inductor's fused kernels (norms, RoPE, the cache write), serial, between them.
- "weights": only the weights, the 121 linear layers (30 decoder layers' qkv, o, gate+up, down, and the
  head) in their order, a barrier between two, no Python, no operator call, no tensor made.
- "token": a prototype of the whole token in one region (its norms, RoPE, cache write and attention its
  own C++, the tiles int8_dot.cpp's; a float16 cache), decoding greedily from generate.py's chat prompt,
  each token's embedding looked up and its argmax taken in Python. Not the model's bits: its logits after
  the prompt are compared with the model's forward (KL), beside the int4/int8 model's own KL from fp32.

Per round (the order reversed every other round): "weights" `--calls` times (median), "token" and the
engine each decoding NEW_TOKENS tokens of generate.py's chat prompt (median of 2 runs), the bandwidth (best
of 3 reads of 512 MiB) before and after; each fraction is against the higher reading. Bytes: "weights", its
layers' weights and scales; "token" and the engine, generate.py's (every weight once, the KV cache at the
mean context). Prints a table per kind, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's llmkit, whatever is installed
sys.path.insert(0, str(HERE))

THREADS = 2


def build_drivers():
    """int8_dot.cpp with the drivers appended, built as its own library (namespace llmkit_stream)."""
    import torch

    from llmkit import cpu_kernels

    folder = Path(tempfile.gettempdir()) / "llmkit-weight-stream"
    folder.mkdir(exist_ok=True)
    # the headers int8_dot.cpp includes beside the source; each file rewritten only when its text changed
    # (ninja rebuilds on a file's time)
    files = {folder / header.name: header.read_text() for header in cpu_kernels.KERNELS.glob("*.h")}
    source = folder / "weight_stream_driver.cpp"
    files[source] = (cpu_kernels.KERNELS / "int8_dot.cpp").read_text() + "\n" + (HERE / "weight_stream.cpp").read_text()
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    cpu_kernels.build("native", "llmkit_stream", [source])
    return torch.ops.llmkit_stream


def quantized(layer) -> tuple:
    """(panels, row scales or an empty tensor for int4) of a quantized layer as the kernels hold it."""
    import torch

    if hasattr(layer, "packed"):  # Int4Linear
        return layer.packed, torch.empty(0)
    return layer.qweight, layer.scales.float().contiguous()  # Int8Linear


def weights_arguments(model):
    """(weights, in_features, scales, bytes) of the model's linear layers in a step's order."""
    blocks = [(b.attn.qkv, b.attn.out, b.mlp.gate_up, b.mlp.down) for b in model.blocks]
    layers = [layer for block in blocks for layer in block] + [model.lm_head]  # a quantized head: its own layer
    weights, scales = zip(*(quantized(layer) for layer in layers))
    total = sum(w.numel() * w.element_size() for w in weights) + sum(s.numel() * 4 for s in scales)
    return list(weights), [layer.in_features for layer in layers], list(scales), total


class PrototypeToken:
    """Greedy decoding with the `decode_token` prototype: its own float16 cache in 2 MB pages."""

    def __init__(self, model, op, capacity: int):
        import torch

        from llmkit.infer import huge_pages

        self.model, self.op, config = model, op, model.config
        self.tensors = []
        for b in model.blocks:
            self.tensors += [b.attn_norm.weight, *quantized(b.attn.qkv), *quantized(b.attn.out), b.mlp_norm.weight,
                             *quantized(b.mlp.gate_up), *quantized(b.mlp.down)]
        self.tensors += [model.norm.weight, *quantized(model.lm_head)]
        shape = (config.n_layers, config.n_kv_heads, capacity, config.head_dim)
        self.keys, self.values = huge_pages.zeros(shape, torch.float16), huge_pages.zeros(shape, torch.float16)
        self.cos, self.sin = model.rope_cos.float().contiguous(), model.rope_sin.float().contiguous()

    def logits(self, token: int, position: int):
        config = self.model.config
        return self.op(self.model.tok_emb.weight[token], self.tensors, self.keys, self.values, self.cos, self.sin,
                       position, config.n_heads, config.n_kv_heads, config.norm_eps)

    def prefill(self, prompt: list[int]):
        for position, token in enumerate(prompt):
            logits = self.logits(token, position)
        return logits

    def decode(self, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
        """(greedy tokens, tokens/s between the first and the last, as generate.timed_stream)."""
        logits, tokens, stamps = self.prefill(prompt), [], []
        for position in range(len(prompt), len(prompt) + new_tokens):
            tokens.append(int(logits.argmax()))
            stamps.append(time.perf_counter())
            logits = self.logits(tokens[-1], position)
        return tokens, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def kl_divergence(p_logits, q_logits) -> float:
    """KL(p || q) in nats of the two logit rows' softmaxes."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(q_logits.float(), -1), F.log_softmax(p_logits.float(), -1), log_target=True,
                    reduction="sum").item()


def numerics(kind: str, model, prototype, prompt, engine, params) -> dict:
    """How far the prototype's logits after the prompt are from the model's forward, beside how far the
    quantized model's are from fp32's; and how many greedy tokens the prototype and the engine share."""
    import torch
    from generate import load_ours

    def last_logits(m):
        out = m(torch.tensor([prompt]), last_token_only=True)
        return (out[0] if isinstance(out, tuple) else out).reshape(-1)

    with torch.inference_mode():
        ours, theirs = prototype.prefill(prompt), last_logits(model)
        reference = last_logits(load_ours("fp32")[0])
    tokens, _ = prototype.decode(prompt, params.max_new_tokens)
    engine_tokens = [int(t) for t in engine.stream(prompt, params)]
    shared = next((i for i, (a, b) in enumerate(zip(tokens, engine_tokens)) if a != b), len(tokens))
    result = {"kl_model_prototype": kl_divergence(theirs, ours), "kl_fp32_model": kl_divergence(reference, theirs),
              "kl_fp32_prototype": kl_divergence(reference, ours), "greedy_tokens_shared": shared}
    print(f"\n{kind}: logits after the prompt, KL(model || prototype) {result['kl_model_prototype']:.4f} nats, "
          f"KL(fp32 || {kind} model) {result['kl_fp32_model']:.4f}, KL(fp32 || prototype) "
          f"{result['kl_fp32_prototype']:.4f}; greedy tokens shared with the engine before the first difference: "
          f"{shared} of {len(tokens)}")
    return result


def measure(kind: str, rounds: int, calls: int, ops) -> dict:
    import torch
    from generate import NEW_TOKENS, bytes_per_token, chat_prompt, load_ours, timed_stream
    from machine import bandwidth_reader

    from llmkit import cpu_kernels
    from llmkit.infer import Engine, SamplingParams

    torch.set_num_threads(THREADS)
    read = bandwidth_reader(THREADS, mib=512)
    model, tokenizer = load_ours(kind)
    if not all(getattr(layer, "int8_activations", False) for block in model.blocks
               for layer in (block.attn.qkv, block.attn.out, block.mlp.gate_up, block.mlp.down)):
        sys.exit(f"weight_stream.py: {kind}'s layers do not use llmkit's int8-activation kernels here "
                 f"(kernels: {cpu_kernels.isa()})")
    engine = Engine(model, compile=True)  # places the weights in 2 MB pages: the drivers read those
    weights, in_features, scales, weights_bytes = weights_arguments(model)
    prompt = chat_prompt(tokenizer)
    token_bytes = bytes_per_token(model, len(prompt))
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    timed_stream(engine, prompt, params)  # compiles (or loads) the step
    engine.warmed_up = True
    prototype = PrototypeToken(model, ops.decode_token, len(prompt) + NEW_TOKENS) if hasattr(ops, "decode_token") else None
    checks = numerics(kind, model, prototype, prompt, engine, params) if prototype else {}
    x = torch.randn(max(in_features))

    def weights_ms() -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            ops.weight_stream(x, weights, in_features, scales)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    columns = {"weights": (weights_ms, weights_bytes),
               "engine": (lambda: 1e3 / statistics.median(timed_stream(engine, prompt, params)[1] for _ in range(2)),
                          token_bytes)}
    if prototype:
        columns["token"] = (lambda: 1e3 / statistics.median(prototype.decode(prompt, NEW_TOKENS)[1] for _ in range(2)),
                            token_bytes)
    rows = []
    for round_ in range(rounds):
        before, ms = read(3), {}
        for name in columns if round_ % 2 == 0 else list(columns)[::-1]:
            ms[name] = columns[name][0]()
        bandwidth = max(before, read(3))
        rows.append({"bandwidth_gbs": bandwidth, **{f"{name}_ms": ms[name] for name in columns},
                     **{f"{name}_fraction": columns[name][1] / ms[name] / 1e6 / bandwidth for name in columns}})
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    names = [name for name in ("weights", "token", "engine") if name in columns]
    print(f"\n{kind}: weights {weights_bytes / 1e6:.1f} MB a token; token and engine {token_bytes / 1e6:.1f} MB "
          "(every weight once and the KV cache at the mean context)\n")
    print("| round | GB/s (higher of before/after) | " + " | ".join(f"{n} ms" for n in names) + " | "
          + " | ".join(f"{n}" for n in names) + " |")
    print("| --- | ---: |" + " ---: |" * (2 * len(names)))
    for label, row in [*((str(i), row) for i, row in enumerate(rows)), ("median", median)]:
        print(f"| {label} | {row['bandwidth_gbs']:.1f} | " + " | ".join(f"{row[n + '_ms']:.2f}" for n in names) + " | "
              + " | ".join(f"{row[n + '_fraction']:.0%}" for n in names) + " |")
    result = {f"{kind}_{key}": round(value, 4) for key, value in median.items()}
    result |= {f"{kind}_{key}": round(value, 4) for key, value in checks.items()}
    result |= {f"{kind}_weights_mb": round(weights_bytes / 1e6, 2), f"{kind}_token_mb": round(token_bytes / 1e6, 2)}
    if prototype:
        result[f"{kind}_token_speedup_over_engine"] = round(median["engine_ms"] / median["token_ms"], 3)
        result[f"{kind}_rounds_token_faster"] = sum(row["token_ms"] < row["engine_ms"] for row in rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["int8", "int4"], choices=["int8", "int4", "int4_head4"])
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds per kind (default 8)")
    parser.add_argument("--calls", type=int, default=20, help="weight-stream calls per round, median (default 20)")
    args = parser.parse_args()

    from llmkit import cpu_kernels
    from machine import cpu_report

    if not cpu_kernels.available():
        sys.exit("weight_stream.py: llmkit's CPU kernels are not built here (a C++ compiler with OpenMP is needed)")
    ops = build_drivers()
    result = {"benchmark": "weight_stream", "threads": THREADS, **cpu_report(), "kernels": cpu_kernels.isa()}
    for kind in args.kinds:
        result |= measure(kind, args.rounds, args.calls, ops)
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
