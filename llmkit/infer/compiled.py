"""Compiled decode steps: how they are compiled, which attention lengths they see, and a warm-up that
pays for their compilations before the first user does.

A compiled step is specialised on the sizes it first sees. Dynamo compiles the first values it meets
as constants and recompiles once when one changes (making it symbolic); the engine's decode step has
four sizes that change (rows, the cache's rows and capacity, the attention length, a multiple of
ATTEND_STEP), and four graphs cover every later step (`warm_up` says why four). Once they exist, the
engine calls its step without evaluating dynamo's guards (`call_warmed`).
"""

from __future__ import annotations

import logging
import time

import torch

from llmkit.infer.packed import is_packed, pack_linears

logger = logging.getLogger(__name__)

ATTEND_STEP = 64  # a compiled decode step attends to a multiple of this many key positions


def compile_for_inference(fn, model, cpp_wrapper: bool | None = None):
    """`fn`, a forward of `model` for decoding (the engine's step, a speculative verifier's, a draft
    model's), compiled; `cpp_wrapper` None means on a CPU (below). Inductor's options are set around
    every call, not passed as `torch.compile(options=...)`: dynamo decides at trace time whether the
    parameters are constants, from the global inductor config, and an option reaches only inductor, too
    late (measured on torch 2.13: no weight was packed). Recompilations happen inside calls, so each call carries the options
    (36 us a call, 0.1% of a batch-1 step).

    - Weights. A CPU fp32 model has its Linears packed for oneDNN first (`llmkit.infer.packed`, in
      place: the model is inference-only from then on); its packed weights are inputs of the graph,
      shared by every graph and by eager prefill. Measured on the 2-core AVX2 EPYC with SmolLM2 fp32
      (BENCHMARKS.md): decode as fast as with freezing, eager prefill on packed weights (1.33x for a
      wave of 16 short prompts), one copy of the weights for all graphs (2.1 against 3.4 GiB with two
      graphs), and compilations inductor's cache can serve again. Other models (bf16, quantized, on a
      GPU) are compiled with `freezing`: the weights become constants of the graph, so inductor packs
      each bf16 linear's weight once for oneDNN (a batch-32 step's linears 84 ms packed against 146 ms
      unpacked). The price: a compiled engine must be rebuilt if the weights change (training's
      rollouts use eager engines).
    - The wrapper, on a CPU. Inductor's default wrapper is Python: per layer ~40 statements (buffer
      allocations, views, stride asserts, one call per kernel and operator), ~1.5 ms of a ~6-ms
      batch-1 SmolLM2 int4 token. `cpp_wrapper` generates that code as C++ instead. Measured in one
      process, alternating rounds, tokens identical (2-core AVX2 EPYC, BENCHMARKS.md 2026-12-04):
      batch-1 int4 decode 203.7 against 171.0 tok/s (1.19x, 6 of 6 rounds), fp32 33.8 against 24.1
      (1.40x, 4 of 4), batch-32 int4 1.00x (a 50-ms step). The price is compile time: `warm_up` of an
      int4 engine from an empty inductor cache 262 s against 223 (the wrapper is a C++ file the size
      of the model), 91 s once inductor's cache holds the graphs. `benchmarks/wrapper_ab.py` measures it.
    """
    pack_linears(model)
    options = {} if is_packed(model) else {"freezing": True}
    if cpp_wrapper if cpp_wrapper is not None else _device(model).type == "cpu":
        options["cpp_wrapper"] = True
    compiled = torch.compile(fn, dynamic=None)

    def call(*args, **kwargs):
        with torch._inductor.config.patch(options):
            return compiled(*args, **kwargs)

    return call


def _device(model) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def attend_length(longest: int, capacity: int, compiled: bool) -> int:
    """Key positions a decode step attends to: the longest row's, rounded up to a multiple of
    ATTEND_STEP when compiled (few shapes). A request that reserved a long row early in its reply does
    not pay attention over all of it every step: at batch 32 with a 256-slot capacity, attention was
    53 ms of a 188-ms SmolLM2 step before the length followed the rows."""
    if not compiled:
        return longest
    return min(-(-longest // ATTEND_STEP) * ATTEND_STEP, capacity)


def warm_up(engine) -> float:
    """Run the short generations that trigger a compiled engine's compilations, before any user waits
    for one; returns the seconds it took (0 for an eager engine). A decode step's inputs have four
    sizes that change: the rows it runs, the cache's rows, the cache's capacity and the attention
    length. Dynamo compiles the first values it sees as constants, and makes a size symbolic once it
    has seen two values of it; but it never lets a symbolic size stand for 1, so a lone row keeps
    graphs of its own. Hence: one row at two capacities and lengths (capacity and length symbolic),
    two rows (rows symbolic), then one row again in the two-row cache. Later shapes reuse these four
    graphs (tested). An engine whose step is compiled ahead of time (ahead.py) has one program for
    every shape: one short generation builds it. `llmkit serve --compile` calls it before /health
    answers 200."""
    if not engine.compiled:
        return 0.0
    from llmkit.infer.sampling import SamplingParams
    from llmkit.infer.scheduler import CAPACITY_STEP

    start = time.perf_counter()
    longest = engine.model.config.max_seq_len - 4
    params = SamplingParams(max_new_tokens=2, temperature=0)
    # (a lone request whose tokens run in one parallel region (token_step.py) never runs the program: two rows)
    ahead_rows = 2 if engine.token_step() is not None else 1
    shapes = ((ahead_rows, 1),) if engine.ahead is not None else ((1, 1), (1, CAPACITY_STEP + 1), (2, 1), (1, 1))
    for rows, length in shapes:
        began = time.perf_counter()
        engine.generate_batch([[0] * max(1, min(length, longest))] + [[0]] * (rows - 1), params)
        logger.info("warm-up: %d row(s), %d positions: %.1f s", rows, length, time.perf_counter() - began)
    engine.warmed_up = True
    return time.perf_counter() - start


def call_warmed(step, *args):
    """`step(*args)`, a compiled decode step whose graphs all exist (after `warm_up`), without dynamo's
    guard evaluation: before each call dynamo checks ~2,700 guards on the model's modules, globals and
    inputs (0.85 ms of a 14-ms batch-1 SmolLM2 int4 step on the 2-core AVX2 EPYC); skipping all but the
    guards that tell the cached graphs apart (`skip_guard_eval_unsafe`) made batch-1 decode 1.06-1.08x
    faster, measured in one process (benchmarks/guards_ab.py, BENCHMARKS.md). It is unsafe only where a
    needed graph is missing: a trusted call would run a graph made for other inputs. The engine's decode
    inputs change only in the sizes `warm_up` made symbolic (its test runs every later shape with guards
    skipped and compares with eager), and dynamo refuses an input that no cached graph's differentiating
    guards accept ("Recompilation triggered with skip_guard_eval_unsafe stance"): that call is then made
    again with every guard, compiling the graph it needs, and the next ones are trusted again. The
    stance is the process's, for the length of the call: in a server the engine's thread is the only one
    running compiled code."""
    try:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return step(*args)
    except RuntimeError as error:
        if "skip_guard_eval_unsafe" not in str(error):
            raise
        logger.warning("a decode step needed a graph the warm-up did not compile; compiling it")
        return step(*args)
