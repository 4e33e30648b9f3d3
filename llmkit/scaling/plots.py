"""The three figures of `llmkit scaling fit` (matplotlib, Agg: no display needed), written atomically.

isoflop.png   loss against N for each budget, its parabola and the parabola's minimum (approach 2)
frontier.png  N_opt and D_opt against C on log-log axes: approach 2's minima with their fitted power laws,
              and approach 3's allocation as a dashed line
contours.png  the fitted L(N, D) as contours over (N, D), with the runs, lines of equal compute (C = 6ND)
              and the law's compute-optimal path
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_open
from llmkit.scaling.fit import ScalingFit, compute_optimal, predicted_loss


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_fit(fit: ScalingFit, out: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    paths = [_isoflop(fit, out / "isoflop.png")]
    if "a" in fit.approach2 or "alpha" in fit.approach3:
        paths.append(_frontier(fit, out / "frontier.png"))
    if "alpha" in fit.approach3:
        paths.append(_contours(fit, out / "contours.png"))
    return paths


def _isoflop(fit: ScalingFit, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    profiles = fit.approach2["profiles"]
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(profiles), 1)))
    for profile, colour in zip(profiles, colours):
        order = np.argsort(profile.params)
        outside = profile.n_opt is not None and not profile.inside
        ax.plot(profile.params[order], profile.loss[order], "o", color=colour,
                label=f"C = {profile.budget:.2g}" + (" (vertex outside the swept sizes)" if outside else ""))
        if profile.coeffs is not None:
            x = np.linspace(np.log(profile.params.min()) - 0.3, np.log(profile.params.max()) + 0.3, 100)
            ax.plot(np.exp(x), np.polyval(profile.coeffs, x), "-", color=colour, alpha=0.7)
        # Only the minima the power laws use are starred: an extrapolated vertex is the parabola's guess (a
        # measured sweep put one at N = 0.7 with a loss below every run's), and drawn it stretched the axis
        # over five decades with nothing on them, squeezing the runs into a corner.
        if profile.n_opt is not None and profile.inside:
            ax.plot(profile.n_opt, profile.loss_opt, "*", color=colour, markersize=14, markeredgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (matmul weights)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("IsoFLOP profiles: a parabola in ln N per budget, its minimum starred")
    ax.legend(fontsize=8)
    _save(fig, path)
    return path


def _frontier(fit: ScalingFit, path: Path) -> Path:
    import matplotlib.pyplot as plt

    a2, a3 = fit.approach2, fit.approach3
    found = [p for p in a2["profiles"] if p.n_opt is not None]
    budgets = [p.budget for p in a2["profiles"]]
    c = np.geomspace(min(budgets) / 2, max(budgets) * 20, 50)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    inside = [p for p in found if p.inside]
    # vertices outside the swept sizes are shown (as not fitted) only within 10x of them: beyond, the
    # parabola's extrapolation means nothing and would set the axis range (see _isoflop)
    outside = [p for p in found if not p.inside and p.params.min() / 10 <= p.n_opt <= 10 * p.params.max()]
    for ax, key, what in ((axes[0], "n", "N_opt (parameters)"), (axes[1], "d", "D_opt (tokens)")):
        if inside:
            ax.plot([p.budget for p in inside], [p.n_opt if key == "n" else p.d_opt for p in inside],
                    "o", color="C0", label="IsoFLOP minima")
        if outside:
            ax.plot([p.budget for p in outside], [p.n_opt if key == "n" else p.d_opt for p in outside], "x",
                    color="gray", label="minima outside the swept sizes (not fitted)")
        if "a" in a2:
            exponent = a2["a"] if key == "n" else a2["b"]
            ax.plot(c, a2[f"{key}_coef"] * c ** exponent, "-", color="C0", label=f"approach 2: C^{exponent:.2f}")
        if "alpha" in a3 and a3["alpha"] > 0 and a3["beta"] > 0:
            values = [compute_optimal(a3, x)[0 if key == "n" else 1] for x in c]
            exponent = a3["a"] if key == "n" else a3["b"]
            ax.plot(c, values, "--", color="C3", label=f"approach 3: C^{exponent:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal frontier")
    _save(fig, path)
    return path


def _contours(fit: ScalingFit, path: Path) -> Path:
    import matplotlib.pyplot as plt

    law = fit.approach3
    params = np.array([r["params"] for r in fit.runs_used], float)
    tokens = np.array([r["tokens"] for r in fit.runs_used], float)
    n = np.geomspace(params.min() / 4, params.max() * 4, 120)
    d = np.geomspace(tokens.min() / 4, tokens.max() * 4, 120)
    grid_n, grid_d = np.meshgrid(n, d)
    surface = predicted_loss(law, grid_n, grid_d)
    fig, ax = plt.subplots(figsize=(7, 5.5))
    filled = ax.contourf(grid_n, grid_d, surface, levels=24, cmap="viridis_r")
    fig.colorbar(filled, ax=ax, label="fitted loss L(N, D)")
    for budget in sorted({p.budget for p in fit.approach2["profiles"]}):
        ax.plot(n, budget / (6 * n), ":", color="white", linewidth=0.8)
    if law["alpha"] > 0 and law["beta"] > 0:
        c = np.geomspace(6 * n.min() * d.min(), 6 * n.max() * d.max(), 60)
        path_n, path_d = zip(*(compute_optimal(law, x) for x in c))
        ax.plot(path_n, path_d, "-", color="red", label="compute-optimal (C = 6ND)")
    ax.scatter(params, tokens, c="black", s=12, label="runs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(n.min(), n.max())
    ax.set_ylim(d.min(), d.max())
    ax.set_xlabel("parameters N")
    ax.set_ylabel("tokens D")
    ax.set_title(f"L = {law['E']:.2f} + {law['A']:.3g}/N^{law['alpha']:.2f} + {law['B']:.3g}/D^{law['beta']:.2f}")
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)
    return path
