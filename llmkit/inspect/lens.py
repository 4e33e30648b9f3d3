"""The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): the model's final norm and
output head applied to the residual stream after every layer, so that one sees which next token each
layer would predict, and how the prediction forms through the layers (`llmkit inspect lens`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmkit.inspect.attention import token_texts, visible
from llmkit.inspect import InspectError
from llmkit.inspect.internals import check_length, lens_logits, trace
from llmkit.model import Transformer


@dataclass
class LensResult:
    """tokens: the input tokens; positions: the token indices read; top_ids / top_probs:
    (n_layers + 1, len(positions), top): row 0 reads the embeddings, row i the residual stream after
    block i (the last row is the model's own prediction)."""

    tokens: list[str]
    positions: list[int]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_texts: list[list[list[str]]]

    @property
    def n_rows(self) -> int:
        return self.top_ids.shape[0]

    def column(self, position: int) -> int:
        return self.positions.index(position)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "positions": self.positions, "top_texts": self.top_texts,
                "top_probs": self.top_probs.tolist()}


# Logits of this many bytes at a time: the output head runs on a few hundred rows (layers x positions
# together) per matmul, which reads its 49,152 x 576 weights once per few hundred rows rather than once
# per layer, yet never holds the layers x positions x vocabulary floats at once (390 MB for SmolLM2 and
# 64 tokens).
LOGITS_CHUNK_BYTES = 64 << 20


@torch.inference_mode()
def lens_top(model: Transformer, hidden: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit lens's `top` tokens and their probabilities for every row of hidden (..., d_model):
    (..., top) ids and (..., top) probabilities, largest first. Only the top entries are turned into
    probabilities, exp(logit - logsumexp): the full distribution is never written."""
    if not 1 <= top <= model.config.vocab_size:
        raise InspectError(f"top {top}: give a number of tokens from 1 to the vocabulary's {model.config.vocab_size}")
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows = max(1, LOGITS_CHUNK_BYTES // (4 * model.config.vocab_size))
    index, probs = [], []
    buffer = torch.empty(min(rows, flat.shape[0]), model.config.vocab_size)
    for start in range(0, flat.shape[0], rows):
        logits = lens_logits(model, flat[start:start + rows], out=buffer)
        values, i = logits.topk(top, dim=-1)
        probs.append((values - logits.logsumexp(dim=-1, keepdim=True)).exp())
        index.append(i)
    shape = (*hidden.shape[:-1], top)
    return torch.cat(index).reshape(shape), torch.cat(probs).reshape(shape)


def logit_lens(model: Transformer, tokenizer, text: str, top: int = 5, add_bos: bool = True,
               positions: list[int] | None = None) -> LensResult:
    """The lens at `positions` (default: every token). Its cost is the output head's matmul once per
    layer and position (31 x 64 rows of 49,152 logits for SmolLM2 and 64 tokens: 112 GFLOP, seven
    times the forward itself), so reading fewer positions is proportionally cheaper."""
    return logit_lens_of_ids(model, tokenizer, tokenizer.encode(text, add_bos=add_bos), top, positions)


def logit_lens_of_ids(model: Transformer, tokenizer, ids: list[int], top: int = 5,
                      positions: list[int] | None = None) -> LensResult:
    """The same for token ids (a rendered conversation, as the server's Inspect view sends)."""
    hidden = trace(model, ids, attention=False, logits=False).hidden
    positions = list(range(len(ids))) if positions is None else positions
    top_ids, top_probs = lens_top(model, hidden[:, positions], top)
    if not torch.isfinite(top_probs).all():  # a table of "nan%" would look like a finding
        raise InspectError("the lens's probabilities are not finite (NaN or inf): the model's weights hold NaN/inf "
                           "values, or a low-precision dtype overflowed (try --dtype float32)")
    texts = [[token_texts(tokenizer, row) for row in layer] for layer in top_ids.tolist()]
    return LensResult(token_texts(tokenizer, ids), positions, top_ids, top_probs, texts)


@dataclass
class NextToken:
    """The model's distribution over the token after `tokens`: its `top` most likely tokens."""

    tokens: list[str]
    top_ids: list[int]
    top_texts: list[str]
    top_logprobs: list[float]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "top_ids": self.top_ids, "top_texts": self.top_texts,
                "top_logprobs": self.top_logprobs}


@torch.inference_mode()
def next_token_of_ids(model: Transformer, tokenizer, ids: list[int], top: int = 10) -> NextToken:
    """The next-token probabilities after `ids` as the model computes them for generation (the last
    position's logits, log-softmax in float32, as `llmkit score` and the API's logprobs do)."""
    check_length(model, ids)
    soft = model.soft_prompt_ids  # a prompt-tuned model generates after its soft prompt: so does this
    check_length(model, soft + ids)
    vocab = model.config.vocab_size - len(soft)  # the logits' width: a soft prompt's ids are inputs only
    if not 1 <= top <= vocab:
        raise InspectError(f"top {top}: give a number of tokens from 1 to the vocabulary's {vocab}")
    x = torch.tensor([soft + ids], device=model.tok_emb.weight.device)
    logprobs = torch.log_softmax(model(x, last_token_only=True)[0, -1].float(), dim=-1)
    values, index = logprobs.topk(top)
    if torch.isnan(values).any() or torch.isposinf(values).any():  # (-inf: a token of probability 0, is fine)
        raise InspectError("the next-token probabilities are not finite (NaN or inf): the model's weights hold NaN/inf "
                           "values, or a low-precision dtype overflowed (try --dtype float32)")
    index_list = index.tolist()
    return NextToken(token_texts(tokenizer, ids), index_list, token_texts(tokenizer, index_list), values.tolist())


def lens_positions(n_tokens: int, spec: str | None) -> list[int]:
    """Positions to show: None = the last 8; 'all'; or 'A:B' / 'N' (Python slice / index rules)."""
    if spec is None:
        return list(range(max(0, n_tokens - 8), n_tokens))
    if spec == "all":
        return list(range(n_tokens))
    try:
        if ":" in spec:
            start, stop = (int(part) if part.strip() else None for part in spec.split(":", 1))
            chosen = list(range(n_tokens))[start:stop]
        else:
            chosen = [int(spec) % n_tokens] if -n_tokens <= int(spec) < n_tokens else []
    except ValueError:
        raise InspectError(f"--positions {spec!r}: write 'all', a token index, or a range A:B") from None
    if not chosen:
        raise InspectError(f"--positions {spec!r} selects none of the text's {n_tokens} tokens (0 to {n_tokens - 1})")
    return chosen


def format_lens(result: LensResult, width: int = 12) -> str:
    """One row per layer, one column per position: the top token that layer predicts next, and its
    probability (%)."""
    def cell(text: str, prob: float) -> str:
        label = visible(text)
        label = label if len(label) <= width - 5 else label[: width - 6] + "~"
        return f"{label} {prob * 100:3.0f}".rjust(width)

    header = "layer".ljust(6) + "".join(visible(result.tokens[p])[:width - 1].rjust(width) for p in result.positions)
    lines = ["next token predicted after each token, at each layer (top 1, %):", header]
    for row in range(result.n_rows):
        name = "emb" if row == 0 else str(row)
        lines.append(name.ljust(6) + "".join(cell(result.top_texts[row][col][0], result.top_probs[row, col, 0].item())
                                             for col in range(len(result.positions))))
    lines.append(f"(emb: the embeddings; row {result.n_rows - 1}: the last layer, the model's own prediction)")
    return "\n".join(lines)
