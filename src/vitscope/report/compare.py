"""Figures that overlay one analysis of several runs (e.g. ResNet, ViT, ViT on 6% of the data).

``compare_figure(name, results)`` draws the paper's side-by-side plot of an analysis kind;
``vitscope compare NAME RUN_DIR... --out fig.png`` is its CLI. Results are read from the
runs' ``results/`` folders; nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..analyses.base import Result
from ..errors import VitscopeError
from .figures import save_figure, unit_marker
from .hessian_figures import spectrum_figure
from .landscape_figures import plot_landscape_1d


def _label(result: Result) -> str:
    return result.label(result.meta.get("run", "?"))


def _over_depth(key: str, ylabel: str, *, ymin: float | None = None) -> Callable:
    def draw(results: Sequence[Result]) -> plt.Figure:
        fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
        for r in results:
            depth = [u["depth"] for u in r.values["units"]]
            values = np.array([np.nan if v is None else v for v in r.values[key]], dtype=float)
            ax.plot(
                depth,
                values,
                marker=unit_marker(r.values.get("units", [])),
                ms=4,
                lw=1.2,
                label=_label(r),
            )
        if ymin is not None:
            ax.set_ylim(bottom=ymin)
        else:
            ax.axhline(0, color="0.7", lw=0.6)
        ax.set_xlabel("Normalized depth")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        return fig

    return draw


def _noise(results: Sequence[Result]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
    for r in results:
        ax.plot(
            r.values["frequencies"], r.values["delta_acc"], marker=_marker_noise(r), label=_label(r)
        )
    ax.axhline(0, color="0.7", lw=0.6)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1.0], ["0.0π", "0.5π", "1.0π"])
    ax.set_xlabel("Noise frequency")
    ax.set_ylabel("ΔAccuracy (%)")
    ax.legend(fontsize=7)
    return fig


def _marker_noise(result: Result) -> str:
    return "o" if "vit" in str(result.meta.get("model", "")) else "D"


def _landscape(results: Sequence[Result]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
    plot_landscape_1d(results, axes[0], which="loss")
    plot_landscape_1d(results, axes[1], which="nll")
    return fig


COMPARE: dict[str, Callable[[Sequence[Result]], plt.Figure]] = {
    "fourier": _over_depth("high_freq", "ΔLog amplitude (1.0π)"),
    "variance": _over_depth("variance", "Feature map variance", ymin=0.0),
    "lesion": _over_depth("delta_acc", "ΔAccuracy (%)"),
    "noise": _noise,
    "hessian": spectrum_figure,
    "landscape": _landscape,
}


def compare_figure(name: str, results: Sequence[Result]) -> plt.Figure:
    """The overlay figure of analysis ``name`` for several results."""
    if name not in COMPARE:
        raise VitscopeError(f"no comparison figure for {name!r}; valid: {', '.join(COMPARE)}")
    if not results:
        raise VitscopeError(f"no {name} results to compare")
    return COMPARE[name](results)


def compare_runs(name: str, run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Load ``name`` from each run's ``results/`` and save the overlay figure to ``out``."""
    results = [Result.load(Path(d) / "results", name) for d in run_dirs]
    return save_figure(compare_figure(name, results), Path(out))
