"""Batches from token shards: random training windows, and the validation set in order.

Training windows are a pure function of (seed, step, micro-batch index): a resumed run sees exactly
the batches an uninterrupted one would, and N processes with 1 micro-batch each see exactly what one
process with N accumulated micro-batches sees. Nothing about the data position needs saving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from llmkit.data.prepare import read_manifest
from llmkit.errors import DataError


class TokenShards:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = []
        for shard in self.manifest["shards"]:
            path = self.directory / shard["file"]
            if not path.exists():
                raise DataError(f"{path}: missing; re-run `llmkit data prepare` for {self.directory}")
            self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.bos_id = self.manifest["bos_id"]

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def bytes(self) -> int:
        return int(self.manifest["bytes"])

    def random_batch(self, batch: int, seq_len: int, seed: int, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each batch x seq_len, from windows chosen by (seed, step, micro) alone."""
        usable = np.maximum(self.lengths - seq_len - 1, 0)
        if usable.sum() == 0:
            raise DataError(f"{self.directory}: every shard is shorter than seq_len + 1 = {seq_len + 1} tokens; "
                            "lower seq_len or add data")
        rng = np.random.default_rng([seed, step, micro])
        shard_ids = rng.choice(len(self.shards), size=batch, p=usable / usable.sum())
        rows = []
        for shard_id in shard_ids:
            start = int(rng.integers(0, usable[shard_id] + 1))
            rows.append(np.asarray(self.shards[shard_id][start:start + seq_len + 1], dtype=np.int64))
        window = torch.from_numpy(np.stack(rows))
        return window[:, :-1], window[:, 1:]

    def sequential_batches(self, batch: int, seq_len: int, max_tokens: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every token after the first of each shard is a target exactly once (the last window of a
        shard may be shorter; it comes in a batch of its own). BOS targets are masked with -100: a
        document boundary is not text, and bits per byte counts text only."""
        seen = 0
        for shard in self.shards:  # read a batch at a time from the memory map: a shard may be GBs
            n_full = (len(shard) - 1) // seq_len
            for first in range(0, n_full, batch):
                rows = min(first + batch, n_full) - first
                block = torch.from_numpy(np.asarray(shard[first * seq_len:(first + rows) * seq_len + 1], dtype=np.int64))
                yield block[:-1].view(rows, seq_len), self._mask_bos(block[1:].view(rows, seq_len))
                seen += rows * seq_len
                if max_tokens and seen >= max_tokens:
                    return
            start = n_full * seq_len
            if len(shard) - 1 > start:
                block = torch.from_numpy(np.asarray(shard[start:], dtype=np.int64))
                yield block[None, :-1], self._mask_bos(block[None, 1:])

    def _mask_bos(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.masked_fill(targets == self.bos_id, -100)
