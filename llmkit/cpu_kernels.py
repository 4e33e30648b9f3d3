"""Int8-activation linear kernels for x86 CPUs (llmkit/kernels/int8_dot.cpp) and the attention their
models use (kernels/attention.cpp: the same bits for a query however a prompt is split), built at first use;
and, once built, the greedy choice over the vocabulary of any CPU model (kernels/greedy.cpp).

PyTorch's weight-only int4/int8 CPU kernels dequantize to bf16 or fp32 and multiply in floating point;
on CPUs without bf16 units that is slower than reading the weights. llama.cpp's CPU backend quantizes
each activation row to int8 in blocks of 32 and multiplies bytes with VNNI (`vpdpbusd`) or AVX2
(`vpmaddubsw`). No maintained Python package ships such kernels for PyTorch on x86 that a pip install
reaches: torchao's `Int8DynamicActivationInt4WeightConfig` x86 kernels are in its CPU wheels on
download.pytorch.org, while its PyPI wheel (0.18) holds only CUDA extensions. So llmkit carries the
C++ (int8_dot.cpp and int8_linear.h, ~550 lines, and its tiles, int8_tiles.h, ~380; attention.cpp and
attention_query.h, ~550, and its scores' arithmetic, attention_scores.h, ~290; greedy.cpp, ~100; llama_layer.cpp,
~380, a Llama-type layer on them and a batch-1 token in one parallel region; vector_exp.h, the exp they use;
aoti_shims.h, their C functions for AOTInductor programs)
and builds it here with `torch.utils.cpp_extension` and `-march=native`: the instruction set is chosen
per CPU when the model is loaded (avx512-vnni, avx-vnni, avx2, or plain C++).

The build takes ~30-60 s once per machine (cached under torch's extensions directory, keyed by the
source and the CPU's flags). Without a C++ compiler, or with LLMKIT_CPU_KERNELS=0, `available()` is
False and the quantized layers use PyTorch's weight-only kernels, as before; the reason is printed once.

The cost in quality: activations rounded to 8 bits per block of 32 (BENCHMARKS.md, quantization table).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import torch

KERNELS = Path(__file__).with_name("kernels")
# int8_dot.cpp: the linear layers; attention.cpp: the attention their models use with a KV cache;
# greedy.cpp: argmax and the NaN check over logits in one go (llmkit.infer.sampling); llama_layer.cpp: a
# Llama-type decoder layer on those kernels, and a whole batch-1 decode token in one parallel region
# (llmkit.kernel_layers, llmkit.infer.token_step)
SOURCES = [KERNELS / "int8_dot.cpp", KERNELS / "attention.cpp", KERNELS / "greedy.cpp", KERNELS / "llama_layer.cpp"]
BLOCK = 32  # activation values per int8 block (and the int4 weights' block)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=None)
def isa() -> str | None:
    """Build and load the kernels once per process; their instruction set ("avx512-vnni", "avx-vnni",
    "avx2", "scalar"), or None where they cannot be used here (the reason printed once)."""
    if os.environ.get("LLMKIT_CPU_KERNELS") == "0":
        return None
    if not sys.platform.startswith("linux"):
        return None  # built and tested on Linux only
    try:
        build("native", "llmkit_cpu")
    except Exception as error:  # no compiler, no ninja, a compile error: fall back, say why
        print(f"llmkit: the int8-activation CPU kernels could not be built ({type(error).__name__}: "
              f"{str(error).splitlines()[0] if str(error) else ''}); quantized layers use PyTorch's "
              "weight-only kernels. Install a C++ compiler and `ninja` to get them.", file=sys.stderr)
        return None
    _register_fakes()
    return torch.ops.llmkit_cpu.isa()


def build(march: str, namespace: str, sources: list[Path] = SOURCES) -> None:
    """Compile the kernels for `-march=<march>` and load them, their operators under torch.ops.<namespace>
    (tests build "haswell" and "x86-64" too, to check the AVX2 and plain C++ paths on any machine;
    benchmarks/cpu_kernels.py builds another source, an earlier commit's, to compare with)."""
    # -fopenmp: at::parallel_for is a header template that runs serially unless the extension itself is
    # compiled with OpenMP (PyTorch's own build uses it; cpp_extension does not add it). Without it every
    # kernel here ran on one thread whatever torch.get_num_threads() said (BENCHMARKS.md, 2026-12-04).
    flags = ["-O3", f"-march={march}", "-fopenmp", f"-DLLMKIT_OPS={namespace}"]
    if namespace == "llmkit_cpu":  # the C functions AOTInductor programs call (kernels/aoti_shims.h): one library's
        flags.append("-DLLMKIT_AOTI_SHIMS")
    # the sources and the headers beside them (int8_tiles.h): a change to either is a new build
    headers = sorted({header for source in sources for header in source.parent.glob("*.h")})
    text = b"".join(path.read_bytes() for path in [*sources, *headers])
    key = hashlib.sha256(text + " ".join(flags).encode() + _cpu_flags().encode()
                         + torch.__version__.encode()).hexdigest()[:12]
    name = f"{namespace}_{key}"
    from torch.utils import cpp_extension
    if not (Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so").exists():
        print(f"llmkit: building the int8-activation CPU kernels for -march={march} (once per machine, ~30-60 s)",
              file=sys.stderr)
    cpp_extension.load(name=name, sources=[str(source) for source in sources], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    _libraries[namespace] = Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so"


_libraries: dict[str, Path] = {}  # namespace -> the shared library loaded for it


def available() -> bool:
    return isa() is not None


def loaded() -> bool:
    """Whether the kernels are built and loaded in this process already (a quantized model asked for them),
    without building them: code that merely benefits from them (the greedy choice) does not start a
    30-60 s build."""
    return isa.cache_info().currsize > 0 and isa() is not None


@functools.lru_cache(maxsize=None)
def wanted(device_type: str) -> bool:
    """Whether quantized layers on this device use these kernels: on any CPU where they build.
    AMX CPUs included: on a 2-core Xeon with AMX they decoded SmolLM2-135M 3.1-3.3x faster than
    PyTorch's bf16-activation kernels (int4 439 against 132 tok/s; BENCHMARKS.md, 2026-12-07).
    LLMKIT_CPU_KERNELS=0 turns them off (=1, the old way to force them on an AMX CPU, still reads)."""
    choice = os.environ.get("LLMKIT_CPU_KERNELS", "auto")
    if device_type != "cpu" or choice == "0":
        return False
    return available()


def _register_fakes() -> None:
    """Shapes for torch.compile's tracing (the kernels themselves run in the compiled graph)."""
    @torch.library.register_fake("llmkit_cpu::int4_linear")
    def _(x, weight, in_features):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.register_fake("llmkit_cpu::int8_linear")
    def _(x, weight, scales):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.register_fake("llmkit_cpu::int4_linear_swiglu")
    def _(x, weight, in_features):
        return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)

    @torch.library.register_fake("llmkit_cpu::int8_linear_swiglu")
    def _(x, weight, scales):
        return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)

    @torch.library.register_fake("llmkit_cpu::attention")
    def _(q, k, v, mask, scale, k_scale=None, v_scale=None):
        return q.new_empty(q.shape)

    @torch.library.register_fake("llmkit_cpu::llama_pre_attention")
    def _(x, norm, eps, qkv, qkv_scales, cos, sin, heads, kv_heads):
        return x.new_empty(*x.shape[:-1], qkv.shape[0])

    @torch.library.register_fake("llmkit_cpu::llama_post_attention")
    def _(x, y, out, out_scales, norm, eps, gate_up, gate_up_scales, down, down_scales):
        return x.new_empty(x.shape)

    @torch.library.register_fake("llmkit_cpu::llama_final")
    def _(x, norm, eps, head, head_scales):
        return x.new_empty(*x.shape[:-1], head.shape[0])


# The operators' C functions for AOTInductor programs (kernels/aoti_shims.h): the arguments of
# aoti_torch_cpu_<operator>, as the kernels define them, the result's handle last.
C_SHIMS = {
    "int4_linear": "AtenTensorHandle x, AtenTensorHandle weight, int64_t in_features",
    "int8_linear": "AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle scales",
    "int4_linear_swiglu": "AtenTensorHandle x, AtenTensorHandle weight, int64_t in_features",
    "int8_linear_swiglu": "AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle scales",
    "attention": "AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v, AtenTensorHandle mask, double scale, "
                 "AtenTensorHandle* k_scale, AtenTensorHandle* v_scale",
    "llama_pre_attention": "AtenTensorHandle x, AtenTensorHandle norm, double eps, AtenTensorHandle qkv, "
                           "AtenTensorHandle* qkv_scales, AtenTensorHandle cos, AtenTensorHandle sin, int64_t heads, "
                           "int64_t kv_heads",
    "llama_post_attention": "AtenTensorHandle x, AtenTensorHandle y, AtenTensorHandle out_w, AtenTensorHandle* out_scales, "
                            "AtenTensorHandle norm, double eps, AtenTensorHandle gate_up, "
                            "AtenTensorHandle* gate_up_scales, AtenTensorHandle down, AtenTensorHandle* down_scales",
    "llama_final": "AtenTensorHandle x, AtenTensorHandle norm, double eps, AtenTensorHandle head, "
                   "AtenTensorHandle* head_scales",
}


def c_shims() -> dict:
    """AOTInductor's `aot_inductor.custom_ops_to_c_shims` for the loaded kernels: {operator: [its C
    declaration]}, so that a program calls them directly rather than through its proxy executor and the
    dispatcher (llmkit.infer.ahead; BENCHMARKS.md, 2026-12-06). Makes the library's symbols global first
    (it was loaded with RTLD_LOCAL, and a program's library finds its functions by name when loaded). An
    operator whose function name PyTorch's own library already has is left to the proxy executor (a
    later torch adding, say, aoti_torch_cpu_attention would otherwise call ours in its own programs).
    Empty where the kernels are not loaded (not cached: asked again once they are)."""
    import ctypes

    library = _libraries.get("llmkit_cpu")
    if library is None or not loaded():
        return {}
    ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)  # already loaded: only its scope changes
    torch_cpu = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"), mode=os.RTLD_NOLOAD)
    return {getattr(torch.ops.llmkit_cpu, name).default:
            [f"AOTITorchError aoti_torch_cpu_{name}({arguments}, AtenTensorHandle* out)"]
            for name, arguments in C_SHIMS.items() if not hasattr(torch_cpu, f"aoti_torch_cpu_{name}")}


def int4_linear(x: torch.Tensor, packed: torch.Tensor, in_features: int) -> torch.Tensor:
    return torch.ops.llmkit_cpu.int4_linear(x, packed, in_features)


def int8_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return torch.ops.llmkit_cpu.int8_linear(x, packed, scales)


def int4_linear_swiglu(x: torch.Tensor, packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """silu(gate) * up of a gate/up layer (gate outputs first, then up): int4_linear's (..., n) outputs never
    written, only the (..., n / 2) product (int8_dot.cpp's swiglu_of_panels)."""
    return torch.ops.llmkit_cpu.int4_linear_swiglu(x, packed, in_features)


def int8_linear_swiglu(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int4_linear_swiglu for int8 weights."""
    return torch.ops.llmkit_cpu.int8_linear_swiglu(x, packed, scales)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
              k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention whose result for a query is the same bits whatever is computed beside it
    (kernels/attention.cpp says why): q (batch, heads, queries, d), k and v (batch, kv_heads, keys, d),
    mask bool (true: seen) broadcastable to (batch, heads, queries, keys). int8 k and v (an int8 KV cache)
    come with k_scale and v_scale, (batch, kv_heads, keys, 1) float32: row j of k is k[..., j, :] * k_scale[..., j, :]."""
    return torch.ops.llmkit_cpu.attention(q, k, v, mask, scale, k_scale, v_scale)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """(rows,) int64: each row's first index of its largest logit (torch.argmax's choice), -1 where the row
    holds a NaN or +inf; logits (rows, vocab) on the CPU. One vectorised pass and a short second one:
    6 us for a 49,152-token row, against 51 us for torch's argmax and 8 us for its NaN check."""
    return torch.ops.llmkit_cpu.greedy_tokens(logits)


# ---- the weight layouts (kernels/int8_tiles.h): panels of `panel` output rows -- the build's own, panel_rows():
# 16 where the CPU has AVX-512, else 8 -- the last one of 8 rows where the outputs are 8 more than a multiple of
# 16 (the outputs must be a multiple of OUTPUT_MULTIPLE = 8). Per block of 32 inputs a panel of P rows holds
# groups of 4P bytes, lane i (4 bytes) = 4 consecutive inputs of row i:
# - int4: 4 groups (low nibbles inputs 4t.., high ones 16 + 4t.. of group t), then P fp16 scales and P fp16 mins;
# - int8: 8 groups (group t: inputs 4t..4t+3), each value stored + 128 as uint8; shape (n, k) like the weight.
# The layout lives in memory only (checkpoints keep a portable one), so it may differ between machines.

OUTPUT_MULTIPLE = 8  # a layer fits the kernels with a multiple of 8 outputs


def panel_rows() -> int:
    """The rows of a full panel in this machine's build (8 where the kernels are not available)."""
    return torch.ops.llmkit_cpu.panel_rows() if available() else OUTPUT_MULTIPLE


def _panels(n: int, panel: int | None) -> list[tuple[int, int, int]]:
    """(first row, rows, rows a panel) of each run of equal panels: the full ones, then an 8-row one."""
    panel = panel or panel_rows()
    if n % OUTPUT_MULTIPLE or panel % OUTPUT_MULTIPLE:
        raise ValueError(f"the kernels' panels need a multiple of {OUTPUT_MULTIPLE} outputs, got {n} ({panel} a panel)")
    full = n // panel * panel
    return [(start, rows, min(rows, panel)) for start, rows in ((0, full), (full, n - full)) if rows]


def _pack_int4_rows(q, scales, mins, rows: int) -> torch.Tensor:
    n, k = q.shape
    blocks, panels = k // BLOCK, n // rows
    per_block = blocks // scales.shape[1]
    # (panel, row i, block, half, t, j) -> byte (panel, block, t, i, j) = low half | high half << 4
    q = q.to(torch.uint8).reshape(panels, rows, blocks, 2, 4, 4)
    nibbles = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).permute(0, 2, 3, 1, 4).reshape(panels, blocks, 16 * rows)
    halves = [t.repeat_interleave(per_block, dim=1).to(torch.float16).reshape(panels, rows, blocks)
              .transpose(1, 2).contiguous().view(torch.uint8) for t in (scales, mins)]
    return torch.cat([nibbles, *halves], dim=2).reshape(n, blocks * 20)


def pack_int4(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, panel: int | None = None) -> torch.Tensor:
    """q (n, k) in [0, 15]; scales, mins (n, k / group) with a group a multiple of 32 -> (n, k / 32 * 20)
    uint8, the kernel's panels (`panel` rows each; default this machine's). The weight is w = q * scale + min
    with scale and min rounded to fp16."""
    return torch.cat([_pack_int4_rows(q[s:s + n], scales[s:s + n], mins[s:s + n], rows)
                      for s, n, rows in _panels(q.shape[0], panel)]).contiguous()


def unpack_int4(packed: torch.Tensor, k: int, panel: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q (n, k) uint8, scales (n, k / 32) float32, mins (n, k / 32) float32) of a packed weight."""
    parts = []
    for start, n, rows in _panels(packed.shape[0], panel):
        blocks = k // BLOCK
        panels = packed[start:start + n].reshape(n // rows, blocks, 20 * rows)
        nibbles = panels[..., :16 * rows].reshape(n // rows, blocks, 4, rows, 4).permute(0, 3, 1, 2, 4)  # (P, i, b, t, j)
        q = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=3).reshape(n, k)
        halves = [panels[..., at:at + 2 * rows].contiguous().view(torch.float16).float().transpose(1, 2).reshape(n, blocks)
                  for at in (16 * rows, 18 * rows)]
        parts.append((q, *halves))
    return tuple(torch.cat(part) for part in zip(*parts))


def pack_int8(q: torch.Tensor, panel: int | None = None) -> torch.Tensor:
    """q (n, k) int8 in [-127, 127] -> (n, k) uint8, the kernel's panels (`panel` rows; default this machine's)."""
    k = q.shape[1]
    parts = []
    for start, n, rows in _panels(q.shape[0], panel):
        shifted = (q[start:start + n].to(torch.int16) + 128).to(torch.uint8).reshape(n // rows, rows, k // BLOCK, 8, 4)
        parts.append(shifted.permute(0, 2, 3, 1, 4).reshape(n, k))  # (panel, block, t, row i, j)
    return torch.cat(parts).contiguous()


def unpack_int8(packed: torch.Tensor, panel: int | None = None) -> torch.Tensor:
    """The (n, k) int8 values of a packed int8 weight."""
    k = packed.shape[1]
    parts = [packed[start:start + n].reshape(n // rows, k // BLOCK, 8, rows, 4).permute(0, 3, 1, 2, 4).reshape(n, k)
             for start, n, rows in _panels(packed.shape[0], panel)]
    return (torch.cat(parts).to(torch.int16) - 128).to(torch.int8)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels' activation rounding, in torch (for tests): (q int8, d, exact block sums)."""
    blocks = x.float().reshape(*x.shape[:-1], -1, BLOCK)
    amax = blocks.abs().amax(-1)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inverse[..., None]).to(torch.int8)
    return q, amax / 127, blocks.sum(-1)


__all__ = ["isa", "available", "loaded", "wanted", "int4_linear", "int8_linear", "attention", "greedy_tokens",
           "panel_rows", "pack_int4", "unpack_int4", "pack_int8", "unpack_int8", "quantize_activations"]
