"""Bradley-Terry ratings of models from pairwise verdicts (a judge's, or people's).

The Bradley-Terry model (Bradley & Terry 1952) gives each model a strength p_i > 0 with
P(i beats j) = p_i / (p_i + p_j). It is fitted by Hunter's (2004) minorization-maximization update

    p_i <- W_i / sum_j n_ij / (p_i + p_j)

where W_i is i's wins and n_ij the games between i and j; each step raises the likelihood, and the
fixed point is the maximum-likelihood estimate. A tie counts as half a win for each side (the usual
treatment, as in Chatbot Arena's ratings). A model that never wins (or never loses) has no finite
estimate, so every compared pair gets `prior` virtual games split evenly, a small pull towards equal
strength that vanishes as real games accumulate.

Ratings are reported on the Elo scale, 400 log10(p_i) centred so the models' mean is 1000: a 100-point
gap means the stronger wins 64% of the time. Confidence intervals come from the bootstrap over games
(stats.bootstrap_interval); only differences between ratings are meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llmkit.eval.stats import bootstrap_resamples, percentile_interval

ELO_SCALE = 400 / math.log(10)
ELO_CENTRE = 1000.0


@dataclass(frozen=True)
class Game:
    first: str
    second: str
    score: float  # 1: first won, 0: second won, 0.5: tie


def fit_bradley_terry(games: Sequence[Game], models: Sequence[str] | None = None, *, prior: float = 1.0,
                      iterations: int = 10_000, tolerance: float = 1e-10) -> dict[str, float]:
    """Log-strengths (natural log, mean 0) of the models, by Hunter's MM algorithm."""
    names = list(models) if models is not None else sorted({g.first for g in games} | {g.second for g in games})
    index = {name: i for i, name in enumerate(names)}
    k = len(names)
    wins = [0.0] * k
    played = [[0.0] * k for _ in range(k)]
    for g in games:
        i, j = index[g.first], index[g.second]
        if i == j:
            continue
        wins[i] += g.score
        wins[j] += 1 - g.score
        played[i][j] += 1
        played[j][i] += 1
    for i in range(k):
        for j in range(k):
            if i != j and played[i][j]:
                played[i][j] += prior
                wins[i] += prior / 2
    strength = [1.0] * k
    for _ in range(iterations):
        new = []
        for i in range(k):
            denominator = sum(played[i][j] / (strength[i] + strength[j]) for j in range(k) if j != i and played[i][j])
            new.append(wins[i] / denominator if denominator > 0 else strength[i])
        # fix the scale: only ratios are identified
        centre = math.exp(sum(math.log(max(s, 1e-300)) for s in new) / k)
        new = [s / centre for s in new]
        change = max(abs(math.log(max(a, 1e-300)) - math.log(max(b, 1e-300))) for a, b in zip(new, strength))
        strength = new
        if change < tolerance:
            break
    return {name: math.log(max(strength[index[name]], 1e-300)) for name in names}


def elo(log_strength: float) -> float:
    return ELO_CENTRE + ELO_SCALE * log_strength


def rate_models(games: Sequence[Game], *, resamples: int = 1000, seed: int = 0, prior: float = 1.0) -> list[dict]:
    """One row per model, best first: Elo-scale rating with its 95% bootstrap interval, games, wins,
    ties. The bootstrap resamples games and refits all models on each resample."""
    models = sorted({g.first for g in games} | {g.second for g in games})
    fitted = fit_bradley_terry(games, models, prior=prior)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for indices in bootstrap_resamples(len(games), resamples, seed):
        sample = [games[i] for i in indices]
        present = sorted({g.first for g in sample} | {g.second for g in sample})
        refit = fit_bradley_terry(sample, present, prior=prior, iterations=1000, tolerance=1e-8)
        for name in models:
            samples[name].append(elo(refit[name]) if name in refit else math.nan)
    rows = []
    for name in models:
        mine = [g for g in games if name in (g.first, g.second)]
        won = sum(g.score if g.first == name else 1 - g.score for g in mine if g.score != 0.5)
        rows.append({"model": name, "rating": elo(fitted[name]), "ci95": list(percentile_interval(samples[name])),
                     "games": len(mine), "wins": int(won), "ties": sum(1 for g in mine if g.score == 0.5)})
    return sorted(rows, key=lambda r: -r["rating"])
