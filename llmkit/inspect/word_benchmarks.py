"""Word-vector benchmarks on any word space (`llmkit eval --analogies` / `--similarity`):

- analogies: Mikolov et al. 2013's questions-words.txt format (": section" lines, then "a b c d" for
  a : b :: c : d), answered by 3CosAdd, accuracy per section and overall. Questions whose words have no
  vector in the space (for input embeddings: words of several tokens) are skipped and counted, as in
  word2vec's own evaluation, which skips words outside its vocabulary.
- similarity: word pairs with a human score (WordSim353, Finkelstein et al. 2002; SimLex-999, Hill et
  al. 2015): Spearman's rank correlation between cosine and the human scores, over the pairs that have
  vectors.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.errors import DataError
from llmkit.inspect.embeddings import WordVectors, unit


@dataclass
class AnalogyQuestion:
    section: str
    words: tuple[str, str, str, str]  # a : b :: c : d


def read_analogies(path: str | Path) -> list[AnalogyQuestion]:
    questions, section = [], "(none)"
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not text
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the analogy questions ({e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        words = line.split()
        if len(words) != 4:
            raise DataError(f"{path}:{number}: an analogy line has four words (a b c d), this one has {len(words)}")
        questions.append(AnalogyQuestion(section, tuple(words)))
    if not questions:
        raise DataError(f"{path}: no analogy questions (lines of four words after ': section' headers)")
    return questions


def read_similarity(path: str | Path) -> list[tuple[str, str, float]]:
    """Tab- or space-separated "word1 word2 score" lines; '#' comments and a header line are skipped."""
    pairs = []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not text
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the similarity pairs ({e})") from None
    first = True  # only the first line that is not a comment may be a header (WordSim353's "Word 1 ...")
    for number, line in enumerate(lines, 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if not line.strip() or line.startswith("#"):
            continue
        header, first = first, False
        try:
            score = float(parts[2])
            words = parts[0].strip(), parts[1].strip()
        except (IndexError, ValueError):
            if header:
                continue
            raise DataError(f"{path}:{number}: expected 'word1<TAB>word2<TAB>score', got {line[:80]!r}") from None
        # float() reads "nan" and "inf": a rank of NaN would make Spearman's rho silently meaningless
        if not math.isfinite(score):
            raise DataError(f"{path}:{number}: the score {parts[2].strip()!r} is not a finite number; fix or delete the line")
        pairs.append((*words, score))
    if not pairs:
        raise DataError(f"{path}: no word pairs ('word1<TAB>word2<TAB>score' lines)")
    return pairs


@dataclass
class AnalogyResult:
    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    answered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / max(sum(self.answered.values()), 1)

    @property
    def coverage(self) -> float:
        return sum(self.answered.values()) / max(sum(self.total.values()), 1)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "coverage": self.coverage, "answered": sum(self.answered.values()),
                "total": sum(self.total.values()),
                "sections": {s: {"accuracy": self.correct[s] / self.answered[s] if self.answered[s] else None,
                                 "answered": self.answered[s], "total": self.total[s]} for s in self.total}}


@torch.inference_mode()
def evaluate_analogies(space: WordVectors, questions: list[AnalogyQuestion], batch: int = 512) -> AnalogyResult:
    """3CosAdd accuracy: the answer is right when the candidate nearest to unit(b) - unit(a) + unit(c),
    other than a, b and c, is d. A question is answered when all four words have vectors and d is a
    candidate (it could never be found otherwise)."""
    result = AnalogyResult()
    usable = []
    for q in questions:
        result.total[q.section] += 1
        vectors = [space.vector_of(w) for w in q.words]
        if all(v is not None for v in vectors) and q.words[3] in space.row_of:
            usable.append((q, vectors))
    for start in range(0, len(usable), batch):
        chunk = usable[start:start + batch]
        a, b, c = (unit(torch.stack([v[i] for _, v in chunk])) for i in range(3))
        sims = (b - a + c) @ space.unit.t()
        for row, (q, _) in enumerate(chunk):
            for word in q.words[:3]:
                if word in space.row_of:
                    sims[row, space.row_of[word]] = float("-inf")
        best = sims.argmax(dim=1).tolist()
        for (q, _), guess in zip(chunk, best):
            result.answered[q.section] += 1
            result.correct[q.section] += space.words[guess] == q.words[3]
    return result


def rank(values: list[float]) -> torch.Tensor:
    """Ranks 1..n, ties given their average rank (as Spearman's coefficient needs)."""
    x = torch.tensor(values, dtype=torch.float64)
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for value in x.unique():
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(first: list[float], second: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks."""
    a, b = rank(first), rank(second)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12))


def evaluate_similarity(space: WordVectors, pairs: list[tuple[str, str, float]]) -> dict:
    model, human = [], []
    for first, second, score in pairs:
        sim = space.similarity(first, second)
        if sim is not None:
            model.append(sim)
            human.append(score)
    # a constant column has no ranking: rho is undefined there, not 0 (the clamp in `spearman` would say 0)
    defined = len(model) > 2 and len(set(model)) > 1 and len(set(human)) > 1
    return {"spearman": spearman(model, human) if defined else None, "pairs": len(model), "total": len(pairs)}


def format_analogies(result: AnalogyResult, title: str) -> str:
    lines = [f"{title}: accuracy {result.accuracy:.1%} on {sum(result.answered.values()):,} questions "
             f"(coverage {result.coverage:.1%} of {sum(result.total.values()):,})",
             f"  {'section':<30} {'accuracy':>9} {'answered':>9} {'total':>7}"]
    for section in result.total:
        n = result.answered[section]
        acc = f"{result.correct[section] / n:.1%}" if n else "-"
        lines.append(f"  {section:<30} {acc:>9} {n:>9} {result.total[section]:>7}")
    return "\n".join(lines)
