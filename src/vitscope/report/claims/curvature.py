"""Claims 5-7: Hessian spectra and the loss landscape (non-convex, small data, flatness).

Also the measures the report's tables and the ablation rules read: :func:`negative_share`,
:func:`fewer_negatives`, :func:`top_eigenvalue`, :func:`landscape_rise`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...analyses.keys import HessianKeys, LandscapeKeys
from ...results import Result
from ..load import StudyRun, finite, pct
from .base import (
    HESSIAN_NEG_MARGIN,
    INCONCLUSIVE,
    LANDSCAPE_RING,
    Finding,
    family_groups,
    family_pairs,
    key_str,
    mean_of,
    none_run,
    unanimous,
)

# ---- measures --------------------------------------------------------------------------------


def hessian_eigenvalues(result: Result) -> np.ndarray:
    """Every batch's top-k eigenvalues of a ``hessian`` result, flat and finite."""
    rows = result.values.get(HessianKeys.EIGENVALUES) or []
    flat = [v for row in rows for v in (row if isinstance(row, list) else [row]) if finite(v)]
    return np.asarray(flat, dtype=float)


def negative_share(result: Result) -> float | None:
    """Share of negative values among the batch-wise top-k eigenvalues (Fig 1c's mass)."""
    eig = hessian_eigenvalues(result)
    if eig.size:
        return float((eig < 0).mean())
    v = (result.values.get(HessianKeys.SUMMARY) or {}).get("negative_fraction")
    return float(v) if finite(v) else None


def negative_ratio(result: Result) -> float | None:
    """Mean over batches of ``max(0, -λ_min) / λ_max``: how negative the spectrum reaches,
    relative to its top (scale-free, so models with different curvature scales compare)."""
    lo = result.values.get(HessianKeys.SMALLEST) or []
    hi = result.values.get(HessianKeys.LARGEST) or []
    ratios = [max(0.0, -a) / b for a, b in zip(lo, hi) if finite(a) and finite(b) and b > 0]
    return float(np.mean(ratios)) if ratios else None


def fewer_negatives(a: Sequence[StudyRun], b: Sequence[StudyRun]) -> tuple[bool | None, str]:
    """Whether runs ``a`` have fewer negative Hessian eigenvalues than runs ``b``.

    Compares the share of negative top-k eigenvalues; a tie (common with few batches) is
    broken by :func:`negative_ratio`; still tied (or missing): ``None``. Returns the vote and
    the numbers behind it.
    """
    sa, sb = mean_of(a, negative_share, "hessian"), mean_of(b, negative_share, "hessian")
    ra, rb = mean_of(a, negative_ratio, "hessian"), mean_of(b, negative_ratio, "hessian")
    if sa is None or sb is None:
        return None, "no eigenvalues"
    text = f"negative share {sa:.1%} vs {sb:.1%}"
    if ra is not None and rb is not None:
        text += f", |λmin|/λmax {ra:.3f} vs {rb:.3f}"
    if sa != sb:
        return sa < sb, text
    if ra is None or rb is None or ra == rb:
        return None, text + " (tied)"
    return ra < rb, text


def top_eigenvalue(result: Result) -> float | None:
    """Mean over batches of the largest Hessian eigenvalue (``values.largest``, else top-k max)."""
    largest = [float(v) for v in result.values.get(HessianKeys.LARGEST) or [] if finite(v)]
    if not largest:
        rows = result.values.get(HessianKeys.EIGENVALUES) or []
        largest = [max(v for v in row if finite(v)) for row in rows if any(map(finite, row))]
    return float(np.mean(largest)) if largest else None


def landscape_rise(result: Result, ring: float) -> tuple[float, float] | None:
    """``(r, mean NLL+L2 on the ring nearest ring - NLL+L2 at the centre)``, or None."""
    center = (result.values.get(LandscapeKeys.CENTER) or {}).get("loss")
    rings = [
        row
        for row in result.values.get(LandscapeKeys.RINGS) or []
        if row.get("r", 0) > 0 and finite(row.get("loss"))
    ]
    if not finite(center) or not rings:
        return None
    row = min(rings, key=lambda row: (abs(row["r"] - ring), row["r"]))
    return float(row["r"]), float(row["loss"]) - float(center)


def _rise(result: Result) -> float | None:
    got = landscape_rise(result, LANDSCAPE_RING)
    return None if got is None else got[1]


# ---- rules -----------------------------------------------------------------------------------


def check_hessian_negative(runs: Sequence[StudyRun]) -> Finding:
    """Claim 5: ViT has a larger share of negative Hessian eigenvalues than ResNet (Fig 1c)."""
    claim = "ViT has more negative Hessian eigenvalues than ResNet (non-convex losses)"
    detail = (
        "Share of negative values among the batch-wise top-k Hessian eigenvalues "
        f"(`hessian.values.{HessianKeys.EIGENVALUES}`), ViT vs ResNet runs on the same dataset "
        "and fraction (mean over runs). Holds if ViT's share exceeds ResNet's by > "
        f"{HESSIAN_NEG_MARGIN:g} at every such fraction, does not hold if at none, else "
        "inconclusive. Paper: Fig 1c, Fig 4 (docs/methods/hessian.md)."
    )
    pairs, why = family_pairs(runs, "ViT", "ResNet", "hessian", negative_share)
    if not pairs:
        return Finding(claim, INCONCLUSIVE, why, detail)
    votes = [v > r + HESSIAN_NEG_MARGIN for _, v, r in pairs]
    evidence = "; ".join(f"{key_str(k)}: ViT {v:.1%} vs ResNet {r:.1%}" for k, v, r in pairs)
    return Finding(claim, unanimous(votes), evidence, detail)


def check_hessian_small_data(runs: Sequence[StudyRun]) -> Finding:
    """Claim 6: ViT's negative eigenvalues grow with less data (Fig 1c's "ViT (6%)")."""
    claim = "ViT has more negative Hessian eigenvalues with less data"
    detail = (
        "Share of negative top-k Hessian eigenvalues of ViT runs at the smallest vs the largest "
        "data fraction of each dataset. Holds if larger at the smallest fraction for every "
        "dataset, does not hold if for none, else inconclusive. Paper: Fig 1c (ViT vs ViT (6%))."
    )
    groups = family_groups(runs, "ViT", "hessian")
    by_data: dict[str, list[tuple]] = {}
    for key, rs in groups.items():
        share = mean_of(rs, negative_share, "hessian")
        if share is not None:
            by_data.setdefault(key[0], []).append((key[1], share))
    comps = []
    for dataset, rows in sorted(by_data.items()):
        if len(rows) >= 2:
            rows.sort()
            (f_small, s_small), (f_full, s_full) = rows[0], rows[-1]
            comps.append((dataset, f_small, s_small, f_full, s_full))
    if not comps:
        why = (
            none_run("hessian", runs)
            if not any("hessian" in r.results for r in runs)
            else "needs hessian results of ViT runs at two data fractions of one dataset; have: "
            + (", ".join(map(key_str, sorted(groups))) or "no ViT run")
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    votes = [s_small > s_full for _, _, s_small, _, s_full in comps]
    evidence = "; ".join(
        f"{d}: ViT {pct(fs)} {ss:.1%} vs {pct(ff)} {sf:.1%}" for d, fs, ss, ff, sf in comps
    )
    return Finding(claim, unanimous(votes), evidence, detail)


def check_flat_landscape(runs: Sequence[StudyRun]) -> Finding:
    """Claim 7: MSAs flatten the loss landscape (Fig 1a, Fig 1c)."""
    claim = "MSAs flatten the loss landscape (ViT flatter than ResNet)"
    detail = (
        "Two measures, ViT vs ResNet runs on the same dataset and fraction: (a) the rise of "
        f"NLL + L2 from the centre to the L∞ ring nearest r = {LANDSCAPE_RING:g} "
        f"(`landscape.values.{LandscapeKeys.RINGS}`); (b) the mean over batches of the largest "
        "Hessian eigenvalue. Each comparison votes 'flatter' when ViT's number is smaller. "
        "Holds if all votes say ViT is flatter, does not hold if none does, else inconclusive. "
        "Paper: Fig 1a, Fig 1c (docs/methods/landscape.md; docs/methods/hessian.md)."
    )
    votes, parts = [], []
    pairs, why_l = family_pairs(runs, "ViT", "ResNet", "landscape", _rise)
    for key, v, r in pairs:
        votes.append(v < r)
        parts.append(
            f"{key_str(key)}: rise of NLL+L2 at r≈{LANDSCAPE_RING:g} ViT {v:.3g} vs ResNet {r:.3g}"
        )
    hpairs, why_h = family_pairs(runs, "ViT", "ResNet", "hessian", top_eigenvalue)
    for key, v, r in hpairs:
        votes.append(v < r)
        parts.append(f"{key_str(key)}: top Hessian eigenvalue ViT {v:.3g} vs ResNet {r:.3g}")
    if not votes:
        return Finding(claim, INCONCLUSIVE, f"landscape: {why_l}; hessian: {why_h}", detail)
    return Finding(claim, unanimous(votes), "; ".join(parts), detail)
