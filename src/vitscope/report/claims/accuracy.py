"""Claims 8-9: no overfitting (test error vs training NLL), AlterNet vs ResNet accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...analyses.keys import OverfittingKeys
from ..load import StudyRun, finite
from ..stats import spearman_interval
from . import samples
from .base import (
    LEVEL,
    MIN_OVERFIT_RUNS,
    Finding,
    Measure,
    Resample,
    family_keys,
    finding,
    key_str,
    mean_over,
    measure,
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


def rank_correlation(label: str, x: Sequence[float], y: Sequence[float], context: str):
    """Spearman's ρ of ``x`` and ``y`` across runs with its Fisher-z interval (n = runs) as a
    :class:`Measure` whose claim is ρ > 0, or why it is undefined (a text)."""
    if len(x) < MIN_OVERFIT_RUNS:
        return f"{len(x)} run(s)"
    if len(set(x)) < 2 or len(set(y)) < 2:
        return "ρ undefined (constant values)"
    est = spearman_interval(x, y, level=LEVEL, unit="runs")
    return Measure(label, est, 0.0, "greater", "+.2f", context=context)


def check_no_overfitting(runs: Sequence[StudyRun]) -> Finding:
    """Claim 8: lower training NLL goes with lower test error (Fig 1b): no overfitting."""
    claim = "ViT does not overfit: lower training NLL goes with lower test error"
    detail = (
        "Effect: Spearman's ρ, across the runs of each dataset (every model, fraction and "
        "seed), between the training NLL on augmented data (`overfitting.values."
        f"{OverfittingKeys.TRAIN_NLL}`; else the last `train_nll` of metrics.jsonl) and the "
        "test error of the best epoch. Holds when every dataset's 95% interval (Fisher z, "
        f"n = runs, needs ≥ {MIN_OVERFIT_RUNS}) lies above 0, does not hold when every one "
        "lies below, else inconclusive. Paper: Fig 1b (docs/methods/overfitting.md)."
    )
    pts = overfit_points(runs)
    by_data: dict[str, list[OverfitPoint]] = {}
    for p in pts:
        by_data.setdefault(p.run.dataset, []).append(p)
    out, skipped = [], []
    for dataset, ps in sorted(by_data.items()):
        n_fb = sum(p.source == "metrics" for p in ps)
        fb = f"{n_fb} train NLL from metrics.jsonl; " if n_fb else ""
        pairs = ", ".join(f"{p.run.name} {p.train_nll:.3g}/{p.test_error:.1f}%" for p in ps)
        got = rank_correlation(
            f"{dataset}: ρ(train NLL, test error)", [p.train_nll for p in ps],
            [p.test_error for p in ps], f"{fb}NLL/error: {pairs}",
        )  # fmt: skip
        if isinstance(got, str):
            skipped.append(f"{dataset}: {got}")
        else:
            out.append(got)
    why = ""
    if not out:
        why = (
            f"needs ≥ {MIN_OVERFIT_RUNS} runs of one dataset with a test accuracy and a "
            f"training NLL; have {len(pts)}" + (f" ({'; '.join(skipped)})" if skipped else "")
        )
    return finding("no-overfitting", claim, detail, out, why)


# ---- claim 9: AlterNet -----------------------------------------------------------------------


def accuracy_difference(
    runs: Sequence[StudyRun], pick_a, pick_b, label: str, side: str = "greater", error=False
) -> Measure | None:
    """Mean test accuracy (or error) of the runs ``pick_a`` selects minus ``pick_b``'s, in
    points, paired over the test images (the same draw for every run of a dataset)."""
    value = samples.error if error else samples.accuracy

    def of(rs, pick, resample):
        return mean_over(value(r, resample) for r in rs if pick(r) and r.best_acc is not None)

    def diff(rs: Sequence[StudyRun], resample: Resample) -> float | None:
        a, b = of(rs, pick_a, resample), of(rs, pick_b, resample)
        return None if a is None or b is None else a - b

    def context(rs: Sequence[StudyRun]) -> str:
        a, b = of(rs, pick_a, Resample()), of(rs, pick_b, Resample())
        what = "error" if error else "accuracy"
        return f"{what} {a:.2f}% vs {b:.2f}%" if a is not None and b is not None else ""

    return measure(runs, diff, label=label, unit="test images", side=side, fmt="+.2f",
                   context=context)  # fmt: skip


def check_alternet(runs: Sequence[StudyRun]) -> Finding:
    """Claim 9: AlterNet is more accurate than ResNet (84.02% vs 82.48% on CIFAR-100:
    ``docs/methods/alternet.md``, ``docs/methods/paper-numbers.md``)."""
    claim = "AlterNet is more accurate than ResNet"
    detail = (
        "Effect: best-epoch test accuracy of AlterNet minus ResNet, in points, per dataset and "
        "fraction (mean over the runs of a seed). Holds when every 95% interval lies above 0, "
        "does not hold when every one lies below, else inconclusive. Interval: t over seeds, "
        "or (one seed) a paired bootstrap over the test images (`predictions.npz` of each run). "
        "Paper: docs/methods/alternet.md; docs/methods/paper-numbers.md (CIFAR-100: 84.02% vs "
        "82.48%)."
    )
    have = [r for r in runs if r.best_acc is not None]
    keys, why = family_keys(have, ("AlterNet", "ResNet"), None)
    out = []
    for key in keys:
        m = accuracy_difference(
            [r for r in have if r.key == key],
            lambda r: r.family == "AlterNet",
            lambda r: r.family == "ResNet",
            f"{key_str(key)}: accuracy AlterNet - ResNet (points)",
        )
        if m is not None:
            out.append(m)
    if why:
        why = why.replace("needs runs of", "needs runs (with metrics.jsonl) of")
    return finding("alternet", claim, detail, out, why)
