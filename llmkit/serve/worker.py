"""The engine thread: the one place the model runs while the server is up.

One thread owns `llmkit.infer.Engine` and drives `Engine.step()`; every HTTP request becomes one engine
request per choice in its continuous batch (Orca-style, see llmkit/infer/scheduler.py), so all clients
share each decode step. The HTTP handlers run on the asyncio event loop and talk to this thread only
through queues:

- in: a thread-safe inbox of submissions, cancellations and small jobs (embeddings, prompt
  log-probabilities), drained between engine steps, so the engine is never touched by two threads;
- out: one asyncio queue per HTTP request, fed with `loop.call_soon_threadsafe`, carrying each
  choice's new tokens (and log-probabilities) after every step, then its finish reason.

A client that goes away has its generation cancelled: the cancellation reaches this thread before the
next step and `Engine.cancel` frees the request's KV-cache row. The number of accepted, unfinished
requests is bounded (running rows + a waiting queue); past that `submit` refuses with `Overloaded`,
which the API answers with 429 and Retry-After.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from llmkit.errors import LLMKitError, first_line
from llmkit.infer import SamplingParams, TokenLogprob
from llmkit.serve.metrics import ServerMetrics


class Overloaded(Exception):
    """The waiting queue is full."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"the server is busy (the waiting queue is full); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class Update:
    """News about one choice of a generation, as of the last engine step."""

    choice: int
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # set on the choice's last update: stop | length | cancelled | error
    cached_tokens: int = 0
    error_status: int = 0  # with finish_reason "error": 400 (the engine refused the request) or 500
    error: str = ""


class Generation:
    """One HTTP request's engine requests (one per choice) and the queue their updates arrive on."""

    def __init__(self, prompt_ids: list[int], params: list[SamplingParams], loop: asyncio.AbstractEventLoop,
                 updates: asyncio.Queue | None = None, first_choice: int = 0):
        """updates: a queue shared by several generations (a completions request with many prompts);
        their updates are told apart by `Update.choice`, numbered from first_choice."""
        self.prompt_ids = prompt_ids
        self.params = params
        self.loop = loop
        self.updates: asyncio.Queue[Update] = updates if updates is not None else asyncio.Queue()
        self.first_choice = first_choice
        self.accepted_at = time.monotonic()
        # Engine-thread state.
        self.requests: list = [None] * len(params)
        self.sent = [0] * len(params)  # tokens of each choice already put on the queue
        self.last_token_at: list[float | None] = [None] * len(params)
        self.open = set(range(len(params)))  # choices not finished yet

    @property
    def n(self) -> int:
        return len(self.params)

    def put(self, update: Update) -> None:
        update.choice += self.first_choice
        try:
            self.loop.call_soon_threadsafe(self.updates.put_nowait, update)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class EngineWorker:
    def __init__(self, load: Callable[[], object], metrics: ServerMetrics, max_batch_size: int, max_waiting: int):
        """load: builds the `llmkit.api.LLM` (on the engine thread, so the model is owned by it)."""
        self._load = load
        self.metrics = metrics
        self.capacity = max_batch_size + max_waiting
        self.llm = None
        self.engine = None
        self.ready = threading.Event()  # set once the model is loaded (or failed to load: see load_error)
        self.load_error: BaseException | None = None
        self.on_load_failure: Callable[[], None] | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._active: list[Generation] = []
        self._inflight = 0  # accepted engine requests not finished yet (running + waiting)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="llmkit-engine", daemon=True)

    # -- called from the event loop (or any thread)
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop",))

    def submit(self, prompt_ids: list[int], params: list[SamplingParams], updates: asyncio.Queue | None = None,
               first_choice: int = 0) -> Generation:
        with self._lock:
            if self._inflight + len(params) > self.capacity:
                self.metrics.count_rejected()
                raise Overloaded(retry_after_s=1)
            self._inflight += len(params)
        generation = Generation(prompt_ids, params, asyncio.get_running_loop(), updates, first_choice)
        self._inbox.put(("submit", generation))
        return generation

    def cancel(self, generation: Generation) -> None:
        self._inbox.put(("cancel", generation))

    async def call(self, fn: Callable, *args):
        """Run fn(*args) on the engine thread between two steps (model forwards outside the batch)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inbox.put(("call", fn, args, future, loop))
        return await future

    # -- the engine thread
    def _main(self) -> None:
        try:
            self.llm = self._load()
            self.engine = self.llm.engine
        except BaseException as e:  # noqa: BLE001 - reported to the user by the server, then it exits
            self.load_error = e
            self.ready.set()
            if self.on_load_failure is not None:
                self.on_load_failure()
            return
        self.ready.set()
        while not self._stopping:
            self._drain(block=not self.engine.has_work)
            if self._stopping:
                break
            if self.engine.has_work:
                try:
                    self.engine.step(on_first_tokens=self._deliver)  # first tokens before the decode forward
                except Exception:  # noqa: BLE001 - an engine bug must not take the server down
                    self._fail_all(traceback.format_exc())
            self._deliver()
            self._update_gauges()

    def _drain(self, block: bool) -> None:
        items = []
        try:
            items.append(self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait())
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        for item in items:
            kind = item[0]
            if kind == "submit":
                self._start(item[1])
            elif kind == "cancel":
                self._cancel(item[1], "cancelled")
            elif kind == "call":
                self._run_call(*item[1:])
            elif kind == "stop":
                self._stopping = True

    def _start(self, generation: Generation) -> None:
        for choice, params in enumerate(generation.params):
            try:
                generation.requests[choice] = self.engine.submit(generation.prompt_ids, params)
            except LLMKitError as e:  # e.g. the request can never fit the KV-cache budget
                self._cancel(generation, "error", 400, str(e))
                return
            except Exception as e:  # noqa: BLE001 - an engine bug fails this request, not the engine thread
                traceback.print_exc()  # (escaping here, it ended the thread: every later request hung)
                self._cancel(generation, "error", 500, f"internal error: {type(e).__name__}: {first_line(e)}")
                return
        self._active.append(generation)
        with self.metrics.lock:
            self.metrics.prompt_tokens += len(generation.prompt_ids) * generation.n

    def _cancel(self, generation: Generation, reason: str, status: int = 0, message: str = "") -> None:
        for choice in sorted(generation.open):
            request = generation.requests[choice]
            if request is not None and not request.done:
                try:
                    self.engine.cancel(request)
                except Exception:  # noqa: BLE001 - keep serving; the failure is in the report below
                    traceback.print_exc()
            self._close(generation, choice, Update(choice, [], finish_reason=reason, error_status=status,
                                                   error=message))

    def _close(self, generation: Generation, choice: int, update: Update) -> None:
        generation.open.discard(choice)
        generation.put(update)
        with self._lock:
            self._inflight -= 1
        self.metrics.count_finished(update.finish_reason)
        if not generation.open and generation in self._active:
            self._active.remove(generation)

    def _deliver(self) -> None:
        now = time.monotonic()
        for generation in list(self._active):
            for choice in sorted(generation.open):
                request = generation.requests[choice]
                new = request.output_ids[generation.sent[choice]:]
                if not new and not request.done:
                    continue
                logprobs = None
                if request.logprobs is not None:
                    logprobs = request.logprobs[generation.sent[choice]:generation.sent[choice] + len(new)]
                generation.sent[choice] += len(new)
                self._time(generation, choice, len(new), now)
                update = Update(choice, list(new), logprobs, cached_tokens=request.cached_tokens)
                if request.done:
                    update.finish_reason = request.finish_reason
                    if request.finish_reason == "error":  # a known reason is told; an unexpected one is logged
                        update.error_status = 400 if request.error_kind == "input" else 500
                        update.error = ("the engine could not finish this request (see the server log)"
                                        if request.error_kind == "internal"
                                        else f"the engine could not finish this request: {request.error}")
                    self._close(generation, choice, update)
                else:
                    generation.put(update)

    def _time(self, generation: Generation, choice: int, tokens: int, now: float) -> None:
        if not tokens:
            return
        with self.metrics.lock:
            self.metrics.generation_tokens += tokens
            last = generation.last_token_at[choice]
            if last is None:
                self.metrics.ttft.observe(now - generation.accepted_at)
            else:
                for _ in range(tokens):
                    self.metrics.itl.observe((now - last) / tokens)
        generation.last_token_at[choice] = now

    def _fail_all(self, trace: str) -> None:
        print(f"llmkit serve: the engine failed; its requests are answered with 500:\n{trace}", flush=True)
        for generation in list(self._active):
            self._cancel(generation, "error", 500, "the engine failed on this request's batch (see the server log)")

    def _run_call(self, fn: Callable, args: tuple, future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        def settle(ok: bool, value) -> None:
            if not future.done():
                future.set_result(value) if ok else future.set_exception(value)

        try:
            result, ok = fn(*args), True
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting handler
            result, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:
            pass

    def _update_gauges(self) -> None:
        scheduler = self.engine.scheduler
        running = list(scheduler.running)
        stats = self.engine.stats
        prompt = stats["prefill_tokens"] + stats["cached_tokens"]
        budget_positions = max(scheduler.memory_bytes // max(scheduler.bytes_per_position, 1), 1)
        with self._lock:
            inflight = self._inflight
        with self.metrics.lock:
            self.metrics.running = len(running)
            self.metrics.waiting = max(inflight - len(running), 0)
            self.metrics.kv_cache_usage = sum(r.reserved for r in running) / budget_positions
            self.metrics.kv_cache_bytes = scheduler.memory_in_use
            self.metrics.prefix_cache_hit_rate = stats["cached_tokens"] / prompt if prompt else 0.0
