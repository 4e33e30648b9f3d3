"""One forward pass of the one model with its insides recorded: the residual stream entering every block
and, per layer, the attention weights that SDPA computes but does not return.

Nothing here is a second model. Forward hooks on `llmkit.model.Transformer`'s blocks read what the
normal forward computes; the attention weights are recomputed from the queries and keys the layer itself
produces (`Attention.queries_keys_values`: after QK-norm and RoPE), grouped-query heads expanded, with the
same 1/sqrt(head_dim) scale and causal mask as SDPA. `tests/test_inspect.py` proves it: weights @ values
equals the attention output the model passes to its output projection. The hooks exist only during
`trace()`, so the normal forward pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import llmkit.kernel_layers as kernel_layers
from llmkit.errors import GenerationError
from llmkit.model import Transformer


@dataclass
class Trace:
    """What one text looked like inside the model (batch of one, float32 on the CPU).

    hidden: (n_layers + 1, seq, d_model): hidden[0] is the embedding output, hidden[i] the residual
    stream after block i (the input of block i + 1); hidden[-1] before the final norm.
    attention: (n_layers, n_heads, seq, seq) row-stochastic weights, or None when not asked for.
    logits: (seq, vocab) the model's own output for the text, or None when not asked for.
    """

    ids: list[int]
    hidden: torch.Tensor
    attention: torch.Tensor | None
    logits: torch.Tensor | None


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) in float32 (Vaswani et al. 2017, eq. 1), for q
    (batch, heads, seq, d) and k (batch, kv_heads, seq, d): query head h reads key head h // (heads / kv_heads)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    seq = q.shape[-2]
    future = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def check_length(model: Transformer, ids: list[int]) -> None:
    if not ids:
        raise GenerationError("the text is empty; give some text to look inside the model with")
    if len(ids) > model.config.max_seq_len:
        raise GenerationError(f"the text has {len(ids)} tokens but the model's context is {model.config.max_seq_len}; "
                              "give a shorter text")


@torch.inference_mode()
def trace(model: Transformer, ids: list[int], attention: bool = True, values: list | None = None,
          logits: bool = True) -> Trace:
    """Run `ids` through `model` once and record its residual stream (and attention weights).

    values: a list to receive, per layer, (v, attention output before the output projection); the
    equivalence test checks weights @ v against it. logits: False skips the output head, which for a
    small model with a large vocabulary costs as much as all its blocks (SmolLM2-135M: 49,152 x 576
    per token against 3.5M weights a block), when only the insides are wanted."""
    check_length(model, ids)
    if model.soft_prompt_ids:  # its states depend on the soft prompt before the text
        raise GenerationError("attention maps and the logit lens show a text alone; a prompt-tuned model reads its "
                              f"{len(model.soft_prompt_ids)} soft-prompt tokens before every text: inspect its base "
                              "model (or a LoRA one)")
    device = model.tok_emb.weight.device
    hidden: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []

    def block_input(block, args):
        hidden.append(args[0][0].float().cpu())

    def attention_input(attn, args):
        x, rope = args[0], args[1]
        q, k, v = attn.queries_keys_values(x, rope)
        maps.append(attention_weights(q, k)[0].cpu())
        if values is not None:
            values.append([v[0].float().cpu(), None])

    def attention_output(out_proj, args):
        values[-1][1] = args[0][0].float().cpu()  # (seq, heads * head_dim): SDPA's output, heads side by side

    handles = []
    try:
        for block in model.blocks:
            handles.append(block.register_forward_pre_hook(block_input))
            if attention:
                handles.append(block.attn.register_forward_pre_hook(attention_input))
                if values is not None:
                    handles.append(block.attn.out.register_forward_pre_hook(attention_output))
        handles.append(model.norm.register_forward_pre_hook(block_input))  # the last block's output
        with kernel_layers.plain_modules():  # (a quantized Llama layer's operators would bypass the hooks)
            output = model(torch.tensor([ids], device=device), return_hidden=not logits)[0]
    finally:
        for handle in handles:
            handle.remove()
    return Trace(ids=list(ids), hidden=torch.stack(hidden), attention=torch.stack(maps) if attention else None,
                 logits=output.float().cpu() if logits else None)


@torch.inference_mode()
def lens_logits(model: Transformer, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The logit lens (nostalgebraist 2020): the model's own final norm and output head applied to the
    residual stream after every layer. hidden: (..., d_model) -> (..., vocab) float32. `out`, a float32
    CPU buffer of (rows, vocab) for 2-D `hidden`, is written and returned where the head is a plain fp32
    Linear: the lens's chunks are tens of MB each, and a fresh tensor per chunk is fresh pages from the
    OS (their page faults cost 0.24 s of SmolLM2's 1.9 s lens on two cores, measured)."""
    like = model.tok_emb.weight  # the head may be a quantized layer without a `.weight`
    normed = model.norm(hidden.to(device=like.device, dtype=like.dtype))
    head = model.lm_head
    if (out is not None and type(head) is torch.nn.Linear and normed.dim() == 2 and
            head.weight.dtype == torch.float32 and head.weight.device.type == "cpu"):
        out = out[:normed.shape[0]]
        if head.bias is None:
            return torch.mm(normed, head.weight.t(), out=out)
        return torch.addmm(head.bias, normed, head.weight.t(), out=out)
    return head(normed).float().cpu()
