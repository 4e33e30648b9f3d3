"""Weight-only quantization of the model's Linear layers: int8 per output channel, int4 group-wise.

Batch-1 decoding on a CPU reads every weight once per token, so its speed is set by how many bytes
the weights take (SmolLM2-135M: 540 MB in fp32, 135 MB in int8, ~80 MB in int4). Weight-only
quantization stores the weights in few bits and keeps the activations in floating point; PyTorch has
CPU kernels that dequantize on the fly inside the matmul:

- int8: `aten._weight_int8pack_mm(x, q, scale)`: w[n, k] = scale[n] * q[n, k], q in [-127, 127]
  (symmetric absmax per output channel, as in LLM.int8()'s vector-wise quantization, Dettmers et
  al. 2022, without its outlier decomposition).
- int4: `aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zero)`:
  w[n, k] = (q[n, k] - 8) * scale[n, g] + zero[n, g] for the group g = k // group_size, q in [0, 15].
  We quantize asymmetrically per group (min/max, like llama.cpp's Q4_1 and gpt-fast's int4):
  w = q * scale + min, stored as zero = min + 8 * scale.

Both kernels are ~10x faster with bfloat16 activations than with float32 on this CPU (measured:
3072x576 matvec, 47 us vs 490 us for int8), so a quantized model runs with bf16 activations by default
(`llmkit.device.inference_dtype`) where they are used.

On x86 CPUs the layers use llmkit's own kernels instead (`llmkit.cpu_kernels`, chosen
when the weights are set; `int8_activations`): activations rounded to int8 per block of 32 and byte dot
products (VNNI or AVX2), as llama.cpp does; fp32 activations outside the layers. The weights are then
kept in the kernel's panels of 16 rows (int4 with scale and min rounded to fp16, Q4_1's precision).

`quantize_model` swaps the nn.Linear modules in place (DESIGN.md: quantization swaps the Linears of
the one model; there is no second forward pass). The token embedding stays in floating point (a
lookup reads one row per token; it costs no bandwidth), so a tied output head gets its own quantized
copy.

On disk a quantized checkpoint is the usual directory; config.json carries
`"quantization": {"bits": 4, "group_size": 32, "lm_head_bits": 8}` and the tensors are `qweight`
(int8, or uint8 with two 4-bit values a byte: low nibble = even column), `scales` and, for int4,
`zeros`. The kernel's packed int4 layout (PyTorch's private one, or llmkit's panels) is built at
load time and is the only copy of the weights kept in memory.

This module is the layers and the in-place swap only, and imports nothing of llmkit's but its errors
and the kernels: `llmkit.checkpoint` builds quantized Linears from it to load a quantized checkpoint. The verb
`llmkit quantize` (load, quantize, save) is `llmkit.convert.quantize_checkpoint`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.errors import LLMKitError
import llmkit.cpu_kernels as cpu_kernels


class QuantizationError(LLMKitError):
    """A model or layer cannot be quantized as asked (bad bit width, shapes the kernel cannot take)."""


class Int8Linear(nn.Module):
    """y = x @ (scale * q).T + bias, q int8 per output channel."""

    bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype = torch.float32,
                 device=None, int8_activations: bool | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # None: decided when the weights arrive, by the device they are on (cpu_kernels.wanted)
        self.int8_activations = int8_activations
        self.kernel_panel: int | None = None  # the int8-activation kernel's panel rows once chosen (fused_swiglu)
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, int8_activations: bool | None = None) -> "Int8Linear":
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                     device=w.device, int8_activations=int8_activations)
        module.qweight.copy_(q)
        module.scales.copy_(scales)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        module._choose_kernel()
        return module

    def _choose_kernel(self) -> None:
        """With int8 activations `qweight` holds the kernel's panels (uint8, cpu_kernels.pack_int8) and
        is the only copy in memory; the checkpoint keeps the plain int8 values (the two hooks below)."""
        fits = self.in_features % cpu_kernels.BLOCK == 0 and self.out_features % cpu_kernels.OUTPUT_MULTIPLE == 0
        self.int8_activations = use_int8_activations(self.int8_activations, self.qweight.device, fits)
        if self.int8_activations:
            self.kernel_panel = cpu_kernels.panel_rows()
            if self.qweight.dtype == torch.int8:
                self.qweight = cpu_kernels.pack_int8(self.qweight)

    def int8_values(self) -> torch.Tensor:
        """q (out, in) int8, whichever layout is in memory."""
        return cpu_kernels.unpack_int8(self.qweight) if self.qweight.dtype == torch.uint8 else self.qweight

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "qweight"] = self.int8_values()

    def _load_from_state_dict(self, *args, **kwargs):
        check_stored(args[0], args[1], torch.int8, ("scales",))
        if self.qweight.dtype == torch.uint8:  # loading over panels: the checkpoint's int8 values first
            self.qweight = torch.empty(self.out_features, self.in_features, dtype=torch.int8,
                                       device=self.qweight.device)
        super()._load_from_state_dict(*args, **kwargs)
        if not self.qweight.is_meta:
            self._choose_kernel()

    def dequantize(self) -> torch.Tensor:
        return self.int8_values().float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.int8_activations:
            y = cpu_kernels.int8_linear(x2, self.qweight, self.scales.float())
        elif x2.shape[0] >= DEQUANTIZE_ROWS:  # prefill: one dequantization, then a fast dense matmul
            y = F.linear(x2, (self.qweight.to(x.dtype) * self.scales.to(x.dtype)[:, None]))
        else:
            scales = self.scales if self.scales.dtype == x.dtype else self.scales.to(x.dtype)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, scales)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up for a gate/up layer (gate outputs first), fused into the kernel
        (`fused_swiglu`); None where this layer cannot (then the caller runs forward and the pointwise)."""
        if not fused_swiglu(self):
            return None
        return cpu_kernels.int8_linear_swiglu(x, self.qweight, self.scales.float())

    def extra_repr(self) -> str:
        kernel = ", int8 activations" if self.int8_activations else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel{kernel}"


class Int4Linear(nn.Module):
    """y = x @ w.T + bias with w = (q - 8) * scale + zero per group of `group_size` input columns,
    q in [0, 15] (the kernel's own formula, so the stored and the computed weights are the same).

    Two kernels, chosen when the weights arrive (`int8_activations`, default cpu_kernels.wanted):
    llmkit's int8-activation kernel with its own layout (scale and min rounded to fp16, as Q4_1), or
    PyTorch's weight-only one with its private layout."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int = 32,
                 dtype: torch.dtype = torch.float32, device=None, int8_activations: bool | None = None):
        super().__init__()
        check_int4_shape(in_features, out_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.int8_activations = int8_activations
        self.kernel_panel: int | None = None  # as Int8Linear's
        groups = in_features // group_size
        # The kernel's layout is all that is kept in memory; the checkpoint holds a portable one
        # (`portable()`, plain nibbles), converted on save and load by the two hooks below.
        self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device),
                             persistent=False)
        self.register_buffer("scale_and_zero", torch.empty(groups, out_features, 2, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32,
                    int8_activations: bool | None = None) -> "Int4Linear":
        w = linear.weight.detach().float()
        n, k = w.shape
        check_int4_shape(k, n, group_size)
        grouped = w.view(n, k // group_size, group_size)
        lo, hi = grouped.amin(dim=-1), grouped.amax(dim=-1)
        scales = ((hi - lo) / 15).clamp(min=1e-10)
        q = torch.round((grouped - lo[..., None]) / scales[..., None]).clamp(0, 15).view(n, k)
        module = cls(k, n, linear.bias is not None, group_size, linear.weight.dtype, device=w.device,
                     int8_activations=int8_activations)
        module._set_weights(q.to(torch.uint8), scales, lo + 8 * scales)  # w = q * scale + min
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def _set_weights(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        """q: (out, in) values in [0, 15]; scales, zeros: (out, groups)."""
        self.int8_activations = use_int8_activations(self.int8_activations, q.device)  # int4 shapes always fit
        if self.int8_activations:
            self.kernel_panel = cpu_kernels.panel_rows()
            self.packed = cpu_kernels.pack_int4(q, scales, zeros - 8 * scales)
            self.scale_and_zero = None
            return
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        dtype = self.scale_and_zero.dtype
        self.scale_and_zero = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(dtype)

    def unpacked(self) -> torch.Tensor:
        """The 4-bit values as (out, in) uint8, read back from the kernel's layout."""
        n, k = self.out_features, self.in_features
        if self.int8_activations:
            return cpu_kernels.unpack_int4(self.packed, k)[0]
        nibbles = torch.stack([self.packed & 0x0F, self.packed >> 4], dim=-1).flatten()
        return nibbles[int4_layout(n, k).to(self.packed.device)].view(n, k)

    def portable(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(qweight (out, in/2) uint8 with the low nibble = the even column, scales, zeros (out, groups))."""
        n, k = self.out_features, self.in_features
        if self.int8_activations:
            q, scales, mins = cpu_kernels.unpack_int4(self.packed, k)
            every = self.group_size // cpu_kernels.BLOCK
            scales, mins = scales[:, ::every].contiguous(), mins[:, ::every].contiguous()
            return q[:, 0::2] | (q[:, 1::2] << 4), scales, mins + 8 * scales
        scales = self.scale_and_zero[..., 0].t().contiguous()
        zeros = self.scale_and_zero[..., 1].t().contiguous()
        if self.packed.is_meta:
            return torch.empty(n, k // 2, dtype=torch.uint8, device="meta"), scales, zeros
        q = self.unpacked()
        return q[:, 0::2] | (q[:, 1::2] << 4), scales, zeros

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # the bias
        for name, tensor in zip(("qweight", "scales", "zeros"), self.portable()):
            destination[prefix + name] = tensor

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        check_stored(state_dict, prefix, torch.uint8, ("scales", "zeros"))
        names = [prefix + n for n in ("qweight", "scales", "zeros")]
        unexpected_keys[:] = [k for k in unexpected_keys if k not in names]
        if not all(n in state_dict for n in names):
            missing_keys.extend(n for n in names if n not in state_dict)
            return
        qweight, scales, zeros = (state_dict[n] for n in names)
        q = torch.empty(self.out_features, self.in_features, dtype=torch.uint8, device=qweight.device)
        q[:, 0::2], q[:, 1::2] = qweight & 0x0F, qweight >> 4
        if self.scale_and_zero is not None and self.scale_and_zero.is_meta:  # into a skeleton on the meta device
            self.scale_and_zero = torch.empty(self.scale_and_zero.shape, dtype=scales.dtype)
        self._set_weights(q, scales.float(), zeros.float())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, groups = self.out_features, self.in_features // self.group_size
        if self.int8_activations:
            q, scales, mins = cpu_kernels.unpack_int4(self.packed, self.in_features)
            w = q.view(n, -1, cpu_kernels.BLOCK).float() * scales[..., None] + mins[..., None]
            return w.view(n, self.in_features).to(dtype)
        q = self.unpacked().view(n, groups, self.group_size).to(dtype)
        scale, zero = self.scale_and_zero.to(dtype).transpose(0, 1).unbind(-1)  # (out, groups) each
        return ((q - 8) * scale[..., None] + zero[..., None]).view(n, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        # Either kernel at any number of rows: unpacking PyTorch's private layout to dequantize costs more
        # than the matmul it would speed up (SmolLM2 int4 forward, torch 2.13, 2-core EPYC without AVX512-BF16:
        # 64 / 256 / 512 tokens in 3.5 / 12.1 / 21.7 s with the kernel against 11.2 / 32.3 / 53.8 s
        # dequantized, on a loaded machine; batched prefill runs hundreds of rows at once).
        if self.int8_activations:
            y = cpu_kernels.int4_linear(x2, self.packed, self.in_features)
        else:
            sz = self.scale_and_zero if self.scale_and_zero.dtype == x.dtype else self.scale_and_zero.to(x.dtype)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, sz)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor | None:
        """Int8Linear.swiglu for int4 weights."""
        if not fused_swiglu(self):
            return None
        return cpu_kernels.int4_linear_swiglu(x, self.packed, self.in_features)

    def extra_repr(self) -> str:
        kernel = ", int8 activations" if self.int8_activations else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 group_size={self.group_size}{kernel}")


QUANTIZED_LINEARS = (Int8Linear, Int4Linear)


def check_stored(state_dict: dict, prefix: str, qweight_dtype: torch.dtype, floats: tuple[str, ...]) -> None:
    """A quantized layer's tensors as read from a file (data from anywhere): the packed values in their one
    integer type, scales and zeros floating-point and finite. A float qweight was a NotImplementedError
    traceback; int8 read where uint8 nibbles belong (or the reverse) and NaN scales loaded and computed garbage."""
    qweight = state_dict.get(prefix + "qweight")
    if qweight is not None and qweight.dtype != qweight_dtype:
        raise QuantizationError(f"tensor '{prefix}qweight' holds {str(qweight.dtype).removeprefix('torch.')} values; "
                                f"an int{8 if qweight_dtype == torch.int8 else 4} layer stores "
                                f"{str(qweight_dtype).removeprefix('torch.')}: the checkpoint is corrupt or its "
                                "config.json's quantization record is wrong")
    for name in floats:
        tensor = state_dict.get(prefix + name)
        if tensor is not None and (not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all())):
            raise QuantizationError(f"tensor '{prefix}{name}' must hold finite floating-point values; the "
                                    "checkpoint is corrupt")


def fused_swiglu(layer: Int8Linear | Int4Linear) -> bool:
    """Whether a gate/up layer's SwiGLU can run in its kernel's epilogue (int8_dot.cpp's swiglu_of_panels):
    the int8-activation kernels, no bias, and each half a whole number of the build's weight panels. At batch
    32 on SmolLM2-135M the unfused pointwise kernel was ~3% of a compiled decode step; fused, the step ran
    1.08-1.10x (BENCHMARKS.md)."""
    # plain attribute reads: this runs inside the compiled step's trace
    return (bool(layer.int8_activations) and layer.kernel_panel is not None and layer.bias is None
            and layer.out_features % (2 * layer.kernel_panel) == 0)


def use_int8_activations(choice: bool | None, device: torch.device, fits: bool = True) -> bool:
    """A quantized layer's kernel: `choice`, or when None cpu_kernels.wanted for its weights' device; never
    for a shape that does not fit the kernel's blocks and panels. Raises if asked for but unavailable."""
    chosen = bool(cpu_kernels.wanted(device.type) if choice is None else choice) and fits
    if chosen and not cpu_kernels.available():  # builds and loads them on first use
        raise QuantizationError("int8 activations were asked for, but llmkit's CPU kernels are not available "
                                "here (see the message above; LLMKIT_CPU_KERNELS=0 turns them off)")
    return chosen

# The int8 weight-only kernel is a matrix-vector kernel: fast for decoding (a few rows), ~10x slower
# than a bf16 matmul on a long prompt (measured: SmolLM2 bits-per-byte windows of 1,024 tokens). From
# this many rows on, an Int8Linear dequantizes its weights once and runs a dense matmul instead.
DEQUANTIZE_ROWS = 32
# The int8-activation kernel (cpu_kernels), where it is chosen, runs at any number of rows: SmolLM2's head
# (49152 x 576) on the AVX-512 EPYC, 64 / 256 / 1024 rows in 22 / 101 / 416 ms against 210 / 261 / 550 ms
# dequantized to fp32 and multiplied by MKL.


@functools.lru_cache(maxsize=None)
def int4_layout(n: int, k: int) -> torch.Tensor:
    """Where the CPU kernel's packing puts each 4-bit value of an (n, k) matrix: for the element at
    flat index row * k + column, the position of its nibble among the packed bytes' nibbles (low
    nibble first), so that `nibbles[int4_layout(n, k)]` is the matrix in row-major order.

    The layout is private to PyTorch and depends on the CPU's vector width, so it is measured rather
    than assumed: pack probe matrices whose values are 4-bit digits of each element's own index, and
    read the digits back (ceil(log16(n * k)) packings, once per shape)."""
    index = torch.arange(n * k, dtype=torch.int64)
    source = torch.zeros(n * k, dtype=torch.int64)
    shift = 0
    while (1 << shift) < n * k:
        probe = ((index >> shift) & 0x0F).view(n, k).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
        source |= torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten().to(torch.int64) << shift
        shift += 4
    position = torch.empty_like(source)
    position[source] = torch.arange(n * k)  # invert: a gather is faster than a scatter at every use
    return position


def check_int4_shape(in_features: int, out_features: int, group_size: int) -> None:
    if group_size not in (32, 64, 128, 256):
        raise QuantizationError(f"int4 group_size must be 32, 64, 128 or 256, not {group_size}")
    if in_features % group_size:
        fitting = [g for g in (32, 64, 128, 256) if in_features % g == 0]
        raise QuantizationError(f"a Linear with {in_features} inputs cannot be split into int4 groups of "
                                f"{group_size}; " + (f"use --group-size {fitting[0]}" if fitting else
                                                     "no int4 group size divides it: use --bits 8 for this model"))
    if out_features % 16:
        raise QuantizationError(f"the int4 kernel needs a multiple of 16 outputs, not {out_features}; "
                                "use --bits 8 for this model")


def quantize_model(model: nn.Module, bits: int, group_size: int = 32, lm_head_bits: int | None = None,
                   int8_activations: bool | None = None) -> dict:
    """Swap the Linear layers of `model` (a Transformer) for quantized ones, in place.

    bits: 8 or 4 for the blocks' Linears; lm_head_bits: the output head's (default: 8 when bits is 4,
    as llama.cpp's Q4 files keep the output/embedding matrix at Q8_0 — the head is the layer whose
    errors reach the logits directly). MoE routers stay in floating point: they choose experts, and
    are tiny. int8_activations: the kernel (None: cpu_kernels.wanted for the weights' device). Returns
    the `quantization` record that goes into config.json (the kernel is not part of it).
    """
    if bits not in (4, 8):
        raise QuantizationError(f"bits must be 8 or 4, not {bits}")
    lm_head_bits = lm_head_bits or (8 if bits == 4 else bits)
    if lm_head_bits not in (4, 8):
        raise QuantizationError(f"lm_head_bits must be 8 or 4, not {lm_head_bits}")
    # an int4 head has groups even where the rest is int8 (a record without them wrote a checkpoint that did not load)
    record = {"bits": bits, "group_size": group_size if 4 in (bits, lm_head_bits) else None, "lm_head_bits": lm_head_bits}
    if getattr(model, "quantization", None):
        raise QuantizationError(f"the model is already quantized ({model.quantization}); quantize the "
                                "floating-point checkpoint instead")
    linears = [(name, module, lm_head_bits if name == "lm_head" else bits) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and not name.endswith("router")]
    for name, module, n_bits in linears:
        # Every layer checked before the first swap: a refusal midway left the caller's model half quantized.
        # A NaN or infinite weight would round to finite garbage (an int8 cast of NaN is undefined), turning
        # NaN logits into plausible wrong ones.
        if not bool(torch.isfinite(module.weight).all()):
            raise QuantizationError(f"layer {name!r} has NaN or infinite weights; they cannot be quantized "
                                    "(the model is broken: retrain or reconvert it)")
        if n_bits == 4:
            try:
                check_int4_shape(module.in_features, module.out_features, group_size)
            except QuantizationError as e:  # which of the model's layers it is, or the user cannot tell
                raise QuantizationError(f"layer {name!r}: {e}") from None
    for name, module, n_bits in linears:
        with torch.no_grad():
            new = (Int8Linear.from_linear(module, int8_activations) if n_bits == 8 else
                   Int4Linear.from_linear(module, group_size, int8_activations))
        model.set_submodule(name, new)
    model.quantization = record
    return record


def quantized_skeleton(model: nn.Module, record: dict) -> None:
    """Swap in empty quantized Linears described by a config's `quantization` record (for loading)."""
    bits, group_size = record.get("bits"), record.get("group_size") or 32
    lm_head_bits = record.get("lm_head_bits") or bits
    if bits not in (4, 8) or lm_head_bits not in (4, 8):
        raise QuantizationError(f"unknown quantization {record}; expected bits 8 or 4")
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not name.endswith("router"):
            n_bits = lm_head_bits if name == "lm_head" else bits
            device, dtype = module.weight.device, module.weight.dtype
            if n_bits == 8:
                new = Int8Linear(module.in_features, module.out_features, module.bias is not None, dtype, device)
            else:
                new = Int4Linear(module.in_features, module.out_features, module.bias is not None, group_size,
                                 dtype, device)
            model.set_submodule(name, new)
    model.quantization = dict(record)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED_LINEARS) for m in model.modules())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers held in memory (a tied head counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + [b for _, b in model.named_buffers() if b is not None]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total



def dequantized_linear(module: nn.Module) -> nn.Linear:
    """A float nn.Linear with the quantized layer's effective weights (for tests and error analysis)."""
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(module.dequantize())
        if module.bias is not None:
            linear.bias.copy_(module.bias.float())
    return linear


__all__ = ["Int8Linear", "Int4Linear", "QuantizationError", "quantize_model", "quantized_skeleton",
           "is_quantized", "weight_bytes", "dequantized_linear"]
