"""A key/value cache pre-allocated per layer.

Shapes are fixed at creation (batch x n_kv_heads x max_len x head_dim: it stores the key/value heads,
not the query heads, so grouped-query models cache n_heads / n_kv_heads times less), and a forward
writes its keys and values at their absolute positions. The model talks to it through two calls:

    mask = cache.prepare(positions)   # once per forward: (batch, 1, seq, keys) boolean attention mask
    k, v = cache.update(layer, k, v)  # per layer: store the new keys/values, return all valid ones
"""

from __future__ import annotations

import torch

from llmkit.config import ModelConfig
from llmkit.errors import GenerationError


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if max_len > config.max_seq_len:
            raise GenerationError(f"cache length {max_len} exceeds the model's context of {config.max_seq_len} tokens")
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.batch_size, self.max_len = batch_size, max_len
        self._positions: torch.Tensor | None = None
        self._length = 0

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: (batch or 1, seq) absolute positions of the tokens about to be run."""
        positions = positions.expand(self.batch_size, -1)
        self._length = int(positions.max()) + 1
        if self._length > self.max_len:
            raise GenerationError(f"position {self._length - 1} is past the cache's {self.max_len} slots; "
                                  "shorten the prompt or lower max_new_tokens")
        self._positions = positions
        key_positions = torch.arange(self._length, device=positions.device)
        # A query at position p sees every key at position <= p (causal), including earlier forwards'.
        return (key_positions[None, None, None, :] <= positions[:, None, :, None])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self._positions
        if bool((positions == positions[:1]).all()):  # the common case: every row at the same positions
            self.keys[layer].index_copy_(2, positions[0], k)
            self.values[layer].index_copy_(2, positions[0], v)
        else:
            rows = torch.arange(self.batch_size, device=k.device)[:, None]
            self.keys[layer][rows, :, positions] = k.transpose(1, 2)
            self.values[layer][rows, :, positions] = v.transpose(1, 2)
        return self.keys[layer][:, :, : self._length], self.values[layer][:, :, : self._length]
