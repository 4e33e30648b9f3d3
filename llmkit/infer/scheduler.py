"""Continuous batching: requests join and leave the running batch between decode steps.

Static batching waits for the slowest sequence of a batch; continuous (iteration-level) batching
admits a waiting request as soon as a row is free and retires a finished one at once (Orca, Yu et
al. 2022). Each running request owns one row of the pre-allocated KV cache; running requests are
kept in rows [0, n): first those that decode, then those whose prompt is still being prefilled (in
admission order), so a decode step runs on one contiguous slice of the cache and the prompts
prefilled together sit in another (`arrange`).

Memory is bounded: the cache (rows x capacity positions) grows on demand, but never past
`memory_mib`. A request reserves its prompt plus max_new_tokens positions when it is admitted, so
a running request can never run out of cache; a request that does not fit waits until others
finish (first come, first served), and one that could never fit is refused with a clear error.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import torch

from llmkit.config import ModelConfig
from llmkit.errors import GenerationError
from llmkit.infer.kv_cache import CROSS_STEP, KVCache, kv_bytes_per_token
from llmkit.infer.sampling import RequestSampler, SamplingParams, TokenLogprob

CAPACITY_STEP = 256  # cache lengths are multiples of this: fewer distinct shapes to compile


@dataclass(eq=False)  # a request is itself: compared and hashed by identity
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int  # max_new_tokens, cut to what fits in the model's context
    stop_ids: frozenset[int]
    id: int = 0
    sampler: RequestSampler | None = None
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" (stop token or string), "length", "cancelled", "error"
    error: str | None = None  # why a request with finish_reason "error" failed
    # ... and whose doing: "input" (the request's own: its grammar admits no output), "model" (a known failure,
    # e.g. logits not finite: `error` says it), "internal" (an unexpected exception: the log has its traceback)
    error_kind: str | None = None
    cancel_requested: bool = False  # set by Engine.cancel (any thread); the engine thread acts on it
    row: int | None = None
    length: int = 0  # positions of its row that hold this request's keys/values
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    drafted: int = 0  # speculative decoding: tokens proposed and accepted
    accepted: int = 0
    source_ids: list[int] | None = None  # an encoder-decoder's source (prompt_ids then start the decoder)
    soft_tokens: int = 0  # a prompt-tuned model's soft prompt: the first soft_tokens of prompt_ids (Engine.submit)

    def __post_init__(self):
        self.sampler = self.sampler or RequestSampler(self.params, self.prompt_ids)
        if self.params.logprobs is not None:
            self.logprobs = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def reserved(self) -> int:
        """Cache positions this request may use: its prompt and every token it may generate."""
        return len(self.prompt_ids) + self.max_new

    @property
    def needs_prefill(self) -> bool:
        """Part of the prompt is not in the request's cache row yet (chunked prefill continues it)."""
        return self.length < len(self.prompt_ids)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def raise_if_failed(self) -> None:
        """Raise the GenerationError of a request that finished with an error (for single-request APIs)."""
        if self.finish_reason == "error":
            raise GenerationError(f"generation failed: {self.error}")


def cross_positions(request: Request) -> int:
    """Source positions an encoder-decoder request's row keeps cross-attention keys and values for: its
    source, rounded up as KVCache.store_cross grows (0 for a decoder-only request)."""
    return -(-len(request.source_ids) // CROSS_STEP) * CROSS_STEP if request.source_ids is not None else 0


class Scheduler:
    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype, max_batch_size: int,
                 memory_mib: float):
        if max_batch_size < 1:
            raise GenerationError(f"max_batch_size must be >= 1, not {max_batch_size}")
        self.config, self.device, self.dtype = config, device, dtype
        self.max_batch_size = max_batch_size
        self.memory_bytes = int(memory_mib * 2**20)
        self.bytes_per_position = kv_bytes_per_token(config, dtype)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # running[i].row == i
        self.cache: KVCache | None = None
        self._ids = itertools.count()

    def add(self, request: Request) -> Request:
        request.id = next(self._ids)
        need = (self._capacity_for(request.reserved) + cross_positions(request)) * self.bytes_per_position
        if need > self.memory_bytes:
            raise GenerationError(
                f"the request needs {need / 2**20:.0f} MiB of KV cache ({request.reserved} positions) but the "
                f"engine's budget is {self.memory_bytes / 2**20:.0f} MiB; raise kv_cache_mib or lower "
                "max_new_tokens")
        self.waiting.append(request)
        return request

    def _capacity_for(self, positions: int) -> int:
        rounded = -(-positions // CAPACITY_STEP) * CAPACITY_STEP
        return min(rounded, self.config.max_seq_len)

    def admit(self, limit: int | None = None) -> list[Request]:
        """Move waiting requests into free rows while the budget allows (first come, first served)."""
        admitted: list[Request] = []
        while self.waiting and len(self.running) < self.max_batch_size and (limit is None or len(admitted) < limit):
            request = self.waiting[0]
            if not self._make_room(request):
                break
            self.waiting.popleft()
            request.row, request.length = len(self.running), 0
            self.running.append(request)
            admitted.append(request)
        return admitted

    def _make_room(self, request: Request) -> bool:
        rows, capacity = (self.cache.batch_size, self.cache.max_len) if self.cache else (0, 0)
        need = self._capacity_for(request.reserved)
        # an encoder-decoder's rows also hold their sources' cross-attention keys and values
        cross = self.cache.cross_capacity if self.cache else 0
        want_cross = max(cross, cross_positions(request))
        n = len(self.running) + 1
        if n <= rows and need <= capacity and want_cross == cross:
            return True
        # Grow by doubling the rows (fewer reallocations and compiled shapes), within budget and batch size.
        # When growing does not fit, the smallest cache that holds the running requests and this one:
        # rows and length only ever grew before, so after many short requests had widened the cache a
        # long one could not be admitted even into an idle engine, and generate_batch spun forever.
        doubled = 1 << (n - 1).bit_length()
        fitted = max([need] + [self._capacity_for(r.reserved) for r in self.running])
        grown = max(capacity, need)
        shapes = [(min(self.max_batch_size, max(rows, doubled)), grown), (max(rows, n), grown),
                  (min(self.max_batch_size, doubled), fitted), (n, fitted)]
        for want_rows, want_capacity in shapes:
            if want_rows * (want_capacity + want_cross) * self.bytes_per_position <= self.memory_bytes:
                break
        else:
            return False
        if self.cache is None:
            self.cache = KVCache(self.config, want_rows, want_capacity, self.device, self.dtype)
        elif (want_rows, want_capacity) != (rows, capacity):
            self.cache = self.cache.resized(want_rows, want_capacity, len(self.running), min(capacity, want_capacity))
        if want_cross:  # reserved now, so the next admission's check counts it
            self.cache.grow_cross(want_cross)
        return True

    def reserve(self) -> tuple[int, int]:
        """Allocate the cache now at its largest useful shape: max_batch_size rows (fewer if the budget
        cannot give each CAPACITY_STEP positions), each as long as the budget allows. A server calls it
        at start-up, as vLLM and llama.cpp allocate theirs: growing on demand copies every running row
        into a new cache while all requests wait (60 / 210 / 460 ms on growing to 16 / 32 / 64 rows of
        SmolLM2 fp32 on a 2-core AVX2 EPYC, measured), which a burst of new clients paid in its time to
        first token. Only when idle, and not for encoder-decoders (their rows also hold sources, sized
        on admission). Returns (rows, positions)."""
        shape = lambda: (self.cache.batch_size, self.cache.max_len) if self.cache else (0, 0)  # noqa: E731
        if self.running or self.config.n_encoder_layers:
            return shape()
        rows, shortest = self.max_batch_size, min(CAPACITY_STEP, self.config.max_seq_len)
        while True:
            fits = self.memory_bytes // (rows * self.bytes_per_position)
            longest = self.config.max_seq_len
            capacity = longest if fits >= longest else fits // CAPACITY_STEP * CAPACITY_STEP
            if capacity >= shortest or rows == 1:
                break
            rows //= 2
        if capacity >= shortest and shape() != (rows, capacity):
            self.cache = KVCache(self.config, rows, capacity, self.device, self.dtype)
        return shape()

    def retire(self, *requests: Request) -> None:
        """Free finished requests' rows; running requests in rows past the new end move into the freed
        rows below it (rows stay [0, n)), all in one move. Retired one at a time, the last row moved into
        each freed one, and a row moved might be one retiring in the same step: a batch of 32 that finished
        together made 16 moves of its whole cache (3.4 ms each for SmolLM2-135M at 170 positions, 54 ms at
        the end of a 128-token batch-32 run; BENCHMARKS.md)."""
        leaving = [r for r in requests if r.row is not None]
        for request in requests:
            if request.row is None and request in self.waiting:
                self.waiting.remove(request)
        if not leaving:
            return
        for request in leaving:
            assert self.running[request.row] is request, f"request {request.id} is not in its row {request.row}"
        gone = {request.row for request in leaving}
        stay = len(self.running) - len(gone)
        holes = sorted(row for row in gone if row < stay)
        movers = [r for r in self.running[stay:] if r.row not in gone]  # as many as the holes
        if movers:
            self.cache.move_rows([r.row for r in movers], holes, max(r.length for r in movers))
            for request, row in zip(movers, holes):
                self.running[row] = request
                request.row = row
        del self.running[stay:]
        for request in leaving:
            request.row = None

    def arrange(self) -> None:
        """Put the decoding requests in rows [0, d) and the prefilling ones after them, oldest first
        (the prefill budget goes to the oldest, so they finish in order and the region stays sorted).
        Only rows that change place are copied; usually none."""
        order = sorted(self.running, key=lambda r: (r.needs_prefill, r.id if r.needs_prefill else 0))
        moved = [(r.row, i) for i, r in enumerate(order) if r.row != i]
        if not moved:
            return
        length = max(order[i].length for _, i in moved)
        if length:
            self.cache.move_rows([src for src, _ in moved], [dst for _, dst in moved], length)
        for i, request in enumerate(order):
            request.row = i
        self.running = order

    @property
    def memory_in_use(self) -> int:
        return self.cache.nbytes if self.cache else 0
