"""Statistics for accuracies on a finite set of questions: a confidence interval for one model, and a
paired test for two models on the same questions.

Accuracy on n questions is a binomial proportion. The Wilson score interval (Wilson 1927) keeps its
coverage near 0 and 1 and for small n, where the textbook p +- 1.96 sqrt(p(1-p)/n) collapses to a point.
Two models scored on the same questions are compared with McNemar's exact test (McNemar 1947): only
the questions exactly one of them gets right carry information, and under "no difference" each such
question is a fair coin. Pairing removes the questions' own difficulty, so it detects smaller
differences than comparing two separate intervals.

Statistics without a closed form (a judge's Cohen's kappa, a Bradley-Terry rating, a mean score) get a
percentile bootstrap interval: the items are resampled with replacement and the statistic recomputed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) confidence interval of a proportion successes / n; (0, 1) when n is 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact at the ends: rounding made the low end 3e-17 for 0 successes, an interval not holding p itself
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: the questions only A gets right and
    the questions only B gets right. Under the null each discordant question is Binomial(1, 1/2); the
    p-value doubles the smaller tail (capped at 1), the usual exact two-sided form."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    # sum_{i<=k} C(n, i) / 2^n in exact integer arithmetic: no underflow for thousands of questions
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass
class PairedComparison:
    n: int  # questions both runs answered
    acc_a: float
    acc_b: float
    only_a: int  # right in A, wrong in B
    only_b: int  # right in B, wrong in A
    p_value: float  # exact McNemar, two-sided

    @property
    def difference(self) -> float:
        """acc_b - acc_a."""
        return self.acc_b - self.acc_a


def paired_comparison(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedComparison:
    """Compare two runs' per-question correctness (same questions, same order)."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired comparison of {len(correct_a)} and {len(correct_b)} answers")
    n = len(correct_a)
    only_a = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    only_b = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    return PairedComparison(n=n, acc_a=sum(map(bool, correct_a)) / max(n, 1),
                            acc_b=sum(map(bool, correct_b)) / max(n, 1),
                            only_a=only_a, only_b=only_b, p_value=mcnemar_exact(only_a, only_b))


def bootstrap_resamples(n: int, resamples: int = 1000, seed: int = 0) -> list[list[int]]:
    """`resamples` lists of n indices drawn with replacement from range(n); seeded."""
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)] if n else []


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` range of bootstrap values, NaNs (undefined resamples) dropped."""
    kept = sorted(v for v in values if not math.isnan(v))
    if not kept:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low = kept[min(len(kept) - 1, int(tail * len(kept)))]
    high = kept[min(len(kept) - 1, max(0, math.ceil((1 - tail) * len(kept)) - 1))]
    return low, high


def bootstrap_interval(n: int, statistic: Callable[[list[int]], float], *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron 1979) of statistic(indices) over n items resampled with
    replacement; resamples where the statistic is undefined (NaN) are dropped. Seeded: the same call
    gives the same interval. (nan, nan) when nothing is defined."""
    return percentile_interval([statistic(sample) for sample in bootstrap_resamples(n, resamples, seed)], level)


def cohen_kappa(labels_a: Sequence, labels_b: Sequence) -> float:
    """Cohen's kappa (Cohen 1960) of two raters' labels on the same items: (p_o - p_e) / (1 - p_e), the
    observed agreement beyond what the raters' own label frequencies give by chance. NaN when p_e is 1
    (both raters always give one and the same label: agreement is then uninformative)."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"kappa of {len(labels_a)} and {len(labels_b)} labels")
    n = len(labels_a)
    if n == 0:
        return math.nan
    observed = sum(1 for a, b in zip(labels_a, labels_b) if a == b) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if expected >= 1:
        return math.nan
    return (observed - expected) / (1 - expected)
