"""Q1 of the paper, "What properties of MSAs do we need?": loss landscapes, Hessian spectra,
overfitting and the small-data regime."""

from __future__ import annotations

from collections.abc import Sequence

from ...analyses.keys import HessianKeys, LandscapeKeys
from ...results import Result
from .. import landscape_figures
from ..blocks import DASH, Block, FigureWriter, Heading, Table, Text, gallery, num
from ..claims.accuracy import OverfitPoint, overfit_points
from ..claims.curvature import hessian_eigenvalues, negative_share, top_eigenvalue
from ..figures import single
from ..load import StudyRun, pct
from ..study_figures import overfitting_caption, overfitting_figure, small_data_figure
from .common import PerRun, analysis_blocks, not_run, per_run, question, result_rows

LANDSCAPE_RINGS = (0.1, 0.2, 0.3, 0.5, 1.0)  # the rings of ``docs/methods/landscape.md``'s table


def section_properties(runs: Sequence[StudyRun], figs: FigureWriter) -> list[Block]:
    """Q1: flat landscapes, Hessian spectra, overfitting and data size."""
    out = question(
        "1. What properties of MSAs do we need?",
        "q1",
        "The paper: MSAs flatten the loss landscape (Fig 1a); ViT's Hessian has many "
        "negative eigenvalues, more so with little data (Fig 1c, Fig 4); and a weak "
        "inductive bias does not make ViT overfit: test error and training NLL rise "
        "together (Fig 1b).",
    )
    surface = PerRun(
        "landscape_surface", single(landscape_figures.draw_surface, (8, 3.6)),
        "Loss landscape (NLL + L2 and NLL, minus the minimum)", wide=True,
    )  # fmt: skip
    out += analysis_blocks(
        runs, figs, "landscape", "Loss landscape", "Loss along d1 through the centre",
        figures=[surface], table=landscape_table,
    )  # fmt: skip
    out += trajectory_blocks(runs, figs)
    out += analysis_blocks(
        runs, figs, "hessian", "Hessian max-eigenvalue spectra",
        "Density of the batch-wise top-k Hessian eigenvalues (negative | positive, own "
        "y-scales; dashed: fraction < 100%)", by_dataset=True, table=hessian_table,
    )  # fmt: skip
    return out + overfitting_blocks(runs, figs)


def trajectory_blocks(runs: Sequence[StudyRun], figs: FigureWriter) -> list[Block]:
    """The contours on the plane of each run's training trajectory, the trajectory drawn over
    them, for the runs whose landscape used ``directions: pca``."""
    pca = [
        r for r in runs if LandscapeKeys.PCA in getattr(r.results.get("landscape"), "values", {})
    ]
    if not pca:
        return []
    spec = PerRun(
        "landscape_pca", single(landscape_figures.draw_contour, (8, 3.6)),
        "Loss landscape on the plane of the training trajectory (PCA; white: the checkpoints "
        "from init, the square, to the analysed weights, the cross)", wide=True,
    )  # fmt: skip
    return per_run(pca, "landscape", spec, figs)


def overfitting_blocks(runs: Sequence[StudyRun], figs: FigureWriter) -> list[Block]:
    """Test error vs training NLL, and both against the data fraction."""
    out: list[Block] = [Heading("Overfitting and the small-data regime", 3, "overfitting")]
    out += not_run(runs, "overfitting")
    points = overfit_points(runs)
    if not points:
        return out + [Text("No run has both a test accuracy and a training NLL.", note=True)]
    items = [
        figs.add("overfitting_error_vs_nll", lambda: overfitting_figure(points),
                 overfitting_caption(points), wide=True),
        figs.add("overfitting_small_data", lambda: small_data_figure(points),
                 "Small-data regime: test error (best epoch) and training NLL against the "
                 "fraction of the training set, one line per model (hollow: training NLL "
                 "from metrics.jsonl).", wide=True),
    ]  # fmt: skip
    return out + gallery(items) + [overfitting_table(points)]


def landscape_table(runs: Sequence[StudyRun]) -> Table:
    """Centre values and the rise of NLL + L2 on the L∞ rings of ``docs/methods/landscape.md``'s
    table."""
    present = {
        row["r"] for r in runs if "landscape" in r.results
        for row in r.results["landscape"].values.get(LandscapeKeys.RINGS, [])
    }  # fmt: skip
    rings = [x for x in LANDSCAPE_RINGS if any(abs(x - p) < 1e-9 for p in present)]
    header = ["Run", "L2", "Centre NLL", "Centre NLL+L2"] + [f"Δ(NLL+L2) r={x:g}" for x in rings]
    lines = any(
        LandscapeKeys.INTERPOLATE in r.results["landscape"].values
        for r in runs
        if "landscape" in r.results
    )  # directions=interpolate: the barrier between the two ends
    header += ["Endpoint (α = 1)", "NLL+L2 at α = 1", "Barrier (NLL+L2)"] if lines else []

    def row(r: StudyRun, res: Result) -> list[str]:
        v = res.values
        interp = v.get(LandscapeKeys.INTERPOLATE) or {}
        extra = []
        if lines:
            end = (interp.get("ends") or [{}, {}])[1].get("loss")
            barrier = (interp.get("barrier") or {}).get("loss")
            extra = [str(interp.get("endpoint") or DASH), num(end, ".3f"), num(barrier, ".3g")]
        centre = v.get(LandscapeKeys.CENTER, {})
        by_r = {round(row["r"], 6): row.get("loss") for row in v.get(LandscapeKeys.RINGS, [])}
        rises = []
        for x in rings:
            loss = by_r.get(round(x, 6))
            ok = loss is not None and centre.get("loss") is not None
            rises.append(num(loss - centre["loss"], ".3g") if ok else DASH)
        l2 = f"{v.get(LandscapeKeys.L2_MODE, '?')} × {v.get(LandscapeKeys.WEIGHT_DECAY, '?')}"
        centres = [num(centre.get("nll"), ".3f"), num(centre.get("loss"), ".3f")]
        return [r.name, l2, *centres, *rises, *extra]

    return Table(header, result_rows(runs, "landscape", row), id="landscape-table")


def hessian_table(runs: Sequence[StudyRun]) -> Table:
    header = ["Run", "Checkpoint", "Batches", "Eigenvalues", "Negative share", "Min", "Max"]
    header += ["Mean top λ", "Converged"]

    def row(r: StudyRun, res: Result) -> list[str]:
        eig = hessian_eigenvalues(res)
        conv = res.values.get(HessianKeys.CONVERGED) or []
        return [
            r.name,
            str(res.meta.get("checkpoint", "?")),
            str(len(res.values.get(HessianKeys.EIGENVALUES) or [])),
            str(eig.size),
            num(negative_share(res), ".1%"),
            num(float(eig.min()) if eig.size else None, ".4g"),
            num(float(eig.max()) if eig.size else None, ".4g"),
            num(top_eigenvalue(res), ".4g"),
            f"{sum(map(bool, conv))}/{len(conv)}" if conv else DASH,
        ]

    return Table(header, result_rows(runs, "hessian", row), id="hessian-table")


def overfitting_table(points: Sequence[OverfitPoint]) -> Table:
    rows = [
        [
            p.run.name,
            p.run.model,
            pct(p.run.fraction),
            f"{p.train_nll:.4f}",
            "overfitting result" if p.source == "overfitting" else "metrics.jsonl (fallback)",
            f"{p.test_error:.2f}%",
        ]
        for p in points
    ]
    header = ["Run", "Model", "Fraction", "Train NLL", "Train NLL from", "Test error"]
    return Table(header, rows, id="overfitting-table")
