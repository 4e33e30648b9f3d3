"""The one Transformer that every llmkit stage uses.

One `ModelConfig` describes GPT-2 (learned positions, LayerNorm, GELU, biases, tied head), Llama-family
models (RoPE, RMSNorm, SwiGLU, grouped-query attention: Llama 2/3, SmolLM2, Mistral, Qwen2),
Mixture-of-Experts variants, and BERT-style encoders (`causal: false`: bidirectional attention over a
padding mask; post-norm blocks, token-type embeddings, an embedding norm, the masked-LM head transform;
options that are off for a decoder, whose forward then does exactly what it did without them), and T5-style
encoder-decoders (`n_encoder_layers`; model_seq2seq.py: relative position buckets, cross-attention). Attention goes through `F.scaled_dot_product_attention`, which picks flash
kernels on GPU and a fused kernel on CPU; compiled CPU training keeps SDPA's forward and takes a faster
backward of its own (`CausalAttentionCPU`).

Two forwards share all code:
- training: `model(input_ids, targets)` -> scalar loss (cross-entropy + MoE auxiliary loss);
  `model(input_ids)` -> logits (batch x seq x vocab).
- inference: `model(input_ids, positions=..., kv_cache=cache)`; the cache object (llmkit.infer) is
  asked once per forward for the attention mask (`cache.prepare(positions)`) and then by each layer to
  store and return its keys and values (`cache.update(layer, k, v, whole_rows)`: up to the attention
  length, or every slot of the bound rows for llmkit's attention kernel, which reads as many keys as the
  mask is wide).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import llmkit.kernel_layers as kernel_layers
from llmkit.config import GATED_MLPS, ModelConfig
from llmkit.errors import ConfigError, GenerationError
from llmkit.fused_loss import LinearCrossEntropy
from llmkit.model_seq2seq import CrossAttention, EncoderMemory, EncoderStack, RelativePositionBias, gelu_tanh_formula
from llmkit.rope import apply_rope, check_rope_table_size, rope_inverse_frequencies


def weight_training_flops(weight: torch.Tensor) -> int:
    """Training FLOPs per token of a weight in a matmul: forward 2, its input's gradient 2, its own 2
    unless frozen (Kaplan et al. 2020, section 2.1, the 6N of a training step)."""
    return (6 if weight.requires_grad else 4) * weight.numel()


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


# --- blocks -------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # One fused projection for q, k and v: a single larger matmul is faster than three.
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.use_rope = cfg.pos_embedding == "rope"
        self.dropout = cfg.dropout
        self.causal = cfg.causal
        self.scale = None if cfg.scaled_attention else 1.0  # None: SDPA's 1/sqrt(head_dim)

    def queries_keys_values(self, x, rope):
        """q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim) exactly as attention
        uses them (after QK-norm and RoPE); `llmkit.inspect` recomputes attention weights from these."""
        batch, seq, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(batch, seq, self.n_heads, self.head_dim)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def rounds_activations(self) -> bool:
        """Whether this layer's projections round their inputs to int8 (llmkit.cpu_kernels)."""
        return bool(getattr(self.qkv, "int8_activations", False))

    def forward(self, x, rope, attn_mask, kv_cache):
        batch, seq, _ = x.shape
        q, k, v = self.queries_keys_values(x, rope)
        # int8 activations make the network discontinuous: attention must give a query the same bits
        # whatever is computed beside it, or a prefix-cache hit changes greedy replies (attention.cpp)
        kernel = (self.rounds_activations() and q.device.type == "cpu" and q.dtype == torch.float32
                  and not q.requires_grad and (attn_mask is None or attn_mask.dtype == torch.bool))
        if kernel:
            return self.out(kernel_layers.attention(self, q, k, v, attn_mask, kv_cache).transpose(1, 2)
                            .reshape(batch, seq, self.n_heads * self.head_dim))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
            if kv_cache.scales(self.layer_idx) is not None:  # an int8 cache (kv_cache.cache_dtype)
                raise GenerationError("an int8 KV cache is read by llmkit's CPU attention kernel only: this forward "
                                      "(a float32 CPU model with int8 activations, no gradients) cannot use it")
        if (torch.compiler.is_compiling() and q.device.type == "cpu" and q.requires_grad and attn_mask is None
                and kv_cache is None and self.causal and self.scale is None and not (self.training and self.dropout)):
            groups = self.n_heads // self.n_kv_heads  # GQA: query head h reads key/value head h // groups
            # One dtype for all three, as autocast gives SDPA (RoPE's float32 tables promote q and k)
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else v.dtype
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            y = CausalAttentionCPU.apply(q.to(dtype), k.to(dtype), v.to(dtype))
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=attn_mask,
                is_causal=attn_mask is None and self.causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_heads != self.n_heads,
                scale=self.scale,
            )
        return self.out(y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))


class CausalAttentionCPU(torch.autograd.Function):
    """Causal attention for compiled CPU training: PyTorch's flash-attention forward, and a backward
    that recomputes the probabilities from the saved log-sum-exp (FlashAttention-2, Dao 2023, alg. 2)
    with five batched matmuls and two elementwise passes, which inductor fuses. On a 2-core Xeon
    (8 x 6 heads x 256 x 64, bf16) forward + backward take 5.8 ms against SDPA's 12.4: PyTorch's CPU
    flash backward walks small blocks, while whole 256 x 256 score matrices keep the matmuls large.
    Memory is that of the plain attention's scores for one layer at a time (freed after its backward).
    With grouped-query attention the caller repeats the key/value heads (7.99 ms vs 12.75, 6 : 2 heads).
    Eager, the unfused elementwise passes would make it slower than SDPA, so it is used compiled only."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, True, scale=q.shape[-1] ** -0.5)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        scale, seq = q.shape[-1] ** -0.5, q.shape[-2]
        future = torch.full((seq, seq), float("-inf"), device=q.device).triu(1)  # exp(-inf) = 0: no peeking
        probs = torch.exp((q @ k.transpose(-1, -2)).float() * scale - lse.unsqueeze(-1) + future).to(q.dtype)
        grad_v = probs.transpose(-1, -2) @ grad_out
        grad_probs = (grad_out @ v.transpose(-1, -2)).float()
        # softmax backward: dS = P * (dP - rowsum(dO * O)), the row sum taken from the output (FA2 eq. 4)
        rowsum = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        grad_scores = (probs.float() * (grad_probs - rowsum) * scale).to(q.dtype)
        return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, grad_v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, d_ff: int | None = None):
        super().__init__()
        d_ff = d_ff or cfg.d_ff
        self.activation = cfg.mlp
        # SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020); gate and up fused into one matmul. GEGLU
        # the same with a tanh-GELU gate (T5 v1.1's "gated-gelu").
        self.gate_up = nn.Linear(cfg.d_model, (2 if cfg.mlp in GATED_MLPS else 1) * d_ff, bias=cfg.mlp_bias)
        self.down = nn.Linear(d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x):
        # a quantized gate/up layer may compute silu(gate) * up in its kernel (llmkit.infer.quantize.fused_swiglu)
        fused = self.gate_up.swiglu(x) if self.activation == "swiglu" and hasattr(self.gate_up, "swiglu") else None
        if fused is not None:
            return self.down(fused)
        h = self.gate_up(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "gelu_tanh":
            h = gelu_tanh(h)
        elif self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "geglu":
            gate, up = h.chunk(2, dim=-1)
            h = gelu_tanh_formula(gate) * up
        else:
            h = F.relu(h)
        return self.down(h)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (Hendrycks & Gimpel 2016), as GPT-2 used: 0.5x(1 + tanh(z)) with
    z = sqrt(2/pi)(x + 0.044715x^3). Compiled, it is written as the identical x * sigmoid(2z): inductor
    turns a sigmoid into one exp, and the step is then 2x faster than the erf GELU on CPU (forward +
    backward of a 2048 x 1536 bf16 activation: 2.6 ms vs 5.4; tanh itself: 6.5). Eager, PyTorch's own
    fused kernel is the fastest way to the same function."""
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 2 * sqrt(2/pi)
    return F.gelu(x, approximate="tanh")


class MoE(nn.Module):
    """Top-k routed experts with the Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4).

    A router scores every expert, each token goes to its `top_k` best, and their outputs are mixed by
    the router's probabilities renormalised over the chosen k (Mixtral, Jiang et al. 2024). Optional
    shared experts see every token. After a forward, `aux_loss` holds E * sum_i f_i * P_i, where f_i is
    the fraction of token assignments sent to expert i and P_i its mean router probability: 1.0 under a
    perfectly uniform load, larger when the load is skewed.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        self.shared = MLP(cfg, cfg.d_ff * cfg.n_shared_experts) if cfg.n_shared_experts else None
        self.aux_loss = torch.zeros(())
        self.tokens_per_expert = torch.zeros(cfg.n_experts, dtype=torch.long)

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(flat).float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(chosen == e)
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(flat[token_idx]) * weights[token_idx, slot, None])
        counts = torch.bincount(chosen.flatten(), minlength=self.n_experts)
        fraction = counts.float() / chosen.numel()
        self.aux_loss = self.n_experts * (fraction * probs.mean(dim=0)).sum()
        self.tokens_per_expert = counts.detach()
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)) (GPT-2, Radford et al. 2019)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = make_norm(cfg, cfg.d_model)
        self.mlp = MoE(cfg) if cfg.n_experts else MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, attn_mask, kv_cache):
        if kernel_layers.runs_fused(self, x, attn_mask):  # a Llama-type layer on llmkit's CPU kernels
            return kernel_layers.block_forward(self, x, rope, attn_mask, kv_cache)
        x = x + self.drop(self.attn(self.attn_norm(x), rope, attn_mask, kv_cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class PostNormBlock(Block):
    """Post-norm residual block: norm(x + attn(x)), then norm(x + mlp(x)) (Vaswani et al. 2017; BERT).
    A class of its own, so the pre-norm forward above has no branch for it."""

    def forward(self, x, rope, attn_mask, kv_cache):
        x = self.attn_norm(x + self.drop(self.attn(x, rope, attn_mask, kv_cache)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))


class CrossAttentionBlock(Block):
    """A decoder block of an encoder-decoder: self-attention, then cross-attention over the encoder's
    output, then the MLP, each pre-norm and residual (T5, Raffel et al. 2020; Vaswani et al. 2017)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.cross_norm = make_norm(cfg, cfg.d_model)
        self.cross_attn = CrossAttention(cfg, layer_idx)

    def forward(self, x, rope, attn_mask, kv_cache, memory):
        x = x + self.drop(self.attn(self.attn_norm(x), rope, attn_mask, kv_cache))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), memory))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class HeadTransform(nn.Module):
    """BERT's masked-LM head transform before the output projection: norm(act(dense(x)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = make_norm(cfg, cfg.d_model)
        self.activation = F.gelu if cfg.mlp != "gelu_tanh" else gelu_tanh

    def forward(self, x):
        return self.norm(self.activation(self.dense(x)))


def document_mask(doc_ids: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean mask for packed rows: query i sees key j iff both tokens belong to the
    same document (and j <= i when causal), so packed documents never attend to each other; an encoder's
    token sees its whole document, before and after it."""
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    if causal:
        seq = doc_ids.shape[1]
        same = same & torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    return same[:, None]


def padding_mask(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean mask from a (batch, seq) mask of real tokens (1) and padding (0): no
    query attends to a padded key (and, when causal, to a later one). Padded queries still see the real
    keys, so their rows stay finite; their outputs are to be ignored."""
    keys = attention_mask.bool()[:, None, None, :]
    if not causal:
        return keys
    seq = attention_mask.shape[1]
    return keys & torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()


# --- the model ----------------------------------------------------------------------------------------
def _embedding(rows: int, dim: int) -> nn.Embedding:
    """nn.Embedding, left uninitialised on the meta device, where checkpoints are loaded: its own init
    there runs torch._refs.normal_, whose first call imports torch._dynamo, seconds added to every
    `llmkit generate`/`score`/`chat` for values the checkpoint replaces. Elsewhere unchanged, so a seeded
    model's initial weights stay what they were."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))
    return nn.Embedding(rows, dim)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = _embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = _embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos_embedding == "learned" else None
        self.type_emb = _embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.emb_norm = make_norm(cfg, cfg.d_model) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        block = Block if cfg.norm_position == "pre" else PostNormBlock
        self.encoder = None
        if cfg.n_encoder_layers:  # an encoder-decoder: `blocks` are the decoder (model_seq2seq.py)
            encoder_cfg = dataclasses.replace(cfg, causal=False, n_encoder_layers=0)
            self.encoder = EncoderStack(cfg, [Block(encoder_cfg, i) for i in range(cfg.n_encoder_layers)],
                                        make_norm(cfg, cfg.d_model))
            block = CrossAttentionBlock
        self.blocks = nn.ModuleList(block(cfg, i) for i in range(cfg.n_layers))
        self.rel_bias = RelativePositionBias(cfg, bidirectional=not cfg.causal) if cfg.pos_embedding == "relative" else None
        self.norm = make_norm(cfg, cfg.d_model) if cfg.norm_position == "pre" else nn.Identity()
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.cls_pooler else None
        self.head_transform = HeadTransform(cfg) if cfg.head_transform else None
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias) if cfg.lm_head else None
        if cfg.tie_embeddings and cfg.lm_head:
            self.lm_head.weight = self.tok_emb.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.build_rope_tables()
        if self.tok_emb.weight.device.type != "meta":  # a model built on meta is filled from a checkpoint;
            self.reset_parameters()  # init there would only import torch._dynamo (torch._refs.normal_)

    # -- initialisation
    def reset_parameters(self) -> None:
        """Weight init: N(0, init_std) for embeddings and linear weights (GPT-2: 0.02); the projections
        that write into the residual stream (attn.out, mlp.down) scaled by 1/sqrt(2 * n_layers) so the
        residual's variance does not grow with depth (GPT-2 paper, section 2.3); biases 0, norms 1."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(("attn.out", ".down")) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Embedding, RelativePositionBias)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def build_rope_tables(self) -> None:
        """(Re)compute the RoPE cos/sin tables from the config. They are non-persistent buffers (not in
        a checkpoint), so a model built on the meta device and loaded with `assign=True` calls this."""
        # Tables are built in float64 and stored in float32 whatever the model's dtype: bf16 angles
        # lose whole radians at positions in the thousands.
        device = self.rope_cos.device if self.rope_cos.device.type != "meta" else torch.device("cpu")
        if self.config.pos_embedding != "rope":
            self.rope_cos = self.rope_sin = torch.empty(0, device=device)
            return
        check_rope_table_size(self.config)
        inv_freq = rope_inverse_frequencies(self.config)
        angles = torch.outer(torch.arange(self.config.max_seq_len, dtype=torch.float64, device="cpu"), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos = angles.cos().float().to(device)
        self.rope_sin = angles.sin().float().to(device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.rope_cos.dtype != torch.float32:
            self.build_rope_tables()  # a dtype cast (model.bfloat16()) must not degrade the tables
        return self

    @property
    def soft_prompt_ids(self) -> list[int]:
        """A prompt-tuned model's soft prompt, put before every input: the virtual ids base_vocab.. of its
        SoftPromptEmbedding (llmkit/train/peft.py). Empty for every other model."""
        base = getattr(self.tok_emb, "base_vocab", None)
        return list(range(base, self.tok_emb.num_embeddings)) if base is not None else []

    @property
    def text_context(self) -> int:  # the tokens of text it reads: its context less a soft prompt's
        return self.config.max_seq_len - len(self.soft_prompt_ids)

    # -- accounting
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting tied weights once; non_embedding leaves out token/position tables."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            for table in (self.pos_emb, self.type_emb):
                total -= table.weight.numel() if table is not None else 0
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N + 12 * L * H * Q * T (PaLM, Chowdhery et al. 2022, appendix B).

        N counts the weights that take part in matmuls: every Linear in the blocks (for MoE only the
        top_k routed and the shared experts a token visits) and the output head (embedding lookups
        are free; a tied head is still a matmul). The second term is attention's QK^T and AV products
        over a context of seq_len. Forward only (inference) is a third of this. A frozen weight (LoRA's
        base, prompt tuning's model) counts 4 instead of 6: forward and the gradient of its input, no
        gradient of its own.
        """
        cfg = self.config
        n = 0.0
        for block in self.blocks:
            n += sum(weight_training_flops(p) for p in block.attn.parameters() if p.dim() == 2)
            mlp = block.mlp
            if isinstance(mlp, MoE):
                n += weight_training_flops(mlp.router.weight)
                n += cfg.top_k * sum(weight_training_flops(p) for p in mlp.experts[0].parameters() if p.dim() == 2)
                if mlp.shared is not None:
                    n += sum(weight_training_flops(p) for p in mlp.shared.parameters() if p.dim() == 2)
            else:
                n += sum(weight_training_flops(p) for p in mlp.parameters() if p.dim() == 2)
        if self.encoder is not None:  # the encoder's and cross-attention's weights (a source as long as the target)
            n += sum(weight_training_flops(p) for p in self.encoder.blocks.parameters() if p.dim() == 2)
            n += sum(weight_training_flops(p) for b in self.blocks for p in b.cross_attn.parameters() if p.dim() == 2)
        n += weight_training_flops(self.lm_head.weight) if self.lm_head is not None else 0
        n += weight_training_flops(self.head_transform.dense.weight) if self.head_transform is not None else 0
        return n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len

    # -- forward
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                positions: torch.Tensor | None = None, kv_cache=None, last_token_only: bool = False,
                doc_ids: torch.Tensor | None = None, reduction: str = "mean", return_hidden: bool = False,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                encoder_ids: torch.Tensor | None = None, encoder_mask: torch.Tensor | None = None,
                memory: EncoderMemory | None = None):
        """input_ids: (batch, seq) token ids.

        targets: (batch, seq) next-token ids, -100 where no loss is wanted -> returns the mean
        cross-entropy plus moe_aux_loss_coef times the mean MoE auxiliary loss.
        positions: (batch, seq) absolute positions (default 0..seq-1); kv_cache: see module docstring.
        last_token_only: compute logits for the last position only (generation needs no others).
        doc_ids: (batch, seq) document index of each token of a packed row: a token attends only to
        earlier tokens of its own document (pass each document's own `positions` too).
        reduction: "none" -> per-token cross-entropy (batch, seq), 0 where the target is -100 (the
        head runs on the scored positions only: sequence log-probabilities for DPO, RL, scoring).
        return_hidden: return the final normalised hidden states (batch, seq, d_model) instead of
        logits, for a head wrapped around the model (reward model, value head).
        attention_mask: (batch, seq) 1 for real tokens, 0 for padding, which no token then attends to
        (an encoder's right-padded batch). token_type_ids: (batch, seq) segment ids (default 0).
        Encoder-decoder: input_ids are the decoder's; encoder_ids (batch, source) and encoder_mask (1 real,
        0 padding) the source, or memory its `encode`d output; with a kv_cache and neither, the cache's
        stored cross-attention keys and values (generation).
        """
        batch, seq = input_ids.shape
        default_positions = positions is None
        if default_positions:
            if seq > self.config.max_seq_len:
                raise ValueError(f"sequence of {seq} tokens is longer than max_seq_len {self.config.max_seq_len}")
            positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            # Positions 0..seq-1 as a slice, not a lookup: the gradient is then a sum over the batch, not a
            # scatter-add of every row (compiled on CPU, atomic adds: ~1 ms of a 280-ms benchmark step).
            x = x + (self.pos_emb.weight[:seq] if default_positions else self.pos_emb(positions))
        if self.type_emb is not None:
            x = x + (self.type_emb.weight[0] if token_type_ids is None else self.type_emb(token_type_ids))
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        rope = None
        if self.config.pos_embedding == "rope":
            rope = (self.rope_cos[positions].unsqueeze(2).to(x.dtype), self.rope_sin[positions].unsqueeze(2).to(x.dtype))
        attn_mask = kv_cache.prepare(positions) if kv_cache is not None else None
        if doc_ids is not None and kv_cache is None:
            attn_mask = document_mask(doc_ids, self.config.causal)
        elif attention_mask is not None and kv_cache is None:
            attn_mask = padding_mask(attention_mask, self.config.causal)
        if self.rel_bias is not None:  # keys: the cache's positions 0..n-1, or the tokens' own
            keys = positions if kv_cache is None else torch.arange(attn_mask.shape[-1], device=x.device)[None]
            attn_mask = self.rel_bias.attention_mask(positions, keys, attn_mask, x.dtype)
        if self.encoder is None:
            for block in self.blocks:
                x = block(x, rope, attn_mask, kv_cache)
        else:  # the source: given encoded, encoded here, or (generation) the cache's cross keys and values
            if memory is None:
                memory = kv_cache if encoder_ids is None and kv_cache is not None else self.encode(encoder_ids, encoder_mask)
            for block in self.blocks:
                x = block(x, rope, attn_mask, kv_cache, memory)
        if last_token_only:
            x = x[:, -1:]
        if targets is None and not return_hidden and (logits := kernel_layers.final_forward(self, x)) is not None:
            return logits
        x = self.norm(x)
        if return_hidden:
            return x
        if self.lm_head is None:
            raise ConfigError("this model has no output head (lm_head: false, a sentence encoder such as BertModel): "
                              "it gives hidden states and embeddings, not token predictions")
        if self.head_transform is not None:
            x = self.head_transform(x)
        if self.config.scale_head_input:  # T5 with tied embeddings: the head sees d_model^-0.5 times the state
            x = x * self.config.d_model ** -0.5
        if targets is None:
            return self.lm_head(x)
        if reduction == "none":
            valid = targets != -100
            logits = self.lm_head(x[valid]).float()
            per_token = torch.zeros(targets.shape, device=x.device, dtype=torch.float32)
            return per_token.masked_scatter(valid, F.cross_entropy(logits, targets[valid], reduction="none"))
        if torch.is_grad_enabled() and self.lm_head.weight.requires_grad and self.lm_head.bias is None:
            loss = LinearCrossEntropy.apply(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1))
        else:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-100)
        if self.config.n_experts:
            loss = loss + self.config.moe_aux_loss_coef * self.moe_aux_loss()
        return loss

    def encode(self, encoder_ids: torch.Tensor, encoder_mask: torch.Tensor | None = None) -> EncoderMemory:
        """An encoder-decoder's encoder over a right-padded batch of sources (batch, source); mask 1 for real
        tokens (default all)."""
        if self.encoder is None or encoder_ids is None:
            raise ConfigError("this model has no encoder" if self.encoder is None else "this model is an encoder-decoder "
                              "(n_encoder_layers > 0): its forward needs the source (encoder_ids); generation takes it as the prompt")
        mask = torch.ones_like(encoder_ids, dtype=torch.bool) if encoder_mask is None else encoder_mask.bool()
        x, rope = self.drop(self.tok_emb(encoder_ids)), None
        if self.config.pos_embedding == "rope":
            rope = (self.rope_cos[None, :x.shape[1], None].to(x.dtype), self.rope_sin[None, :x.shape[1], None].to(x.dtype))
        return EncoderMemory(self.encoder(x, mask, rope), mask)

    def cross_keys_values(self, memory: EncoderMemory) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder block's cross-attention keys and values of an encoded source, computed once per
        request by the engine (they depend on the source alone) and kept in its KV cache."""
        return [block.cross_attn.keys_values(memory.hidden) for block in self.blocks]

    def moe_aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the MoE layers in the last forward (0 for a dense model)."""
        losses = [b.mlp.aux_loss for b in self.blocks if isinstance(b.mlp, MoE)]
        return torch.stack(losses).mean() if losses else torch.zeros(())
