"""Which device and which floating-point type: the one place llmkit decides them.

    resolve_device("auto" | "cpu" | "cuda:1" | None)   CUDA if there is one, else the CPU
    parse_dtype("bf16")                                 a user's dtype name -> torch.dtype
    inference_dtype(device, quantized)                  what generation runs in by default
    training_autocast_dtype("auto", device)             what training autocasts to (None: plain fp32)
    autocast_context(device, dtype)                     the context manager for that choice
    available_memory_bytes(device)                      what a new allocation can still get there

Training and inference choose differently on purpose: training autocasts to bf16 wherever the hardware
has fast bf16 (the weights stay fp32), inference keeps fp32 weights on CPU (see inference_dtype).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from llmkit.errors import ConfigError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """A torch.device from a user's name; "auto" (or None) is CUDA when PyTorch sees a GPU, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xla, meta: PyTorch's errors came later, as tracebacks
        raise ConfigError(f"device {name!r}: llmkit runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but this PyTorch sees no CUDA GPU; use device=cpu or device=auto")
    return device


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """float32 | fp32 | bfloat16 | bf16 | float16 | fp16 -> the torch dtype; None stays None (the default)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def inference_dtype(device: torch.device, quantized: bool = False) -> torch.dtype:
    """The weights' dtype for generation when the user names none."""
    # bf16 on GPUs that have it. On CPU we keep fp32: rounding the weights of a small model to bf16
    # moves logits by ~0.5 and changes its greedy answers (measured on SmolLM2-135M). A quantized model
    # on a CPU where llmkit's int8-activation kernels run keeps fp32 too (they quantize the activations
    # themselves); elsewhere it runs with bf16 activations: PyTorch's weight-only int8/int4 CPU kernels
    # are ~10x faster with bf16 than with fp32 activations (llmkit/infer/quantize.py).
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if quantized and device.type == "cpu":
        import llmkit.cpu_kernels as cpu_kernels
        return torch.float32 if cpu_kernels.wanted("cpu") else torch.bfloat16
    return torch.bfloat16 if quantized else torch.float32


def training_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """A training config's dtype (auto | bf16 | fp32) -> the autocast dtype; None means plain fp32.
    auto: bf16 where the hardware has fast bf16 (CUDA with bf16; CPUs with AVX512-BF16 or AMX, where bf16
    matmuls run ~4x faster than fp32)."""
    if name in ("fp32", "float32"):
        return None
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    if name in ("fp16", "float16"):
        raise ConfigError("fp16 training needs loss scaling, which llmkit does not do; use dtype=bf16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def cpu_info() -> tuple[str, set[str]]:
    """(model name, ISA flags) of the first CPU in /proc/cpuinfo; ("", set()) where there is none."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux
        pass
    return model, flags


def cpu_has_fast_bf16() -> bool:
    flags = cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """A context manager running its body in `dtype` autocast on `device`, or as it is for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def physical_memory_bytes() -> int:
    """The machine's RAM"""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation on `device` can get: a GPU's free memory; on the CPU the kernel's estimate
    of what can be allocated without swapping (MemAvailable: free memory plus reclaimable caches),
    else the free pages."""
    if device.type == "cuda":  # the driver's free memory, plus the blocks PyTorch's caching allocator holds with no
        # tensor in them (a forward's, freed): they are this process's next allocations, yet used to the driver
        free = torch.cuda.mem_get_info(device)[0]
        return free + max(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), 0)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
