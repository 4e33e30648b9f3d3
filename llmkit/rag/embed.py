"""Text embeddings from the one model: the mean of its final normalised hidden states, unit length.

This is the default encoder that needs nothing beyond the loaded LLM (and the one the server's
`/v1/embeddings` returns: llmkit/serve/model_jobs.py calls `pooled_embeddings`). Mean pooling over
tokens is the usual way to read a sentence vector out of a transformer without a trained pooler
(Reimers & Gurevych 2019, Sentence-BERT, found it the best of the untrained poolings); a decoder's
states are weaker sentence vectors than a trained encoder's, which `benchmarks/rag.py` measures.

An encoder (`causal: false`, e.g. all-MiniLM-L6-v2) is pooled the way sentence-transformers pools it:
the mean over every token of [CLS] text [SEP], padding masked out of attention and of the mean, unit length.

Many texts are embedded in batches of similar length, right-padded: under causal attention the
positions before the padding never see it, and the padded positions are left out of the mean, so a
text's vector does not depend on what it was batched with (the tests hold batched == one by one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import torch

from llmkit.errors import GenerationError
from llmkit.model import Transformer

EMBED_BATCH_TOKENS = 8192  # padded tokens per forward: bounds activation memory on a CPU


@torch.inference_mode()
def pooled_embeddings(model: Transformer, rows: list[list[int]], skip_first: bool) -> torch.Tensor:
    """(len(rows), d_model) float32 unit vectors, one per token-id list (each at most the model's
    context). skip_first: leave out the first token (a BOS, whose state is the same for every input)
    where a row has more than one."""
    if model.soft_prompt_ids:  # its states depend on the soft prompt before the text: no text-alone vector
        raise GenerationError("embeddings are not defined for a prompt-tuned model (its soft prompt comes "
                              "before every input); embed with its base model, or a LoRA one")
    device = model.tok_emb.weight.device
    width = max(len(r) for r in rows)
    batch = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    position = torch.arange(width, device=device)[None, :]
    lengths = torch.tensor([len(r) for r in rows], device=device)[:, None]
    # An encoder's tokens see the whole row, padding included unless masked out of attention.
    real = None if model.config.causal else position < lengths
    hidden = model(batch, return_hidden=True, attention_mask=real).float()
    first = torch.tensor([1 if skip_first and len(r) > 1 else 0 for r in rows], device=device)[:, None]
    mask = ((position >= first) & (position < lengths)).float()
    pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    return (pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu()


class ModelEmbedder:
    """Embeds texts with a loaded model: BOS + the text's tokens, cut to the model's context."""

    def __init__(self, model: Transformer, tokenizer, name: str, batch_tokens: int = EMBED_BATCH_TOKENS):
        self.model, self.tokenizer, self.name, self.batch_tokens = model, tokenizer, name, batch_tokens

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def describe(self) -> dict:
        """What the index records, to refuse query vectors from another model later."""
        config = json.dumps(asdict(self.model.config), sort_keys=True, default=str)
        pooling = "mean of final normalised hidden states" if self.model.config.causal else "mean of encoder states"
        return {"model": self.name, "dim": self.dim, "pooling": pooling,
                "config_sha256": hashlib.sha256(config.encode()).hexdigest()[:16]}

    def token_rows(self, texts: list[str]) -> list[list[int]]:
        context = self.model.config.max_seq_len
        if not self.model.config.causal:  # an encoder reads texts as it was trained: [CLS] text [SEP] for BERT
            return [ids or [0] for ids in self.tokenizer.encode_with_special_tokens(texts, context)]
        bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
        # literal: a document (or query) quoting `<|endoftext|>` is embedded as the text it is
        return [(bos + ids)[:context] or [0] for ids in self.tokenizer.encode_batch(texts, literal=True)]

    def embed(self, texts: list[str], progress=None) -> np.ndarray:
        """(len(texts), dim) float32. progress: called with (texts done, len(texts)) after each batch."""
        rows = self.token_rows(texts)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths: little padding
        skip_first = self.tokenizer.bos_id is not None and self.model.config.causal
        done = 0
        while done < len(order):
            width = len(rows[order[done]])
            take = done + 1
            while take < len(order) and (take - done + 1) * max(width, len(rows[order[take]])) <= self.batch_tokens:
                width = max(width, len(rows[order[take]]))
                take += 1
            chosen = order[done:take]
            out[chosen] = pooled_embeddings(self.model, [rows[i] for i in chosen], skip_first).numpy()
            done = take
            if progress is not None:
                progress(done, len(rows))
        return out
