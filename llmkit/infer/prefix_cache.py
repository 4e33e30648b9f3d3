"""Prefix caching: keys and values of prompt prefixes that requests share, computed once.

A long system prompt, or the history of a multi-turn chat, starts many prompts with the same tokens;
their keys and values depend only on those tokens (causal attention), so they can be reused. The
prompt is cut into blocks of `block_size` tokens and each full block is keyed by the hash of its
tokens *and of every block before it* (a chain, as vLLM's automatic prefix caching keys its blocks:
Kwon et al. 2023, PagedAttention), so a block matches only after an identical prefix.

Blocks live in a pool pre-allocated from a memory budget. On admission the engine copies the longest
cached run of blocks into the request's KV-cache row and prefills only the rest of the prompt; after
prefill (and when a request finishes, so the next chat turn finds its reply too) it stores the row's
new full blocks. When the pool is full the least recently used blocks are evicted; a lookup touches a
chain from its last block to its first, so leaves go before the roots that other chains share.
Copying a block costs far less than recomputing it (one memory copy against a forward through
every layer), which is where the time-to-first-token gain comes from.

Blocks are one token by default, not vLLM's 16: vLLM's blocks are also its paged KV cache's pages,
while here they are only units of copying (the rows are contiguous), so nothing is gained by a coarse
match. With 16-token blocks a prompt left on average 8 tokens uncached past its last full block: a
server whose 16 clients resend the same ~40-token chat prompts prefilled ~130 tokens a wave (0.33 s)
where token blocks leave 1 each (16 tokens, 0.07 s), and its p99 time to first token fell from ~500 to
~200 ms (in-process, SmolLM2 fp32, 2-core AVX2 EPYC; BENCHMARKS.md). The bookkeeping is a dict entry
per token (~250 bytes beside 46 KB of SmolLM2's keys and values), and loads and stores copy all their
blocks in one gather and one scatter per layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from llmkit.config import ModelConfig
from llmkit.infer.kv_cache import KVCache, kv_bytes_per_token


class PrefixCache:
    def __init__(self, config: ModelConfig, memory_mib: float, block_size: int = 1,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.block_size = block_size
        self.n_blocks = int(memory_mib * 2**20 // (block_size * kv_bytes_per_token(config, dtype)))
        shape = (self.n_blocks, config.n_kv_heads, block_size, config.head_dim)
        # Uninitialised: a block is always written before it is read, and untouched pages of a large
        # pool cost no physical memory until the cache fills up.
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        # an int8 cache's float32 scales, one per position and kv head (KVCache.parts)
        scales = dtype == torch.int8
        scale_shape = shape[:-1] + (1,)
        self.key_scales = [torch.empty(scale_shape, device=device) for _ in range(config.n_layers)] if scales else []
        self.value_scales = [torch.empty(scale_shape, device=device) for _ in range(config.n_layers)] if scales else []
        # chain hash -> (pool index, parent hash, block tokens); in least- to most-recently-used order
        self.table: OrderedDict[int, tuple[int, int, tuple[int, ...]]] = OrderedDict()
        self.free = list(range(self.n_blocks))[::-1]
        self.hits = self.misses = self.evictions = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for part in self.parts() for t in part)

    def parts(self) -> list[list[torch.Tensor]]:
        """The pools, part for part as KVCache.parts: keys, values (and an int8 cache's scales)."""
        return [self.keys, self.values] + ([self.key_scales, self.value_scales] if self.key_scales else [])

    def chain(self, tokens: list[int], n_blocks: int) -> list[tuple[int, int, tuple[int, ...]]]:
        """(hash, parent hash, tokens) of the first n_blocks full blocks of `tokens`."""
        out, parent = [], 0
        for b in range(n_blocks):
            block = tuple(tokens[b * self.block_size:(b + 1) * self.block_size])
            h = hash((parent, block))
            out.append((h, parent, block))
            parent = h
        return out

    def match(self, tokens: list[int]) -> list[int]:
        """Pool indices of the longest cached run of leading blocks. At least one prompt token is left
        out, because the forward that follows must produce the logits of the last prompt position."""
        found = []
        for h, parent, block in self.chain(tokens, (len(tokens) - 1) // self.block_size):
            entry = self.table.get(h)
            if entry is None or entry[1] != parent or entry[2] != block:  # verify: a hash can collide
                break
            found.append((h, entry[0]))
        for h, _ in reversed(found):  # most recently used: the root, so leaves are evicted first
            self.table.move_to_end(h)
        if self.n_blocks:
            self.hits += len(found)
            self.misses += (len(tokens) - 1) // self.block_size - len(found)
        return [index for _, index in found]

    def load(self, cache: KVCache, row: int, blocks: list[int]) -> int:
        """Copy the pool blocks into positions [0, len(blocks) * block_size) of a cache row."""
        n = len(blocks) * self.block_size
        if not blocks:
            return 0
        index = torch.tensor(blocks, device=self.keys[0].device)
        for pool, rows in zip(self.parts(), cache.parts(), strict=True):
            for layer in range(len(pool)):
                picked = pool[layer].index_select(0, index)  # (blocks, heads, block_size, head_dim)
                rows[layer][row, :, :n] = picked.transpose(0, 1).reshape(picked.shape[1], n, -1)
        return n

    def store(self, cache: KVCache, row: int, tokens: list[int], length: int) -> None:
        """Store the full blocks among the first `length` positions of a cache row (holding `tokens`)."""
        if not self.n_blocks:
            return
        new = []
        chain = self.chain(tokens, min(length // self.block_size, self.n_blocks))
        for b, (h, parent, block) in enumerate(chain):
            if h in self.table:
                self.table.move_to_end(h)
                continue
            if not self.free:
                _, (victim, _, _) = self.table.popitem(last=False)
                self.evictions += 1
                self.free.append(victim)
            index = self.free.pop()
            self.table[h] = (index, parent, block)
            new.append((b, index))
        for h, _, _ in reversed(chain):  # as in match: the root most recently used
            if h in self.table:
                self.table.move_to_end(h)
        if not new:
            return
        # one gather and one scatter per layer, whatever the number of new blocks
        bs = self.block_size
        index = torch.tensor([i for _, i in new], device=self.keys[0].device)
        positions = torch.tensor([b * bs + k for b, _ in new for k in range(bs)], device=self.keys[0].device)
        for pool, rows in zip(self.parts(), cache.parts(), strict=True):
            for layer in range(len(pool)):
                picked = rows[layer][row].index_select(1, positions)  # (heads, blocks * bs, head_dim)
                pool[layer].index_copy_(0, index, picked.unflatten(1, (len(new), bs)).transpose(0, 1))

    def clear(self) -> None:
        self.table.clear()
        self.free = list(range(self.n_blocks))[::-1]
