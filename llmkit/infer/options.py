"""The engine's options checked before anything is built: each bad one named with what it must be (a
server passes them through from its command line, so a wrong value must read as a user error)."""

from __future__ import annotations

import math
import numbers

from llmkit.device import available_memory_bytes
from llmkit.errors import GenerationError
from llmkit.infer.kv_cache import KV_CACHE_DTYPES

ENCODER_CANNOT_GENERATE = ("this model is an encoder (bidirectional attention, causal: false): it does not generate "
                           "text; use `llmkit fill` for masked-token predictions or `llm.embed` for embeddings")


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_option(ok: bool, name: str, value, want: str) -> None:
    if not ok:
        raise GenerationError(f"engine option {name}={value!r} is invalid: it must be {want}")


def check_engine_options(model, max_batch_size, kv_cache_mib, prefix_cache_mib, block_size, prefill_chunk,
                         speculator, kv_cache_dtype) -> None:
    """Raises GenerationError naming the first option of `Engine(...)` that is out of its range."""
    if not model.config.causal:  # bidirectional: each position sees the future, so there is no next token
        raise GenerationError(ENCODER_CANNOT_GENERATE)
    _check_option(is_int(max_batch_size) and 1 <= max_batch_size < 2**31, "max_batch_size", max_batch_size,
                  "an integer >= 1")
    # a bound, not an allocation, but it is counted in bytes: 1e302 MiB would overflow to infinity
    _check_option(is_number(kv_cache_mib) and 0 < kv_cache_mib < 2**40, "kv_cache_mib", kv_cache_mib,
                  "a number of MiB > 0 and below 2**40 (an exbibyte)")
    _check_option(is_number(prefix_cache_mib) and 0 <= prefix_cache_mib < math.inf, "prefix_cache_mib",
                  prefix_cache_mib, "a finite number of MiB >= 0 (0 turns prefix caching off)")
    # the prefix cache's pool is allocated (and its free list built) up front: it must fit the device
    available = available_memory_bytes(model.tok_emb.weight.device) / 2**20
    _check_option(prefix_cache_mib <= available, "prefix_cache_mib", prefix_cache_mib,
                  f"at most the {available:,.0f} MiB of memory available on the model's device")
    _check_option(is_int(block_size) and 1 <= block_size < 2**31, "block_size", block_size,
                  "an integer >= 1 (tokens per prefix-cache block)")
    _check_option(is_int(prefill_chunk) and 1 <= prefill_chunk < 2**31, "prefill_chunk", prefill_chunk,
                  "an integer >= 1 (prompt tokens prefilled per step)")
    _check_option(speculator is None or callable(getattr(speculator, "bind", None)), "speculator",
                  speculator, "None or a llmkit.infer.speculative.Speculator, e.g. Speculator('prompt-lookup')")
    _check_option(isinstance(kv_cache_dtype, str) and kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
                  kv_cache_dtype, f"one of {', '.join(KV_CACHE_DTYPES)}")


def context_left(config, n_prompt: int, soft_tokens: int = 0) -> int:
    """Positions of the model's context left after a prompt of n_prompt tokens and a soft prompt of
    soft_tokens; a prompt fits only when at least one is left (the first generated token's)."""
    return config.max_seq_len - soft_tokens - n_prompt


def prompt_budget(config, prompt_ids: list[int], max_new_tokens: int, soft_tokens: int = 0) -> int:
    """Number of tokens that can be generated after this prompt within the model's context (`config`, a
    ModelConfig); a clear error for an empty prompt, one as long as the context, or a token outside the vocabulary.
    soft_tokens: a prompt-tuned model's soft prompt, put before the prompt: it takes context, and its
    virtual ids (the last soft_tokens of config.vocab_size) are not the prompt's to use."""
    context = config.max_seq_len - soft_tokens
    if not prompt_ids:
        raise GenerationError("the prompt is empty; give at least one token")
    if context_left(config, len(prompt_ids), soft_tokens) <= 0:
        after = f" after the soft prompt's {soft_tokens}" if soft_tokens else ""
        raise GenerationError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {context}{after}; "
                              "shorten the prompt")
    vocab = config.vocab_size - soft_tokens
    bad = [t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < vocab)]
    if bad:
        raise GenerationError(f"token id {bad[0]} is outside the vocabulary of {vocab}")
    return min(max_new_tokens, context - len(prompt_ids))
