"""What a benchmark ran on, so that figures from different machines can be read side by side: the CPU
model, the instruction-set extensions that decide which kernels are fast (AVX2, AVX-512 and its VNNI
and BF16 parts, AMX), PyTorch's own view of them, and the memory bandwidth measured here.

Decode at batch 1 reads every weight once per token, so its speed is bounded by memory bandwidth; a
configuration's *achieved* bandwidth (bytes read per token x tokens/s) as a fraction of the measured
bandwidth says how close to that bound it runs (gpt-fast prints the same figure).

The bandwidth is a read test: the sum of a tensor many times larger than the last-level cache, on the
benchmark's threads, best of several passes (a decode step reads weights; it writes almost nothing).

    python benchmarks/machine.py          # prints one JSON line
"""

from __future__ import annotations

import json
import platform
import time

# /proc/cpuinfo flag -> the name people know it by
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16",
             "avx_vnni": "AVX-VNNI", "amx_tile": "AMX", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def cpu_report() -> dict:
    """{"cpu": model name, "isa": [names present], "torch_cpu_capability": what PyTorch dispatches to}."""
    import torch

    from llmkit.device import cpu_info

    model, flags = cpu_info()
    model = model or platform.processor() or platform.machine()
    return {"cpu": model, "isa": [name for flag, name in ISA_FLAGS.items() if flag in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def read_bandwidth_gbs(threads: int, mib: int = 1024, passes: int = 5) -> float:
    """GB/s (1e9 bytes) of reading a `mib`-MiB fp32 tensor with `threads` threads, best of `passes`. The
    tensor is in 2 MB pages where the kernel has them, as the engine's weights and KV cache are
    (llmkit/infer/huge_pages.py): in 4 KB pages the same read ran at ~62% of that on the AVX-512 EPYC
    (prefetchers stop at every page; BENCHMARKS.md, 2026-12-06), and the fraction of it a decode achieves
    would flatter the engine."""
    return bandwidth_reader(threads, mib)(passes)


def bandwidth_reader(threads: int, mib: int = 1024):
    """read(passes) -> GB/s, read_bandwidth_gbs's measurement on one tensor allocated once (for reading
    the bandwidth again and again between timed runs)."""
    import torch

    from llmkit.infer import huge_pages

    torch.set_num_threads(threads)
    x = huge_pages.zeros((mib * 2**20 // 4,), torch.float32).fill_(1.0)
    x.sum()  # touch every page before timing

    def read(passes: int = 5) -> float:
        best = float("inf")
        for _ in range(passes):
            start = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - start)
        return x.numel() * 4 / best / 1e9

    return read


def machine_report(threads: int) -> dict:
    return {**cpu_report(), "threads": threads, "read_bandwidth_gbs": round(read_bandwidth_gbs(threads), 2)}


def weight_bytes_per_token(model, embedding=None, head=None) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer once (shared storage once),
    except a token-embedding table the output head does not share (a lookup reads one row). embedding,
    head: the model's token-embedding weight and output-head module (default: llmkit's names)."""
    embedding = model.tok_emb.weight if embedding is None else embedding
    head = getattr(model, "lm_head", None) if head is None else head
    head_tensors = {t.data_ptr() for t in list(head.parameters()) + list(head.buffers())} if head is not None else set()
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if t is embedding and embedding.data_ptr() not in head_tensors:
            continue
        total += t.numel() * t.element_size()
    return total


def kv_bytes_per_token(config, mean_context: float, bytes_per_value: int) -> float:
    """Bytes of cached keys and values one decode step reads at a mean context length."""
    kv_heads, head_dim = config.n_kv_heads or config.n_heads, config.head_dim or config.d_model // config.n_heads
    return 2 * config.n_layers * kv_heads * head_dim * mean_context * bytes_per_value


if __name__ == "__main__":
    print(json.dumps(machine_report(2)))
