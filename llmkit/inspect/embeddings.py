"""Words as vectors: a model's input embeddings (or its hidden states) as a space where similar words
sit close together and "king - man + woman" lands near "queen" (`llmkit inspect embeddings`).

The rules, stated once:
- A word is looked up as it appears inside a sentence: with a leading space (" king"), which is how
  byte-level BPE tokenizers (GPT-2's, SmolLM2's, llmkit's own) see a word after another word.
- The candidates (what a neighbour or an analogy's answer can be) are the vocabulary's word tokens:
  the tokens that are a space followed by letters only. Sub-word pieces and punctuation are not words.
- A word of several tokens gets the mean of its token embeddings (`vector_of`); the analogy benchmark
  instead keeps only questions whose four words are single tokens and reports the coverage
  (`llmkit.inspect.word_benchmarks`).
- Similarity is cosine; an analogy is 3CosAdd (Mikolov et al. 2013): the candidate nearest to
  b - a + c by cosine, each term a unit vector, excluding the three query words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmkit.inspect import InspectError
from llmkit.inspect.internals import check_length
from llmkit.model import Transformer


@dataclass
class WordVectors:
    """A space of candidate words: words[i] has the unit vector unit[i]. `vector_of(word)` gives any
    word's vector under the space's rule (None when the rule has none for it)."""

    words: list[str]
    unit: torch.Tensor
    vector_of: Callable[[str], torch.Tensor | None]
    describe: str = ""

    def __post_init__(self):
        self.row_of = {w: i for i, w in enumerate(self.words)}

    def require(self, word: str) -> torch.Tensor:
        vector = self.vector_of(word)
        if vector is None:
            raise InspectError(f"{word!r} has no vector in {self.describe or 'this space'}; try another word")
        return vector

    def nearest(self, target: torch.Tensor, top: int = 10, exclude: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        sims = self.unit @ unit(target)
        for word in exclude:
            if word in self.row_of:
                sims[self.row_of[word]] = float("-inf")
        values, index = sims.topk(min(top, len(self.words)))
        return [(self.words[i], v) for i, v in zip(index.tolist(), values.tolist())]

    def neighbours(self, word: str, top: int = 10) -> list[tuple[str, float]]:
        """The `top` candidate words nearest to `word` by cosine (the word itself left out)."""
        # the vector is looked up stripped (" king" is "king"), so the word left out must be too
        return self.nearest(self.require(word), top, exclude=(word.strip(),))

    def analogy(self, expression: str, top: int = 5) -> list[tuple[str, float]]:
        """3CosAdd for "king - man + woman" (any sum of +/- words): nearest candidates to the sum of
        the terms' unit vectors, the query words left out."""
        terms = parse_expression(expression)
        target = sum(sign * unit(self.require(word)) for sign, word in terms)
        if float(target.norm()) < 1e-6:  # "king - king": every cosine would be 0, a list in vocabulary order
            raise InspectError(f"--analogy {expression!r}: its terms cancel out (the sum is the zero vector); "
                               "give words that do not, e.g. \"king - man + woman\"")
        return self.nearest(target, top, exclude=tuple(word for _, word in terms))

    def similarity(self, first: str, second: str) -> float | None:
        a, b = self.vector_of(first), self.vector_of(second)
        return None if a is None or b is None else float(unit(a) @ unit(b))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


TERM = re.compile(r"\s*([+-]?)\s*([^\s+-]+)")


def parse_expression(expression: str) -> list[tuple[int, str]]:
    """"king - man + woman" -> [(+1, 'king'), (-1, 'man'), (+1, 'woman')]."""
    terms, pos = [], 0
    text = expression.strip()
    while pos < len(text):
        match = TERM.match(text, pos)
        if match is None or (terms and not match.group(1)):
            raise InspectError(f"--analogy {expression!r}: write words joined by + and -, e.g. \"king - man + woman\"")
        terms.append((-1 if match.group(1) == "-" else 1, match.group(2)))
        pos = match.end()
    if len(terms) < 2:
        raise InspectError(f"--analogy {expression!r}: give at least two words, e.g. \"king - man + woman\"")
    return terms


def is_word_token(text: str) -> bool:
    return len(text) > 1 and text[0] == " " and text[1:].isalpha()


def input_embeddings(model: Transformer, tokenizer, single_token: bool = False) -> WordVectors:
    """The model's input embedding table as a word space. single_token: a word of several tokens has
    no vector (the analogy benchmark's protocol) instead of the mean of its tokens' embeddings."""
    table = model.tok_emb.weight.detach().float().cpu()
    words, rows = [], []
    for token_id in range(min(table.shape[0], tokenizer.vocab_size)):
        text = tokenizer.decode([token_id])
        if is_word_token(text):
            words.append(text[1:])
            rows.append(token_id)

    def vector_of(word: str) -> torch.Tensor | None:
        ids = tokenizer.encode(" " + word.strip())
        if not ids or (single_token and len(ids) > 1):
            return None
        return table[ids].mean(dim=0)

    return WordVectors(words, unit(table[rows]), vector_of, "the input embeddings")


@torch.inference_mode()
def residual_at_words(model: Transformer, tokenizer, words: list[str], template: str = "{word}",
                      batch_size: int = 64) -> torch.Tensor:
    """(n_layers + 1, len(words), d_model): the residual stream at each word's last token, with the word
    (space-prefixed) put in `template` after BOS. Under causal attention the last token is the first
    position that has seen the whole word, and text after the word could not change it: it is not run."""
    if "{word}" not in template:
        raise InspectError(f"template {template!r} has no {{word}} to put the word in")
    prefix = tokenizer.encode(template.split("{word}", 1)[0].rstrip(), add_bos=True)
    rows, ends = [], []
    for word in words:
        ids = prefix + tokenizer.encode(" " + word.strip())
        ends.append(len(ids) - 1)
        rows.append(ids)
    device = model.tok_emb.weight.device
    out = []
    captured: list[torch.Tensor] = []

    def record(module, args):
        captured.append(args[0].float())

    handles = [block.register_forward_pre_hook(record) for block in model.blocks]
    handles.append(model.norm.register_forward_pre_hook(record))
    try:
        for start in range(0, len(rows), batch_size):
            chunk, chunk_ends = rows[start:start + batch_size], ends[start:start + batch_size]
            width = max(len(r) for r in chunk)
            for r in chunk:
                check_length(model, r)
            # right padding: a causal model's earlier positions never see it
            batch = torch.tensor([r + [0] * (width - len(r)) for r in chunk], device=device)
            captured.clear()
            model(batch, return_hidden=True)  # the residual stream is all we need: no output head
            index = torch.tensor(chunk_ends, device=device)
            out.append(torch.stack([h[torch.arange(len(chunk), device=device), index] for h in captured]).cpu())
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(out, dim=1)


def contextual_spaces(model: Transformer, tokenizer, words: list[str], template: str = "The word is {word}",
                      center: bool = True) -> list[WordVectors]:
    """One word space per layer (0 = embeddings output) from the hidden states of `words` in
    `template`; the candidates are `words` themselves. center: subtract the mean vector first — hidden
    states share a large common direction that makes every cosine high (Ethayarajh 2019, "How
    contextual are contextualized word representations?"; Mu & Viswanath 2018, "All-but-the-top")."""
    words = list(dict.fromkeys(words))
    states = residual_at_words(model, tokenizer, words, template)
    spaces = []
    for layer, vectors in enumerate(states):
        if center:
            vectors = vectors - vectors.mean(dim=0, keepdim=True)
        lookup = {w: v for w, v in zip(words, vectors)}
        spaces.append(WordVectors(words, unit(vectors), lookup.get, f"layer {layer}'s hidden states"))
    return spaces


def pca_2d(vectors: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, 2): the projection on the two principal components of the centred vectors."""
    centred = vectors.float() - vectors.float().mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].t()
