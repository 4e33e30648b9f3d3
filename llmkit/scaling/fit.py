"""`llmkit scaling fit`: two estimates of the compute-optimal frontier from the runs of a sweep.

Approach 2 (IsoFLOP profiles, Hoffmann et al. 2022, sec. 3.2): for each budget, a parabola of the final
loss in ln N; its vertex is N_opt(C), and D_opt(C) the tokens the budget buys at that size (interpolated
in ln D vs ln N among the budget's runs, so attention's FLOPs are accounted as the runs were). Power laws
N_opt = k_N C^a and D_opt = k_D C^b are then least-squares lines in log-log.

Approach 3 (the parametric law, Hoffmann et al. 2022 sec. 3.3, as re-done by Besiroglu et al. 2024):
L(N, D) = E + A / N^alpha + B / D^beta, written LSE(a - alpha ln N, b - beta ln D, e) with A = e^a, B = e^b,
E = e^e, fitted by minimising the summed Huber loss (delta = 1e-3) of ln L_pred - ln L_observed with
L-BFGS from a grid of starting points, the best end point kept. Besiroglu et al. showed Hoffmann's
published fit had stopped early; they report E 1.82, A 482, B 2085, alpha 0.35, beta 0.37. Under
C = 6ND the law's compute-optimal allocation is N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
a = beta / (alpha + beta), b = alpha / (alpha + beta), G = (alpha A / (beta B))^(1 / (alpha + beta))
(Hoffmann et al. eq. 4).

Intervals are bootstrap percentiles (95%): runs resampled with replacement and everything refitted
(approach 2 resamples within each budget). Runs that repeat their data more than max_epochs times are left
out of both fits (Muennighoff et al. 2023: up to ~4 epochs cost little; beyond, data stops counting as new),
and the output says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmkit.errors import DataError

HUBER_DELTA = 1e-3
MAX_EPOCHS = 4.0
# Starting points of the L-BFGS fits (Hoffmann et al.'s grid): e in [-1, 1], a and b in [0, 25], the
# exponents in [0, 2]: 4,500 points. The objective is evaluated at all of them at once and L-BFGS runs
# from the best MAIN_STARTS (a 2-core CPU would need minutes for all 4,500); each bootstrap refit starts
# from the main fit's optimum and the best BOOTSTRAP_STARTS grid points of its own resample.
GRID = dict(e=np.linspace(-1, 1, 5), a=np.arange(0, 30, 5.0), b=np.arange(0, 30, 5.0),
            alpha=np.linspace(0, 2, 5), beta=np.linspace(0, 2, 5))
MAIN_STARTS = 64
BOOTSTRAP_STARTS = 4
BUDGET_TOLERANCE = 0.05  # runs without a `budget` field: flops within 10^0.05 (12%) form one budget


# --- grouping and filtering -------------------------------------------------------------------------------
def usable_runs(runs: list[dict], max_epochs: float | None = MAX_EPOCHS) -> tuple[list[dict], list[str]]:
    kept, notes = [], []
    for run in runs:
        epochs = run.get("epochs")
        if max_epochs is not None and epochs is not None and epochs > max_epochs:
            notes.append(f"{run.get('name', 'a run')} left out: {epochs:.1f} epochs of its data (> {max_epochs:g})")
        else:
            kept.append(run)
    return kept, notes


def group_by_budget(runs: list[dict]) -> list[list[dict]]:
    """Runs of one compute budget together: by their `budget` field, else by flops within BUDGET_TOLERANCE."""
    groups: dict[float, list[dict]] = {}
    loose = sorted((r for r in runs if not r.get("budget")), key=lambda r: r["flops"])
    for run in runs:
        if run.get("budget"):
            groups.setdefault(float(run["budget"]), []).append(run)
    current: list[dict] = []
    for run in loose:
        if current and math.log10(run["flops"] / current[0]["flops"]) > BUDGET_TOLERANCE:
            groups[_geomean([r["flops"] for r in current])] = current
            current = []
        current.append(run)
    if current:
        groups[_geomean([r["flops"] for r in current])] = current
    return [groups[k] for k in sorted(groups)]


def _geomean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


# --- approach 2: IsoFLOP profiles -----------------------------------------------------------------------
@dataclass
class Profile:
    budget: float  # the runs' nominal budget, or the geometric mean of their FLOPs
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    coeffs: tuple[float, float, float] | None = None  # loss = c2 x^2 + c1 x + c0, x = ln N
    n_opt: float | None = None
    d_opt: float | None = None
    loss_opt: float | None = None
    inside: bool = False  # the vertex lies within the swept sizes (else extrapolated)
    note: str = ""


def isoflop_profile(runs: list[dict]) -> Profile:
    params = np.array([r["params"] for r in runs], float)
    tokens = np.array([r["tokens"] for r in runs], float)
    loss = np.array([r["val_loss"] for r in runs], float)
    nominal = {r.get("budget") for r in runs}  # a sweep's budget; else the runs' FLOPs (grouped by closeness)
    budget = float(nominal.pop()) if len(nominal) == 1 and None not in nominal else _geomean([r["flops"] for r in runs])
    profile = Profile(budget, params, tokens, loss)
    x = np.log(params)
    if len(np.unique(x)) < 3:
        profile.note = f"{len(np.unique(x))} size(s): a parabola needs 3"
        return profile
    c2, c1, c0 = np.polyfit(x, loss, 2)
    profile.coeffs = (float(c2), float(c1), float(c0))
    if c2 <= 0:
        profile.note = "the losses curve downwards (no minimum): sizes too few or too noisy"
        return profile
    x_opt = -c1 / (2 * c2)
    slope, intercept = np.polyfit(x, np.log(tokens), 1)
    profile.n_opt, profile.d_opt = float(np.exp(x_opt)), float(np.exp(slope * x_opt + intercept))
    profile.loss_opt = float(c0 - c1 * c1 / (4 * c2))
    profile.inside = bool(x.min() <= x_opt <= x.max())
    if not profile.inside:
        profile.note = "minimum outside the swept sizes (extrapolated)"
    return profile


def power_law(budgets, values) -> tuple[float, float]:
    """(exponent, coefficient) of values = coefficient * budgets^exponent, least squares in log-log."""
    slope, intercept = np.polyfit(np.log(budgets), np.log(values), 1)
    return float(slope), float(np.exp(intercept))


def approach2(groups: list[list[dict]], bootstrap: int, rng: np.random.Generator) -> dict:
    profiles = [isoflop_profile(g) for g in groups]
    # Only minima inside the swept sizes: a vertex beyond them is the parabola's guess, not a measurement.
    found = [p for p in profiles if p.n_opt is not None and p.inside]
    result = {"profiles": profiles, "budgets": [
        {"budget": p.budget, "runs": len(p.params), "n_opt": p.n_opt, "d_opt": p.d_opt, "loss_opt": p.loss_opt,
         "inside": p.inside, "note": p.note, "coeffs": p.coeffs} for p in profiles]}
    if len(found) < 2:
        result["note"] = f"{len(found)} budget(s) with a minimum inside the swept sizes: the power laws need 2 or more"
        return result
    c = [p.budget for p in found]
    a, k_n = power_law(c, [p.n_opt for p in found])
    b, k_d = power_law(c, [p.d_opt for p in found])
    samples = []
    for _ in range(bootstrap):
        mins = []
        for g in groups:
            p = isoflop_profile([g[i] for i in rng.integers(0, len(g), len(g))])
            if p.n_opt is not None and p.inside:
                mins.append(p)
        if len(mins) >= 2:
            samples.append((power_law([p.budget for p in mins], [p.n_opt for p in mins])[0],
                            power_law([p.budget for p in mins], [p.d_opt for p in mins])[0]))
    result.update(a=a, b=b, n_coef=k_n, d_coef=k_d, bootstrap_used=len(samples))
    if samples:
        s = np.array(samples)
        result.update(a_ci95=_percentiles(s[:, 0]), b_ci95=_percentiles(s[:, 1]))
    return result


def _percentiles(values) -> list[float] | None:
    """The 95% percentile interval; None when no resample gave a value."""
    values = list(values)
    if not values:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


# --- approach 3: the parametric law ---------------------------------------------------------------------
def huber_objective(theta: np.ndarray, ln_n, ln_d, ln_loss, delta: float = HUBER_DELTA):
    """Summed Huber loss of ln L_pred - ln L (divided by delta: the same minimiser, at a scale where
    L-BFGS's tolerances are meaningful) and its gradient in theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)])
    top = terms.max(axis=0)
    lse = top + np.log(np.exp(terms - top).sum(axis=0))
    r = lse - ln_loss
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / delta
    dr = np.clip(r, -delta, delta) / delta
    w = np.exp(terms - lse)  # softmax weights: d lse / d term
    grad = np.array([(dr * w[0]).sum(), (dr * w[1]).sum(), (dr * w[2]).sum(),
                     -(dr * w[0] * ln_n).sum(), -(dr * w[1] * ln_d).sum()])
    return value, grad


def _grid_starts() -> np.ndarray:
    axes = np.meshgrid(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"], indexing="ij")
    return np.stack([axis.ravel() for axis in axes], axis=1)


def _grid_values(starts: np.ndarray, ln_n, ln_d, ln_loss, delta: float) -> np.ndarray:
    """The objective at every start at once (to rank the starts of bootstrap refits)."""
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * ln_n, b - beta * ln_d, np.broadcast_to(e, (len(starts), len(ln_n)))])
    r = np.logaddexp(np.logaddexp(terms[0], terms[1]), terms[2]) - ln_loss
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)


def best_grid_starts(count: int, ln_n, ln_d, ln_loss, delta: float = HUBER_DELTA) -> np.ndarray:
    grid = _grid_starts()
    return grid[np.argsort(_grid_values(grid, ln_n, ln_d, ln_loss, delta), kind="stable")[:count]]


def fit_parametric(params, tokens, loss, starts: np.ndarray | None = None, delta: float = HUBER_DELTA) -> np.ndarray:
    """theta = (a, b, e, alpha, beta) minimising huber_objective: the best end point of L-BFGS from each
    start (default: the MAIN_STARTS best points of the grid)."""
    from scipy.optimize import minimize

    ln_n, ln_d, ln_loss = np.log(params), np.log(tokens), np.log(loss)
    starts = best_grid_starts(MAIN_STARTS, ln_n, ln_d, ln_loss, delta) if starts is None else starts
    bounds = [(None, None)] * 3 + [(0.0, 5.0)] * 2  # exponents stay non-negative: the law falls with N and D
    best, best_value = None, math.inf
    with _one_blas_thread():
        for start in starts:
            found = minimize(huber_objective, start, args=(ln_n, ln_d, ln_loss, delta), jac=True,
                             method="L-BFGS-B", bounds=bounds, options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-10})
            if found.fun < best_value:
                best, best_value = found.x, float(found.fun)
    return best


def _one_blas_thread():
    """SciPy's L-BFGS-B calls BLAS on 5-vectors: threads only wait on each other (8x slower on a busy
    2-core machine), so they are limited to one while it runs, where threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def law_constants(theta) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def predicted_loss(constants: dict, params, tokens):
    c = constants
    return c["E"] + c["A"] / np.power(params, c["alpha"]) + c["B"] / np.power(tokens, c["beta"])


def compute_optimal(constants: dict, budget: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising the law under C = 6ND (Hoffmann et al. eq. 4)."""
    alpha, beta = constants["alpha"], constants["beta"]
    if alpha <= 0 or beta <= 0:
        raise DataError("the fitted law has a zero exponent, so it has no compute-optimal size: sweep more sizes "
                        "or budgets")
    g = (alpha * constants["A"] / (beta * constants["B"])) ** (1 / (alpha + beta))
    n_opt = g * (budget / 6) ** (beta / (alpha + beta))
    return n_opt, budget / 6 / n_opt


def approach3(runs: list[dict], bootstrap: int, rng: np.random.Generator) -> dict:
    if len(runs) < 6:
        return {"note": f"{len(runs)} runs: the 5-parameter law needs at least 6"}
    params = np.array([r["params"] for r in runs], float)
    tokens = np.array([r["tokens"] for r in runs], float)
    loss = np.array([r["val_loss"] for r in runs], float)
    theta = fit_parametric(params, tokens, loss)
    if theta is None:
        raise DataError("the parametric fit did not converge from any starting point (every L-BFGS run ended "
                        "non-finite); check the runs' val_loss values, or sweep more sizes and budgets")
    constants = law_constants(theta)
    if constants["alpha"] + constants["beta"] <= 0:
        raise DataError("the fitted law has no exponent (alpha = beta = 0: loss does not fall with size or data "
                        "in these runs); sweep more sizes and budgets")
    residuals = np.log(predicted_loss(constants, params, tokens)) - np.log(loss)
    samples = []
    for _ in range(bootstrap):
        pick = rng.integers(0, len(runs), len(runs))
        ranked = best_grid_starts(BOOTSTRAP_STARTS, np.log(params[pick]), np.log(tokens[pick]), np.log(loss[pick]))
        refit = fit_parametric(params[pick], tokens[pick], loss[pick], np.vstack([theta, ranked]))
        if refit is not None:  # a resample that fits nowhere is left out of the intervals
            samples.append(law_constants(refit))
    result = {**constants, "a": constants["beta"] / (constants["alpha"] + constants["beta"]),
              "b": constants["alpha"] / (constants["alpha"] + constants["beta"]),
              "huber_delta": HUBER_DELTA, "residual_rms": float(np.sqrt(np.mean(residuals ** 2))),
              "residuals": [float(r) for r in residuals], "bootstrap": samples}
    if samples:
        for key in ("E", "A", "B", "alpha", "beta"):
            result[f"{key}_ci95"] = _percentiles([s[key] for s in samples])
        result["a_ci95"] = _percentiles([s["beta"] / (s["alpha"] + s["beta"]) for s in samples if s["alpha"] + s["beta"] > 0])
        result["b_ci95"] = _percentiles([s["alpha"] / (s["alpha"] + s["beta"]) for s in samples if s["alpha"] + s["beta"] > 0])
    return result


def loss_interval(law: dict, params: float, tokens: float, rng: np.random.Generator | None = None) -> list[float] | None:
    """95% interval of a new run's loss at (params, tokens): each bootstrap law's prediction, times the
    exp of a residual drawn from the fit (a single run's own scatter about the law)."""
    samples, residuals = law.get("bootstrap") or [], law.get("residuals") or [0.0]
    if not samples:
        return None
    rng = rng or np.random.default_rng(0)
    predictions = np.array([float(predicted_loss(s, params, tokens)) for s in samples])
    noisy = predictions[rng.integers(0, len(predictions), 4000)] * np.exp(rng.choice(residuals, 4000))
    return _percentiles(noisy)


# --- both -------------------------------------------------------------------------------------------------
@dataclass
class ScalingFit:
    runs_used: list[dict]
    notes: list[str]
    approach2: dict
    approach3: dict
    allocations: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        a2 = {k: v for k, v in self.approach2.items() if k != "profiles"}
        out = {"runs_used": len(self.runs_used), "notes": self.notes, "huber_delta": HUBER_DELTA,
               "approach2": a2, "approach3": self.approach3, "compute_optimal": self.allocations}
        for key in ("E", "A", "B", "alpha", "beta"):  # the law's constants, approach 3
            out[key], out[f"{key}_ci95"] = self.approach3.get(key), self.approach3.get(f"{key}_ci95")
        for key in ("a", "b"):  # the frontier's exponents, approach 2 (approach 3's under approach3)
            out[key], out[f"{key}_ci95"] = a2.get(key), a2.get(f"{key}_ci95")
        return out


def fit_runs(runs: list[dict], bootstrap: int = 200, max_epochs: float | None = MAX_EPOCHS, seed: int = 0) -> ScalingFit:
    if bootstrap < 0:
        raise DataError(f"--bootstrap {bootstrap}: must be 0 or more")
    used, notes = usable_runs(runs, max_epochs)
    if len(used) < 3:
        raise DataError(f"{len(used)} usable run(s): a scaling fit needs at least 3 (6 for the parametric law); "
                        "sweep more sizes and budgets")
    rng = np.random.default_rng(seed)
    fit = ScalingFit(used, notes, approach2(group_by_budget(used), bootstrap, rng), approach3(used, bootstrap, rng))
    if "alpha" in fit.approach3 or "a" in fit.approach2:
        budgets = sorted({p.budget for p in fit.approach2["profiles"]})
        for budget in budgets + [10 * budgets[-1]]:
            fit.allocations.append(allocation(fit, budget))
    if "alpha" not in fit.approach3 and "a" not in fit.approach2:
        raise DataError("neither fit was possible (" + "; ".join(
            filter(None, [fit.approach2.get("note"), fit.approach3.get("note")])) + "): sweep more sizes per budget")
    return fit


def allocation(fit: ScalingFit | dict, budget: float) -> dict:
    """The compute-optimal N, D, tokens per parameter and loss at `budget`, by each approach available."""
    a2 = fit.approach2 if isinstance(fit, ScalingFit) else fit["approach2"]
    a3 = fit.approach3 if isinstance(fit, ScalingFit) else fit["approach3"]
    row: dict = {"budget": budget}
    if "a" in a2:
        n, d = a2["n_coef"] * budget ** a2["a"], a2["d_coef"] * budget ** a2["b"]
        row["approach2"] = {"n_opt": n, "d_opt": d, "tokens_per_param": d / n}
    if "alpha" in a3 and a3["alpha"] > 0 and a3["beta"] > 0:
        n, d = compute_optimal(a3, budget)
        row["approach3"] = {"n_opt": n, "d_opt": d, "tokens_per_param": d / n,
                            "loss": float(predicted_loss(a3, n, d)), "loss_ci95": loss_interval(a3, n, d)}
    return row
