"""Model forwards the server runs outside the generation batch, on the engine thread between steps:
prompt log-probabilities (completions with `echo` + `logprobs`) and embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from llmkit.infer import TokenLogprob
from llmkit.rag.embed import pooled_embeddings

if TYPE_CHECKING:
    from llmkit.model import Transformer


def _device(model: "Transformer") -> torch.device:
    return model.tok_emb.weight.device


@torch.inference_mode()
def prompt_logprobs(model: "Transformer", ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it (None for the first, which has no
    context), with the `top` most likely alternatives. Computed exactly as `LLM.score` does (one full
    forward, log-softmax in float32), so a harness's log-likelihoods equal `llmkit score`'s."""
    soft = model.soft_prompt_ids  # a prompt-tuned model reads the prompt after its soft prompt
    x = torch.tensor([soft + ids], device=_device(model))
    logprobs = torch.log_softmax(model(x)[0, len(soft):-1].float(), dim=-1)
    targets = torch.tensor(ids[1:], device=logprobs.device)
    chosen = logprobs.gather(1, targets[:, None])[:, 0].cpu().tolist()
    best = torch.topk(logprobs, top, dim=-1) if top else None
    out: list[TokenLogprob | None] = [None]
    for i, (token, logprob) in enumerate(zip(ids[1:], chosen)):
        alternatives = list(zip(best.indices[i].tolist(), best.values[i].tolist())) if best is not None else []
        out.append(TokenLogprob(token, logprob, alternatives))
    return out


def embed(model: "Transformer", ids: list[int], skip_first: bool) -> list[float]:
    """Mean of the final normalised hidden states over the input's tokens, scaled to unit length (so a
    dot product is the cosine similarity, as with OpenAI's embeddings). skip_first: leave out a BOS
    token, whose state is the same for every input. The same vectors as a RAG index's (llmkit/rag/embed.py)."""
    return pooled_embeddings(model, [ids], skip_first)[0].tolist()
