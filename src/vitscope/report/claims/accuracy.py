"""Claims 8-9: no overfitting (test error vs training NLL), AlterNet vs ResNet accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...analyses.keys import OverfittingKeys
from ..load import StudyRun, finite
from .base import (
    ALTERNET_MARGIN,
    INCONCLUSIVE,
    MIN_OVERFIT_RUNS,
    OVERFIT_RHO_MIN,
    Finding,
    key_str,
    unanimous,
)


def best_error(run: StudyRun) -> float | None:
    """Best test error in percent."""
    return None if run.best_acc is None else 100 * (1 - run.best_acc)


# ---- claim 8: overfitting --------------------------------------------------------------------


@dataclass(frozen=True)
class OverfitPoint:
    """One run in the test-error vs training-NLL plane (Fig 1b)."""

    run: StudyRun
    train_nll: float
    source: str  # "overfitting" (augmented train data, eval mode) or "metrics" (training loop)
    test_error: float  # %, of the best epoch


def overfit_point(run: StudyRun) -> OverfitPoint | None:
    """The run's augmented training NLL (``overfitting`` result, else metrics.jsonl) and error."""
    acc = run.best_acc
    if acc is None:
        return None
    res = run.results.get("overfitting")
    if res is not None and finite(res.values.get(OverfittingKeys.TRAIN_NLL)):
        nll, source = float(res.values[OverfittingKeys.TRAIN_NLL]), "overfitting"
    else:
        last = run.last("train_nll")
        if last is None:
            return None
        nll, source = last, "metrics"
    return OverfitPoint(run, nll, source, 100.0 * (1.0 - acc))


def overfit_points(runs: Sequence[StudyRun]) -> list[OverfitPoint]:
    return [p for p in map(overfit_point, runs) if p is not None]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None if undefined."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = a.argsort(kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # ties share their mean rank
        ranks[a == v] = ranks[a == v].mean()
    return ranks


def check_no_overfitting(runs: Sequence[StudyRun]) -> Finding:
    """Claim 8: lower training NLL goes with lower test error (Fig 1b): no overfitting."""
    claim = "ViT does not overfit: lower training NLL goes with lower test error"
    detail = (
        "Spearman rank correlation, across the runs of each dataset, between the training NLL "
        f"on augmented data (`overfitting.values.{OverfittingKeys.TRAIN_NLL}`; else the last "
        "`train_nll` of metrics.jsonl) and the test error of the best epoch. Holds if ρ > "
        f"{OVERFIT_RHO_MIN:g} for every dataset with ≥ {MIN_OVERFIT_RUNS} runs, does not hold if "
        "ρ ≤ that for every one, else inconclusive. Paper: Fig 1b (docs/methods/overfitting.md)."
    )
    pts = overfit_points(runs)
    by_data: dict[str, list[OverfitPoint]] = {}
    for p in pts:
        by_data.setdefault(p.run.dataset, []).append(p)
    votes, parts = [], []
    for dataset, ps in sorted(by_data.items()):
        if len(ps) < MIN_OVERFIT_RUNS:
            continue
        rho = spearman([p.train_nll for p in ps], [p.test_error for p in ps])
        if rho is None:
            parts.append(f"{dataset}: ρ undefined (constant values)")
            continue
        votes.append(rho > OVERFIT_RHO_MIN)
        n_fb = sum(p.source == "metrics" for p in ps)
        fb = f", {n_fb} train NLL from metrics.jsonl" if n_fb else ""
        pairs = ", ".join(f"{p.run.name} {p.train_nll:.3g}/{p.test_error:.1f}%" for p in ps)
        parts.append(f"{dataset}: ρ = {rho:+.2f} over {len(ps)} runs{fb} (NLL/error: {pairs})")
    if not votes:
        why = (
            f"needs ≥ {MIN_OVERFIT_RUNS} runs of one dataset with a test accuracy and a training "
            f"NLL; have {len(pts)} ({', '.join(f'{d}: {len(p)}' for d, p in by_data.items())})"
        )
        return Finding(claim, INCONCLUSIVE, "; ".join(parts + [why]), detail)
    return Finding(claim, unanimous(votes), "; ".join(parts), detail)


# ---- claim 9: AlterNet -----------------------------------------------------------------------


def check_alternet(runs: Sequence[StudyRun]) -> Finding:
    """Claim 9: AlterNet is at least as accurate as ResNet (84.02% vs 82.48% on CIFAR-100:
    ``docs/methods/alternet.md``, ``docs/methods/paper-numbers.md``)."""
    claim = "AlterNet is at least as accurate as ResNet"
    detail = (
        "Best test accuracy (metrics.jsonl) of AlterNet vs ResNet runs on the same dataset and "
        f"fraction (best over runs). Holds if AlterNet ≥ ResNet - {ALTERNET_MARGIN:g} points at "
        "every such fraction, does not hold if at none, else inconclusive. Paper: "
        "docs/methods/alternet.md; docs/methods/paper-numbers.md "
        "(CIFAR-100: 84.02% vs 82.48%)."
    )
    best: dict[tuple, dict[str, float]] = {}
    for r in runs:
        if r.family in ("AlterNet", "ResNet") and r.best_acc is not None:
            d = best.setdefault(r.key, {})
            d[r.family] = max(d.get(r.family, 0.0), 100 * r.best_acc)
    pairs = [(k, d["AlterNet"], d["ResNet"]) for k, d in sorted(best.items()) if len(d) == 2]
    if not pairs:
        have = {
            fam: sorted(key_str(k) for k, d in best.items() if fam in d)
            for fam in ("AlterNet", "ResNet")
        }
        why = (
            "needs an AlterNet and a ResNet run (with metrics.jsonl) on the same dataset and "
            f"fraction; AlterNet: {', '.join(have['AlterNet']) or 'none'}; ResNet: "
            f"{', '.join(have['ResNet']) or 'none'}"
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    votes = [a >= r - ALTERNET_MARGIN for _, a, r in pairs]
    evidence = "; ".join(f"{key_str(k)}: AlterNet {a:.2f}% vs ResNet {r:.2f}%" for k, a, r in pairs)
    return Finding(claim, unanimous(votes), evidence, detail)
