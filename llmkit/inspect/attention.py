"""Attention weights of a text, read from the model: which earlier tokens each token looks at, per
head and per layer, as a table, a heatmap PNG and a clickable HTML page (`llmkit inspect attention`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmkit.inspect import InspectError
from llmkit.inspect.internals import trace
from llmkit.model import Transformer


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text; one that holds part of a multi-byte character shows as its bytes."""
    out = []
    for token_id in ids:
        text = tokenizer.decode([token_id])
        if "\ufffd" in text:
            text = "<" + " ".join(f"0x{b:02X}" for b in tokenizer.token_bytes(token_id)) + ">"
        out.append(text)
    return out


def visible(text: str) -> str:
    """A token's text for a table or a picture: escapes for newlines and tabs, and a space token shown
    as a visible open box (otherwise a cell would look empty)."""
    shown = repr(text)[1:-1]
    return shown.replace(" ", "\u2423") if not shown.strip() else shown


@dataclass
class AttentionMaps:
    tokens: list[str]
    weights: torch.Tensor  # (n_layers, n_heads, seq, seq): row i is token i's attention over tokens 0..i

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    def row(self, position: int, layer: int, head: int | None = None) -> torch.Tensor:
        """Token `position`'s attention over the tokens before it; head None = mean over heads."""
        check_index("layer", layer, self.n_layers)
        rows = self.weights[layer, :, position, : position + 1]
        if head is None:
            return rows.mean(dim=0)
        check_index("head", head, self.n_heads)
        return rows[head]

    def attended(self, position: int, layer: int, head: int | None = None, top: int = 5) -> list[tuple[int, str, float]]:
        """The `top` tokens that `position` attends to most: (index, text, weight), largest first."""
        row = self.row(position, layer, head)
        weights, index = row.topk(min(top, len(row)))
        return [(i, self.tokens[i], w) for i, w in zip(index.tolist(), weights.tolist())]

    def to_dict(self) -> dict:
        """JSON-ready: tokens and weights as nested lists (layers x heads x seq x seq), for web pages."""
        return {"tokens": self.tokens, "weights": self.weights.tolist()}


def check_index(what: str, value: int, count: int) -> None:
    if not 0 <= value < count:
        raise InspectError(f"{what} {value} does not exist: the model has {count} {what}s, numbered 0 to {count - 1}")


def token_position(tokens: list[str], spec: str | int | None) -> int:
    """The token a user means: None = the last; a number = that index (negative counts from the end);
    a word = its last occurrence (matched without surrounding spaces, case-insensitively)."""
    if spec is None:
        return len(tokens) - 1
    text = str(spec).strip()
    try:
        index = int(text)
    except ValueError:
        matches = [i for i, t in enumerate(tokens) if t.strip().lower() == text.lower()]
        if not matches:
            shown = " ".join(repr(t) for t in tokens[:40])
            raise InspectError(f"--token {text!r} is not one of the text's tokens ({shown}"
                               f"{' ...' if len(tokens) > 40 else ''}); give one of them or its index") from None
        return matches[-1]
    if not -len(tokens) <= index < len(tokens):
        raise InspectError(f"--token {index}: the text has {len(tokens)} tokens (0 to {len(tokens) - 1}, or -1 for the last)")
    return index % len(tokens)


def attention_maps(model: Transformer, tokenizer, text: str, add_bos: bool = True) -> AttentionMaps:
    return attention_maps_of_ids(model, tokenizer, tokenizer.encode(text, add_bos=add_bos))


# The maps are n_layers x n_heads x seq^2 float32 numbers, held twice while the layers are stacked: for
# SmolLM2 (30 x 9) a 4,000-token text would need 35 GB and the process would be killed without a word.
def attention_memory_budget() -> int:
    """Bytes the maps may take at their peak: half the memory available now (Linux's MemAvailable), at least
    2 GiB (where /proc/meminfo cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return max(2 << 30, int(line.split()[1]) * 1024 // 2)
    except (OSError, ValueError):
        pass
    return 2 << 30


def check_attention_size(model: Transformer, n_tokens: int) -> None:
    cfg = model.config
    peak_per_token_pair = 2 * cfg.n_layers * cfg.n_heads * 4
    budget = attention_memory_budget()
    if peak_per_token_pair * n_tokens ** 2 > budget:
        most = int((budget / peak_per_token_pair) ** 0.5)
        need = -(-peak_per_token_pair * n_tokens ** 2 * 10 // 2 ** 30) / 10  # GiB, rounded up to a tenth
        raise InspectError(f"the text has {n_tokens} tokens: the attention weights of all {cfg.n_layers} layers x "
                           f"{cfg.n_heads} heads would take {need:.1f} GiB at their peak, more than half the memory "
                           f"free now; give a text of at most {most} tokens")


def attention_maps_of_ids(model: Transformer, tokenizer, ids: list[int]) -> AttentionMaps:
    """The same for token ids (a rendered conversation, as the server's Inspect view sends)."""
    check_attention_size(model, len(ids))
    weights = trace(model, ids, logits=False).attention
    if not torch.isfinite(weights).all():  # a table of "nan%" would look like a finding (and is no JSON)
        raise InspectError("the attention weights are not finite (NaN or inf): the model's weights hold NaN/inf "
                           "values, or a low-precision dtype overflowed (try --dtype float32)")
    return AttentionMaps(token_texts(tokenizer, ids), weights)


def format_attention(maps: AttentionMaps, position: int, layer: int | None = None, head: int | None = None,
                     top: int = 5) -> str:
    """A table of what token `position` attends to: the mean over heads for every layer (or the chosen
    one), and each head's own top tokens when a layer is chosen."""
    def shown(entries) -> str:
        return ", ".join(f"{text!r} {weight:.0%}" for _, text, weight in entries)

    lines = [f"token {position} {maps.tokens[position]!r} attends to (top {top}; {maps.n_layers} layers x "
             f"{maps.n_heads} heads):"]
    layers = range(maps.n_layers) if layer is None else [layer]
    for lay in layers:
        check_index("layer", lay, maps.n_layers)
        if head is None:
            lines.append(f"  layer {lay:>2} mean     {shown(maps.attended(position, lay, None, top))}")
        if layer is not None or head is not None:
            for h in range(maps.n_heads) if head is None else [head]:
                lines.append(f"  layer {lay:>2} head {h:>2}  {shown(maps.attended(position, lay, h, top))}")
    return "\n".join(lines)
