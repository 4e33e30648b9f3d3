"""The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): the model's final norm and
output head applied to the residual stream after every layer, so that one sees which next token each
layer would predict, and how the prediction forms through the layers (`llmkit inspect lens`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmkit.inspect.attention import token_texts, visible
from llmkit.inspect import InspectError
from llmkit.inspect.internals import lens_logits, trace
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


@torch.inference_mode()
def logit_lens(model: Transformer, tokenizer, text: str, top: int = 5, add_bos: bool = True,
               positions: list[int] | None = None) -> LensResult:
    """The lens at `positions` (default: every token). Its cost is the output head's matmul once per
    layer and position (31 x 64 rows of 49,152 logits for SmolLM2 and 64 tokens), so reading fewer
    positions is proportionally cheaper."""
    ids = tokenizer.encode(text, add_bos=add_bos)
    hidden = trace(model, ids, attention=False).hidden
    positions = list(range(len(ids))) if positions is None else positions
    probs, index = [], []
    for layer in hidden[:, positions]:  # a layer at a time: all at once would hold layers x seq x vocab floats
        logits = lens_logits(model, layer)
        values, i = logits.topk(top, dim=-1)
        # softmax of the top entries only: exp(logit - logsumexp) never writes the full distribution
        probs.append((values - logits.logsumexp(dim=-1, keepdim=True)).exp())
        index.append(i)
    top_ids, top_probs = torch.stack(index), torch.stack(probs)
    if not torch.isfinite(top_probs).all():  # a table of "nan%" would look like a finding
        raise InspectError("the lens's probabilities are not finite (NaN or inf): the model's weights hold NaN/inf "
                           "values, or a low-precision dtype overflowed (try --dtype float32)")
    texts = [[token_texts(tokenizer, row) for row in layer] for layer in top_ids.tolist()]
    return LensResult(token_texts(tokenizer, ids), positions, top_ids, top_probs, texts)


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
