"""Which sentence does the model find more likely? `llmkit score A B C` ranks sentences by their total
log-probability (what the model would pick) and by the mean per token (fair across lengths)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RankedSentence:
    text: str
    total_logprob: float
    tokens: list  # llmkit.api.TokenScore: text, logprob

    @property
    def mean_logprob(self) -> float:
        return self.total_logprob / max(len(self.tokens), 1)


def rank_sentences(scored: list[tuple[str, object]]) -> list[RankedSentence]:
    """(text, llmkit.api.Score) pairs -> most likely first (by total log-probability)."""
    ranked = [RankedSentence(text, score.total_logprob, score.tokens) for text, score in scored]
    return sorted(ranked, key=lambda r: r.total_logprob, reverse=True)


def format_ranking(ranked: list[RankedSentence]) -> str:
    by_mean = sorted(ranked, key=lambda r: r.mean_logprob, reverse=True)
    mean_place = {id(r): i + 1 for i, r in enumerate(by_mean)}
    lines = ["ranking (most likely first)        total log p   per token   rank per token"]
    for place, r in enumerate(ranked, 1):
        lines.append(f"  {place}. {r.text[:36]!r:<38} {r.total_logprob:9.2f}   {r.mean_logprob:9.3f}   {mean_place[id(r)]:>5}")
    if len(ranked) > 1:
        best, second = ranked[0], ranked[1]
        gap = best.total_logprob - second.total_logprob
        lines.append(f"the model finds {best.text!r} e^{gap:.1f} = {math.exp(min(gap, 700)):.3g} times as likely "
                     f"as {second.text!r}")
    return "\n".join(lines)
