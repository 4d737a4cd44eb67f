"""Figures that overlay one analysis of several runs (e.g. ResNet, ViT, ViT on 6% of the data).

``compare_figure(name, results)`` draws the overlay the analysis declares (``compare=`` in its
``Analysis``); ``vitscope compare NAME RUN_DIR... --out fig.png`` is its CLI. Results are read
from the runs' ``results/`` folders; nothing is recomputed. The built-ins' overlays are below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..analyses.keys import FourierKeys, LandscapeKeys, LesionKeys, NoiseKeys, VarianceKeys
from ..errors import VitscopeError
from ..results import Result, result_name
from .figures import literal_text, save_figure, unit_marker
from .hessian_figures import draw_spectra
from .landscape_figures import plot_landscape_1d
from .load import family
from .spread import group_label, groups, plot_band, same_length

SIZE = (5, 3.4)


def _label(result: Result) -> str:
    return result.label(result.meta.get("run", "?"))


def _over_depth(keys: type, key: str, ylabel: str, *, ymin: float | None = None) -> Callable:
    """An overlay of per-unit ``values[key]`` against depth (units: ``values[keys.UNITS]``)."""

    def draw(results: Sequence[Result], fig: Figure) -> None:
        ax = fig.subplots()
        for group, members in groups(results):
            units = members[0].values[keys.UNITS]
            depth = [u["depth"] for u in units]
            rows = [[np.nan if v is None else v for v in r.values[key]] for r in members]
            if not same_length(rows):  # seeds of different architectures: draw each
                rows, members = rows[:1], members[:1]
            label = group_label(group, members) if len(members) > 1 else _label(members[0])
            plot_band(ax, depth, rows, label, marker=unit_marker(units), ms=4, lw=1.2)
        if ymin is not None:
            ax.set_ylim(bottom=ymin)
        else:
            ax.axhline(0, color="0.7", lw=0.6)
        ax.set_xlabel("Normalized depth")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)

    return draw


fourier = _over_depth(FourierKeys, FourierKeys.HIGH_FREQ, "ΔLog amplitude (1.0π)")
variance = _over_depth(VarianceKeys, VarianceKeys.VARIANCE, "Feature map variance", ymin=0.0)
lesion = _over_depth(LesionKeys, LesionKeys.DELTA_ACC, "ΔAccuracy (%)")


def noise(results: Sequence[Result], fig: Figure) -> None:
    ax = fig.subplots()
    for group, members in groups(results):
        r = members[0]
        marker = "o" if family(str(r.meta.get("model", "")), r.meta.get("family")) == "ViT" else "D"
        rows = [
            [np.nan if d is None else d for d in m.values[NoiseKeys.DELTA_ACC]] for m in members
        ]
        if not same_length(rows):
            rows, members = rows[:1], members[:1]
        label = group_label(group, members) if len(members) > 1 else _label(r)
        plot_band(ax, r.values[NoiseKeys.FREQUENCIES], rows, label, marker=marker)
    ax.axhline(0, color="0.7", lw=0.6)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1.0], ["0.0π", "0.5π", "1.0π"])
    ax.set_xlabel("Noise frequency")
    ax.set_ylabel("ΔAccuracy (%)")
    ax.legend(fontsize=7)


def landscape(results: Sequence[Result], fig: Figure) -> None:
    axes = fig.subplots(1, 2)
    plot_landscape_1d(results, axes[0], which=LandscapeKeys.LOSS)
    plot_landscape_1d(results, axes[1], which=LandscapeKeys.NLL)


def hessian(results: Sequence[Result], fig: Figure) -> None:
    draw_spectra(results, fig)


SIZES = {"landscape": (8, 3.4), "hessian": (5.5, 3.0)}  # the rest: SIZE


def overlay(name: str, draw: Callable, results: Sequence[Result]) -> Figure:
    """``draw(results, fig)`` on a new figure of the size analysis ``name``'s overlay takes."""
    if not results:
        raise VitscopeError(f"no {name} results to compare")
    fig = Figure(figsize=SIZES.get(name, SIZE), layout="constrained")
    with literal_text():
        draw(results, fig)
    return fig


def compare_figure(name: str, results: Sequence[Result]) -> Figure:
    """The overlay figure analysis ``name`` declares (any registered analysis)."""
    from ..analyses import get_analysis

    draw = get_analysis(name).compare_figure()
    if draw is None:
        raise VitscopeError(f"analysis {name!r} declares no comparison figure")
    return overlay(name, draw, results)


def compare_runs(
    name: str, run_dirs: Sequence[str | Path], out: str | Path, *, tag: str | None = None
) -> Path:
    """Load analysis ``name``'s result (the one saved with ``tag``, if given) from each run's
    ``results/`` and save the overlay figure to ``out``."""
    from ..analyses import get_analysis

    spec = get_analysis(name)
    saved = result_name(name, tag)
    again = f" --tag {tag}" if tag else ""
    results = []
    for d in run_dirs:
        result = Result.load(Path(d) / "results", saved)
        missing = spec.missing(result, required_only=True)
        if missing:
            raise VitscopeError(
                f"{Path(d) / 'results' / saved}.json lacks {', '.join(missing)}; run "
                f"`vitscope analyze {d} --only {name}{again}` to compute it again"
            )
        results.append(result)
    return save_figure(compare_figure(name, results), Path(out))
