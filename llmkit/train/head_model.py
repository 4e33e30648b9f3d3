"""A Transformer with a small head on its final hidden states instead of the vocabulary-wide output
head: the reward model's scalar (train/reward.py) and a classifier's labels (classify/head.py). What the
Trainer asks of a model (its config, its blocks for FSDP and activation checkpointing, parameter and
FLOP counts) is answered here once, from the wrapped Transformer and the head `score`."""

from __future__ import annotations

import torch.nn as nn

from llmkit.model import weight_training_flops


class HeadOnTransformer(nn.Module):
    transformer: nn.Module
    score: nn.Linear

    @property
    def config(self):
        return self.transformer.config

    @property
    def blocks(self):
        return self.transformer.blocks

    def num_params(self, non_embedding: bool = False) -> int:
        return self.transformer.num_params(non_embedding) + sum(p.numel() for p in self.score.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        # the vocabulary-wide output head never runs: its weights' FLOPs fewer (an encoder may have none)
        head = self.transformer.lm_head
        return self.transformer.flops_per_token(seq_len) - (weight_training_flops(head.weight) if head is not None else 0)
