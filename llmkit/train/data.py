"""Batches from token shards: random training windows, and the validation set in order.

Training windows are a pure function of (seed, step, micro-batch index): a resumed run sees exactly
the batches an uninterrupted one would, and N processes with 1 micro-batch each see exactly what one
process with N accumulated micro-batches sees. Nothing about the data position needs saving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from llmkit.data.prepare import read_manifest
from llmkit.errors import DataError


REPREPARE = "re-run `llmkit data prepare` for it"
SHARD_DTYPES = ("uint16", "uint32")  # what `llmkit data prepare` writes
MAX_CHUNK = 1 << 24  # tokens read at a time when scanning a shard for its largest id


class TokenShards:
    """The token shards of a `llmkit data prepare` output, checked against their manifest when opened: the
    manifest is well formed and names files inside the directory only; each file holds exactly the tokens
    the manifest counts; the tokenizer.json beside them is the one the manifest's hash names; and no
    token id reaches the vocabulary's size (a shard of another tokenizer, or a corrupt one, would make
    the embedding lookup fail mid-run, or on a GPU read out of bounds)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        manifest_path = self.directory / "manifest.json"
        self._check_manifest(manifest_path)
        dtype = np.dtype(self.manifest["dtype"])
        vocab_size = self.manifest["vocab_size"]
        self.shards = []
        for shard in self.manifest["shards"]:
            path = self._shard_path(shard["file"], manifest_path)
            if not path.is_file():
                raise DataError(f"{path}: missing; {REPREPARE} ({self.directory})")
            size, expected = path.stat().st_size, shard["tokens"] * dtype.itemsize
            if size != expected:
                raise DataError(f"{path}: {size:,} bytes, but {manifest_path} says {shard['tokens']:,} {dtype.name} "
                                f"tokens ({expected:,} bytes): the shard is truncated or from another run; {REPREPARE}")
            tokens = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
            largest = max((int(tokens[i:i + MAX_CHUNK].max()) for i in range(0, len(tokens), MAX_CHUNK)), default=-1)
            if largest >= vocab_size:
                raise DataError(f"{path}: token id {largest:,} is outside the vocabulary of {vocab_size:,} that "
                                f"{manifest_path} names: the shard is corrupt or from another tokenizer; {REPREPARE}")
            self.shards.append(tokens)
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.bos_id = self.manifest["bos_id"]
        self._check_tokenizer_hash(manifest_path)

    def _check_manifest(self, manifest_path: Path) -> None:
        m = self.manifest

        def count(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        problem = None
        if not isinstance(m, dict):
            problem = "is not a JSON object"
        elif m.get("dtype") not in SHARD_DTYPES:
            problem = f"'dtype' must be one of {', '.join(SHARD_DTYPES)}, not {m.get('dtype')!r}"
        elif not count(m.get("vocab_size")) or m["vocab_size"] == 0:
            problem = f"'vocab_size' must be a positive integer, not {m.get('vocab_size')!r}"
        elif not count(m.get("bos_id")) or m["bos_id"] >= m["vocab_size"]:
            problem = f"'bos_id' must be a token id below vocab_size {m['vocab_size']}, not {m.get('bos_id')!r}"
        elif not count(m.get("bytes")):
            problem = f"'bytes' must be a count, not {m.get('bytes')!r}"
        elif not isinstance(m.get("shards"), list) or not m["shards"]:
            problem = "'shards' must be a non-empty list"
        else:
            for i, shard in enumerate(m["shards"]):
                if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and count(shard.get("tokens"))):
                    problem = f"shards[{i}] must be an object with a 'file' name and a 'tokens' count, not {shard!r}"
                    break
        if problem:
            raise DataError(f"{manifest_path}: {problem}; {REPREPARE}")

    def _shard_path(self, name: str, manifest_path: Path) -> Path:
        """A shard's file, which must lie inside the directory: a manifest is data and may come from anywhere."""
        relative = Path(name)
        if not name or relative.is_absolute() or ".." in relative.parts or relative.drive:
            raise DataError(f"{manifest_path}: shard file {name!r} points outside {self.directory}; a manifest names "
                            f"files inside its own directory only; {REPREPARE}")
        return self.directory / relative

    def _check_tokenizer_hash(self, manifest_path: Path) -> None:
        """The tokenizer the run loads from the directory is the one the shards were made with."""
        path = self.directory / "tokenizer.json"
        expected = self.manifest.get("tokenizer_sha256")
        if not path.is_file() or not isinstance(expected, str):
            return
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise DataError(f"{path}: not the tokenizer the shards were made with (its sha256 {actual[:12]}... "
                            f"differs from {expected[:12]}... in {manifest_path}); put the original back or {REPREPARE}")

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def bytes(self) -> int:
        return int(self.manifest["bytes"])

    def random_batch(self, batch: int, seq_len: int, seed: int, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each batch x seq_len, from windows chosen by (seed, step, micro) alone."""
        # windows of seq_len + 1 tokens that fit in each shard: starts 0 .. length - seq_len - 1 (a shard of
        # exactly seq_len + 1 tokens holds one; it was counted as none, and refused as "shorter")
        usable = np.maximum(self.lengths - seq_len, 0)
        if usable.sum() == 0:
            raise DataError(f"{self.directory}: every shard is shorter than seq_len + 1 = {seq_len + 1} tokens; "
                            "lower seq_len or add data")
        rng = np.random.default_rng([seed, step, micro])
        shard_ids = rng.choice(len(self.shards), size=batch, p=usable / usable.sum())
        rows = []
        for shard_id in shard_ids:
            start = int(rng.integers(0, usable[shard_id]))
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
