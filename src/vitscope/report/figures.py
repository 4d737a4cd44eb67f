"""Figures like the paper's, drawn from saved results only (never recomputed).

One function per plot, ``plot_<what>(result, ax)``, and per figure ``<name>(result, fig)``,
which the analyses declare (``FigureSpec``); :func:`render` draws the declared figures of a
result and saves PNGs atomically. Everything draws on ``matplotlib.figure.Figure`` objects:
no pyplot, no backend is chosen, so a notebook keeps its own. Colours follow the paper: depth
in ``plasma``, grey spans for MSA units, blue spans for downsampling units.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..analyses.keys import FourierKeys, LesionKeys, NoiseKeys, VarianceKeys
from ..analyses.spec import FigureSpec, resolve_ref
from ..io import atomic_write
from ..results import Result

DPI = 130


def literal_text():
    """Inside it, text is drawn as given: a ``$`` in a run, model or unit name (names come
    from users) is a dollar sign, not the start of mathtext that fails to parse. A label that
    means mathtext says ``parse_math=True``."""
    return mpl.rc_context({"text.parse_math": False})


def subplots(size: tuple[float, float], *args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """``(fig, axes)`` like ``pyplot.subplots``, on a Figure no pyplot state holds."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(*args, **kwargs)


MSA_SPAN = dict(color="0.85", alpha=0.6, lw=0)
DOWN_SPAN = dict(color="tab:blue", alpha=0.15, lw=0)


def shade_units(ax, units: list[dict]) -> None:
    """Grey spans over MSA units and blue over downsampling ones: ``[(i-1)/(N-1), i/(N-1)]``."""
    n = len(units)
    step = 1.0 / (n - 1) if n > 1 else 1.0
    for u in units:
        if u["index"] == 0:
            continue
        span = (u["depth"] - step, u["depth"])
        if u["kind"] == "msa":
            ax.axvspan(*span, **MSA_SPAN)
        elif u["downsample"]:
            ax.axvspan(*span, **DOWN_SPAN)


def _depth_line(ax, depth: np.ndarray, values: np.ndarray, marker: str) -> None:
    """A plasma-coloured line over depth with markers (the paper's Fig 8/9 style)."""
    ok = np.isfinite(values)
    depth, values = depth[ok], values[ok]
    points = np.stack([depth, values], 1)
    segs = np.stack([points[:-1], points[1:]], 1)
    lc = LineCollection(segs, cmap="plasma", norm=Normalize(0, 1), lw=1.5)
    lc.set_array((depth[:-1] + depth[1:]) / 2)
    ax.add_collection(lc)
    ax.scatter(
        depth,
        values,
        c=depth,
        cmap="plasma",
        vmin=0,
        vmax=1,
        marker=marker,
        s=18,
        zorder=3,
        edgecolors="k",
        linewidths=0.3,
    )
    ax.set_xlim(-0.02, 1.02)


def unit_marker(units: list[dict]) -> str:
    """'o' for models with MSA units (the paper's ViT marker), 'D' otherwise (ResNet)."""
    return "o" if any(u["kind"] == "msa" for u in units) else "D"


def plot_fourier_curves(result: Result, ax) -> None:
    """Fig 2a: ΔLog amplitude vs frequency, one curve per unit coloured by depth."""
    units, curves = result.values[FourierKeys.UNITS], result.values[FourierKeys.CURVES]
    cmap = mpl.colormaps["plasma"]
    for u, c in list(zip(units, curves))[:-1]:  # the last map is left out, as in the paper
        ax.plot(np.linspace(0, 1, len(c)), c, color=cmap(u["depth"]), lw=1)
    ax.set_xlabel("Frequency")
    ax.set_ylabel("ΔLog amplitude")
    ax.set_xticks([0, 0.5, 1.0], ["0.0π", "0.5π", "1.0π"])
    sm = ScalarMappable(cmap=cmap, norm=Normalize(0, 1))
    ax.figure.colorbar(sm, ax=ax, label="Normalized depth")
    ax.set_title(result.label() or "Fourier analysis")


def _plot_per_unit(
    result: Result, ax, keys: type, key: str, ylabel: str, title: str, *, ymin=None
) -> None:
    """``values[key]`` of every unit (``values[keys.UNITS]``) against normalised depth."""
    units = result.values[keys.UNITS]
    shade_units(ax, units)
    depth = np.array([u["depth"] for u in units])
    _depth_line(ax, depth, np.array(result.values[key], dtype=float), unit_marker(units))
    if ymin is not None:
        ax.set_ylim(bottom=ymin)
    ax.autoscale_view(scalex=False)
    ax.set_xlabel("Normalized depth")
    ax.set_ylabel(ylabel)
    ax.set_title(result.label() or title)


def plot_high_freq(result: Result, ax) -> None:
    """Fig 8: the ΔLog amplitude at 1.0π of every unit against normalised depth."""
    _plot_per_unit(
        result, ax, FourierKeys, FourierKeys.HIGH_FREQ, "ΔLog amplitude (1.0π)",
        "High-frequency amplitude",
    )  # fmt: skip


def plot_fourier_maps(result: Result, fig, max_maps: int = 12) -> None:
    """2-D mean log-amplitude spectra (relative to DC) of evenly spaced units."""
    units = result.values[FourierKeys.UNITS]
    pick = np.unique(np.linspace(0, len(units) - 1, min(max_maps, len(units))).round().astype(int))
    cols = min(6, len(pick))
    rows = int(np.ceil(len(pick) / cols))
    for k, i in enumerate(pick):
        ax = fig.add_subplot(rows, cols, k + 1)
        a = result.arrays[FourierKeys.MAP.format(i)]
        h, w = a.shape
        ax.imshow(a - a[h // 2, w // 2], cmap="viridis", vmin=-8, vmax=0)
        ax.set_title(f"{i}: {units[i]['kind']}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.label()} log amplitude (relative to DC)".strip(), fontsize=9)


def plot_variance(result: Result, ax) -> None:
    """Fig 9: feature-map variance against normalised depth."""
    _plot_per_unit(
        result, ax, VarianceKeys, VarianceKeys.VARIANCE, "Feature map variance",
        "Feature-map variance", ymin=0,
    )  # fmt: skip


def plot_noise(result: Result, ax) -> None:
    """Fig 2b: accuracy change under band-limited noise against the noise frequency."""
    v = result.values
    ax.plot(
        v[NoiseKeys.FREQUENCIES], v[NoiseKeys.DELTA_ACC], marker="o", label=result.label() or None
    )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1.0], ["0.0π", "0.5π", "1.0π"])
    ax.set_xlabel("Noise frequency")
    ax.set_ylabel("ΔAccuracy (%)")
    ax.set_title(f"{result.label()} (eps={result.config.get('eps')})".strip())


def plot_lesion(result: Result, ax) -> None:
    """Lesion study: accuracy change when each unit is removed, against depth."""
    units, deltas = result.values[LesionKeys.UNITS], result.values[LesionKeys.DELTA_ACC]
    shade_units(ax, units)
    colours = {"msa": "tab:red", "mlp": "tab:orange", "conv": "tab:blue", "pool": "tab:green"}
    for u, d in zip(units, deltas):
        if d is not None:
            ax.scatter(u["depth"], d, color=colours.get(u["kind"], "k"), s=20, zorder=3)
    for kind, c in colours.items():
        if any(u["kind"] == kind and d is not None for u, d in zip(units, deltas)):
            ax.scatter([], [], color=c, label=kind)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_xlabel("Normalized depth")
    ax.set_ylabel("ΔAccuracy (%)")
    ax.set_title(result.label() or "Lesion study")


# ---------------------------------------------------------------------------------------------
# the figures the analyses declare: draw(result, fig)


def fourier_curves(result: Result, fig: Figure) -> None:
    plot_fourier_curves(result, fig.subplots())


def high_freq(result: Result, fig: Figure) -> None:
    plot_high_freq(result, fig.subplots())


def fourier_maps(result: Result, fig: Figure) -> None:
    plot_fourier_maps(result, fig)


def variance(result: Result, fig: Figure) -> None:
    plot_variance(result, fig.subplots())


def noise(result: Result, fig: Figure) -> None:
    plot_noise(result, fig.subplots())


def lesion(result: Result, fig: Figure) -> None:
    plot_lesion(result, fig.subplots())


def single(draw: Any, size: tuple[float, float] = (4.0, 3.3)) -> Any:
    """``result -> Figure``: ``draw(result, fig)`` on a new figure of ``size``."""

    def make(result: Result) -> Figure:
        fig = Figure(figsize=size, layout="constrained")
        with literal_text():
            draw(result, fig)
        return fig

    return make


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Save ``fig`` atomically, in the format of ``path``'s suffix."""
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:], dpi=dpi))
    return path


def draw_figure(result: Result, figure: FigureSpec) -> Figure:
    """The declared figure drawn on a new Figure of its size."""
    fig = Figure(figsize=figure.size, layout="constrained")
    with literal_text():
        resolve_ref(figure.draw)(result, fig)
    return fig


def render(result: Result, figures_dir: str | Path, figures: Sequence[FigureSpec]) -> list[Path]:
    """Draw the declared ``figures`` of a result into ``figures_dir`` as PNG; returns the paths.

    A figure that fails to draw is skipped with a warning: the result itself is never lost.
    A figure whose ``when`` does not hold for the result is not drawn, and an earlier one of
    its name (from a result this one replaces) is removed.
    """
    out = []
    for figure in figures:
        path = Path(figures_dir) / f"{figure.stem}.png"
        try:
            if figure.when is not None and not resolve_ref(figure.when)(result):
                path.unlink(missing_ok=True)
                continue
            fig = draw_figure(result, figure)
        except Exception as e:  # a plug-in's broken figure must not cost the result
            warnings.warn(f"{result.name}: figure {figure.stem} failed: {e!r}", stacklevel=2)
            continue
        out.append(save_figure(fig, path))
    return out
