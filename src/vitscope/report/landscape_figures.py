"""Loss-landscape figures (Park & Kim 2022, Fig 1a, C.4a), drawn from saved results only.

Paper style (the released notebook): plasma colours, ``z -= min(z)``, the 3-D surface seen
from elev 15, azim 15. Each figure shows ``NLL + L2`` beside ``NLL`` alone, because the L2
term dominates the sum (``docs/methods/landscape.md``, issue #10). 1-D results (``dims=1``) and the
centre row of
2-D grids are drawn as curves; several runs overlay in :func:`plot_landscape_1d`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..analyses.keys import LandscapeKeys
from .spread import group_label, groups, plot_band

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..results import Result

QUANTITIES = {LandscapeKeys.LOSS: "NLL + L2", LandscapeKeys.NLL: "NLL"}
CMAP = "plasma"
ELEV, AZIM = 15, 15  # the released notebook's view of the surface


def _raw(result: Result, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``xs``, ``ys`` and the grid of ``which`` (rows y), non-finite entries as NaN."""
    if which not in QUANTITIES:
        raise ValueError(f"which must be one of {', '.join(QUANTITIES)}, got {which!r}")
    z = np.array(result.arrays[which], dtype=float)
    z[~np.isfinite(z)] = np.nan
    xs, ys = result.arrays[LandscapeKeys.XS], result.arrays[LandscapeKeys.YS]
    return np.asarray(xs), np.asarray(ys), z


def _shifted(z: np.ndarray) -> np.ndarray:
    """``z - min(z)`` over the finite entries, as the released notebook plots it."""
    return z - np.nanmin(z) if np.isfinite(z).any() else z


def _grid(result: Result, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, z = _raw(result, which)
    return xs, ys, _shifted(z)


def landscape_slice(
    result: Result, which: str = LandscapeKeys.LOSS
) -> tuple[np.ndarray, np.ndarray]:
    """The curve along d1 through the centre (``b = 0``): the whole grid when ``dims=1``."""
    xs, ys, z = _raw(result, which)
    return xs, z[len(ys) // 2]


def _title(result: Result, which: str) -> str:
    return f"{result.label()}  {QUANTITIES[which]}".strip()


def plot_landscape_contour(result: Result, ax, which: str = LandscapeKeys.LOSS) -> None:
    """Filled contours of ``z - min(z)`` over the (d1, d2) plane, θ0 marked at the centre."""
    xs, ys, z = _grid(result, which)
    cs = ax.contourf(xs, ys, np.ma.masked_invalid(z), levels=20, cmap=CMAP)
    ax.contour(xs, ys, np.ma.masked_invalid(z), levels=cs.levels, colors="k", linewidths=0.3)
    ax.plot(0, 0, marker="+", color="w", ms=8)
    path = result.arrays.get(LandscapeKeys.TRAJECTORY)
    if path is not None and np.ndim(path) == 2 and np.shape(path)[1] == 2:  # directions=pca
        ax.plot(path[:, 0], path[:, 1], "o-", color="w", ms=2.5, lw=1, mec="k", mew=0.3)
        ax.plot(path[0, 0], path[0, 1], marker="s", color="w", ms=4, mec="k", mew=0.3)
    ax.figure.colorbar(cs, ax=ax, label=f"{QUANTITIES[which]} − min")
    ax.set_aspect("equal")
    ax.set_xlabel(_axis(result, 0))
    ax.set_ylabel(_axis(result, 1))
    ax.set_title(_title(result, which), fontsize=9)


def _axis(result: Result, k: int) -> str:
    """``d1``/``d2``, with the share of the trajectory's variance a PCA direction explains or
    the eigenvalue of an eigen direction; α for an interpolation."""
    pca = result.values.get(LandscapeKeys.PCA)
    eigen = result.values.get(LandscapeKeys.EIGEN)
    interp = result.values.get(LandscapeKeys.INTERPOLATE)
    if interp and k == 0:
        end = str(interp.get("endpoint"))
        end = end if len(end) <= 32 else "…" + end[-31:]
        return f"α: (1 − α)·θ0 + α·θ({end})"
    if pca and k < len(pca.get("explained_variance", [])):
        return f"PC{k + 1} ({100 * pca['explained_variance'][k]:.1f}% of the trajectory)"
    if eigen and k < len(eigen.get("eigenvalues", [])):
        return f"Hessian eigenvector {k + 1} (λ = {eigen['eigenvalues'][k]:.3g})"
    return f"d{k + 1}"


def plot_landscape_surface(result: Result, ax, which: str = LandscapeKeys.LOSS) -> None:
    """3-D surface of ``z - min(z)``, plasma over [min, max] of z, elev 15 azim 15 (``ax``: 3d)."""
    xs, ys, z = _grid(result, which)
    x, y = np.meshgrid(xs, ys)
    finite = z[np.isfinite(z)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    ax.plot_surface(
        x, y, z, cmap=CMAP, vmin=lo, vmax=hi, rstride=1, cstride=1, linewidth=0, antialiased=True
    )
    ax.view_init(elev=ELEV, azim=AZIM)
    ax.set_xticks([xs[0], 0, xs[-1]])
    ax.set_yticks([ys[0], 0, ys[-1]])
    ax.set_xlabel("d1", fontsize=8)
    ax.set_ylabel("d2", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.set_title(_title(result, which), fontsize=9)


def plot_landscape_1d(results: Sequence[Result], ax, which: str = LandscapeKeys.LOSS) -> None:
    """Curves of ``z - min(z)`` along d1 through the centre, one per run (the seeds of a run
    as their mean with a 95% band), overlaid."""
    for group, members in groups(results):
        curves = [landscape_slice(r, which) for r in members]
        if len({len(xs) for xs, _ in curves}) > 1 or len(members) == 1:
            curves, members = curves[:1], members[:1]
        label = group_label(group, members) if len(members) > 1 else members[0].label() or None
        plot_band(ax, curves[0][0], [_shifted(z) for _, z in curves], label, marker="o", ms=3)
    ax.axvline(0, color="0.6", lw=0.8)
    interp = results[0].values.get(LandscapeKeys.INTERPOLATE) if results else None
    if interp:  # a line between two models: mark the far end too
        ax.axvline(1, color="0.6", lw=0.8)
    ax.set_xlabel(_axis(results[0], 0) if results else "d1")
    ax.set_ylabel(f"{QUANTITIES[which]} − min")
    ax.set_title(QUANTITIES[which], fontsize=9)
    if any(r.label() for r in results):
        ax.legend(fontsize=7)


def is_2d(result: Result) -> bool:
    """A surface over (d1, d2), not a curve (``dims=1`` or an interpolation)."""
    return len(result.arrays[LandscapeKeys.YS]) > 1


def _pair(plot: Callable, result: Result, fig: Figure, **subplot_kw) -> None:
    """``plot(result, ax, which)`` for NLL + L2 and for NLL, side by side on ``fig``."""
    axes = fig.subplots(1, 2, subplot_kw=subplot_kw or None)
    for ax, which in zip(axes, QUANTITIES):
        plot(result, ax, which)


def draw_1d(result: Result, fig: Figure) -> None:
    """1-D curves (the centre row of a 2-D grid) of NLL + L2 and NLL."""
    _pair(lambda r, ax, which: plot_landscape_1d([r], ax, which), result, fig)


def draw_contour(result: Result, fig: Figure) -> None:
    """Contours of NLL + L2 and NLL; a 1-D result gets its curves instead."""
    if is_2d(result):
        _pair(plot_landscape_contour, result, fig)
    else:
        draw_1d(result, fig)


def draw_surface(result: Result, fig: Figure) -> None:
    """3-D surfaces of NLL + L2 and NLL; a 1-D result gets its curves instead."""
    if is_2d(result):
        _pair(plot_landscape_surface, result, fig, projection="3d")
    else:
        draw_1d(result, fig)
