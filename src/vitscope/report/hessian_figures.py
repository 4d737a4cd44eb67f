"""Hessian spectra drawn from saved ``hessian`` results (``docs/methods/hessian.md``; paper Fig 1c,
Fig 4).

The paper's "max eigenvalue spectrum" is the density of all per-batch top-k (by magnitude)
eigenvalues, drawn on a split x-axis: a negative panel and a positive panel, each with its
own y-scale, several models overlaid (ResNet blue, ViT red, a small-data ViT dashed).

Densities are Gaussian KDEs (Scott's bandwidth) computed separately for each sign and
reflected at 0, so no mass leaks across the split; each side is scaled by its share of the
eigenvalues, so both panels show one density that integrates to 1 over both.

Plain numpy and matplotlib: results are read, never recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib as mpl
import numpy as np

from ..analyses.keys import HessianKeys
from .load import family
from .spread import group_label, groups, plot_band

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..results import Result

# model family (a substring of the label) -> colour; the paper: ResNet blue, ViT red
FAMILY_COLOURS = {
    "alternet": "tab:orange",
    "resnet": "tab:blue",
    "swin": "tab:purple",
    "pit": "tab:green",
    "vit": "tab:red",
}
GRID_POINTS = 400


def top_eigenvalues(result: Result) -> np.ndarray:
    """Every batch's top-k eigenvalues of a ``hessian`` result, flat, finite values only."""
    eig = result.arrays.get(HessianKeys.EIGENVALUES)
    if eig is None:
        rows = result.values[HessianKeys.EIGENVALUES]
        eig = np.array([v for row in rows for v in row], dtype=float)
    eig = np.asarray(eig, dtype=float).ravel()
    return eig[np.isfinite(eig)]


def scott_bandwidth(samples: np.ndarray) -> float:
    """``1.06 σ n^(-1/5)``, floored so a single value or identical values still get a bump."""
    samples = np.asarray(samples, dtype=float)
    scale = float(np.abs(samples).max()) if samples.size else 1.0
    std = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    h = 1.06 * std * samples.size ** (-0.2)
    return max(h, 0.05 * scale, 1e-12)


def half_density(samples: np.ndarray, grid: np.ndarray, total: int) -> np.ndarray:
    """Gaussian KDE of same-signed ``samples`` reflected at 0, times ``len(samples) / total``.

    Args:
        samples: values of one sign (all >= 0 or all <= 0).
        grid: points on the same side of 0.
        total: number of eigenvalues of both signs (the density's normalisation).

    Returns:
        Density on ``grid``; it integrates to ``len(samples) / total`` over the half-line.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.size == 0:
        return np.zeros_like(grid, dtype=float)
    h = scott_bandwidth(samples)
    z = (grid[:, None] - samples[None, :]) / h  # (G, n)
    zr = (grid[:, None] + samples[None, :]) / h  # the mirror images across 0
    k = np.exp(-0.5 * z**2) + np.exp(-0.5 * zr**2)
    return k.sum(1) / (total * h * np.sqrt(2 * np.pi))


def _styles(results: Sequence[Result]) -> list[dict]:
    """Colour by model family, dashed for a data fraction < 1; clashes take the next colour."""
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    used, out = set(), []
    for i, r in enumerate(results):
        label = r.label(f"run {i + 1}")
        fam = family(str(r.meta.get("model", "")), r.meta.get("family")).lower()
        colour = FAMILY_COLOURS.get(fam, cycle[0])
        fraction = r.meta.get("fraction")
        ls = "--" if isinstance(fraction, (int, float)) and fraction < 1 else "-"
        j = 0
        while (colour, ls) in used and j < len(cycle):
            colour, j = cycle[j], j + 1
        used.add((colour, ls))
        out.append({"color": colour, "ls": ls, "label": label})
    return out


def plot_hessian_spectrum(results: Sequence[Result], axes, *, limits=None) -> None:
    """Fig 1c / Fig 4: density of the per-batch top-k eigenvalues on a split x-axis.

    Args:
        results: ``hessian`` results; each is one curve, labelled ``meta["label"]``.
        axes: ``(negative_ax, positive_ax)``; each keeps its own y-scale.
        limits: ``(most_negative, most_positive)`` x-limits; default from the data.
    """
    ax_neg, ax_pos = axes
    values = [top_eigenvalues(r) for r in results]
    if limits is None:
        limits = _limits(values)
    neg_grid = np.linspace(limits[0], 0.0, GRID_POINTS)
    pos_grid = np.linspace(0.0, limits[1], GRID_POINTS)
    by_id = {id(r): v for r, v in zip(results, values)}
    grouped = groups(results)
    styles = _styles([members[0] for _, members in grouped])
    for (group, members), style in zip(grouped, styles):
        vs = [by_id[id(r)] for r in members if by_id[id(r)].size]
        if not vs:
            continue
        if len(vs) > 1:
            style = {**style, "label": group_label(group, vs)}
        for ax, grid, pick in ((ax_neg, neg_grid, np.less), (ax_pos, pos_grid, np.greater_equal)):
            rows = [half_density(v[pick(v, 0)], grid, v.size) for v in vs]
            plot_band(ax, grid, rows, lw=1.5, **style)
    ax_neg.set_xlim(limits[0], 0.0)
    ax_pos.set_xlim(0.0, limits[1])
    for ax in (ax_neg, ax_pos):
        ax.set_ylim(bottom=0)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _split_axis(ax_neg, ax_pos)
    ax_neg.set_ylabel("Density")
    ax_pos.set_xlabel("Max eigenvalue")
    ax_neg.set_xlabel("(negative)")
    if any(v.size for v in values):
        ax_pos.legend(fontsize=7, frameon=False)


def _limits(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """x-limits that hold every curve's tails: the extremes plus three bandwidths."""
    lo, hi = 0.0, 0.0
    for v in values:
        neg, pos = v[v < 0], v[v >= 0]
        if neg.size:
            lo = min(lo, neg.min() - 3 * scott_bandwidth(neg))
        if pos.size:
            hi = max(hi, pos.max() + 3 * scott_bandwidth(pos))
    return (lo if lo < 0 else -1.0, hi if hi > 0 else 1.0)


def _split_axis(ax_neg, ax_pos) -> None:
    """Broken-axis look: no spines at the split, y ticks of the right panel on the right."""
    ax_neg.spines["right"].set_visible(False)
    ax_pos.spines["left"].set_visible(False)
    ax_pos.yaxis.tick_right()
    d = dict(marker=[(-1, -1), (1, 1)], markersize=8, ls="none", color="k", mec="k", mew=1)
    ax_neg.plot([1, 1], [0, 1], transform=ax_neg.transAxes, clip_on=False, **d)
    ax_pos.plot([0, 0], [0, 1], transform=ax_pos.transAxes, clip_on=False, **d)


def draw_spectra(results: Sequence[Result], fig: Figure) -> None:
    """The split spectrum of ``results`` on ``fig`` (the negative panel narrower)."""
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1, 2.5)})
    plot_hessian_spectrum(results, axes)
    fig.get_layout_engine().set(wspace=0.02)


def spectrum_figure(results: Sequence[Result], size=(5.5, 3.0)) -> Figure:
    """A new figure with the split spectrum of ``results``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw_spectra(results, fig)
    return fig


def plot_slq_density(result: Result, ax, *, sigma: float | None = None) -> None:
    """Spectral density of the Hessian by SLQ (Ghorbani et al. 2019), log scale.

    ``φ_σ(t) = mean over batches and probes of Σ_i w_i N(t; θ_i, σ²)`` from the saved
    quadrature nodes ``θ`` and weights ``w``; ``σ`` defaults to 1% of the node range.
    """
    nodes = result.arrays.get(HessianKeys.DENSITY_NODES)
    weights = result.arrays.get(HessianKeys.DENSITY_WEIGHTS)
    if nodes is None or weights is None or nodes.size == 0:
        ax.text(0.5, 0.5, "no SLQ density computed", ha="center", va="center")
        ax.set_axis_off()
        return
    live = weights > 0  # unused slots of an early-invariant Krylov space are (0, 0)
    lo, hi = float(nodes[live].min()), float(nodes[live].max())
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sigma = sigma or 0.01 * span
    grid = np.linspace(lo - 0.05 * span - 3 * sigma, hi + 0.05 * span + 3 * sigma, 1000)
    flat_n, flat_w = nodes.reshape(-1, nodes.shape[-1]), weights.reshape(-1, nodes.shape[-1])
    z = (grid[:, None, None] - flat_n[None]) / sigma  # (G, runs, steps)
    gauss = np.exp(-0.5 * z**2) / (sigma * np.sqrt(2 * np.pi))
    dens = (gauss * flat_w[None]).sum(-1).mean(-1)
    ax.semilogy(grid, np.maximum(dens, 1e-300), color="tab:blue", lw=1.2)
    ax.set_ylim(max(dens.max() * 1e-6, 1e-300), 2 * dens.max())
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("Eigenvalue")
    ax.set_ylabel("Density (SLQ)")
    ax.set_title(f"{result.label('run 1')} Hessian ESD".strip(), fontsize=9)


def draw_spectrum(result: Result, fig: Figure) -> None:
    draw_spectra([result], fig)


def draw_density(result: Result, fig: Figure) -> None:
    plot_slq_density(result, fig.subplots())
