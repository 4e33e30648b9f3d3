"""Span corruption (T5, Raffel et al. 2020, section 3.1.4 and table 4's "i.i.d. spans" row), the pretraining
objective of an encoder-decoder (`n_encoder_layers > 0`), through the one Trainer.

From each window of L tokens, round(0.15 L) tokens are corrupted, in round(noise / 3) spans (mean span
length 3). The span lengths are a random composition of the noise tokens into that many positive parts,
and the kept tokens likewise, the two interleaved (kept first), as in T5's `random_spans_noise_mask`, so
every window has exactly the same number of noise tokens and spans: the batch needs no padding. The
encoder reads the window with span i replaced by sentinel i (`<extra_id_i>`, special tokens added to the
tokenizer's end), then EOS; the decoder writes each sentinel followed by its span, then EOS. Which tokens
are corrupted is decided by (seed, step, micro-batch) alone, so a resumed run sees the same spans.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import AddedToken

from llmkit.errors import ConfigError
from llmkit.tokenizer import Tokenizer
from llmkit.train.trainer import learned_tokens, weighted_by

N_SENTINELS = 100  # as T5's vocabulary (more than any window here needs: a window's spans are numbered from 0)


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def with_sentinels(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the sentinels <extra_id_0> ... <extra_id_99> as special tokens (added at the end
    of its vocabulary, so no other token's id moves; those it has already are kept)."""
    missing = [sentinel(i) for i in range(N_SENTINELS) if tokenizer.backend.token_to_id(sentinel(i)) is None]
    if missing:
        tokenizer.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tokenizer


def span_lengths(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) of a window of `length` tokens: round(density L), at least 1 and at most L - 1,
    in round(noise / mean_span) spans, at least one and at most the kept tokens (each span has a kept run
    before it: density 0.5, mean 1 and L = 127 gave 64 spans for 63 kept tokens, and the draw failed)."""
    noise = min(max(round(length * density), 1), length - 1)
    return noise, max(min(round(noise / mean_span), length - noise), 1)


class SpanCorruptor:
    """Turns windows of token ids into (encoder inputs, decoder inputs, targets) for span corruption."""

    def __init__(self, tokenizer: Tokenizer, decoder_start: int, density: float = 0.15, mean_span: float = 3.0):
        self.sentinel_ids = [tokenizer.backend.token_to_id(sentinel(i)) for i in range(N_SENTINELS)]
        if None in self.sentinel_ids:
            raise ConfigError("span corruption needs a tokenizer with the sentinels <extra_id_0>... (see with_sentinels)")
        self.eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        self.decoder_start, self.density, self.mean_span = decoder_start, density, mean_span

    def noise_mask(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean (length,): True for corrupted tokens, in spans that alternate with kept runs, kept first."""
        noise, spans = span_lengths(length, self.density, self.mean_span)
        if spans > N_SENTINELS:
            raise ConfigError(f"a window of {length} tokens has {spans} noise spans, more than the "
                              f"{N_SENTINELS} sentinels; use a shorter seq_len")

        def composition(total: int) -> np.ndarray:  # `spans` positive parts summing to total, uniformly
            cuts = np.sort(rng.choice(np.arange(1, total), spans - 1, replace=False))
            return np.diff(np.concatenate(([0], cuts, [total])))

        runs = np.stack([composition(length - noise), composition(noise)], axis=1).reshape(-1)  # kept, noise, ...
        return np.repeat(np.tile([False, True], spans), runs)

    def corrupt(self, ids: list[int], mask: np.ndarray) -> tuple[list[int], list[int]]:
        """(encoder input, target) of one window and its noise mask."""
        inputs, targets, span = [], [], -1
        for i, (token, noisy) in enumerate(zip(ids, mask)):
            if noisy and (i == 0 or not mask[i - 1]):  # a span starts: its sentinel in both
                span += 1
                inputs.append(self.sentinel_ids[span])
                targets.append(self.sentinel_ids[span])
            (targets if noisy else inputs).append(token)
        return inputs + self.eos, targets + self.eos

    def corrupt_batch(self, windows: torch.Tensor, rng: np.random.Generator):
        """(encoder inputs, decoder inputs, targets), each (batch, n): the decoder reads the start token and
        then the targets shifted right by one (teacher forcing)."""
        pairs = [self.corrupt(row, self.noise_mask(len(row), rng)) for row in windows.tolist()]
        inputs = torch.tensor([p[0] for p in pairs])
        targets = torch.tensor([p[1] for p in pairs])
        decoder_inputs = torch.cat([torch.full_like(targets[:, :1], self.decoder_start), targets[:, :-1]], dim=1)
        return inputs, decoder_inputs, targets

    def batch(self, windows: torch.Tensor, seed: int, step: int, micro: int):
        """The corruption of (seed, step, micro) for a training batch of windows."""
        return self.corrupt_batch(windows, np.random.default_rng([seed, step, micro, 2020]))


@weighted_by(lambda batch: learned_tokens(batch[2]))
def span_objective(model, batch):
    """Cross-entropy of the targets (each sentinel and its span) given the corrupted window. Every window has
    as many targets (module docstring), so the units weigh micro-batches equally; said all the same."""
    inputs, decoder_inputs, targets = batch
    return model(decoder_inputs, targets, encoder_ids=inputs), {}


@torch.no_grad()
def evaluate_span(model, val, corruptor: SpanCorruptor, seq_len: int, batch: int, device, autocast,
                  max_tokens: int = 0) -> dict:
    """Validation loss and target-token accuracy (argmax == target) over the val shards, with the same
    corruption at every evaluation (a fixed generator), so evaluations compare."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(0)
    nats, correct, count = 0.0, 0, 0
    for windows, _ in val.sequential_batches(batch, seq_len, max_tokens):
        inputs, decoder_inputs, targets = (t.to(device) for t in corruptor.corrupt_batch(windows, rng))
        with autocast:
            logits = model(decoder_inputs, encoder_ids=inputs).float()
        nats += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    model.train(was_training)
    return {"val_loss": nats / max(count, 1), "val_target_accuracy": correct / max(count, 1)}
