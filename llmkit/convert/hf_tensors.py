"""A Hugging Face state dict taken apart tensor by tensor, shared by the converters (decoder, BERT, T5).

Each converter takes every tensor it maps once, by name, and then refuses a file whose tensors it did not
all use: a tensor left over is an architecture option the converter does not know (a bias, an extra norm),
and dropping it silently would give a model that loads and computes something else.
"""

from __future__ import annotations

import torch

from llmkit.errors import ConversionError


class HFTensors(dict):
    """The tensors of one file still to be mapped. `source` names the file in errors; `imports` says what the
    converter reads (shown when tensors are left over)."""

    def __init__(self, state: dict[str, torch.Tensor], source: str, imports: str = ""):
        super().__init__(state)
        self.source, self.imports = source, imports

    def take(self, name: str) -> torch.Tensor:
        if name not in self:
            raise ConversionError(f"{self.source}: tensor {name!r} is missing")
        return self.pop(name)

    def head(self, name: str, needed: bool) -> torch.Tensor | None:
        """The output head's tensor, taken either way (a tied model's file may carry a copy of the embedding);
        an error when the model needs its own head (untied) and the file has none."""
        tensor = self.pop(name, None)
        if needed and tensor is None:
            raise ConversionError(f"{self.source}: tensor {name!r} is missing and embeddings are not tied")
        return tensor

    def check_all_used(self) -> None:
        if self:
            names = ", ".join(sorted(self)[:5])
            raise ConversionError(f"{self.source}: tensors this architecture does not use: {names}"
                                  + (f" ({self.imports})" if self.imports else ""))


def check_finite(name: str, tensor: torch.Tensor, source: str) -> None:
    """Refuse a floating-point tensor holding NaN or infinity: a model built from it loads, and every
    forward through that weight gives NaN logits (or, once quantized, finite garbage) with no word of why."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ConversionError(f"{source}: tensor {name!r} holds NaN or infinite values; the file is corrupt "
                              "(download or save the model again)")
