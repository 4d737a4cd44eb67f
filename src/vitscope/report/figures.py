"""Figures like the paper's, drawn from saved results only (never recomputed).

One function per plot, ``plot_<what>(result, ax)``; :func:`render` draws every figure a
result kind has and saves PNGs atomically. Colours follow the paper: depth in ``plasma``,
grey spans for MSA units, blue spans for downsampling units.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from ..analyses.base import Result  # noqa: E402
from ..io import atomic_write  # noqa: E402

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
    lc = LineCollection(segs, cmap="plasma", norm=plt.Normalize(0, 1), lw=1.5)
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
    units, curves = result.values["units"], result.values["curves"]
    cmap = plt.get_cmap("plasma")
    for u, c in list(zip(units, curves))[:-1]:  # the last map is left out, as in the paper
        ax.plot(np.linspace(0, 1, len(c)), c, color=cmap(u["depth"]), lw=1)
    ax.set_xlabel("Frequency")
    ax.set_ylabel("ΔLog amplitude")
    ax.set_xticks([0, 0.5, 1.0], ["0.0π", "0.5π", "1.0π"])
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    ax.figure.colorbar(sm, ax=ax, label="Normalized depth")
    ax.set_title(result.label() or "Fourier analysis")


def plot_high_freq(result: Result, ax) -> None:
    """Fig 8: the ΔLog amplitude at 1.0π of every unit against normalised depth."""
    units = result.values["units"]
    shade_units(ax, units)
    depth = np.array([u["depth"] for u in units])
    _depth_line(ax, depth, np.array(result.values["high_freq"], dtype=float), unit_marker(units))
    ax.autoscale_view(scalex=False)
    ax.set_xlabel("Normalized depth")
    ax.set_ylabel("ΔLog amplitude (1.0π)")
    ax.set_title(result.label() or "High-frequency amplitude")


def plot_fourier_maps(result: Result, fig, max_maps: int = 12) -> None:
    """2-D mean log-amplitude spectra (relative to DC) of evenly spaced units."""
    units = result.values["units"]
    pick = np.unique(np.linspace(0, len(units) - 1, min(max_maps, len(units))).round().astype(int))
    cols = min(6, len(pick))
    rows = int(np.ceil(len(pick) / cols))
    for k, i in enumerate(pick):
        ax = fig.add_subplot(rows, cols, k + 1)
        a = result.arrays[f"map_{i}"]
        h, w = a.shape
        ax.imshow(a - a[h // 2, w // 2], cmap="viridis", vmin=-8, vmax=0)
        ax.set_title(f"{i}: {units[i]['kind']}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.label()} log amplitude (relative to DC)".strip(), fontsize=9)


def plot_variance(result: Result, ax) -> None:
    """Fig 9: feature-map variance against normalised depth."""
    units = result.values["units"]
    shade_units(ax, units)
    depth = np.array([u["depth"] for u in units])
    _depth_line(ax, depth, np.array(result.values["variance"], dtype=float), unit_marker(units))
    ax.set_ylim(bottom=0)
    ax.autoscale_view(scalex=False)
    ax.set_xlabel("Normalized depth")
    ax.set_ylabel("Feature map variance")
    ax.set_title(result.label() or "Feature-map variance")


def plot_noise(result: Result, ax) -> None:
    """Fig 2b: accuracy change under band-limited noise against the noise frequency."""
    v = result.values
    ax.plot(v["frequencies"], v["delta_acc"], marker="o", label=result.label() or None)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1.0], ["0.0π", "0.5π", "1.0π"])
    ax.set_xlabel("Noise frequency")
    ax.set_ylabel("ΔAccuracy (%)")
    ax.set_title(f"{result.label()} (eps={result.config.get('eps')})".strip())


def plot_lesion(result: Result, ax) -> None:
    """Lesion study: accuracy change when each unit is removed, against depth."""
    units = result.values["units"]
    shade_units(ax, units)
    colours = {"msa": "tab:red", "mlp": "tab:orange", "conv": "tab:blue", "pool": "tab:green"}
    for u, d in zip(units, result.values["delta_acc"]):
        if d is not None:
            ax.scatter(u["depth"], d, color=colours.get(u["kind"], "k"), s=20, zorder=3)
    for kind, c in colours.items():
        if any(
            u["kind"] == kind and d is not None for u, d in zip(units, result.values["delta_acc"])
        ):
            ax.scatter([], [], color=c, label=kind)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_xlabel("Normalized depth")
    ax.set_ylabel("ΔAccuracy (%)")
    ax.set_title(result.label() or "Lesion study")


def _single(plot: Callable, size=(4, 3.3)) -> Callable[[Result], plt.Figure]:
    def draw(result: Result) -> plt.Figure:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        plot(result, ax)
        return fig

    return draw


def _maps(result: Result) -> plt.Figure:
    fig = plt.figure(figsize=(9, 3.5), layout="constrained")
    plot_fourier_maps(result, fig)
    return fig


FIGURES: dict[str, dict[str, Callable[[Result], plt.Figure]]] = {
    "fourier": {
        "fourier_curves": _single(plot_fourier_curves, (3.6, 4)),
        "fourier_high_freq": _single(plot_high_freq),
        "fourier_maps": _maps,
    },
    "variance": {"variance": _single(plot_variance)},
    "noise": {"noise": _single(plot_noise)},
    "lesion": {"lesion": _single(plot_lesion)},
}


def _register_curvature_figures() -> None:
    from .hessian_figures import FIGURES as HESSIAN
    from .landscape_figures import FIGURES as LANDSCAPE

    FIGURES["landscape"] = LANDSCAPE
    FIGURES["hessian"] = HESSIAN


_register_curvature_figures()


def save_figure(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:], dpi=130))
    plt.close(fig)
    return path


def render(result: Result, figures_dir: str | Path) -> list[Path]:
    """Draw every figure of a result into ``figures_dir`` as PNG; returns the paths."""
    out = []
    for stem, draw in FIGURES.get(result.name, {}).items():
        out.append(save_figure(draw(result), Path(figures_dir) / f"{stem}.png"))
    return out
