"""The one engine: everything that generates text goes through `Engine`.

Prefill runs the whole prompt once and fills a pre-allocated KV cache; each decode step then runs one
token at its position, attending to the cached keys and values, and computes logits for that token
only. The result equals full recomputation of the growing sequence (tests/test_engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llmkit.errors import GenerationError
from llmkit.infer.kv_cache import KVCache
from llmkit.infer.sampling import SamplingParams, sample_next_token
from llmkit.model import Transformer


class Engine:
    def __init__(self, model: Transformer, stop_token_ids: list[int] | tuple[int, ...] = ()):
        self.model = model
        self.stop_token_ids = list(stop_token_ids)

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    def check_prompt(self, prompt_ids: list[int], max_new_tokens: int) -> int:
        """Number of tokens that can be generated after this prompt within the context."""
        context = self.model.config.max_seq_len
        if not prompt_ids:
            raise GenerationError("the prompt is empty; give at least one token")
        if len(prompt_ids) >= context:
            raise GenerationError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {context}; "
                                  "shorten the prompt")
        bad = [t for t in prompt_ids if not 0 <= t < self.model.config.vocab_size]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the vocabulary of {self.model.config.vocab_size}")
        return min(max_new_tokens, context - len(prompt_ids))

    @torch.inference_mode()
    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield generated token ids one at a time (a stop token is yielded, then generation ends)."""
        n_new = self.check_prompt(prompt_ids, params.max_new_tokens)
        if n_new == 0:
            return
        stops = set(self.stop_token_ids) | set(params.stop_token_ids)
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        dtype = self.model.tok_emb.weight.dtype
        cache = KVCache(self.model.config, 1, len(prompt_ids) + n_new, self.device, dtype)
        tokens = torch.tensor([prompt_ids], device=self.device)
        positions = torch.arange(len(prompt_ids), device=self.device)[None]
        history = torch.tensor(prompt_ids)
        for step in range(n_new):
            logits = self.model(tokens, positions=positions, kv_cache=cache, last_token_only=True)[0, -1]
            token = sample_next_token(logits.cpu(), params, generator, history)
            yield token
            if token in stops or step == n_new - 1:
                return
            history = torch.cat([history, torch.tensor([token])])
            tokens = torch.tensor([[token]], device=self.device)
            positions = positions[:, -1:] + 1

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        return list(self.stream(prompt_ids, params))
