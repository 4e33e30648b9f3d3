"""Linear layers whose fp32 weights are packed once for oneDNN's CPU GEMM, for serving engines.

`nn.Linear` on a CPU calls MKL's sgemm on the row-major weight every forward, repacking it into the
kernel's blocked layout each time. oneDNN can take the weight already blocked
(`torch.ops.mkldnn._reorder_linear_weight`, the op inductor's freezing pass uses) and multiply any
number of rows by it (`mkldnn._linear_pointwise`). Measured on the 2-core AMD EPYC (AVX2), whole
SmolLM2-135M forwards, eager, fp32 (BENCHMARKS.md):

    rows x tokens        nn.Linear   packed
    1 x 1 (decode)         62.7 ms   51.5 ms
    32 x 1 (decode)       210.5 ms  121.4 ms
    16 x 40 (prefill)    1,695 ms   1,271 ms

`pack_linears(model)` swaps every nn.Linear for a `PackedLinear` holding only the packed weight, in
place (as quantization swaps them: DESIGN.md, one model), so the model keeps one copy of its weights.
A compiled engine then needs no inductor freezing to get packed GEMMs: the packed weight is an input
of the graph like any parameter, and eager prefill and compiled decode share it. (With freezing, each
compiled graph held a packed copy of its own, beside the module's weights.)

A packed model is for inference only: the packed tensor has no gradient and no `state_dict` entry,
so it cannot be trained or saved; `unpack_linears` turns the layers back into nn.Linear.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llmkit.errors import LLMKitError

PACK_BATCH_HINT = 16  # the batch size oneDNN picks its blocking for; any number of rows works


class PackedWeightError(LLMKitError):
    """A packed layer's weight was asked for as a tensor (to train or save the model)."""


def can_pack(model: nn.Module) -> bool:
    """Packing applies to fp32 models on a CPU with PyTorch's oneDNN."""
    weight = model.tok_emb.weight
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


@torch.library.custom_op("llmkit::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """x (rows, in) @ W.T + bias with W given as oneDNN's packed tensor. A custom op so that compiled
    graphs call it as it is: inductor's own lowering of `_linear_pointwise` wants the packed weight to be
    a constant of the graph (freezing), which would copy it into every graph."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _(x, packed, bias, out_features):
    return x.new_empty(x.shape[0], out_features)


class PackedLinear(nn.Module):
    """y = x @ W.T + bias, W held packed for oneDNN (fp32, CPU)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            # a plain attribute, not a buffer: an opaque oneDNN tensor has no storage to save or move
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous(),
                                                                  PACK_BATCH_HINT)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self):
        raise PackedWeightError("this Linear's weight is packed for inference (a compiled engine packed the model's "
                                "Linears: llmkit.infer.packed); call llmkit.infer.packed.unpack_linears(model) "
                                "before training or saving it")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        y = packed_linear(x.reshape(-1, self.in_features), self.packed, self.bias, self.out_features)
        return y.reshape(*leading, self.out_features)

    def to_linear(self) -> nn.Linear:
        """The layer as an nn.Linear again (the packed weight read back in the usual layout)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            identity = torch.eye(self.in_features)
            linear.weight.copy_(torch.ops.mkldnn._linear_pointwise(identity, self.packed, None, "none", [], "").T)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def pack_linears(model: nn.Module) -> int:
    """Swap every nn.Linear of `model` for a PackedLinear, in place; returns how many. A tied output head
    gets its own packed copy (the embedding table stays, for lookups). Returns 0 and changes nothing when
    `can_pack(model)` is false."""
    if not can_pack(model):
        return 0
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            model.set_submodule(name, PackedLinear(module))
            swapped += 1
    return swapped


def unpack_linears(model: nn.Module) -> int:
    """Undo pack_linears (the head is untied from the embedding: it holds its own copy)."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, PackedLinear):
            model.set_submodule(name, module.to_linear())
            swapped += 1
    return swapped


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())

