"""The figures of the evaluation, as PNG files.

Figures are built on ``matplotlib.figure.Figure`` and saved with the Agg renderer, without
pyplot, so nothing here touches a global backend or opens a window (safe in threads and on
machines without a display).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from galmet.training.metrics import (
    binned_relation,
    calibration,
    default_min_count,
    mass_bins,
    mmr_scatter_ratio,
    nmad,
    nmad_at_fixed_mass,
    summarise,
)

OH_LABEL = "12+log(O/H)"
MASS_LABEL = r"$\log\,M_*/M_\odot$"
DPI = 120
#: Samples smaller than this are drawn as points: hexagons of one or two galaxies say little.
SCATTER_BELOW = 400


def _save(fig: Figure, path: str | Path, note: str | None = None) -> Path:
    """Write the figure; ``note`` (e.g. the demo model's notice) is printed along its foot,
    so that the picture cannot be shown without it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if note:
        fig.text(0.5, 0.003, note, ha="center", va="bottom", fontsize=7, color="firebrick")
    fig.savefig(path, dpi=DPI)
    return path


def _limits(*arrays: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    """A common axis range covering 99.8% of the values, padded a little."""
    lo, hi = np.percentile(np.concatenate(arrays), [0.1, 99.9])
    span = max(hi - lo, 1e-3)
    return float(lo - pad * span), float(hi + pad * span)


def _gridsize(n: int) -> int:
    """Hexagons across: finer for more galaxies, so a cell holds a few of them at least."""
    return int(np.clip(np.sqrt(n) / 1.5, 15, 70))


def _density(ax, x: np.ndarray, y: np.ndarray, extent: tuple, cax=None) -> None:
    """Galaxy density as log-coloured hexagons, or plain points for a small sample."""
    if x.size < SCATTER_BELOW:
        ax.scatter(x, y, s=10, color="tab:blue", alpha=0.7, lw=0)
        if cax is not None:
            cax.set_visible(False)
        return
    hb = ax.hexbin(
        x, y, extent=extent, gridsize=_gridsize(x.size), bins="log", mincnt=1, cmap="viridis"
    )
    if cax is not None:
        cb = ax.figure.colorbar(hb, cax=cax, label="galaxies per cell")
        # Plain numbers (1, 2, 5, 10, 20, ...) read better than 2×10⁰ on a count scale.
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        cb.ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
        )


def plot_prediction(
    true: Sequence[float],
    pred: Sequence[float],
    path: str | Path,
    name: str = OH_LABEL,
    title: str = "",
    units: str = "dex",
    note: str | None = None,
) -> Path:
    """The paper's Figure 1: predicted vs true as a density, with a residual panel above.

    Lower panel: galaxy density (log colour) of prediction against truth with the 1:1 line
    and the summary metrics. Upper panel: Δ = predicted − true against truth, with the median
    Δ in bins of truth and lines at ±RMSE and ±NMAD.
    """
    t, p = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    res = p - t
    s = summarise(p, t)
    lo, hi = _limits(t, p)
    rlim = float(max(np.percentile(np.abs(res), 99.5), 2 * s["rmse"], 1e-3)) * 1.1

    fig = Figure(figsize=(6.4, 8.0), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 3], width_ratios=[1, 0.035])
    ax_res = fig.add_subplot(gs[0, 0])
    ax = fig.add_subplot(gs[1, 0], sharex=ax_res)
    cax = fig.add_subplot(gs[1, 1])

    _density(ax, t, p, (lo, hi, lo, hi), cax)
    ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1, label="1:1")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"true {name} [{units}]")
    ax.set_ylabel(f"predicted {name} [{units}]")
    ax.legend(loc="lower right")
    text = (
        f"N = {s['n']:,}\n"
        f"RMSE = {s['rmse']:.4f} {units}\n"
        f"NMAD = {s['nmad']:.4f} {units}\n"
        f"median Δ = {s['bias']:+.4f} {units}\n"
        f"outliers (|Δ| > 3 NMAD) = {100 * s['outlier_fraction']:.1f}%"
    )
    ax.text(
        0.03,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )

    _density(ax_res, t, res, (lo, hi, -rlim, rlim))
    ax_res.axhline(0, color="k", lw=1)
    for value, colour, style, label in (
        (s["rmse"], "tab:red", "--", f"±RMSE = {s['rmse']:.3f} {units}"),
        (s["nmad"], "tab:orange", ":", f"±NMAD = {s['nmad']:.3f} {units}"),
    ):
        ax_res.axhline(value, color=colour, ls=style, lw=1.6, label=label)
        ax_res.axhline(-value, color=colour, ls=style, lw=1.6)
    # The median residual per bin of truth shows the pull towards the mean at the extremes.
    edges = np.linspace(lo, hi, 16)
    rel = binned_relation(t, res, edges, min_count=max(5, t.size // 500))
    if rel["n"].size:
        ax_res.plot(
            rel["centre"], rel["median"], "o-", color="k", mfc="white", ms=4, lw=1, label="median Δ"
        )
    ax_res.set_ylim(-rlim, rlim)
    ax_res.set_ylabel(f"Δ = pred − true [{units}]")
    ax_res.tick_params(labelbottom=False)
    ax_res.legend(
        loc="upper center", ncols=3, fontsize=8, bbox_to_anchor=(0.5, 1.32), frameon=False
    )
    if title:
        fig.suptitle(title)
    return _save(fig, path, note)


def plot_mmr(
    mass_cat: Sequence[float],
    oh_cat: Sequence[float],
    mass_pred: Sequence[float],
    oh_pred: Sequence[float],
    path: str | Path,
    bins: Sequence[float] | None = None,
    labels: tuple[str, str] = ("catalog", "predicted"),
    title: str = "",
    note: str | None = None,
) -> Path:
    """The mass–metallicity relation from catalog values and from predictions.

    Upper panel: binned medians with 16–84% bands of both relations over the catalog galaxies'
    density; the legend gives each relation's NMAD at fixed mass. Lower panel: the NMAD of
    each mass bin. The title gives the scatter ratio (predicted / catalog) with a bootstrap
    uncertainty.
    """
    mc, yc = np.asarray(mass_cat, dtype=float), np.asarray(oh_cat, dtype=float)
    mp, yp = np.asarray(mass_pred, dtype=float), np.asarray(oh_pred, dtype=float)
    edges = mass_bins(mc) if bins is None else np.asarray(bins, dtype=float)
    min_count = default_min_count(mc.size)
    ratio = mmr_scatter_ratio(mc, yc, mp, yp, edges, min_count=min_count, n_boot=100)

    fig = Figure(figsize=(7.0, 7.0), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    xlo, xhi = edges[0], edges[-1]
    ylo, yhi = _limits(yc, yp)
    ax.hexbin(
        mc,
        yc,
        gridsize=_gridsize(mc.size),
        extent=(xlo, xhi, ylo, yhi),
        bins="log",
        mincnt=1,
        cmap="Greys",
        alpha=0.4,
    )
    handles = [Patch(color="0.6", alpha=0.5, label=f"{labels[0]} galaxies (density)")]
    for (m, y), label, colour in (
        ((mc, yc), labels[0], "tab:blue"),
        ((mp, yp), labels[1], "tab:orange"),
    ):
        rel = binned_relation(m, y, edges, min_count)
        scatter = nmad_at_fixed_mass(m, y, edges, min_count)
        ax.fill_between(rel["centre"], rel["p16"], rel["p84"], color=colour, alpha=0.2, lw=0)
        (line,) = ax.plot(
            rel["centre"],
            rel["median"],
            "o-",
            color=colour,
            ms=4,
            label=f"{label}: median, 16–84% (NMAD at fixed mass {scatter:.3f} dex)",
        )
        handles.append(line)
        ax_n.plot(rel["centre"], rel["nmad"], "o-", color=colour, ms=4, label=label)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_ylabel(f"{OH_LABEL} [dex]")
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title(
        title
        or f"mass–metallicity relation, N = {mc.size:,}\nscatter at fixed mass, "
        f"{labels[1]} / {labels[0]} = {ratio['ratio']:.2f} ± {ratio['ratio_err']:.2f}",
        fontsize=10,
    )
    ax_n.set_xlabel(f"{MASS_LABEL} [dex]")
    ax_n.set_ylabel("NMAD in bin [dex]")
    ax_n.set_ylim(bottom=0)
    ax_n.legend(fontsize=8)
    return _save(fig, path, note)


def plot_loss_curve(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Training and validation loss per epoch, and the learning rate on a second axis.

    ``history`` holds one dict per epoch with ``epoch``, ``train_loss``, ``valid_loss`` and
    optionally ``lr``; missing values are skipped.
    """
    if not history:
        raise ValueError("no epochs in the history")

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if h.get(key) is None else h[key] for h in history], dtype=float)

    epoch = column("epoch")
    train, valid, lr = column("train_loss"), column("valid_loss"), column("lr")

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epoch, train, "o-", color="tab:blue", ms=3, label="train")
    ax.plot(epoch, valid, "s-", color="tab:red", ms=3, label="validation")
    if np.isfinite(valid).any():
        best = int(np.nanargmin(valid))
        ax.plot(
            epoch[best],
            valid[best],
            "*",
            color="tab:red",
            ms=14,
            mec="k",
            label=f"best validation {valid[best]:.4f} (epoch {epoch[best]:g})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if np.isfinite(lr).any():
        ax_lr = ax.twinx()
        ax_lr.plot(epoch, lr, "--", color="0.5", lw=1)
        ax_lr.set_ylabel("learning rate", color="0.4")
        ax_lr.tick_params(axis="y", colors="0.4")
        ax_lr.set_ylim(bottom=0)
        handles.append(Line2D([], [], ls="--", color="0.5", lw=1))
        labels.append("learning rate (right axis)")
    # Below the axes: a learning-rate schedule leaves no corner free inside them.
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_title(title or "loss per epoch")
    return _save(fig, path)


def plot_calibration(
    res: Sequence[float],
    sigma: Sequence[float],
    path: str | Path,
    name: str = OH_LABEL,
    note: str | None = None,
) -> Path:
    """Histogram of residual / predicted σ against a unit Gaussian.

    When the uncertainties are right, the histogram follows the curve and 68.3% of the
    galaxies lie within ±1σ; the title gives the fraction found.
    """
    r = np.asarray(res, dtype=float)
    s = np.broadcast_to(np.asarray(sigma, dtype=float), r.shape)
    z = r / s
    within = calibration(r, s)
    edges = np.linspace(-5, 5, 51)
    beyond = int(np.count_nonzero(np.abs(z) > 5))

    fig = Figure(figsize=(6.4, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(
        np.clip(z, -5, 5),
        bins=edges,
        density=True,
        color="tab:blue",
        alpha=0.6,
        label=f"Δ / σ, {z.size:,} galaxies"
        + (f"\n({beyond} beyond ±5, piled at the edges)" if beyond else ""),
    )
    x = np.linspace(-5, 5, 400)
    ax.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), color="k", label="unit Gaussian")
    for v in (-1, 1):
        ax.axvline(v, color="tab:red", ls="--", lw=1, label="±1σ" if v > 0 else None)
    ax.set_xlabel(f"(predicted − true) / predicted σ, {name}")
    ax.set_ylabel("probability density")
    ax.set_xlim(-5, 5)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(
        f"within ±1σ: {100 * within:.1f}% (68.3% if calibrated);  NMAD(Δ/σ) = {nmad(z):.2f}",
        fontsize=10,
    )
    return _save(fig, path, note)
