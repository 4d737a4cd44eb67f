"""Claims 5-7: Hessian spectra and the loss landscape (non-convex, small data, flatness).

Also the plain per-result measures the report's tables read: :func:`hessian_eigenvalues`,
:func:`negative_share`, :func:`top_eigenvalue`, :func:`landscape_rise`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...analyses.keys import HessianKeys
from ...results import Result
from ..load import StudyRun, finite, pct
from . import samples
from .base import (
    LANDSCAPE_RING,
    Finding,
    Measure,
    Resample,
    family_keys,
    finding,
    key_str,
    mean_over,
    measure,
    none_run,
)

# ---- plain measures of one result (tables) -----------------------------------------------------


def hessian_eigenvalues(result: Result) -> np.ndarray:
    """Every batch's top-k eigenvalues of a ``hessian`` result, flat and finite."""
    rows = result.values.get(HessianKeys.EIGENVALUES) or []
    flat = [v for row in rows for v in (row if isinstance(row, list) else [row]) if finite(v)]
    return np.asarray(flat, dtype=float)


def negative_share(result: Result) -> float | None:
    """Share of negative values among the batch-wise top-k eigenvalues (Fig 1c's mass)."""
    return samples.negative_share_of(result)


def top_eigenvalue(result: Result) -> float | None:
    """Mean over batches of the largest Hessian eigenvalue (``values.largest``, else top-k max)."""
    largest = samples.largest_per_batch(result)
    return float(largest.mean()) if len(largest) else None


landscape_rise = samples.ring_rise  # (r, rise) of one result, for the report's tables


# ---- effects over runs -----------------------------------------------------------------------


def share_of(runs: Sequence[StudyRun], rs: Resample) -> float | None:
    """Mean over ``runs`` of the share of negative top-k eigenvalues (resampled batches)."""
    return mean_over(samples.negative_share(r, rs) for r in runs if "hessian" in r.results)


def negative_difference(
    a: Sequence[StudyRun], b: Sequence[StudyRun], label: str, side: str
) -> Measure | None:
    """Share of negative eigenvalues of runs ``a`` minus that of runs ``b`` (null 0)."""
    ids_a, ids_b = {id(r) for r in a}, {id(r) for r in b}

    def diff(rs: Sequence[StudyRun], resample: Resample) -> float | None:
        x = share_of([r for r in rs if id(r) in ids_a], resample)
        y = share_of([r for r in rs if id(r) in ids_b], resample)
        return None if x is None or y is None else x - y

    def context(rs: Sequence[StudyRun]) -> str:
        x = share_of([r for r in rs if id(r) in ids_a], Resample())
        y = share_of([r for r in rs if id(r) in ids_b], Resample())
        return f"negative share {x:.1%} vs {y:.1%}" if x is not None and y is not None else ""

    return measure(
        [*a, *b], diff, label=label, unit="mini-batches", side=side, fmt="+.3f", context=context
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 or a <= 0 else a / b


# ---- rules -----------------------------------------------------------------------------------

_INTERVAL = (
    "Interval: t over seeds, or (one seed) a bootstrap over the Hessian's mini-batches (the "
    "same batch indices for models trained on the same subset)."
)


def check_hessian_negative(runs: Sequence[StudyRun]) -> Finding:
    """Claim 5: ViT has a larger share of negative Hessian eigenvalues than ResNet (Fig 1c)."""
    claim = "ViT has more negative Hessian eigenvalues than ResNet (non-convex losses)"
    detail = (
        "Effect: share of negative values among the batch-wise top-k Hessian eigenvalues "
        f"(`hessian.values.{HessianKeys.EIGENVALUES}`) of ViT minus that of ResNet, per "
        "dataset and fraction. Holds when every 95% interval lies above 0, does not hold when "
        f"every one lies below, else inconclusive. {_INTERVAL} Paper: Fig 1c, Fig 4 "
        "(docs/methods/hessian.md)."
    )
    keys, why = family_keys(runs, ("ViT", "ResNet"), "hessian")
    out = []
    for key in keys:
        at = [r for r in runs if r.key == key and "hessian" in r.results]
        m = negative_difference(
            [r for r in at if r.family == "ViT"],
            [r for r in at if r.family == "ResNet"],
            f"{key_str(key)}: negative share ViT - ResNet",
            "greater",
        )
        if m is not None:
            out.append(m)
    return finding("hessian-negative", claim, detail, out, why)


def check_hessian_small_data(runs: Sequence[StudyRun]) -> Finding:
    """Claim 6: ViT's negative eigenvalues grow with less data (Fig 1c's "ViT (6%)")."""
    claim = "ViT has more negative Hessian eigenvalues with less data"
    detail = (
        "Effect: share of negative top-k Hessian eigenvalues of the ViT runs at the smallest "
        "data fraction of a dataset minus that at the largest. Holds when every dataset's 95% "
        "interval lies above 0, does not hold when every one lies below, else inconclusive. "
        "Interval: t over seeds, or (one seed) a bootstrap over each run's mini-batches. "
        "Paper: Fig 1c (ViT vs ViT (6%))."
    )
    vit = [r for r in runs if r.family == "ViT" and "hessian" in r.results]
    out = []
    for dataset in sorted({r.dataset for r in vit}):
        fractions = sorted({r.key[1] for r in vit if r.dataset == dataset})
        if len(fractions) < 2:
            continue
        small = [r for r in vit if r.key == (dataset, fractions[0])]
        full = [r for r in vit if r.key == (dataset, fractions[-1])]
        label = f"{dataset}: negative share ViT {pct(fractions[0])} - {pct(fractions[-1])}"
        m = negative_difference(small, full, label, "greater")
        if m is not None:
            out.append(m)
    why = ""
    if not out:
        why = (
            none_run("hessian", runs)
            if not any("hessian" in r.results for r in runs)
            else "needs hessian results of ViT runs at two data fractions of one dataset; have: "
            + (", ".join(sorted({key_str(r.key) for r in vit})) or "no ViT run")
        )
    return finding("hessian-small-data", claim, detail, out, why)


def _ratio_measure(
    runs: Sequence[StudyRun], key: tuple, analysis: str, value, label: str
) -> Measure | None:
    """ViT's ``value(run, resample)`` over ResNet's at ``key`` (null 1, claim < 1)."""

    def of(rs: Sequence[StudyRun], fam: str, resample: Resample) -> float | None:
        at = [r for r in rs if r.key == key and r.family == fam and analysis in r.results]
        return mean_over(value(r, resample) for r in at)

    def ratio(rs: Sequence[StudyRun], resample: Resample) -> float | None:
        return _ratio(of(rs, "ViT", resample), of(rs, "ResNet", resample))

    def context(rs: Sequence[StudyRun]) -> str:
        v, r = of(rs, "ViT", Resample()), of(rs, "ResNet", Resample())
        fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        return f"ViT {fmt(v)} vs ResNet {fmt(r)}"

    at = [r for r in runs if r.key == key and analysis in r.results]
    return measure(
        at, ratio, label=label, unit="mini-batches", null=1.0, side="less", fmt=".3g",
        context=context, log=True,
    )  # fmt: skip


def check_flat_landscape(runs: Sequence[StudyRun]) -> Finding:
    """Claim 7: MSAs flatten the loss landscape (Fig 1a, Fig 1c)."""
    claim = "MSAs flatten the loss landscape (ViT flatter than ResNet)"
    detail = (
        "Two effects, ViT over ResNet on the same dataset and fraction: (a) the ratio of the "
        f"rises of NLL + L2 from the centre to the L∞ ring nearest r = {LANDSCAPE_RING:g} "
        "(each batch's rise from `landscape.arrays.nll_batches` + `l2`, then their mean); "
        "(b) the ratio of the mean largest Hessian eigenvalue. Null 1; the claim: < 1. Holds "
        "when every interval lies below 1, does not hold when every one lies above, else "
        "inconclusive; a rise or eigenvalue ≤ 0 leaves the ratio undefined. Interval: t over "
        "seeds of the log ratio (the estimate is the seeds' geometric mean), or (one seed) a "
        "bootstrap over the mini-batches. Paper: Fig 1a, Fig 1c "
        "(docs/methods/landscape.md; docs/methods/hessian.md)."
    )
    lkeys, why_l = family_keys(runs, ("ViT", "ResNet"), "landscape")
    hkeys, why_h = family_keys(runs, ("ViT", "ResNet"), "hessian")
    out = []
    for key in lkeys:
        m = _ratio_measure(
            runs, key, "landscape",
            lambda r, rs: samples.landscape_rise(r, LANDSCAPE_RING, rs),
            f"{key_str(key)}: rise of NLL+L2 at r≈{LANDSCAPE_RING:g}, ViT / ResNet",
        )  # fmt: skip
        if m is not None:
            out.append(m)
    for key in hkeys:
        m = _ratio_measure(
            runs, key, "hessian", samples.top_eigenvalue,
            f"{key_str(key)}: top Hessian eigenvalue, ViT / ResNet",
        )  # fmt: skip
        if m is not None:
            out.append(m)
    why = "; ".join(
        w
        for w in (f"landscape: {why_l}" if why_l else "", f"hessian: {why_h}" if why_h else "")
        if w
    )
    if not out and not why:
        why = "the rises or eigenvalues are not positive: no ratio is defined"
    return finding("flat-landscape", claim, detail, out, why)
