"""The one engine: everything that generates text goes through `Engine`.

    engine = Engine(model, stop_token_ids=[eos], tokenizer=tok)
    engine.generate(prompt_ids, SamplingParams(max_new_tokens=64, temperature=0))   # -> token ids
    for token in engine.stream(prompt_ids, params): ...                             # one at a time
    engine.generate_batch([ids1, ids2, ...], params)                                # -> [Completion]
    request = engine.submit(ids, params); engine.step()                            # continuous batching

How a request is run:
1. It waits in the scheduler's queue until a row of the KV cache is free and the memory budget allows
   (scheduler.py); on admission its prompt's longest cached prefix is copied from the prefix cache
   (prefix_cache.py). The rest of the prompt is prefilled in chunks over the following steps.
2. Each `step()` first prefills at most `prefill_chunk` tokens of the waiting prompts, oldest first,
   the chunks of several prompts batched into one forward of left-padded rows (Sarathi-Serve's chunked
   prefill with a per-step token budget, Agrawal et al. 2024: a new prompt never stalls the running
   requests for longer than one budget's worth of work, and a burst of prompts is prefilled together
   instead of one forward each; prefill.py). A request whose prompt completes samples its first token from that
   forward, which the caller may deliver at once (`step(on_first_tokens=...)`), and joins the step's
   decode forward: one forward for every request whose prompt is in (a batch of single tokens, each at
   its own position in its own cache row, logits for those tokens only). Prefill goes first so that a
   new request's first token waits for its own prompt only, not for everyone's next token too.
   Requests leave (stop token, stop string, max_new_tokens, cancellation, error) between steps.
3. A request alone in the engine, with a speculator given (`Engine(model, speculator=Speculator(...))`,
   speculative.py), is instead advanced several tokens per step by draft-and-verify (`stream`,
   `generate`, `complete`); requests submitted meanwhile wait until it ends.

Isolation: a request ends alone. `cancel()` finishes it with finish_reason "cancelled"; a request whose
own work fails (its sampling raises, its logits are NaN, its prefill raises) finishes with
finish_reason "error" and `request.error` saying why, while the rest of the batch carries on (a shared
forward that raises fails the requests it ran); its row
is zeroed before reuse, so NaN keys/values cannot leak into the next occupant. The single-request
calls (`generate`, `stream`) raise that error as a GenerationError; `complete` and `generate_batch`
report it on the Completion.

Thread safety: one thread, the engine thread, drives the engine: `step()`, and the calls that step it
(`stream`, `generate`, `complete`, `generate_batch`, `run_until_done`). `submit()` and `cancel()` are
safe from any thread at any time (a web server's handler threads call them while its engine thread
steps). `cancel()` only marks the request when a step is in progress; the engine thread retires it at
the start of its next step. When no step is in progress, `cancel()` retires the request itself, so it
is done when `cancel()` returns. `step()` reports a request that finishes without a new token
(cancelled, failed) with an empty token list, so whoever waits on it can be woken.

Constrained decoding: a request whose `SamplingParams.grammar` is set (grammar.py) samples only tokens
its grammar allows: the sampler masks its logits row before choosing (for a decode step, every
constrained row of the batch in one call), `emit` advances its grammar, and a complete grammar ends it
with finish_reason "stop". Speculative decoding masks each verified position as the grammar stands
after the drafts before it, and rolls the grammar back afterwards.

Decoding strategies (speculative.py's `Speculator`) drive a request through the engine's step
primitives: `admit`, `prefill` (or `prefill_chunks`), `emit`, `decode`, `fail` and `retire`, each call inside
`with engine.stepping():`, which holds the engine for one step (in inference mode, pending
cancellations applied first). The engine knows a strategy only as a `DecodingStrategy`: it calls
`bind(engine)` once and `run(request)` for a request it may run alone.

The decode forward can be compiled (`compile=True`): the cache's shapes are static, so the step
compiles to one graph (gpt-fast's recipe); a CPU fp32 model's Linears are packed for oneDNN first, in
place (compiled.py). On llmkit's int8-activation CPU kernels the same forward is compiled ahead of time
instead, one AOTInductor program for every shape (ahead.py). Weights can be quantized to int8/int4 beforehand (quantize.py); the engine does not
care which Linear the model holds.

Encoder-decoder models (T5: `n_encoder_layers > 0`): a request's prompt is the source. On admission the
encoder runs once over the sources admitted together (right-padded, masked) and each decoder layer's
cross-attention keys and values are stored in the request's KV-cache row (`KVCache.store_cross`); the
decoder then starts from `decoder_start_token` and runs as any decoder does (prefill, decode steps,
batching, sampling). The prefix cache and speculative decoding are decoder-only features (a decoder
prefix means nothing without its source) and are off for these models.

Results equal naive generation: KV-cached greedy == full recomputation, batched == one by one,
prefix-cached == uncached, speculative greedy == plain greedy, survivors of cancellations and failures ==
their solo runs (tests/test_engine*.py).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from llmkit.errors import GenerationError, LLMKitError
from llmkit.infer.ahead import AheadOfTimeStep, ahead_of_time
from llmkit.infer.compiled import attend_length, call_warmed, compile_for_inference
from llmkit.infer.grammar import GrammarError
from llmkit.infer.huge_pages import place_in_huge_pages
from llmkit.infer.kv_cache import cache_dtype
from llmkit.infer.options import check_engine_options, context_left, prompt_budget
from llmkit.infer.prefill import ForwardFailed, padding_groups, plan_chunks, prefill_forward
from llmkit.infer.prefix_cache import PrefixCache
from llmkit.infer.sampling import RequestSampler, SamplingParams, TokenLogprob, choose_tokens, token_logprobs
from llmkit.infer.scheduler import Request, Scheduler
from llmkit.infer.stop_strings import hit_stop_string
from llmkit.infer.token_step import token_step_for
from llmkit.model import Transformer

logger = logging.getLogger(__name__)


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, a final stop token included
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens served by the prefix cache
    error: str | None = None  # why, when finish_reason is "error"

    @classmethod
    def of(cls, request: Request) -> "Completion":
        prompt = request.source_ids if request.source_ids is not None else request.prompt_ids[request.soft_tokens:]
        return cls(prompt, list(request.output_ids), request.finish_reason, request.logprobs,
                   request.cached_tokens, request.error)


class DecodingStrategy(Protocol):
    """A way to run one request alone faster than a token a step (speculative.Speculator)."""

    def bind(self, engine: Engine) -> None:
        """Called once by the engine that receives the strategy."""

    def run(self, request: Request) -> Iterator[int]:
        """Admit the submitted `request` (next in the queue), generate it to its end with the engine's
        step primitives, yield its tokens as they are decided, and retire it."""


class Engine:
    """Continuous-batching generation over one model (see the module docstring).

    Threads: `submit()` and `cancel()` from any thread; everything that steps (`step`, `stream`,
    `generate`, `complete`, `generate_batch`, `run_until_done`) from one engine thread at a time. A
    cancelled request ends "cancelled", a failed one "error" (`request.error`), the others unchanged."""

    def __init__(self, model: Transformer, stop_token_ids: Sequence[int] = (), *, tokenizer=None,
                 max_batch_size: int = 32, kv_cache_mib: float = 2048, prefix_cache_mib: float = 256,
                 block_size: int = 1, prefill_chunk: int = 512, compile: bool = False,
                 speculator: DecodingStrategy | None = None, kv_cache_dtype: str = "auto"):
        """tokenizer: anything with `.decode(ids)`; needed for stop strings only.
        kv_cache_mib: bound on the running requests' KV cache; prefix_cache_mib: the prefix cache's
        pool (0 turns prefix caching off), in blocks of block_size tokens (1: a prompt reuses every
        cached token but its last, see prefix_cache.py). prefill_chunk: prompt tokens
        prefilled per step, all waiting prompts together (the budget that bounds how long a new prompt
        delays the running requests' next token). speculator: a `llmkit.infer.speculative.Speculator` (built by the caller,
        one per engine) for speculative decoding of a request running alone. kv_cache_dtype: "auto"
        (float16 where llmkit's CPU attention kernel reads the cache, else the model's dtype), "float32",
        "float16" or "int8" (kv_cache.cache_dtype).
        """
        check_engine_options(model, max_batch_size, kv_cache_mib, prefix_cache_mib, block_size, prefill_chunk,
                             speculator, kv_cache_dtype)
        self.encoder_decoder = model.encoder is not None
        if self.encoder_decoder and speculator is not None:
            raise GenerationError("speculative decoding is for decoder-only models; this one is an encoder-decoder "
                                  "(n_encoder_layers > 0): build the engine without a speculator")
        self.model = model
        # A prompt-tuned model's soft prompt (Lester et al. 2021) goes before every prompt (the prefix cache
        # keeps it like any shared prefix); completions, cached tokens and penalties count the caller's own.
        self.soft_prompt = model.soft_prompt_ids
        if self.soft_prompt and self.encoder_decoder:
            raise GenerationError("a soft prompt is for decoder-only models; this one is an encoder-decoder")
        # An encoder-decoder's source ends in EOS, as it was trained (HF's T5 tokenizer: `$A </s>`; span.py).
        self.source_end = getattr(tokenizer, "eos_id", None) if self.encoder_decoder else None
        if self.device.type == "cpu":  # each decode step streams every weight: 2 MB pages (huge_pages.py)
            place_in_huge_pages(model)
        self.stop_token_ids = list(stop_token_ids)
        self.tokenizer = tokenizer
        self.prefill_chunk = prefill_chunk
        config, dtype = model.config, cache_dtype(model, kv_cache_dtype)
        self.scheduler = Scheduler(config, self.device, dtype, max_batch_size, kv_cache_mib)
        self.prefix_cache = (PrefixCache(config, prefix_cache_mib, block_size, self.device, dtype)
                             if prefix_cache_mib > 0 and not self.encoder_decoder else None)
        self.compiled = compile
        self.warmed_up = False  # set by compiled.warm_up: every decode graph exists, guard evaluation is skipped
        self._decode_fn = self._decode_forward
        self._token_step = ...  # a request decoding alone: one parallel region a token (token_step.py), at first use
        # compiled: on a CPU with llmkit's int8-activation kernels, ahead of time (ahead.py), else torch.compile
        self.ahead = (AheadOfTimeStep(self._decode_forward, max_batch_size,
                                      fallback=lambda: compile_for_inference(self._decode_forward, model))
                      if compile and ahead_of_time(model) else None)
        if compile and self.ahead is None:
            self._decode_fn = compile_for_inference(self._decode_forward, model)
        # _step_lock: held by the engine thread for a whole step (stepping()). _queue_lock: guards the
        # scheduler's queue and the pending cancellations, held briefly, so submit() and cancel() from
        # other threads never wait for a forward.
        self._step_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._cancels: list[Request] = []
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "decode_steps": 0, "decode_tokens": 0}
        self.speculator = speculator
        if speculator is not None:
            speculator.bind(self)

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    # -- requests (submit and cancel: any thread)
    def check_prompt(self, prompt_ids: list[int], max_new_tokens: int) -> int:
        """Number of tokens that can be generated after this prompt within the context (options.prompt_budget),
        the prompt taken as submit() takes it (a T5 source gets its end token)."""
        return prompt_budget(self.model.config, self._as_submitted(prompt_ids), max_new_tokens, len(self.soft_prompt))

    def fits(self, prompt_ids: list[int]) -> bool:
        """Whether submit() would take this prompt's length: the rule check_prompt applies, without its
        error (a caller that skips the too-long prompts of a batch and counts them)."""
        return context_left(self.model.config, len(self._as_submitted(prompt_ids)), len(self.soft_prompt)) > 0

    def _as_submitted(self, prompt_ids: list[int]) -> list[int]:
        if self.source_end is not None and prompt_ids and prompt_ids[-1] != self.source_end:
            return [*prompt_ids, self.source_end]  # an encoder-decoder's source ends with its end token
        return list(prompt_ids)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Request:
        """Queue a request (from any thread); `step()` advances it. Its tokens appear in `request.output_ids`."""
        try:
            prompt_ids = [int(t) for t in prompt_ids]
        except (TypeError, ValueError):
            raise GenerationError("the prompt must be a sequence of integer token ids") from None
        prompt_ids = self._as_submitted(prompt_ids)
        max_new = self.check_prompt(prompt_ids, params.max_new_tokens)
        if params.stop_strings and self.tokenizer is None:
            raise GenerationError("stop strings need the engine to have a tokenizer (Engine(..., tokenizer=...))")
        stops = frozenset(self.stop_token_ids) | frozenset(params.stop_token_ids)
        if self.encoder_decoder:  # the prompt is the source; the decoder starts from its start token
            max_new = min(params.max_new_tokens, self.model.config.max_seq_len - 1)
            request = Request([self.model.config.decoder_start_token], params, max_new, stops, source_ids=prompt_ids)
        else:
            request = Request(self.soft_prompt + prompt_ids, params, max_new, stops,
                              sampler=RequestSampler(params, prompt_ids), soft_tokens=len(self.soft_prompt))
        if max_new == 0:
            request.finish_reason = "length"
            return request
        with self._queue_lock:
            return self.scheduler.add(request)

    def cancel(self, request: Request) -> None:
        """Stop a request: from any thread, in any autograd mode, waiting or running. It finishes with
        finish_reason "cancelled" (one already finished keeps its reason) and its row is freed: at once
        when no step is in progress, else at the start of the engine thread's next step."""
        if request.done and request.row is None:
            return
        with self._queue_lock:
            request.cancel_requested = True
            self._cancels.append(request)
        if self._step_lock.acquire(blocking=False):  # no step in progress: retire it here and now
            try:
                with torch.inference_mode():
                    self._apply_cancellations()
            finally:
                self._step_lock.release()

    def _apply_cancellations(self) -> list[Request]:
        """Retire the requests cancel() marked; returns those it finished. Holds the step lock."""
        with self._queue_lock:
            pending, self._cancels = list(dict.fromkeys(self._cancels)), []  # cancel() may come twice
            finished = [r for r in pending if not r.done]
            for request in pending:
                if request.row is None:  # still waiting: it never runs
                    self.scheduler.retire(request)
        for request in pending:
            if not request.done:
                request.finish_reason = "cancelled"
        self.retire(*[r for r in pending if r.row is not None])
        return finished

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.running or self.scheduler.waiting or self._cancels)

    # -- the loop (the engine thread)
    def step(self, on_first_tokens: Callable[[], None] | None = None) -> list[tuple[Request, list[int]]]:
        """Admit what fits; up to `prefill_chunk` prompt tokens of the requests still prefilling (a
        prompt that completes samples its first token); then one decode forward for every request
        whose prompt is in, those just completed included.

        on_first_tokens: called between the two phases (the server delivers the first tokens then, so
        a new request's time to first token does not include the decode forward).
        Returns each request that advanced with its new tokens, and each that finished without one
        (cancelled, failed) with []; finished requests leave the batch."""
        events: list[tuple[Request, list[int]]] = []
        with self.stepping() as cancelled:
            events += [(r, []) for r in cancelled]
            try:
                self.admit()
                decoding = [r for r in self.scheduler.running if not r.needs_prefill]
                prefilling = [r for r in self.scheduler.running if r.needs_prefill]
                if prefilling:
                    self._prefill_step(prefilling, events)
                    if on_first_tokens is not None:
                        on_first_tokens()
                    # prompts complete oldest first, and arrange() keeps the prefilling rows in that order:
                    # those that completed (and did not stop at once) usually continue the decode rows
                    for request in prefilling:
                        if request.row != len(decoding) or request.needs_prefill or request.done:
                            break
                        decoding.append(request)
                if decoding:
                    self._decode_step(decoding, events)
            finally:  # even when interrupted, no finished request keeps a row
                self.retire(*[r for r in self.scheduler.running if r.done])
                self.scheduler.arrange()
        return events

    def _prefill_step(self, prefilling: list[Request], events: list) -> None:
        """Spend this step's prefill budget; a request whose prompt completes emits its first token."""
        ready = []
        for request in prefilling:
            if request.cancel_requested or request.done:  # cancelled during this step, or its source's
                request.finish_reason = request.finish_reason or "cancelled"  # encoding failed: no more work
                events.append((request, []))
            else:
                ready.append(request)
        try:
            completed = self.prefill_chunks(ready)
        except ForwardFailed as failure:  # the shared forward failed: so did the requests it ran
            for request in failure.requests:
                self.fail(request, failure.error)
                events.append((request, []))
            completed = failure.completed
        for request, logits in completed:
            try:
                events.append((request, self.emit(request, logits)))
            except Exception as error:  # noqa: BLE001 - isolation: only this request fails
                self.fail(request, error)
                events.append((request, []))

    def _decode_step(self, decoding: list[Request], events: list) -> None:
        assert [r.row for r in decoding] == list(range(len(decoding))), "running rows are not compact"
        try:
            logits = self.decode(decoding)
            choices = choose_tokens(logits, [r.sampler for r in decoding])
        except Exception as error:  # noqa: BLE001 - the shared forward failed: so did all its requests
            for request in decoding:
                self.fail(request, error)
                events.append((request, []))
            return
        for request, choice in zip(decoding, choices):
            try:
                if isinstance(choice, Exception):
                    raise choice
                events.append((request, self.emit(request, logits[request.row], choice)))
            except Exception as error:  # noqa: BLE001 - isolation: only this request fails
                self.fail(request, error)
                events.append((request, []))

    # -- step primitives: the public surface for decoding strategies (speculative.py)
    @contextmanager
    def stepping(self) -> Iterator[list[Request]]:
        """Hold the engine for one step, in inference mode; the primitives below run inside it. Pending
        cancellations are applied first (the requests it cancelled are yielded). Not reentrant."""
        with self._step_lock, torch.inference_mode():
            yield self._apply_cancellations()

    def reserve_cache(self) -> tuple[int, int]:
        """Allocate the KV cache for max_batch_size rows within kv_cache_mib now, not as requests
        arrive (Scheduler.reserve says why); returns its (rows, positions per row)."""
        with self.stepping():
            return self.scheduler.reserve()

    def admit(self, limit: int | None = None) -> list[Request]:
        """Move waiting requests into free cache rows (first come, first served), each with its prompt's
        longest prefix-cached run of blocks copied in; the rest of the prompt needs `prefill`."""
        with self._queue_lock:
            admitted = self.scheduler.admit(limit)
        if self.encoder_decoder and admitted:
            self._encode_sources(admitted)
        for request in admitted:
            if self.prefix_cache is not None:
                request.length = self.prefix_cache.load(self.scheduler.cache, request.row,
                                                        self.prefix_cache.match(request.prompt_ids))
            request.cached_tokens = max(0, request.length - request.soft_tokens)
            self.stats["cached_tokens"] += request.length
        return admitted

    def _encode_sources(self, requests: list[Request]) -> None:
        """Run the encoder once over the admitted requests' sources (right-padded into one forward) and
        store each decoder layer's cross-attention keys and values in their rows. If it fails, so do they."""
        width = max(len(r.source_ids) for r in requests)
        ids = torch.tensor([r.source_ids + [0] * (width - len(r.source_ids)) for r in requests], device=self.device)
        mask = torch.tensor([[1] * len(r.source_ids) + [0] * (width - len(r.source_ids)) for r in requests],
                            device=self.device)
        try:
            keys_values = self.model.cross_keys_values(self.model.encode(ids, mask))
            self.scheduler.cache.store_cross([r.row for r in requests], keys_values,
                                             [len(r.source_ids) for r in requests])
        except Exception as error:  # noqa: BLE001 - the shared forward failed: so did the requests it ran
            for request in requests:
                self.fail(request, error)
        self.stats["prefill_tokens"] += sum(len(r.source_ids) for r in requests)

    def prefill(self, request: Request) -> torch.Tensor:
        """Fill an admitted request's row with the rest of its prompt, `prefill_chunk` tokens per
        forward; returns the logits after the last prompt token, float32 (vocab,)."""
        while True:
            try:
                completed = self.prefill_chunks([request])
            except ForwardFailed as failure:
                raise failure.error from None
            if completed:
                return completed[0][1]

    def prefill_chunks(self, requests: Sequence[Request],
                       budget: int | None = None) -> list[tuple[Request, torch.Tensor]]:
        """Advance the prefill of admitted requests by at most `budget` prompt tokens in all (default
        `prefill_chunk`), oldest first, in forwards of consecutive rows (prefill.py). Returns (request,
        float32 logits after its last prompt token) for each request whose prompt is now complete; their
        full blocks go to the prefix cache. A forward that raises raises ForwardFailed."""
        plan = plan_chunks(requests, self.prefill_chunk if budget is None else budget)
        completed: list[tuple[Request, torch.Tensor]] = []
        for group in padding_groups(plan):
            try:
                logits = prefill_forward(self.model, self.scheduler.cache, group)
            except Exception as error:  # noqa: BLE001 - reported per request by the caller
                raise ForwardFailed([r for r, _ in group], error, completed) from error
            self.stats["prefill_tokens"] += sum(n for _, n in group)
            for i, (request, _) in enumerate(group):
                if not request.needs_prefill:
                    if self.prefix_cache is not None:
                        self.prefix_cache.store(self.scheduler.cache, request.row, request.prompt_ids,
                                                request.length)
                    completed.append((request, logits[i]))
        return completed

    def decode(self, requests: Sequence[Request]) -> torch.Tensor:
        """One forward of each request's pending token (its last emitted one) at its own position; the
        requests hold consecutive rows. Each row then holds one more position (`length` + 1). Returns
        logits (n, vocab), float32, in the requests' order. Compiled when the engine is."""
        first, n = requests[0].row, len(requests)
        if [r.row for r in requests] != list(range(first, first + n)):
            raise ValueError(f"decode needs requests in consecutive rows, not rows {[r.row for r in requests]}")
        cache = self.scheduler.cache
        ahead = self.ahead is not None and first == 0  # (speculation's lone request is in row 0 too)
        attend = attend_length(max(r.length for r in requests) + 1, cache.max_len, self.compiled and not ahead)
        cache.bind(first, first + n, attend)
        if n == 1 and (token_step := self.token_step()) is not None:  # the graph's bits in one parallel region
            request = requests[0]
            logits = token_step.step(request.output_ids[-1], request.length, cache.key_store, cache.value_store, first)
        else:  # the graph's step: the tokens and positions as tensors
            tokens = torch.tensor([[r.output_ids[-1]] for r in requests], device=self.device)
            positions = torch.tensor([[r.length] for r in requests], device=self.device)
            if ahead:  # every length is one program's: no rounding, no guards
                logits = self.ahead(tokens, positions, cache)
            else:
                step = functools.partial(call_warmed, self._decode_fn) if self.warmed_up else self._decode_fn
                logits = step(tokens, positions, cache)
        for request in requests:
            request.length += 1
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += n
        return logits

    def token_step(self):
        """The batch-1 decode step in one parallel region (token_step.py), None where the model is not of its kind."""
        if self._token_step is ...:
            self._token_step = token_step_for(self.model, self.scheduler.dtype)
        return self._token_step

    def _decode_forward(self, tokens, positions, cache):
        return self.model(tokens, positions=positions, kv_cache=cache)[:, -1].float()

    def emit(self, request: Request, logits: torch.Tensor, token: int | None = None) -> list[int]:
        """Record the request's next token (sampled from `logits` when not given; logits also give its
        log-probabilities) and decide whether the request is done. Returns [token]. Raises when the
        token cannot be chosen (NaN logits, a failing sampler); the caller then `fail`s the request."""
        if token is None:
            token = request.sampler.choose(logits)
        logprob = token_logprobs(logits, token, request.params.logprobs) if request.logprobs is not None else None
        request.output_ids.append(token)
        request.sampler.observe(token)
        if logprob is not None:
            request.logprobs.append(logprob)
        # A finished grammar allows only a stop token: end here rather than spend a forward on it.
        if (token in request.stop_ids or hit_stop_string(self.tokenizer, request.output_ids, request.params.stop_strings)
                or request.sampler.finished):
            request.finish_reason = "stop"
        elif len(request.output_ids) >= request.max_new:
            request.finish_reason = "length"
        return [token]

    def fail(self, request: Request, error: BaseException | str) -> None:
        """Finish a request with finish_reason "error" (something about this request alone went
        wrong); `retire` then frees its row, as for any finished request."""
        if isinstance(error, str) or isinstance(error, LLMKitError):
            message, trace = str(error), None
        else:  # unexpected: the operator wants the traceback
            message, trace = f"{type(error).__name__}: {error}", error
        request.finish_reason, request.error = "error", message
        request.error_kind = ("input" if isinstance(error, GrammarError) else
                              "internal" if trace is not None else "model")
        logger.warning("request %d failed: %s", request.id, message, exc_info=trace)
        # Its row is zeroed now, not when it retires: its forward may have written NaN past its recorded
        # length (a prompt chunk that failed), and rows move (retire -> arrange) before it retires, which
        # would leave that NaN in a row the next request gets (a masked key's weight is 0, and 0 x NaN is
        # NaN; found by test_engine_isolation's random sequences).
        if request.row is not None and self.scheduler.cache is not None:
            self.scheduler.cache.clear_row(request.row)

    def retire(self, *requests: Request) -> None:
        """Free finished requests' rows (rows stay compact: running requests past the new end move into
        the freed rows, in one move for all). Each reply's full blocks go to the prefix cache first (the
        next chat turn starts with them); a failed request's row was zeroed when it failed (`fail`), and a
        cancelled one's is if it holds NaN (a prompt that would have failed, cancelled between its chunks).
        A waiting request just leaves the queue."""
        waiting = [r for r in requests if r.row is None]
        if waiting:
            with self._queue_lock:
                self.scheduler.retire(*waiting)
        running = [r for r in requests if r.row is not None]
        if not running:
            return
        try:
            cache = self.scheduler.cache
            for request in running:
                if request.finish_reason == "cancelled" and not cache.finite(request.row, request.length):
                    cache.clear_row(request.row)
                elif request.finish_reason != "error" and self.prefix_cache is not None and request.length:
                    self.prefix_cache.store(cache, request.row, request.tokens, request.length)
        finally:
            self.scheduler.retire(*running)
            self.scheduler.arrange()

    # -- convenience (the engine thread)
    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield generated token ids one at a time (a stop token is yielded, then generation ends).
        Raises GenerationError if the request fails; closing the generator early cancels it."""
        request = self.submit(prompt_ids, params)
        try:
            if self.speculator is not None and not self.has_work_besides(request):
                yield from self.speculator.run(request)
            else:
                while not request.done:
                    for advanced, tokens in self.step():
                        if advanced is request:
                            yield from tokens
            request.raise_if_failed()
        finally:
            if not request.done or request.row is not None:
                self.cancel(request)

    def has_work_besides(self, request: Request) -> bool:
        others = [r for r in list(self.scheduler.running) + list(self.scheduler.waiting) if r is not request]
        return bool(others)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        return list(self.stream(prompt_ids, params))

    def complete(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        """One request, with its finish reason (an error's message too), log-probabilities and prefix-cache use."""
        request = self.submit(prompt_ids, params)
        if self.speculator is not None and not self.has_work_besides(request):
            for _ in self.speculator.run(request):
                pass
        self.run_until_done([request])
        return Completion.of(request)

    def generate_batch(self, prompts: Sequence[list[int]],
                       params: SamplingParams | Sequence[SamplingParams]) -> list[Completion]:
        """Generate for many prompts of any lengths together (continuous batching). A request that fails
        has finish_reason "error" and its message in `error`; the others are unaffected."""
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
