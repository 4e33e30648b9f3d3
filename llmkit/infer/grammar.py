"""Grammar-constrained decoding: the next token is sampled only among tokens that keep the output a valid
prefix of a grammar (a JSON schema, "any JSON object", or a Lark grammar).

How it works (the approach of Willard & Louf 2023, "Efficient Guided Generation for LLMs", and of
llguidance, Moskal et al. 2024, whose Rust engine does the parsing here): at each step a request's
`Constraint` computes the set of allowed tokens as a bitmask (one bit per vocabulary entry, 32 to an
int32); the sampler sets every disallowed logit to -inf before choosing; the chosen token then advances
the constraint. Once the grammar is complete and nothing may follow, the request stops.

The pieces:
- `GrammarCompiler`: one per tokenizer. Builds llguidance's token trie from the tokenizer's own
  `tokenizer.json` text (no transformers needed) once, then compiles grammars; a grammar that cannot
  be compiled (an invalid JSON schema, a bad regex pattern) raises `GrammarError`.
- `Grammar`: a compiled grammar, immutable, shared by every request that uses it (each `n` choice of
  one HTTP request, every request with the same schema). `SamplingParams.grammar` holds it.
- `Constraint`: one request's position in its grammar (`Grammar.constraint()`, made by the request's
  sampler). It can roll back tokens (speculative decoding verifies drafts against it, then undoes them).
- `constrain_logits`: the batched step: one llguidance call fills the masks of every constrained row (in
  parallel, on its own threads), numpy unpacks the bits, one `masked_fill` applies them all.

llguidance is imported only when a grammar is first compiled, so nothing else pays for it.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

from llmkit.errors import GenerationError

# Compact JSON: no whitespace between tokens. With whitespace allowed, a weak model can emit spaces and
# newlines for as long as max_tokens lets it (an untrained one does) and never close the object.
JSON_OPTIONS = {"whitespace_flexible": False}

_executor = None
_executor_lock = threading.Lock()


class GrammarError(GenerationError):
    """A grammar (JSON schema, Lark grammar) that cannot be compiled, or that admits no output (at its start
    or part-way, e.g. an object that must contain itself): the request's own input is at fault."""


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a core dependency; only a broken install lacks it
        raise GenerationError("constrained decoding needs the llguidance package: pip install llguidance") from None
    return llguidance


def _parallel_executor():
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = _llguidance().LLExecutor()
        return _executor


class GrammarCompiler:
    """Compiles grammars for one tokenizer and one model vocabulary.

    tokenizer: a `llmkit.tokenizer.Tokenizer` (its `tokenizer.json` text is what llguidance reads);
    vocab_size: the model's logits width (may exceed the tokenizer's: the extra ids are never allowed);
    stop_token_ids: the tokens that end a reply, allowed where the grammar may end."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids):
        llguidance = _llguidance()
        stops = sorted(set(stop_token_ids))
        if not stops:
            raise GrammarError("constrained decoding needs at least one stop token (an EOS) to end the output")
        self.vocab_size = vocab_size
        self.stop_token_ids = stops
        self.tokenizer = tokenizer
        # slices=json_slices: llguidance precomputes token classes that make JSON masks cheap.
        self.lltokenizer = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=stops,
                                                  slices=llguidance.LLTokenizer.json_slices())

    def json_schema(self, schema: dict, where: str = "schema") -> Grammar:
        """Output is JSON that validates against `schema` (draft 2020-12, as llguidance implements it)."""
        if not isinstance(schema, dict):
            raise GrammarError(f"{where} must be a JSON object, not {type(schema).__name__}")
        llguidance = _llguidance()
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise GrammarError(f"{where} is not a valid JSON schema: {e}") from None
        return Grammar(self, text, where)

    def json_object(self) -> Grammar:
        """Output is any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return self.json_schema({"type": "object"}, "json_object")

    def lark(self, grammar: str, where: str = "grammar") -> Grammar:
        """Output matches a Lark grammar in llguidance's dialect (`%json {...}` embeds a JSON schema;
        `<|name|>` or `<[id]>` matches a special token)."""
        return Grammar(self, _llguidance().LLMatcher.grammar_from_lark(grammar), where)

    def special_token(self, text: str) -> str | None:
        """The Lark form of `text` if the tokenizer has it as one special token (`<[id]>`), else None."""
        token_id = self.tokenizer.backend.token_to_id(text)
        if token_id is None:
            return None
        added = self.tokenizer.backend.get_added_tokens_decoder().get(token_id)
        return f"<[{token_id}]>" if added is not None and added.special else None


class Grammar:
    """A compiled grammar; `constraint()` starts a request at its beginning."""

    def __init__(self, compiler: GrammarCompiler, text: str, where: str):
        llguidance = _llguidance()
        self.compiler, self.text, self.where = compiler, text, where
        # Built once and checked here (llguidance reports grammar errors as a matcher error state, not an
        # exception); each request then gets a cheap deep copy.
        self._start = llguidance.LLMatcher(compiler.lltokenizer, text, log_level=0)
        if self._start.is_error():
            raise GrammarError(f"{where} cannot be compiled: {_first_line(self._start.get_error())}")
        # A grammar that compiles may still admit no output at all (a schema whose only object is itself,
        # {"$ref": "#"}): its first mask fails. Found here, it is the request's error, not the engine's.
        probe = self._start.deep_copy()
        mask = np.empty((compiler.vocab_size + 31) // 32, dtype=np.int32)
        probe.unsafe_compute_mask_ptr(mask.ctypes.data, mask.size * 4)
        if probe.is_error():
            raise GrammarError(f"{where} admits no output: {_first_line(probe.get_error())}")

    def constraint(self) -> Constraint:
        return Constraint(self._start.deep_copy(), self.compiler.vocab_size)

    def __repr__(self) -> str:
        return f"Grammar({self.where})"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


class Constraint:
    """One request's state in a grammar: which tokens may come next; advanced token by token."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32  # int32 words of one bitmask

    def fill_mask(self, out: np.ndarray) -> None:
        """Write the allowed-token bitmask into `out` (int32, (words,), contiguous)."""
        self.matcher.unsafe_compute_mask_ptr(out.ctypes.data, out.size * 4)
        self._check()

    def advance(self, token: int) -> None:
        """The token was chosen: move past it. Raises if the grammar does not allow it."""
        if not self.matcher.consume_token(token):  # the token came from its mask: the parser's limits are hit
            raise GrammarError(f"token {token} breaks the output's grammar: "
                                  f"{_first_line(self.matcher.get_error())}")

    def rollback(self, n_tokens: int) -> None:
        if n_tokens and not self.matcher.rollback(n_tokens):
            raise GenerationError(f"the output's grammar could not roll back {n_tokens} tokens")

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (but a stop token): the output is done."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise GrammarError(f"the output's grammar failed: {_first_line(self.matcher.get_error())}")

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """One row of logits (vocab,) with the disallowed tokens at -inf (a new tensor)."""
        bits = np.empty((1, self.words), dtype=np.int32)
        self.fill_mask(bits[0])
        return _apply(logits[None], bits)[0]

    def mask_draft_logits(self, logits: torch.Tensor, drafts: list[int]) -> torch.Tensor:
        """Speculative decoding: logits (len(drafts) + 1, vocab) of the positions that follow the
        request's output and then each draft token; row i masked as the grammar stands after
        drafts[:i]. Drafts are walked through the grammar and rolled back, so the constraint is
        unchanged; rows after a draft the grammar refuses stay unmasked: that draft is rejected (its
        masked probability is 0), and the rows after it are never used."""
        bits = np.full((logits.shape[0], self.words), -1, dtype=np.int32)
        walked = 0
        try:
            for i in range(logits.shape[0]):
                self.fill_mask(bits[i])
                if i == len(drafts) or not _allowed(bits[i], drafts[i]) or not self.matcher.consume_token(drafts[i]):
                    break
                walked += 1
        finally:
            self.rollback(walked)
        return _apply(logits, bits)


def _allowed(bits: np.ndarray, token: int) -> bool:
    return bool((int(bits[token >> 5]) >> (token & 31)) & 1)


def _apply(logits: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
    """logits (rows, vocab) with every token whose bit is 0 set to -inf. The int32 words are little-endian
    in memory, so unpacking their bytes little-bit-first lists the bits in token order. torch.where rather
    than masked_fill(~allowed): one pass instead of two, about half the time on CPU for a 16 x 49k batch
    (benchmarks/grammar_cost.py)."""
    allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :logits.shape[1]]
    allowed = torch.from_numpy(allowed).view(torch.bool).to(logits.device, non_blocking=True)
    return torch.where(allowed, logits, float("-inf"))


def constrain_logits(logits: torch.Tensor, constraints: list[Constraint | None]) -> tuple[torch.Tensor, list]:
    """Mask the rows of `logits` (rows, vocab) whose request has a constraint, all in one pass.

    Returns (masked logits, per row: None or the exception that row's grammar raised). Unconstrained rows
    keep their logits (their mask is all ones)."""
    rows = [(c.matcher, i) for i, c in enumerate(constraints) if c is not None]
    errors: list = [None] * len(constraints)
    if not rows:
        return logits, errors
    words = next(c for c in constraints if c is not None).words
    bits = np.full((len(constraints), words), -1, dtype=np.int32)
    if len(rows) == 1:  # no thread hand-off for one row
        matcher, i = rows[0]
        matcher.unsafe_compute_mask_ptr(bits[i].ctypes.data, words * 4)
    else:
        _parallel_executor().unsafe_compute_mask_ptr(rows, bits.ctypes.data, words * 4, len(constraints))
    for matcher, i in rows:
        if matcher.is_error():
            errors[i] = GrammarError(f"the output's grammar failed: {_first_line(matcher.get_error())}")
            bits[i] = -1
    return _apply(logits, bits), errors


def schema_text(schema: dict) -> str:
    """A schema as compact JSON (for embedding in a Lark grammar's `%json`)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
