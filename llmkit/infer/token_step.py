"""A batch-1 decode token in one parallel region: the engine's step for a request decoding alone, on a
Llama-type model whose layers run llmkit's CPU kernels (kernels/llama_layer.cpp's TokenStep).

Why: a batch-1 token reads every weight once, and the machine's memory bandwidth bounds it. Run as the model's
graph, it was ~150 operator calls, each linear layer its own OpenMP region, with ~130 small kernels between them
on one thread; on the 2-core AVX2 EPYC that left the weights read at 73% (int8) and 55% (int4) of the measured
bandwidth, against 80% and 70% for a prototype of the whole token in one region (benchmarks/weight_stream.py,
BENCHMARKS.md). TokenStep is that token, built from the functions the graph's own operators use
(llmkit.kernel_layers), so it gives the graph's bits: the logits, and the keys and values it writes into the
cache, which a prefix-cache hit or a batched step reads next (tests/test_token_step.py).

What it takes (`token_step_for`): a decoder-only model whose every block and head run as kernel_layers says
(no learned positions, token types or embedding norm: the embedding row is the first residual), a float32
embedding, one norm eps, and a float16 KV cache. `LLMKIT_TOKEN_STEP=0` turns it off (the graph's step instead:
benchmarks compare the two this way).
"""

from __future__ import annotations

import logging
import os

import torch

import llmkit.cpu_kernels as cpu_kernels
import llmkit.kernel_layers as kernel_layers
from llmkit.errors import first_line
from llmkit.model import Block

logger = logging.getLogger(__name__)


def token_step_for(model, cache_dtype: torch.dtype):
    """The model's TokenStep (`step(token, position, key_store, value_store, row)` -> logits (1, vocab)), or
    None where the model or the cache is not of the kind it runs (module docstring)."""
    if os.environ.get("LLMKIT_TOKEN_STEP") == "0" or cache_dtype != torch.float16 or not cpu_kernels.loaded():
        return None
    if (model.encoder is not None or model.pos_emb is not None or model.type_emb is not None
            or model.emb_norm is not None or model.rel_bias is not None or not model.config.causal):
        return None
    blocks = list(model.blocks)
    if not blocks or not all(type(b).forward is Block.forward and kernel_layers.block_runs_fused(b) for b in blocks):
        return None
    if not kernel_layers.head_runs_fused(model):
        return None
    embedding = model.tok_emb.weight
    norms = [n for b in blocks for n in (b.attn_norm, b.mlp_norm)] + [model.norm]
    epsilons = {kernel_layers.norm_eps(n) for n in norms}
    if (embedding.dtype != torch.float32 or embedding.device.type != "cpu" or len(epsilons) != 1
            or model.rope_cos.dtype != torch.float32):
        return None
    empty = torch.empty(0)
    tensors = []

    def linear(module):
        weight, scales = kernel_layers.kernel_weights(module)
        tensors.extend([weight, empty if scales is None else scales.contiguous()])

    for block in blocks:
        tensors.append(block.attn_norm.weight.detach().contiguous())
        linear(block.attn.qkv)
        linear(block.attn.out)
        tensors.append(block.mlp_norm.weight.detach().contiguous())
        linear(block.mlp.gate_up)
        linear(block.mlp.down)
    tensors.append(model.norm.weight.detach().contiguous())
    linear(model.lm_head)
    attn = blocks[0].attn
    try:
        return torch.classes.llmkit_cpu.TokenStep(embedding.detach().contiguous(), tensors, model.rope_cos.contiguous(),
                                                  model.rope_sin.contiguous(), attn.n_heads, attn.n_kv_heads,
                                                  epsilons.pop(), kernel_layers.attention_scale(attn))
    except RuntimeError as error:  # a shape it does not take (a head size not a multiple of 8): the graph's step
        logger.info("a lone request decodes through the graph's step: %s", first_line(error))
        return None
