"""Bits per byte: the tokenizer-independent measure of a language model's fit to text.

bpb = (sum over text tokens of -ln p(token | context)) / (UTF-8 bytes of the text) / ln 2

Summed token log-loss divided by bytes makes models with different vocabularies comparable
(Gao et al. 2020, The Pile, section 4; nanochat reports it the same way). Perplexity is per token.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit.errors import ConfigError, DataError, GenerationError


@dataclass
class BpbResult:
    nats: float  # summed negative log-likelihood of the scored tokens
    tokens: int  # scored tokens
    bytes: float  # UTF-8 bytes those tokens cover

    @property
    def loss(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def bpb(self) -> float:
        return self.nats / max(self.bytes, 1) / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def summed_loss(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device, autocast=None) -> tuple[float, int]:
    """(summed nats, counted targets) over batches of (inputs, targets); -100 targets are not counted."""
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        nats += loss.item()
        count += int((y != -100).sum())
        if not math.isfinite(nats):
            break  # NaN/inf stays NaN/inf whatever follows: the callers report it without scoring the rest
    model.train(was_training)
    return nats, count


def evaluate_shards(model, shards, seq_len: int, batch: int, device, autocast=None, max_tokens: int = 0) -> BpbResult:
    """Bits per byte on a token-shard directory (llmkit.train.data.TokenShards)."""
    nats, count = summed_loss(model, shards.sequential_batches(batch, seq_len, max_tokens), device, autocast)
    text_tokens = shards.tokens - shards.manifest["documents"]  # every token but the BOS of each document
    # On a partial pass, bytes are prorated by the share of text tokens scored.
    covered = shards.bytes * min(1.0, count / max(text_tokens, 1))
    return BpbResult(nats=nats, tokens=count, bytes=covered)


STRUCTURED_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def text_window(model, seq_len: int | None = None) -> int:
    """The window --text scores in: seq_len, checked against the model's context (default: the context,
    at most 1024)."""
    context = model.text_context  # a prompt-tuned model reads each window after its soft prompt
    seq_len = min(context, 1024) if seq_len is None else seq_len
    if not 0 < seq_len <= context:
        raise ConfigError(f"seq_len {seq_len}: the model's context is {context} tokens; "
                          f"pass --seq-len between 1 and {context}")
    return seq_len


def evaluate_texts(model, tokenizer, files: list[str | Path], device, seq_len: int | None = None,
                   batch: int = 4, autocast=None, add_bos: bool = True,
                   on_file: Callable[[Path, BpbResult], None] | None = None) -> BpbResult:
    """Bits per byte of text files under a model: each file one document (BOS + tokens when the
    tokenizer has a BOS and add_bos), scored in non-overlapping windows of the model's context (at most
    1024). on_file: called with each file and its own result, for a per-file breakdown."""
    seq_len = text_window(model, seq_len)
    bos = add_bos and tokenizer.bos_id is not None
    total = BpbResult(0.0, 0, 0)
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix.lower() in STRUCTURED_SUFFIXES or path.name.lower().endswith((".jsonl.gz", ".json.gz")):
            # scored as text, a JSON Lines file's bits per byte would be mostly its quotes and braces
            raise DataError(f"{path}: a {path.suffix} file; --text scores plain text files (.txt, .md). Write the "
                            "text field out first (e.g. `jq -r .text FILE > FILE.txt`); task examples go to --tasks")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: byte {e.start} is not valid UTF-8") from None
        ids = tokenizer.encode(text, add_bos=bos, literal=True)  # a document: `<|end|>` in it is text
        if not bos:
            # Without a BOS the first token has no context; its bytes are left out of the count too.
            text_bytes = len(text.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))
        else:
            text_bytes = len(text.encode("utf-8"))
        data = torch.tensor(ids)
        windows = [(data[None, i:i + seq_len], data[None, i + 1:i + seq_len + 1])
                   for i in range(0, len(ids) - 1, seq_len)]
        windows = [(x[:, :y.shape[1]], y) for x, y in windows]
        soft = torch.tensor([model.soft_prompt_ids], dtype=torch.long)
        if soft.numel():  # the soft prompt is read, not scored
            windows = [(torch.cat([soft, x], 1), torch.cat([torch.full_like(soft, -100), y], 1)) for x, y in windows]
        nats, count = summed_loss(model, windows, device, autocast)
        total = BpbResult(total.nats + nats, total.tokens + count, total.bytes + text_bytes)
        if on_file is not None:
            on_file(path, BpbResult(nats, count, text_bytes))
        if not math.isfinite(total.nats):  # said at once: the remaining files cannot make it finite again
            raise GenerationError("the model's loss is not finite (NaN or inf): its weights hold NaN/inf values, "
                                  "or a low-precision dtype overflowed (try --dtype float32)")
    if total.bytes == 0:
        raise DataError(f"{', '.join(map(str, files))}: no text to score (empty files)")
    return total
