"""The engine's decode step compiled ahead of time (AOTInductor), for compiled engines on llmkit's CPU kernels.

`torch.compile` runs a compiled step through Python on every call: dynamo's frame entry, AOTAutograd's
runtime wrappers, inductor's shim that turns ~190 frozen weights and the step's size integers into
handles, and an output alias replayed by view. Timed on the 2-core AVX2 EPYC (SmolLM2-135M int8, batch
1, guards already skipped after warm-up): ~1.1 ms of a ~9-ms step was outside the graph's C++ entry. An
AOTInductor build of the same step is a shared library with a C++ runner: the engine hands it five tensors
and gets the logits back, nothing in Python between. Measured in one process, alternating rounds, greedy
tokens identical (`benchmarks/ahead_ab.py`, BENCHMARKS.md 2026-12-06): batch-1 decode 1.10x (int8) and
1.13x (int4), batch 32 unchanged, first build ~90 s against torch.compile's ~140 s for its four graphs.

How: `torch.export` traces `Engine._decode_forward` over a small example cache through `DecodeProgram`
(the model as the engine calls it, the cache's tensors given as inputs: `KVCache.over`), every size that
changes symbolic (the rows the step runs, the cache's rows and capacity, the attention length), so one
program serves every decode step: no warm-up shapes, no guards, no attention length rounded up for a
graph's sake. AOTInductor compiles it (its wrapper C++, as compiled.py's `cpp_wrapper`); the weights
stay the model's own tensors, handed to the runner as user-managed constants (one copy in memory), so
the package holds code only (~4 MB for SmolLM2) and is kept in inductor's cache directory for the next
process (`package_path`). The cache's stores are written in place, as by the compiled step. The program
calls llmkit's kernels as C functions (`cpu_kernels.c_shims`) rather than through AOTInductor's proxy
executor and the dispatcher, and inductor's own small kernels without OpenMP regions (`build_configs`):
a further 1.05x (int8) and 1.06x (int4) at batch 1, batch 32 unchanged (BENCHMARKS.md, 2026-12-06).

What it takes: a decoder-only model on a CPU whose layers run the int8-activation kernels, no mixture of
experts (`ahead_of_time`); a step over rows [0, n) of the cache (the engine's decode steps; `__call__`
checks). The program is built on the first call or by `compiled.warm_up`; a model that cannot be exported
falls back to `torch.compile`'s step, logged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import llmkit.cpu_kernels as cpu_kernels
from llmkit.errors import GenerationError
from llmkit.infer.kv_cache import KVCache, reads_half_cache

logger = logging.getLogger(__name__)

EXAMPLE_ROWS, EXAMPLE_CACHE_ROWS, EXAMPLE_CAPACITY, EXAMPLE_ATTEND = 2, 3, 128, 64  # all distinct: export
# would otherwise treat two sizes of equal example value as one


def ahead_of_time(model) -> bool:
    """Whether a compiled engine on `model` runs its decode step as an AOTInductor program: a decoder-only
    model on a CPU whose layers run llmkit's int8-activation kernels (int8/int4 weights,
    `kv_cache.reads_half_cache`). Other models keep `torch.compile` (compiled.py): an fp32 model's
    oneDNN-packed weights become constants the runner cannot be handed by name, and bf16 linears want
    inductor's freezing to pack them; neither was measured this way."""
    return reads_half_cache(model) and not model.config.n_experts  # (routing by data: export cannot trace it)


class DecodeProgram(nn.Module):
    """What export traces: the engine's decode forward, the cache's tensors as inputs.

    forward(tokens (n, 1), positions (n, 1), key_positions (attention length,), key_store, value_store
    [, key_scale_store, value_scale_store]) -> logits (n, vocab) float32."""

    def __init__(self, forward, cache):
        super().__init__()
        self.forward_of_engine = forward  # Engine._decode_forward, bound: the model is reached through it
        self.model = forward.__self__.model  # a submodule, so that export lifts its weights as constants
        self.layout = cache  # a KVCache of the engine's dtype and shape, bar rows and capacity

    def forward(self, tokens, positions, key_positions, *stores):
        return self.forward_of_engine(tokens, positions, self.layout.over(tokens.shape[0], key_positions, *stores))


class AheadOfTimeStep:
    """`step(tokens, positions, cache)` -> logits, like the compiled decode step, run by an AOTInductor
    program built on the first call (module docstring). `fallback()` returns the step `torch.compile`
    makes: if the model cannot be exported or built (a layer export cannot trace), the engine says so once
    in its log and decodes through that instead, as it would without this module."""

    def __init__(self, forward, max_rows: int, fallback):
        self.forward, self.max_rows, self.fallback = forward, max_rows, fallback
        self.runner = None
        self.compiled_instead = None  # the fallback step, once a build failed
        self.constants: dict[str, torch.Tensor] = {}  # kept alive: the runner holds their pointers
        self.build_seconds = 0.0

    @property
    def built(self) -> bool:
        return self.runner is not None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        inputs = cache.step_inputs()
        if inputs is None:
            raise GenerationError("an ahead-of-time decode step runs the cache's first rows with no padding; "
                                  f"this one is bound to rows {cache.bound_rows} (build the engine without compile)")
        if self.runner is None and self.compiled_instead is None:
            try:
                self.build(cache)
            except Exception as error:  # noqa: BLE001 - any failure to export or build: torch.compile's step instead
                logger.warning("the decode step could not be compiled ahead of time (%s: %s); using torch.compile",
                               type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self.compiled_instead = self.fallback()
        if self.compiled_instead is not None:
            return self.compiled_instead(tokens, positions, cache)
        return self.runner.run([tokens, positions, *inputs])[0]

    def build(self, cache) -> None:
        """Export the step over an example cache like `cache` and compile it with AOTInductor."""
        started = time.perf_counter()
        config = cache.config
        capacity = min(EXAMPLE_CAPACITY, config.max_seq_len)
        example = KVCache(config, EXAMPLE_CACHE_ROWS, capacity, cache.device, cache.dtype)
        program = DecodeProgram(self.forward, example).eval()
        attend = min(EXAMPLE_ATTEND, example.max_len)
        example.bind(0, EXAMPLE_ROWS, attend)
        inputs = (torch.zeros(EXAMPLE_ROWS, 1, dtype=torch.long), torch.full((EXAMPLE_ROWS, 1), attend - 1),
                  *example.step_inputs())
        dim = torch.export.Dim
        most = max(self.max_rows, EXAMPLE_CACHE_ROWS)  # (an engine of one row still has a 3-row example)
        rows, cache_rows = dim("rows", min=1, max=most), dim("cache_rows", min=1, max=most)
        capacities = dim("capacity", min=1, max=config.max_seq_len)
        attend_length = dim("attend", min=1, max=config.max_seq_len)
        store = {1: cache_rows, 3: capacities}
        shapes = ({0: rows}, {0: rows}, {0: attend_length}, tuple(store for _ in inputs[3:]))  # *stores: one tuple
        with torch.inference_mode(), warnings.catch_warnings():  # the cache's tensors are inference tensors
            # torch's own export internals warn about a deprecated pytree call (torch 2.13): not the user's
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            exported = torch.export.export(program, inputs, dynamic_shapes=shapes, strict=False)
            named = (dict(program.named_parameters(remove_duplicate=False))
                     | dict(program.named_buffers(remove_duplicate=False))
                     | dict(exported.constants))  # tensors a module holds as plain attributes
            runner = load_or_build(exported, named)
        self.constants = {name: named[name] for name in runner.get_constant_fqns()}
        runner.load_constants(self.constants, check_full_update=True, user_managed=True)
        self.runner = runner.loader
        self.build_seconds = time.perf_counter() - started
        logger.info("decode step compiled ahead of time in %.1f s", self.build_seconds)


# OpenMP regions in inductor's own kernels (norms, RoPE, the cache's stores) start at this many values a
# thread: a decode step's are a few thousand values, less work than a region's start and end on two
# threads, so they run on the calling thread (inductor's default, 512, parallelised them at 2 rows).
SERIAL_KERNELS_BELOW = 1 << 20


def build_configs() -> dict:
    """Inductor's settings for the program: weights left out of the package (handed over at load), the
    kernels called as C functions where they have them (cpu_kernels.c_shims), inductor's kernels serial."""
    return {"aot_inductor.package_constants_in_so": False,
            "aot_inductor.custom_ops_to_c_shims": cpu_kernels.c_shims(),
            "cpp.min_chunk_size": SERIAL_KERNELS_BELOW}


def package_path(exported, tensors: dict[str, torch.Tensor], configs: dict) -> Path:
    """Where the built program of `exported` is kept between processes (a server's restart loads it in
    seconds): inductor's cache directory, under a key of all the build depends on: the traced graph and
    its size ranges, the weights' names, shapes and dtypes (not their values: the runner is handed them
    at load, so one build serves every checkpoint of an architecture), torch's version, the CPU's vector
    instruction set (inductor's kernels are compiled for it) and the build's settings (`build_configs`,
    the kernels' C declarations included). llmkit's own operators are called by name from the program: a
    rebuilt kernel library needs no new program."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    settings = {name: sorted(map(str, value.values())) if isinstance(value, dict) else value
                for name, value in configs.items()}  # (the C declarations, not the operator objects)
    parts = [torch.__version__, str(pick_vec_isa()), exported.graph_module.code,
             repr(exported.range_constraints), repr(exported.graph_signature), repr(sorted(settings.items()))]
    parts += [f"{name} {tuple(t.shape)} {t.dtype}" for name, t in sorted(tensors.items())]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]
    return Path(cache_dir()) / "llmkit-decode" / f"{key}.pt2"


def load_or_build(exported, tensors: dict[str, torch.Tensor]):
    """The AOTInductor runner of `exported`: its package from the cache (`package_path`) if there, else
    compiled (the weights left out of it: `package_constants_in_so` off) and put there atomically. A
    cached package that does not load is rebuilt. Inductor's `force_disable_caches` turns the cache off."""
    configs = build_configs()  # (first: a cached program calls the kernels' C functions by name)
    path = package_path(exported, tensors, configs)
    use_cache = not torch._inductor.config.force_disable_caches
    if use_cache and path.exists():
        try:
            return torch._inductor.aoti_load_package(str(path))
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file: build it again
            logger.warning("rebuilding the cached decode program %s (%s)", path, error)
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="building-", dir=path.parent))
    try:
        built = torch._inductor.aoti_compile_and_package(
            exported, package_path=str(directory / path.name), inductor_configs=configs)
        runner = torch._inductor.aoti_load_package(built)
        if use_cache:
            os.replace(built, path)  # whole or not at all: a reader never sees half a package
        return runner
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # loaded: the library is mapped, the files can go
