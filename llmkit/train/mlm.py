"""Masked language modelling (BERT, Devlin et al. 2019, section 3.1 and appendix A.1), the pretraining
objective of an encoder (`causal: false`), through the one Trainer.

Each non-special token is chosen with probability 0.15; a chosen token is replaced by the mask token 80%
of the time, by a random token 10% and left unchanged 10% (so the model cannot learn that only [MASK]
positions matter); the loss is the cross-entropy of the original token at the chosen positions only
(targets -100 elsewhere: the model's ordinary loss). Which tokens are chosen is decided by (seed, step,
micro-batch) alone, so a resumed run sees the same masks.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import AddedToken

from llmkit.errors import ConfigError
from llmkit.tokenizer import Tokenizer

MASK_TOKEN = "<|mask|>"  # added to an llmkit BPE at the end of its vocabulary: no other token's id moves
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the chosen tokens; the remaining 0.1 stay as they are


def with_mask_token(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer itself when it has a mask token, else one with MASK_TOKEN added as a special token."""
    if tokenizer.mask_id is not None:
        return tokenizer
    tokenizer.backend.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
    return Tokenizer(tokenizer.backend, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                     pad_token=tokenizer.pad_token, chat_template=tokenizer.chat_template,
                     extra_stop_tokens=tokenizer.extra_stop_tokens, mask_token=MASK_TOKEN)


class Masker:
    """Turns windows of token ids into (masked inputs, targets) for MLM."""

    def __init__(self, tokenizer: Tokenizer, probability: float = 0.15):
        if tokenizer.mask_id is None:
            raise ConfigError("masked language modelling needs a tokenizer with a mask token (see with_mask_token)")
        self.mask_id, self.probability = tokenizer.mask_id, probability
        specials = {i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}
        self.special_ids = torch.tensor(sorted(specials), dtype=torch.long)
        # random replacements are ordinary tokens, never a special one (a random [MASK] or BOS would be noise)
        self.ordinary_ids = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in specials])

    def mask(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids.long()
        eligible = ~torch.isin(ids, self.special_ids)
        chosen = (torch.rand(ids.shape, generator=generator) < self.probability) & eligible
        if not chosen.any() and eligible.any():
            # no chosen token, no target: the batch's mean loss is 0/0 = NaN and the run stops (short windows:
            # 8 tokens at 15% choose none 27% of the time), so one eligible token, drawn uniformly, is chosen
            candidates = eligible.flatten().nonzero()[:, 0]
            chosen.view(-1)[candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
        roll = torch.rand(ids.shape, generator=generator)
        inputs = ids.masked_fill(chosen & (roll < MASK_FRACTION), self.mask_id)
        randomised = chosen & (roll >= MASK_FRACTION) & (roll < MASK_FRACTION + RANDOM_FRACTION)
        picks = torch.randint(len(self.ordinary_ids), (int(randomised.sum()),), generator=generator)
        inputs[randomised] = self.ordinary_ids[picks]
        return inputs, ids.masked_fill(~chosen, -100)

    def batch(self, ids: torch.Tensor, seed: int, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks of (seed, step, micro) for a training batch of windows."""
        generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, step, micro, 23]).integers(2**62)))
        return self.mask(ids, generator)


@torch.no_grad()
def evaluate_mlm(model, val, masker: Masker, seq_len: int, batch: int, device, autocast, max_tokens: int = 0) -> dict:
    """Validation loss and masked-token accuracy (argmax == original token) over the val shards, with the
    same masks at every evaluation (a fixed generator), so evaluations compare."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    nats, correct, count = 0.0, 0, 0
    for inputs, _ in val.sequential_batches(batch, seq_len, max_tokens):
        masked, targets = masker.mask(inputs, generator)
        chosen = targets != -100
        if not chosen.any():
            continue
        with autocast:
            logits = model(masked.to(device))[chosen.to(device)].float()
        expected = targets[chosen].to(device)
        nats += float(torch.nn.functional.cross_entropy(logits, expected, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == expected).sum())
        count += int(chosen.sum())
    model.train(was_training)
    return {"val_loss": nats / max(count, 1), "val_masked_accuracy": correct / max(count, 1)}
