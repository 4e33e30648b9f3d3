"""Statistics of accuracies: Wilson intervals and McNemar's exact test, against published values and scipy."""

import math
import random

import pytest

from llmkit.eval.metrics import centred, core_score
from llmkit.eval.stats import mcnemar_exact, paired_comparison, wilson_interval


@pytest.mark.parametrize("k,n,expected", [
    (8, 10, (0.4901624715366418, 0.9433178485456248)),  # scipy.stats.binomtest(8, 10).proportion_ci("wilson")
    (0, 10, (0.0, 0.27753279986288926)),  # at 0 the interval still has width (the normal one collapses)
    (10, 10, (0.72246720013711074, 1.0)),
])
def test_wilson_interval_known_values(k, n, expected):
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(expected[0], abs=1e-9) and high == pytest.approx(expected[1], abs=1e-9)


def test_wilson_interval_matches_scipy_and_narrows_with_n():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(1, 3), (37, 50), (412, 1000), (999, 1000)]:
        reference = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((reference.low, reference.high), abs=1e-9)
    widths = [(lambda lo_hi: lo_hi[1] - lo_hi[0])(wilson_interval(n // 2, n)) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # 0.021484375
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)  # two-sided: symmetric
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 3000) < 1e-300 and mcnemar_exact(1400, 1600) < 0.001  # exact integers: no overflow
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(3, 14), (20, 31), (0, 7)]:
        assert mcnemar_exact(a, b) == pytest.approx(stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-9)


def test_paired_comparison_counts_only_discordant_questions():
    a = [True, True, False, False, True, True, False, True]
    b = [True, False, True, True, True, True, True, False]
    result = paired_comparison(a, b)
    assert (result.only_a, result.only_b, result.n) == (2, 3, 8)
    assert result.acc_a == 5 / 8 and result.acc_b == 6 / 8
    assert result.difference == pytest.approx(1 / 8)
    assert result.p_value == mcnemar_exact(2, 3) == 1.0
    with pytest.raises(ValueError):
        paired_comparison([True], [True, False])


def test_centred_accuracy_and_core_mean():
    assert centred(0.25, 0.25) == 0.0 and centred(1.0, 0.25) == 1.0
    assert centred(0.5, 0.25) == pytest.approx(1 / 3)
    tasks = {
        "mc": {"kind": "multiple_choice", "baseline": 0.5,
               "metrics": {"acc": {"value": 0.9}, "acc_per_token": {"value": 0.75}}},  # CORE reads acc_per_token
        "lm": {"kind": "language_modeling", "baseline": 0.0, "metrics": {"acc": {"value": 0.3}}},
    }
    core = core_score(tasks)
    assert core["centred"] == {"mc": pytest.approx(0.5), "lm": pytest.approx(0.3)}
    assert core["score"] == pytest.approx(0.4) and core["tasks"] == 2
    assert math.isclose(core_score({})["score"], 0.0)


def test_a_sampled_core_score_interval_covers_the_whole_suites_score():
    # Three tasks with known per-example correctness; draw random samples as `--sample` does and check
    # that the 95% interval holds the full score about 95% of the time (a wrong variance, e.g. one
    # without the centring's 1/(1-b)^2 or with the correction inverted, lands far from it).
    rng = random.Random(0)
    population = {"a": ([rng.random() < 0.7 for _ in range(600)], 0.25, "multiple_choice"),
                  "b": ([rng.random() < 0.55 for _ in range(300)], 0.5, "schema"),
                  "c": ([rng.random() < 0.2 for _ in range(900)], 0.0, "language_modeling")}

    def result(correct, baseline, kind, n_of):
        metric = "acc" if kind == "language_modeling" else "acc_per_token"
        return {"kind": kind, "baseline": baseline, "n": len(correct), "of": n_of,
                "metrics": {metric: {"value": sum(correct) / len(correct)}}}

    truth = core_score({k: result(c, b, kind, len(c)) for k, (c, b, kind) in population.items()})["score"]
    covered, draws = 0, 400
    for _ in range(draws):
        tasks = {k: result(rng.sample(c, 60), b, kind, len(c)) for k, (c, b, kind) in population.items()}
        low, high = core_score(tasks, sampled=True)["ci95"]
        covered += low <= truth <= high
    assert 0.91 <= covered / draws <= 0.98
    # a task run whole adds nothing: all three whole give an interval of no width at the score itself
    whole = core_score({k: result(c, b, kind, len(c)) for k, (c, b, kind) in population.items()}, sampled=True)
    assert whole["ci95"] == pytest.approx([truth, truth])
    assert "ci95" not in core_score({k: result(c, b, kind, len(c)) for k, (c, b, kind) in population.items()})


@pytest.mark.parametrize("n", [1, 7, 356, 1000])
def test_wilson_interval_holds_the_proportion_itself_at_the_ends(n):
    for k in (0, n):
        low, high = wilson_interval(k, n)
        assert low <= k / n <= high
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
