"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmkit.errors import GenerationError


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus sampling (Holtzman et al. 2020): smallest set with mass >= top_p
    min_p: float = 0.0  # drop tokens below min_p * p(most likely) (Nguyen et al. 2024)
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): divide positive logits of seen tokens
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self):
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, not {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, not {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0, not {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], not {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], not {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, not {self.repetition_penalty}"),
        ]
        for ok, message in checks:
            if not ok:
                raise GenerationError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_token_distribution(logits: torch.Tensor, params: SamplingParams,
                            previous: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities (float32, shape (vocab,)) after every filter; for greedy, the softmax at T=1."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and previous is not None and previous.numel():
        seen = logits[previous]
        logits = logits.clone()
        logits[previous] = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
    if params.greedy:
        return torch.softmax(logits, dim=-1)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep a token if the mass before it is < top_p (so the most likely token is always kept)
        drop = (sorted_probs.cumsum(0) - sorted_probs) >= params.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return probs / probs.sum()


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                      previous: torch.Tensor | None = None) -> int:
    if params.greedy:
        if params.repetition_penalty != 1.0:
            return int(next_token_distribution(logits, params, previous).argmax())
        return int(logits.argmax())
    probs = next_token_distribution(logits, params, previous)
    return int(torch.multinomial(probs, 1, generator=generator))
