"""Figures across the runs of a study: overfitting (``docs/methods/overfitting.md``, Fig 1b), data
size, build-up.

They read :class:`~vitscope.report.load.StudyRun` records (metrics.jsonl and the
``overfitting`` results), never models:

- :func:`overfitting_figure`: test error (%) vs training NLL on augmented data, one point per
  run labelled by model (Fig 1b). A hollow marker is a run without an ``overfitting`` result,
  whose training NLL falls back to the last ``train_nll`` of metrics.jsonl (the training
  loop's running mean, in train mode); :func:`overfitting_caption` says which.
- :func:`small_data_figure`: test error and training NLL vs the data fraction, a line per model.
- :func:`accuracy_figure`: best test accuracy vs the data fraction, a line per model
  (AlterNet vs ResNet vs ViT ...).
- :func:`buildup_figure`: accuracy vs the number of MSAs of an AlterNet build-up
  (``docs/methods/alternet.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from .claims.accuracy import OverfitPoint
from .figures import subplots
from .hessian_figures import FAMILY_COLOURS
from .load import StudyRun, pct
from .spread import mean_band

# the paper's markers: ResNet diamonds, ViT circles
FAMILY_MARKERS = {"ResNet": "D", "ViT": "o", "PiT": "s", "Swin": "^", "AlterNet": "P"}


def model_styles(runs: Sequence[StudyRun]) -> dict[str, dict]:
    """``model -> {color, marker}``: colour by family, the next free colour for a second model
    of the same family."""
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    used: set[str] = set()
    out = {}
    families = {r.model: r.family for r in runs}
    for m in families:
        fam = families[m]
        colour = FAMILY_COLOURS.get(fam.lower(), cycle[len(out) % len(cycle)])
        j = 0
        while colour in used and j < len(cycle):
            colour, j = cycle[j], j + 1
        used.add(colour)
        out[m] = {"color": colour, "marker": FAMILY_MARKERS.get(fam, "X")}
    return out


def _line_key(run: StudyRun, datasets: set[str]) -> tuple[str, str]:
    """``(legend label, model)`` of the line a run belongs to."""
    return (run.model if len(datasets) == 1 else f"{run.model} ({run.dataset})", run.model)


def overfitting_caption(points: Sequence[OverfitPoint]) -> str:
    """Where the training NLL of each point comes from."""
    fallback = [p.run.name for p in points if p.source == "metrics"]
    text = (
        "Test error (best epoch) vs training NLL on augmented data "
        "(`overfitting` result, filled markers)"
    )
    if fallback:
        text += (
            "; hollow markers: no `overfitting` result, last `train_nll` of metrics.jsonl "
            f"(training loop, train mode) instead, for {', '.join(fallback)}"
        )
    return text + ". Paper Fig 1b: error and training NLL rise together (no overfitting)."


def plot_overfitting(points: Sequence[OverfitPoint], ax) -> None:
    """Fig 1b: one point per run, test error (%) against training NLL, labelled by model."""
    styles = model_styles([p.run for p in points])
    for p in points:
        st = styles[p.run.model]
        filled = p.source == "overfitting"
        ax.scatter(
            p.train_nll,
            p.test_error,
            marker=st["marker"],
            s=40,
            color=st["color"] if filled else "none",
            edgecolors=st["color"],
            linewidths=1.2,
            zorder=3,
        )
        ax.annotate(
            p.run.label, (p.train_nll, p.test_error), xytext=(4, 3), textcoords="offset points",
            fontsize=7,
        )  # fmt: skip
    ax.set_xlabel("NLL$_{train}$ (augmented)", parse_math=True)
    ax.set_ylabel("Test error (%)")
    ax.margins(0.15)
    ax.grid(alpha=0.3)


def overfitting_figure(points: Sequence[OverfitPoint]) -> Figure:
    fig, ax = subplots((5, 3.8))
    plot_overfitting(points, ax)
    ax.set_title("Test error vs training NLL", fontsize=10)
    return fig


def _fraction_axis(ax, fractions: Sequence[float]) -> None:
    ax.set_xscale("log")
    ticks = sorted(set(fractions))
    ax.set_xticks(ticks, [pct(f) for f in ticks])
    ax.minorticks_off()
    ax.set_xlabel("Training data (fraction)")
    ax.grid(alpha=0.3)


def _lines(ax, series: dict[tuple[str, str], list[tuple[float, float, bool]]], styles) -> None:
    """A line per ``(label, model)`` through ``(fraction, value, filled)`` points; several
    points at one fraction (seeds) are their mean, with the 95% t interval as an error bar."""
    for (label, model), pts in series.items():
        by_f: dict[float, list[tuple[float, bool]]] = {}
        for f, v, filled in pts:
            by_f.setdefault(f, []).append((v, filled))
        st = styles[model]
        x = sorted(by_f)
        stats = [mean_band([[v] for v, _ in by_f[f]]) for f in x]
        y = [float(m[0]) for m, *_ in stats]
        seeds = max(len(by_f[f]) for f in x)
        ax.plot(x, y, color=st["color"], lw=1.3,
                label=label if seeds < 2 else f"{label}, {seeds} seeds")  # fmt: skip
        for f, (m, lo, hi, _) in zip(x, stats):
            filled = any(fl for _, fl in by_f[f])
            ax.scatter(
                f, m[0], marker=st["marker"], s=30, zorder=3, edgecolors=st["color"],
                color=st["color"] if filled else "none",
            )  # fmt: skip
            if len(by_f[f]) > 1:
                ax.errorbar(f, m[0], yerr=[[m[0] - lo[0]], [hi[0] - m[0]]], color=st["color"],
                            capsize=3, lw=1, zorder=2)  # fmt: skip


def small_data_figure(points: Sequence[OverfitPoint]) -> Figure:
    """Test error and training NLL against the data fraction, one line per model."""
    datasets = {p.run.dataset for p in points}
    styles = model_styles([p.run for p in points])
    err: dict[tuple[str, str], list] = {}
    nll: dict[tuple[str, str], list] = {}
    for p in points:
        key = _line_key(p.run, datasets)
        err.setdefault(key, []).append((p.run.fraction, p.test_error, True))
        nll.setdefault(key, []).append((p.run.fraction, p.train_nll, p.source == "overfitting"))
    fig, (ax_e, ax_n) = subplots((7.5, 3.2), 1, 2)
    _lines(ax_e, err, styles)
    _lines(ax_n, nll, styles)
    for ax in (ax_e, ax_n):
        _fraction_axis(ax, [p.run.fraction for p in points])
    ax_e.set_ylabel("Test error (%)")
    ax_n.set_ylabel("NLL$_{train}$ (augmented)", parse_math=True)
    ax_e.set_title("Test error vs data size", fontsize=10)
    ax_n.set_title("Training NLL vs data size", fontsize=10)
    ax_n.legend(fontsize=7, loc="best")
    return fig


def accuracy_figure(runs: Sequence[StudyRun]) -> Figure:
    """Best test accuracy (%) against the data fraction, one line per model."""
    runs = [r for r in runs if r.best_acc is not None]
    datasets = {r.dataset for r in runs}
    styles = model_styles(runs)
    series: dict[tuple[str, str], list] = {}
    for r in runs:
        series.setdefault(_line_key(r, datasets), []).append((r.fraction, 100 * r.best_acc, True))
    fig, ax = subplots((5.5, 3.6))
    _lines(ax, series, styles)
    _fraction_axis(ax, [r.fraction for r in runs])
    ax.set_ylabel("Best test accuracy (%)")
    ax.set_title("Accuracy vs data size", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return fig


def buildup_figure(steps: Sequence[dict]) -> Figure:
    """Accuracy (%) against the number of MSAs of each build-up step, labelled
    (``docs/methods/alternet.md``).

    Args:
        steps: ``{"label", "num_msas", "acc"}`` dicts (accuracy in %), in search order.
    """
    fig, ax = subplots((5.5, 3.6))
    x = np.array([s["num_msas"] for s in steps], float)
    y = np.array([s["acc"] for s in steps], float)
    ax.plot(x, y, color="0.6", lw=0.8, zorder=1)
    best = int(np.nanargmax(y))
    colours = ["tab:orange" if i == best else "tab:blue" for i in range(len(steps))]
    ax.scatter(x, y, c=colours, s=30, zorder=3)
    for s, xi, yi in zip(steps, x, y):
        ax.annotate(
            str(s["label"]), (xi, yi), xytext=(3, 4), textcoords="offset points", fontsize=7
        )
    ax.set_xlabel("Number of MSAs")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title("AlterNet build-up", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    return fig
