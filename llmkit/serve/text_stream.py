"""Generated token ids -> the text a client sees, piece by piece, with stop strings cut out.

Decoding token by token is not decoding the whole: a byte-level BPE token may hold half of a UTF-8
character, and tokenizers with a "▁" space marker render a token differently at the start of a text.
So, as Hugging Face's TGI and vLLM do, each new piece is the difference between decoding a short window
of recent tokens with and without the newest one; a piece ending in U+FFFD (an incomplete character)
is held back until the character completes.

The same class serves a streamed and a non-streamed reply, so their texts are equal by construction,
and each token is credited with exactly the text it added: the tokens of a reply's log-probabilities
concatenate to its content.

The server skips special tokens (`<|im_start|>`, a stray `<|endoftext|>`) by default, as vLLM's
`skip_special_tokens: true` does: a token in `skip_ids` adds "" and stays out of the decoded window.
Leaving them out of the ids is what `tokenizers`' own `decode(skip_special_tokens=True)` does (it drops
them before its decoder runs), so the text equals that decode of the whole reply, and a character whose
bytes a special token interrupts still completes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"


@dataclass
class TokenPiece:
    """One generated token and the text it added to the reply ("" while a character is incomplete, and
    for a skipped special token)."""

    token_id: int
    text: str
    skipped: bool = False  # a special token left out of the text (skip_special_tokens)


@dataclass
class TextStream:
    """Turns one choice's generated tokens into text, holding back what may be the start of a stop string."""

    tokenizer: object  # anything with .decode(ids)
    stop_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    skip_ids: frozenset[int] = frozenset()  # tokens that add no text (Tokenizer.special_ids)
    ids: list[int] = field(default_factory=list)  # the tokens decoded (skipped ones left out)
    prefix_offset: int = 0  # window start: decoding from here renders the window's first token as it is in context
    read_offset: int = 0  # tokens before this have been turned into text
    text: str = ""  # all text decoded so far (stop strings not yet cut)
    shown: int = 0  # characters of `text` already handed out
    stopped: bool = False  # a stop token or stop string was reached: nothing more is shown
    stop_token: int | None = None  # the stop token that ended the reply (generated, never shown as text)
    pieces: list[TokenPiece] = field(default_factory=list)  # every shown token with its text

    def add(self, token_ids: list[int]) -> str:
        """Feed newly generated tokens; returns the text that may be shown now."""
        for token in token_ids:
            if self.stopped:
                break
            if token in self.stop_token_ids:
                self.stopped, self.stop_token = True, token
                break
            if token in self.skip_ids:
                self.pieces.append(TokenPiece(token, "", skipped=True))
                continue
            self.ids.append(token)
            self.pieces.append(TokenPiece(token, self._decode_next()))
            self._check_stop_strings()
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The generation ended: release whatever was held back (a trailing incomplete character too)."""
        if not self.stopped and self.read_offset < len(self.ids):
            before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
            rest = self.tokenizer.decode(self.ids[self.prefix_offset:])[len(before):]
            self.text += rest
            # the last token decoded (skipped special tokens after it hold no bytes of the character)
            next(p for p in reversed(self.pieces) if not p.skipped).text += rest
            self.read_offset = len(self.ids)
            self._check_stop_strings()
        return self._release(final=True)

    # -- internals
    def _decode_next(self) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        after = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if after.endswith(REPLACEMENT) or len(after) < len(before):
            return ""  # an incomplete character: wait for the token that completes it
        piece = after[len(before):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += piece
        return piece

    def _check_stop_strings(self) -> None:
        if not self.stop_strings:
            return
        cuts = [i for i in (self.text.find(s, max(0, self.shown - len(s))) for s in self.stop_strings) if i != -1]
        if cuts:
            self._cut(min(cuts))
            self.stopped = True

    def _cut(self, length: int) -> None:
        """Drop text from `length` on, and the pieces (or the parts of them) that held it."""
        self.text = self.text[:length]
        kept, total = [], 0
        for piece in self.pieces:
            if total >= length:
                break
            piece.text = piece.text[:length - total]
            total += len(piece.text)
            kept.append(piece)
        self.pieces = kept

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held_back()
        out = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return out

    def _held_back(self) -> int:
        """Characters at the end of the text that may be the start of a stop string."""
        longest = 0
        for stop in self.stop_strings:
            # The longest end of the text that begins the stop string: its candidates start where the stop
            # string's first character is, found by str.find rather than by slicing the stop string at every
            # length (per token, that was quadratic in the stop string's length).
            tail = self.text[len(self.text) - min(len(stop) - 1, len(self.text)):]
            start = tail.find(stop[0])
            while start != -1 and len(tail) - start > longest:
                if stop.startswith(tail[start:]):
                    longest = len(tail) - start
                    break
                start = tail.find(stop[0], start + 1)
        return longest

    @property
    def shown_pieces(self) -> list[TokenPiece]:
        """Pieces whose text has been fully shown (for streaming their log-probabilities). Trailing
        pieces of an incomplete character wait: the token that completes it may still change them."""
        total, complete = 0, 0
        for i, piece in enumerate(self.pieces):
            total += len(piece.text)
            if total > self.shown:
                break
            if piece.text:
                complete = i + 1
        return self.pieces[:complete]
