"""A key/value cache pre-allocated for every layer.

Shapes are fixed at creation (per layer rows x n_kv_heads x capacity x head_dim: it stores the key/value
heads, not the query heads, so grouped-query models cache n_heads / n_kv_heads times less). Each row holds
one sequence; a forward writes its keys and values at their absolute positions, so rows can sit at
different positions (batched prompts of different lengths, continuous batching) and rolling back a
rejected speculative draft costs nothing: stale entries past a row's position are masked out and
overwritten later (the static-cache design of gpt-fast).

All layers' keys are one tensor, and all their values another (`key_store`, `value_store`, layers first;
`keys[i]` and `values[i]` are views of layer i). A compiled decode step then takes two cache tensors as
inputs, not two per layer. With 60 of them, TorchDynamo passed each one's sizes as integers of their own
(new symbols for every tensor's rows and capacity), ~120 per call, each made a tensor and read back by
the graph's wrapper: a batch-1 SmolLM2 token spent 0.35 ms in dynamo's entry alone. One store: 0.06 ms,
7 integers; batch-1 int4 decode 1.02x faster (5 of 6 alternating rounds), batch 32 unchanged
(BENCHMARKS.md, 2026-12-05).

The model talks to it through three calls per forward:

    mask = cache.prepare(positions)   # once: (rows, 1, seq, keys) boolean attention mask
    k, v = cache.update(layer, k, v)  # per layer: store the new keys/values, return all visible ones
    scales = cache.scales(layer)      # per layer: an int8 cache's scales of those rows (else None)

and the engine says beforehand which rows the forward runs on and how many key positions it needs
(`cache.bind(start, stop, kv_len)`), so neither call has to read a tensor back to the host.

Prompt chunks of several requests run as one forward of left-padded rows (`bind(..., pad=[...])`: the
first pad[i] tokens of row i are filler). Left padding keeps each row's last real token in the last
column, where `last_token_only` reads it; a filler token takes its row's first real position (so its
attention row is never empty, hence never NaN) and its keys and values are not written.

An int8 cache (`kv_cache_dtype="int8"`, for the models whose attention runs through llmkit's CPU kernel)
stores each position's key and value of each kv head as int8 values and one float32 scale (`quantize_rows`,
in `key_scale_store` / `value_scale_store`, beside the values and moved, copied and prefix-cached with them:
`parts`); the kernel reads them as the float products value * scale. A batch-32 decode step reads its whole
cache from memory: 68 bytes a row against float16's 128 (BENCHMARKS.md).

An encoder-decoder's cache also holds, per row, the cross-attention keys and values of that request's
source (`store_cross`, once at admission: they depend on the source alone), which its decoder blocks read
back each forward (`cross_keys_values`); they move, clear and grow with the row.
"""

from __future__ import annotations

import torch

from llmkit.config import ModelConfig
from llmkit.errors import GenerationError
from llmkit.infer.huge_pages import zeros as huge_page_zeros

CROSS_STEP = 64  # an encoder-decoder's source capacity grows in multiples of this (the scheduler budgets it)


KV_CACHE_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "int8": torch.int8}


def reads_half_cache(model) -> bool:
    """Whether every attention layer of `model` reads its cache through llmkit's CPU attention kernel
    (float32 models whose layers round activations to int8, llmkit.cpu_kernels), which reads a float16 or
    int8 cache as it is: SDPA would need float32 copies of it every step."""
    weight = model.tok_emb.weight
    return (model.encoder is None and weight.device.type == "cpu" and weight.dtype == torch.float32
            and all(block.attn.rounds_activations() for block in model.blocks))


def cache_dtype(model, choice: str = "auto") -> torch.dtype:
    """The dtype of a model's KV cache. "auto": float16 where the attention kernel reads it (half the bytes:
    batch-32 decode on a CPU reads its whole cache from memory every step; llama.cpp's default cache type
    is f16 too), else the model's own dtype; "float32" / "float16" / "int8": that, where the model's
    attention can read it (`choice` one of KV_CACHE_DTYPES, checked with the engine's other options). int8:
    each position's key and value in each kv head rounded to int8 with one float32 scale (quantize_rows),
    ~a quarter of float32's bytes, read by the same kernel."""
    own = model.tok_emb.weight.dtype
    if choice == "auto":
        return torch.float16 if reads_half_cache(model) else own
    wanted = KV_CACHE_DTYPES[choice]
    if wanted != own and not (wanted in (torch.float16, torch.int8) and reads_half_cache(model)):
        raise GenerationError(f"kv_cache_dtype={choice!r} needs a model whose attention reads that dtype: this "
                              f"one's reads {str(own).removeprefix('torch.')} (float16 and int8 caches are read by "
                              "llmkit's CPU kernels, used by int4/int8 models with int8 activations); use 'auto'")
    return wanted


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., head_dim) -> int8 values and (..., 1) float32 scales, per row: scale = max|x| / 127 rounded to
    float16's precision and value round(x / scale), so that x ~ value * scale (what the attention kernel
    reads; an all-zero row: zeros, scale 0). One scale per position and kv head (llama.cpp's q8_0 cache:
    int8 values and a float16 scale per 32). Rounded to float16: a key a compiled step computes one ulp
    apart from the eager forward (inductor's fused code rounds differently) then moves a row's scale only
    when it crosses a float16 rounding boundary, as it moves a float16 cache's value, rather than every time
    its largest value moves; with full float32 scales a compiled engine's seeded samples parted from the
    eager engine's (tests/test_cpu_kernels.py). Kept as float32 all the same: the kernel multiplies by a
    row's scale twice a query head, and converting float16 there made a decode call 14-16% slower (warm)
    against 3-6% with float32, for 2 bytes a row (BENCHMARKS.md)."""
    x = x.float()
    amax = x.abs().amax(-1, keepdim=True)
    scale = (amax / 127).half().float()
    values = torch.where(scale > 0, torch.round(x / scale), 0.0).clamp(-127, 127).to(torch.int8)
    return values, scale


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token occupies across all layers (an int8 cache's scales included)."""
    element = torch.empty((), dtype=dtype).element_size()
    row = config.head_dim * element + (4 if dtype == torch.int8 else 0)
    return 2 * config.n_layers * config.n_kv_heads * row


def store(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed cache store: on a CPU in huge pages where the OS has them (huge_pages.py)."""
    return huge_page_zeros(shape, dtype) if device.type == "cpu" else torch.zeros(shape, device=device, dtype=dtype)


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if max_len > config.max_seq_len:
            raise GenerationError(f"cache length {max_len} exceeds the model's context of {config.max_seq_len} tokens")
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        # on a CPU in 2 MB pages: attention streams these every step (huge_pages.py)
        self.key_store, self.value_store = store(shape, self.device, dtype), store(shape, self.device, dtype)
        self.keys, self.values = list(self.key_store.unbind(0)), list(self.value_store.unbind(0))
        # an int8 cache: each position's float32 scale per kv head, (layers, rows, kv_heads, max_len, 1)
        self.key_scale_store = self.value_scale_store = None
        self.key_scales: list[torch.Tensor] = []
        self.value_scales: list[torch.Tensor] = []
        if dtype == torch.int8:
            self.key_scale_store = store(shape[:-1] + (1,), self.device, torch.float32)
            self.value_scale_store = store(shape[:-1] + (1,), self.device, torch.float32)
            self.key_scales, self.value_scales = list(self.key_scale_store.unbind(0)), list(self.value_scale_store.unbind(0))
        self.batch_size, self.max_len = batch_size, max_len
        self.key_positions = torch.arange(max_len, device=device)
        self._rows: tuple[int, int] = (0, batch_size)
        self._kv_len: int | None = None
        self._positions: torch.Tensor | None = None
        self._attend_len: int | None = None
        self._row_index: torch.Tensor | None = None
        self._pad: list[int] | None = None
        self._write: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # encoder-decoder: per decoder layer (rows, kv_heads, source capacity, head_dim), and which source
        # positions of each row are real (the capacity grows with the longest source stored)
        self.cross_keys: list[torch.Tensor] = []
        self.cross_values: list[torch.Tensor] = []
        self.cross_mask: torch.Tensor | None = None
        if config.n_encoder_layers:
            self._allocate_cross(0)

    def _allocate_cross(self, capacity: int) -> None:
        shape = (self.batch_size, self.config.n_kv_heads, capacity, self.config.head_dim)
        self.cross_keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.config.n_layers)]
        self.cross_values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.config.n_layers)]
        self.cross_mask = torch.zeros(self.batch_size, capacity, dtype=torch.bool, device=self.device)

    def parts(self) -> list[list[torch.Tensor]]:
        """Per layer, what a position stores: keys and values (rows, kv_heads, max_len, head_dim), and an
        int8 cache's scales (rows, kv_heads, max_len, 1). Moving, copying or caching positions moves all."""
        return [self.keys, self.values] + ([self.key_scales, self.value_scales] if self.key_scales else [])

    def _position_tensors(self) -> list[torch.Tensor]:
        return [t for part in self.parts() for t in part]

    def _row_tensors(self) -> list[torch.Tensor]:
        """Every tensor whose first dimension is the row: keys and values (and scales), and the cross-attention's."""
        return self._position_tensors() + self.cross_keys + self.cross_values

    @property
    def cross_capacity(self) -> int:
        """Source positions each row can hold cross-attention keys and values for (0: a decoder-only model)."""
        return self.cross_mask.shape[1] if self.cross_mask is not None else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._row_tensors())

    # -- the engine's side
    def bind(self, start: int, stop: int, kv_len: int | None = None, pad: list[int] | None = None) -> None:
        """The next forward runs on rows [start, stop) and attends to key positions [0, kv_len).

        kv_len None means the whole capacity (static shapes for a compiled step); the engine knows
        each row's length on the host, so it never needs to read positions back from the device.
        pad: per row, how many leading tokens of the forward are filler (left padding), not stored."""
        if not 0 <= start < stop <= self.batch_size:
            raise GenerationError(f"rows [{start}, {stop}) are outside the cache's {self.batch_size} rows")
        if kv_len is not None and kv_len > self.max_len:
            raise GenerationError(f"position {kv_len - 1} is past the cache's {self.max_len} slots; "
                                  "shorten the prompt or lower max_new_tokens")
        if pad is not None and len(pad) != stop - start:
            raise ValueError(f"pad has {len(pad)} entries for {stop - start} rows")
        self._rows, self._kv_len = (start, stop), kv_len
        self._pad = pad if pad is not None and any(pad) else None

    @property
    def bound_rows(self) -> tuple[int, int]:
        return self._rows

    def step_inputs(self) -> list[torch.Tensor] | None:
        """The tensors an ahead-of-time decode step (ahead.py) takes for the bound rows: the key positions
        it attends to (their number is the attention length) and the stores (an int8 cache's scales too);
        None when the rows do not start at 0, are padded, or have no attention length."""
        if self._rows[0] != 0 or self._pad is not None or self._kv_len is None:
            return None
        stores = [self.key_store, self.value_store]
        if self.key_scale_store is not None:
            stores += [self.key_scale_store, self.value_scale_store]
        return [self.key_positions[: self._kv_len]] + stores

    def over(self, rows: int, key_positions: torch.Tensor, key_store: torch.Tensor, value_store: torch.Tensor,
             key_scale_store: torch.Tensor | None = None, value_scale_store: torch.Tensor | None = None) -> "KVCache":
        """This cache's kind over other tensors (`step_inputs`'), bound to rows [0, rows) attending to
        len(key_positions) positions: what an exported decode step traces the model with (ahead.py)."""
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        view.key_store, view.value_store = key_store, value_store
        view.key_scale_store, view.value_scale_store = key_scale_store, value_scale_store
        view.keys = view.values = view.key_scales = view.value_scales = []  # per-layer views: not for a step
        view.key_positions = key_positions
        view._rows, view._kv_len, view._pad = (0, rows), key_positions.shape[0], None
        return view

    # -- the model's side
    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: (rows or 1, seq) absolute positions of the tokens about to be run."""
        start, stop = self._rows
        positions = positions.expand(stop - start, -1)
        kv_len = self._kv_len
        if kv_len is None and not torch.compiler.is_compiling():
            kv_len = int(positions.max()) + 1  # unbound use (tests, scoring): one host read is fine
            if kv_len > self.max_len:
                raise GenerationError(f"position {kv_len - 1} is past the cache's {self.max_len} slots; "
                                      "shorten the prompt or lower max_new_tokens")
        self._positions, self._attend_len = positions, kv_len
        self._row_index = torch.arange(stop - start, device=positions.device)[:, None]
        self._write = None
        if self._pad is not None:  # the real tokens only: (row, column) pairs built on the host, no sync
            seq = positions.shape[1]
            rows = [r for r, p in enumerate(self._pad) for _ in range(seq - p)]
            columns = [c for p in self._pad for c in range(p, seq)]
            rows_t = torch.tensor(rows, device=positions.device)
            columns_t = torch.tensor(columns, device=positions.device)
            self._write = (rows_t, columns_t, positions[rows_t, columns_t])
        key_positions = self.key_positions if kv_len is None else self.key_positions[:kv_len]
        # A query at position p sees every key at position <= p (causal), including earlier forwards';
        # keys past p in a row are stale (another sequence's, or a rejected draft's) and stay hidden.
        return key_positions[None, None, None, :] <= positions[:, None, :, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               whole_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (rows, n_kv_heads, seq, head_dim), written at each row's own positions. Returns the bound
        rows' keys and values up to the attention length, or at every slot with `whole_rows` (for
        llmkit's attention kernel, which reads as many keys as the mask is wide: a compiled step then has
        no slice whose contiguity -- the length equal to the capacity or not -- it would specialise on,
        compiling a graph the warm-up did not)."""
        start, stop = self._rows
        all_keys, all_values = self.key_store, self.value_store
        # One index_put covers every case (rows at equal or different positions) without a host sync.
        # It writes into the whole store, the layer too given as an index tensor, not into a view (a
        # layer's, the bound rows'): a compiled step turns a write through a view into copies of the cache
        # (functionalization regenerates the base from the view), which inductor does not turn back into
        # an in-place write -- four full copies per layer per step, 70 ms of a 300-ms batch-32 SmolLM2
        # step, measured. Written into the base tensor, the write stays in place.
        layer_index = torch.full((1, 1), layer, dtype=torch.long, device=all_keys.device)
        if self.dtype == torch.int8:  # values and their scales, each stored like float keys
            (k, k_scale), (v, v_scale) = quantize_rows(k), quantize_rows(v)
            pairs = ((all_keys, k), (all_values, v), (self.key_scale_store, k_scale), (self.value_scale_store, v_scale))
        else:  # a float16 cache of a float32 model (cache_dtype)
            pairs = ((all_keys, k.to(self.dtype)), (all_values, v.to(self.dtype)))
        for store, new in pairs:
            if self._write is None:
                store[layer_index, self._row_index + start, :, self._positions] = new.transpose(1, 2)
            else:  # left-padded rows: the filler tokens' keys and values are dropped
                rows, columns, positions = self._write
                store[layer_index, rows + start, :, positions] = new.transpose(1, 2)[rows, columns]
        keys, values = all_keys[layer, start:stop], all_values[layer, start:stop]
        if self._attend_len is None or whole_rows:
            return keys, values
        return keys[:, :, : self._attend_len], values[:, :, : self._attend_len]

    def scales(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An int8 cache: the bound rows' key and value scales of `layer`, every slot (for the attention
        kernel, with update's whole rows); None for a float cache."""
        if self.key_scale_store is None:
            return None
        start, stop = self._rows
        return self.key_scale_store[layer, start:stop], self.value_scale_store[layer, start:stop]

    # -- an encoder-decoder's source
    @torch.inference_mode()
    def store_cross(self, rows: list[int], keys_values: list[tuple[torch.Tensor, torch.Tensor]],
                    lengths: list[int]) -> None:
        """Hold the cross-attention keys and values of the sources of the requests in `rows`: per decoder
        layer, (len(rows), kv_heads, source, head_dim) of a right-padded batch of sources, row i's first
        lengths[i] positions real (`Transformer.cross_keys_values`)."""
        source = keys_values[0][0].shape[2]
        self.grow_cross(source)
        index = torch.tensor(rows, device=self.device)
        for layer, (k, v) in enumerate(keys_values):
            self.cross_keys[layer][index, :, :source] = k.to(self.dtype)
            self.cross_values[layer][index, :, :source] = v.to(self.dtype)
        real = torch.arange(self.cross_mask.shape[1], device=self.device)[None] < torch.tensor(lengths, device=self.device)[:, None]
        self.cross_mask[index] = real

    @torch.inference_mode()
    def grow_cross(self, positions: int) -> None:
        """Room for sources of `positions` tokens in every row (the scheduler reserves it on admission,
        within its budget), in multiples of CROSS_STEP: few reallocations, few shapes."""
        capacity = self.cross_capacity
        if positions <= capacity:
            return
        old = (self.cross_keys, self.cross_values, self.cross_mask)
        self._allocate_cross(-(-positions // CROSS_STEP) * CROSS_STEP)
        for old_t, new_t in zip(old[0] + old[1], self.cross_keys + self.cross_values):
            new_t[:, :, :capacity] = old_t
        self.cross_mask[:, :capacity] = old[2]

    def cross_keys_values(self, layer: int, attention=None):
        """The bound rows' cross-attention keys, values and (rows, 1, 1, source) mask, for `layer`."""
        start, stop = self._rows
        return (self.cross_keys[layer][start:stop], self.cross_values[layer][start:stop],
                self.cross_mask[start:stop, None, None, :])

    # -- moving rows (continuous batching keeps running sequences in rows [0, n))
    # In inference mode whatever mode the caller is in: a cache filled inside `torch.inference_mode()`
    # holds inference tensors, which refuse in-place writes outside it.
    def _move_cross(self, sources: list[int], destinations: list[int]) -> None:
        if self.cross_mask is not None:  # (sources gathered before anything is written: a permutation is safe)
            src, dst = torch.tensor(sources, device=self.device), torch.tensor(destinations, device=self.device)
            for t in self.cross_keys + self.cross_values + [self.cross_mask]:
                t[dst] = t[src]

    @torch.inference_mode()
    def move_rows(self, sources: list[int], destinations: list[int], length: int) -> None:
        """Row sources[i] goes to row destinations[i] (the first `length` positions), all at once: a
        permutation is safe, because the sources are gathered before anything is written. A row left
        behind (a source that is no destination) is zeroed over those positions: it held a copy of a
        running request's row, and if that row held NaN (a prompt whose forward overflowed, moved before
        the request failed and `clear_row` zeroed its new row) the copy would reach the next request given
        the row, through a masked key's 0 x NaN (found by test_engine_isolation's random sequences)."""
        src = torch.tensor(sources, device=self.device)
        dst = torch.tensor(destinations, device=self.device)
        left = sorted(set(sources) - set(destinations))
        for t in self._position_tensors():
            t[dst, :, :length] = t[src, :, :length]
            if left:
                t[left, :, :length] = 0
        self._move_cross(sources, destinations)
        if left and self.cross_mask is not None:
            for t in self.cross_keys + self.cross_values:
                t[left] = 0
            self.cross_mask[left] = False

    @torch.inference_mode()
    def clear_row(self, row: int) -> None:
        """Zero a row. Positions past a row's length are masked, but a masked key's weight is 0 and
        0 * NaN is NaN: a row that held non-finite values must be cleared before it is reused."""
        for t in self._row_tensors():
            t[row].zero_()
        if self.cross_mask is not None:
            self.cross_mask[row] = False

    @torch.inference_mode()
    def finite(self, row: int, length: int) -> bool:
        """Whether a row's first `length` positions hold only finite values."""
        return all(bool(t[row, :, :length].isfinite().all()) for t in self._position_tensors())

    def resized(self, batch_size: int, max_len: int, keep_rows: int, keep_len: int) -> "KVCache":
        """A cache of another shape holding the first keep_rows rows' first keep_len positions of this one."""
        new = KVCache(self.config, batch_size, max_len, self.device, self.dtype)
        for old_t, new_t in zip(self._position_tensors(), new._position_tensors()):
            new_t[:keep_rows, :, :keep_len] = old_t[:keep_rows, :, :keep_len]
        if self.cross_mask is not None:
            new._allocate_cross(self.cross_mask.shape[1])
            for old_t, new_t in zip(self.cross_keys + self.cross_values + [self.cross_mask],
                                    new.cross_keys + new.cross_values + [new.cross_mask]):
                new_t[:keep_rows] = old_t[:keep_rows]
        return new
