"""Whether a request's newest token completed one of its stop strings (`SamplingParams.stop_strings`).

Decoding the whole output at every token costs quadratic time, so only a window of its last tokens is
decoded. The window must hold every stop string's worth of characters before the newest token's text,
and a count of tokens does not say how many characters that is: a byte-level BPE vocabulary splits a
rare character into up to four tokens (a 5-character Japanese stop string was 15 tokens of the
Shakespeare tokenizer, past the old fixed window of len + 8 tokens: the engine missed it and ran on to
max_new_tokens). The window's first characters may also render wrongly (a cut character decodes as
U+FFFD; a "▁"-marker tokenizer drops a leading space). So the window doubles until the text before the
newest token is long enough, with SLACK characters to spare for that damage.
"""

from __future__ import annotations

from collections.abc import Sequence

# Characters of the window's head that may be rendered wrongly: up to three U+FFFD for the bytes of a
# cut character, one dropped space marker.
SLACK = 4


def hit_stop_string(tokenizer, output_ids: Sequence[int], stops: Sequence[str]) -> bool:
    """True if the text of `output_ids` holds one of `stops` (checked after each token, so a match is one the
    newest token completed). tokenizer: anything with `.decode(ids)`."""
    if not stops or not output_ids:
        return False
    longest = max(map(len, stops))
    newest = len(tokenizer.decode(list(output_ids[-1:])))
    n = longest + 8  # enough for most text (a token is at least a character), so one decode as a rule
    while True:
        tail = tokenizer.decode(list(output_ids[-n:]))
        if n >= len(output_ids) or len(tail) - newest >= longest + SLACK:
            return any(s in tail for s in stops)
        n *= 2
