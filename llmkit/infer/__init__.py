"""Inference: the one Engine, its KV cache and sampling."""

from llmkit.infer.engine import Engine
from llmkit.infer.kv_cache import KVCache
from llmkit.infer.sampling import SamplingParams, next_token_distribution, sample_next_token

__all__ = ["Engine", "KVCache", "SamplingParams", "next_token_distribution", "sample_next_token"]
