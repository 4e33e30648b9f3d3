"""From option scores to accuracies, and from task accuracies to the CORE score.

Multiple choice and schema, per example (lm-evaluation-harness, `process_results` of a
multiple-choice task; the first best option wins ties, as numpy's argmax):
- acc:            argmax of the options' summed log-probabilities
- acc_norm:       argmax of log-probability / characters of the option's answer text (the choice
                  without the delimiter; lm-evaluation-harness's length normalisation)
- acc_per_token:  argmax of the mean log-probability per continuation token (Mosaic's
                  InContextLearningMultipleChoiceAccuracy: lowest perplexity; nanochat's CORE: lowest
                  mean loss); the metric CORE is defined with
Language modelling: acc = every continuation token is the greedy (argmax) token.

CORE (DCLM, Li et al. 2024): each task's accuracy centred on its random baseline,
(acc - baseline) / (1 - baseline), averaged over the tasks. On a random sample of each task's examples
(`llmkit eval --sample N`) the score is an estimate, given with a 95% interval: each task's accuracy
is a proportion from a simple random sample drawn without replacement, whose variance is
p(1 - p) / (n - 1) * (1 - n / N) (Cochran, "Sampling Techniques", 1977, sec. 3.2; the last factor is the
finite-population correction: a task run whole adds no uncertainty); centring divides it by
(1 - baseline)^2, the tasks are sampled independently, so the mean's variance is their sum / tasks^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llmkit.eval.scoring import OptionScore
from llmkit.eval.stats import Z_95, wilson_interval
from llmkit.eval.tasks import LANGUAGE_MODELING

CHOICE_METRICS = ("acc", "acc_norm", "acc_per_token")
CORE_METRIC = {"multiple_choice": "acc_per_token", "schema": "acc_per_token", "language_modeling": "acc"}


def argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def predictions(scores: Sequence[OptionScore], choice_chars: Sequence[int]) -> dict[str, int]:
    """The option each rule picks."""
    return {
        "acc": argmax([s.logprob for s in scores]),
        "acc_norm": argmax([s.logprob / max(chars, 1) for s, chars in zip(scores, choice_chars)]),
        "acc_per_token": argmax([s.logprob / s.tokens for s in scores]),
    }


def example_correct(kind: str, scores: Sequence[OptionScore], choice_chars: Sequence[int],
                    gold: int | None) -> tuple[dict[str, int] | None, dict[str, bool]]:
    """(the predictions or None, {metric: right?}) of one example."""
    if kind == LANGUAGE_MODELING:
        # "Greedy decoding reproduces the continuation" is decided by the one forward that scored it, as
        # nanochat's CORE and Mosaic's LM accuracy decide it: if every continuation token is the argmax
        # given the context and the continuation's earlier tokens, then by induction each step of greedy
        # decoding sees exactly those inputs and emits exactly that token; if one is not, decoding leaves
        # the continuation there. No generation needed (tests/test_eval_scoring.py checks this against
        # the engine's greedy `generate_batch`).
        return None, {"acc": scores[0].greedy}
    picked = predictions(scores, choice_chars)
    return picked, {name: picked[name] == gold for name in CHOICE_METRICS}


def summarize(correct: Sequence[bool]) -> dict:
    """{"value", "correct", "n", "ci95": [low, high]} of one metric over a task's examples."""
    n, k = len(correct), sum(map(bool, correct))
    return {"value": k / n if n else 0.0, "correct": k, "n": n, "ci95": list(wilson_interval(k, n))}


def centred(accuracy: float, baseline: float) -> float:
    """(acc - baseline) / (1 - baseline): 0 at chance, 1 when every answer is right."""
    return (accuracy - baseline) / (1 - baseline)


def core_score(tasks: dict[str, dict], sampled: bool = False) -> dict:
    """The mean centred accuracy over task results ({name: {"kind", "baseline", "metrics", "n", "of"}});
    sampled: the examples were a random sample of each task, so add 95% intervals (the module's note)."""
    per_task = {name: centred(r["metrics"][CORE_METRIC[r["kind"]]]["value"], r["baseline"])
                for name, r in tasks.items()}
    score = sum(per_task.values()) / len(per_task) if per_task else 0.0
    out = {"score": score, "tasks": len(per_task), "centred": per_task}
    if sampled and per_task:
        variances = {name: _sampling_variance(r["metrics"][CORE_METRIC[r["kind"]]]["value"], r["n"], r["of"])
                     / (1 - r["baseline"]) ** 2 for name, r in tasks.items()}
        half = Z_95 * math.sqrt(sum(variances.values())) / len(per_task)
        out["ci95"] = [score - half, score + half]
        out["centred_ci95"] = {name: [per_task[name] - Z_95 * math.sqrt(v), per_task[name] + Z_95 * math.sqrt(v)]
                               for name, v in variances.items()}
    return out


def _sampling_variance(p: float, n: int, population: int) -> float:
    """The variance of a proportion p seen in a simple random sample of n of `population` examples."""
    if n >= population:
        return 0.0
    if n < 2:  # one example tells nothing of the spread: the largest a proportion's can be
        return 0.25 * (1 - n / population)
    return p * (1 - p) / (n - 1) * (1 - n / population)
