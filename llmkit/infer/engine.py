"""The one engine: everything that generates text goes through `Engine`.

    engine = Engine(model, stop_token_ids=[eos], tokenizer=tok)
    engine.generate(prompt_ids, SamplingParams(max_new_tokens=64, temperature=0))   # -> token ids
    for token in engine.stream(prompt_ids, params): ...                             # one at a time
    engine.generate_batch([ids1, ids2, ...], params)                                # -> [Completion]
    request = engine.submit(ids, params); engine.step()                            # continuous batching

How a request is run:
1. It waits in the scheduler's queue until a row of the KV cache is free and the memory budget allows
   (scheduler.py); then its prompt's longest cached prefix is copied from the prefix cache
   (prefix_cache.py) and the rest is prefilled in chunks, one forward per chunk.
2. Each `step()` then runs one decode forward for every running request together: a batch of single
   tokens, each at its own position in its own cache row, the batch's logits computed for those tokens
   only. Requests join (after their prefill) and leave (stop token, stop string, max_new_tokens)
   between steps.
3. A request alone in the engine, with speculative decoding configured, is instead advanced several
   tokens per step by draft-and-verify (speculative.py).

The decode forward can be compiled (`compile=True`): the cache's shapes are static, so the step
compiles to one graph (gpt-fast's recipe). Weights can be quantized to int8/int4 beforehand
(quantize.py); the engine does not care which Linear the model holds.

Results equal naive generation: KV-cached greedy == full recomputation, batched == one by one,
prefix-cached == uncached, speculative greedy == plain greedy (tests/test_engine*.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from llmkit.errors import GenerationError
from llmkit.infer.prefix_cache import PrefixCache
from llmkit.infer.sampling import SamplingParams, TokenLogprob, choose_tokens, token_logprobs
from llmkit.infer.scheduler import Request, Scheduler
from llmkit.model import Transformer


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, a final stop token included
    finish_reason: str  # "stop" | "length" | "cancelled"
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens served by the prefix cache

    @classmethod
    def of(cls, request: Request) -> "Completion":
        return cls(request.prompt_ids, list(request.output_ids), request.finish_reason, request.logprobs,
                   request.cached_tokens)


class Engine:
    def __init__(self, model: Transformer, stop_token_ids: Sequence[int] = (), *, tokenizer=None,
                 max_batch_size: int = 32, kv_cache_mib: float = 2048, prefix_cache_mib: float = 256,
                 block_size: int = 16, prefill_chunk: int = 512, compile: bool = False,
                 speculative=None, draft_tokens: int = 4):
        """tokenizer: anything with `.decode(ids)`; needed for stop strings only.
        kv_cache_mib: bound on the running requests' KV cache; prefix_cache_mib: the prefix cache's
        pool (0 turns prefix caching off). speculative: None, "prompt-lookup", or a draft
        `Transformer` on the same tokenizer (see speculative.py); draft_tokens: tokens drafted a step.
        """
        self.model = model
        self.stop_token_ids = list(stop_token_ids)
        self.tokenizer = tokenizer
        self.prefill_chunk = prefill_chunk
        config, dtype = model.config, model.tok_emb.weight.dtype
        self.scheduler = Scheduler(config, self.device, dtype, max_batch_size, kv_cache_mib)
        self.prefix_cache = (PrefixCache(config, prefix_cache_mib, block_size, self.device, dtype)
                             if prefix_cache_mib > 0 else None)
        self.compiled = compile
        self._decode = self._decode_forward
        if compile:
            self._decode = torch.compile(self._decode_forward, dynamic=None, options=COMPILE_OPTIONS)
        self.speculator = None
        if speculative is not None:
            from llmkit.infer.speculative import Speculator

            self.speculator = Speculator(self, speculative, draft_tokens)
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "decode_steps": 0, "decode_tokens": 0}

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    # -- requests
    def check_prompt(self, prompt_ids: list[int], max_new_tokens: int) -> int:
        """Number of tokens that can be generated after this prompt within the context."""
        context = self.model.config.max_seq_len
        if not prompt_ids:
            raise GenerationError("the prompt is empty; give at least one token")
        if len(prompt_ids) >= context:
            raise GenerationError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {context}; "
                                  "shorten the prompt")
        bad = [t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < self.model.config.vocab_size)]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the vocabulary of {self.model.config.vocab_size}")
        return min(max_new_tokens, context - len(prompt_ids))

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Request:
        """Queue a request; `step()` advances it. Its tokens appear in `request.output_ids`."""
        try:
            prompt_ids = [int(t) for t in prompt_ids]
        except (TypeError, ValueError):
            raise GenerationError("the prompt must be a sequence of integer token ids") from None
        max_new = self.check_prompt(prompt_ids, params.max_new_tokens)
        if params.stop_strings and self.tokenizer is None:
            raise GenerationError("stop strings need the engine to have a tokenizer (Engine(..., tokenizer=...))")
        stops = frozenset(self.stop_token_ids) | frozenset(params.stop_token_ids)
        request = Request(prompt_ids, params, max_new, stops)
        if max_new == 0:
            request.finish_reason = "length"
            return request
        return self.scheduler.add(request)

    def cancel(self, request: Request) -> None:
        if not request.done:
            request.finish_reason = "cancelled"
        self._retire(request)

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.running or self.scheduler.waiting)

    # -- the loop
    @torch.inference_mode()
    def step(self) -> list[tuple[Request, list[int]]]:
        """Admit what fits and prefill it, then one decode step for the requests already running.
        Returns each advanced request with its new tokens; finished requests leave the batch."""
        running_before = len(self.scheduler.running)
        events: list[tuple[Request, list[int]]] = []
        for request in self.scheduler.admit():
            events.append((request, self._emit(request, self._prefill(request))))
        decoding = [r for r in self.scheduler.running[:running_before] if not r.done]
        if decoding:
            assert [r.row for r in decoding] == list(range(len(decoding)))
            logits = self._decode_rows(decoding)
            for request, token in zip(decoding, choose_tokens(logits, [r.sampler for r in decoding])):
                request.length += 1
                events.append((request, self._emit(request, logits[request.row], token)))
        for request in [r for r in self.scheduler.running if r.done]:
            self._retire(request)
        return events

    def _decode_rows(self, requests: list[Request]) -> torch.Tensor:
        """One forward of the next token of requests in rows [0, n): logits (n, vocab), float32."""
        cache = self.scheduler.cache
        tokens = torch.tensor([[r.output_ids[-1]] for r in requests], device=self.device)
        positions = torch.tensor([[r.length] for r in requests], device=self.device)
        # Eager: attend to the longest row's positions only. Compiled: the whole (static) capacity.
        cache.bind(0, len(requests), None if self.compiled else max(r.length for r in requests) + 1)
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += len(requests)
        return self._decode(tokens, positions, cache)

    def _decode_forward(self, tokens, positions, cache):
        return self.model(tokens, positions=positions, kv_cache=cache)[:, -1].float()

    def _prefill(self, request: Request) -> torch.Tensor:
        """Fill the request's row with its prompt (prefix-cached blocks copied, the rest computed);
        returns the logits after the last prompt token."""
        cache, row, prompt = self.scheduler.cache, request.row, request.prompt_ids
        start = 0
        if self.prefix_cache is not None:
            start = self.prefix_cache.load(cache, row, self.prefix_cache.match(prompt))
        request.cached_tokens = start
        self.stats["cached_tokens"] += start
        self.stats["prefill_tokens"] += len(prompt) - start
        ids = torch.tensor(prompt, device=self.device)
        for begin in range(start, len(prompt), self.prefill_chunk):
            end = min(begin + self.prefill_chunk, len(prompt))
            cache.bind(row, row + 1, end)
            logits = self.model(ids[None, begin:end], positions=torch.arange(begin, end, device=self.device)[None],
                                kv_cache=cache, last_token_only=True)
        request.length = len(prompt)
        if self.prefix_cache is not None:
            self.prefix_cache.store(cache, row, prompt, len(prompt))
        return logits[0, -1].float()

    def _emit(self, request: Request, logits: torch.Tensor, token: int | None = None) -> list[int]:
        """Record the next token (sampled here when not given) and decide whether the request is done."""
        if token is None:
            token = request.sampler.choose(logits)
        request.output_ids.append(token)
        request.sampler.observe(token)
        if request.logprobs is not None:
            request.logprobs.append(token_logprobs(logits, token, request.params.logprobs))
        if token in request.stop_ids or self._hit_stop_string(request):
            request.finish_reason = "stop"
        elif len(request.output_ids) >= request.max_new:
            request.finish_reason = "length"
        return [token]

    def _hit_stop_string(self, request: Request) -> bool:
        stops = request.params.stop_strings
        if not stops:
            return False
        # Only the tail can hold a new match: the longest stop string plus a few tokens of slack
        # for multi-byte characters split across tokens.
        tail = self.tokenizer.decode(request.output_ids[-(max(map(len, stops)) + 8):])
        return any(s in tail for s in stops)

    def _retire(self, request: Request) -> None:
        if request.row is not None and self.prefix_cache is not None and request.length:
            # Store the reply too: the next turn of a chat starts with this whole conversation.
            self.prefix_cache.store(self.scheduler.cache, request.row, request.tokens, request.length)
        self.scheduler.retire(request)

    # -- convenience
    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield generated token ids one at a time (a stop token is yielded, then generation ends)."""
        request = self.submit(prompt_ids, params)
        try:
            if self.speculator is not None and not self.has_work_besides(request):
                yield from self.speculator.run(request)
                return
            while not request.done:
                for advanced, tokens in self.step():
                    if advanced is request:
                        yield from tokens
        finally:
            if not request.done or request.row is not None:
                self.cancel(request)

    def has_work_besides(self, request: Request) -> bool:
        others = [r for r in list(self.scheduler.running) + list(self.scheduler.waiting) if r is not request]
        return bool(others)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        return list(self.stream(prompt_ids, params))

    def complete(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """One request, with its finish reason, log-probabilities and prefix-cache use."""
        request = self.submit(prompt_ids, params)
        if self.speculator is not None and not self.has_work_besides(request):
            for _ in self.speculator.run(request):
                pass
        self.run_until_done([request])
        return Completion.of(request)

    def generate_batch(self, prompts: Sequence[list[int]],
                       params: SamplingParams | Sequence[SamplingParams]) -> list[Completion]:
        """Generate for many prompts of any lengths together (continuous batching)."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise GenerationError(f"{len(prompts)} prompts but {len(params)} sampling parameter sets")
        requests = [self.submit(p, sp) for p, sp in zip(prompts, params)]
        self.run_until_done(requests)
        return [Completion.of(r) for r in requests]

    def run_until_done(self, requests: Sequence[Request]) -> None:
        try:
            while not all(r.done for r in requests):
                self.step()
        finally:
            for r in requests:
                if not r.done or r.row is not None:
                    self.cancel(r)


# Inductor options for the decode step. Freezing folds the weights into the graph as constants, which
# lets inductor pre-pack them for its own CPU GEMM kernels (measured on SmolLM2-135M; see
# BENCHMARKS.md); the price is that a compiled engine must be rebuilt if the weights change.
COMPILE_OPTIONS = {"freezing": True}
