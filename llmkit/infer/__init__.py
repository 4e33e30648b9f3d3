"""Inference: the one Engine, its KV cache, sampling, scheduler, prefix cache, speculative decoding and
weight-only quantization."""

from llmkit.infer.engine import Completion, Engine
from llmkit.infer.kv_cache import KVCache
from llmkit.infer.prefix_cache import PrefixCache
from llmkit.infer.quantize import quantize_model
from llmkit.infer.sampling import SamplingParams, TokenLogprob, next_token_distribution, sample_next_token
from llmkit.infer.speculative import Speculator, layer_skip_draft

__all__ = ["Completion", "Engine", "KVCache", "PrefixCache", "SamplingParams", "Speculator", "TokenLogprob",
           "layer_skip_draft", "next_token_distribution", "quantize_model", "sample_next_token"]
