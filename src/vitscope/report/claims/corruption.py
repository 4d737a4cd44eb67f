"""The claim of the ``corruption`` analysis (declared in its ``Analysis.claims``): robustness
tracks accuracy, and AlterNet is the most robust (Park & Kim 2022, poster Fig 8c: on
CIFAR-100-C, Alter-ResNet 84.02% clean / 66.67% robust against ResNet's 82.48 / 64.97 and
ViT's 66.51 / 51.93). Numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...analyses.keys import CorruptionKeys as Keys
from ..load import StudyRun, finite
from . import samples
from .accuracy import rank_correlation
from .base import (
    MIN_OVERFIT_RUNS,
    Finding,
    Measure,
    Resample,
    finding,
    key_str,
    mean_over,
    measure,
    none_run,
)

NAME = "corruption"


def robustness(run: StudyRun, rs: Resample) -> float | None:
    """The mean accuracy over every corruption and severity (%), over resampled test images
    (the stored ``mean_acc`` when the result kept no per-image values and nothing resamples)."""
    acc = samples.row_accuracies(run, NAME, Keys.CORRECT, rs)
    if acc is None:
        v = run.results[NAME].values.get(Keys.MEAN_ACC)
        return float(v) if finite(v) else None
    return 100.0 * float(np.mean(acc[1:])) if len(acc) > 1 else None


def check_robustness(runs: Sequence[StudyRun]) -> Finding:
    """Robustness rises with accuracy across runs, and AlterNet is the most robust model."""
    claim = "Robustness (mean corrupted accuracy) tracks accuracy; AlterNet is the most robust"
    detail = (
        "Two effects, both must hold. (a) Spearman's ρ across the runs of each dataset "
        "between the clean accuracy and the robustness (the mean accuracy over the 15 "
        "corruptions x 5 severities, `corruption.values.mean_acc`), Fisher z, n = runs, needs "
        f"≥ {MIN_OVERFIT_RUNS}; the claim: ρ > 0. (b) Per dataset and fraction, AlterNet's "
        "robustness minus the highest robustness of the other families, in points; the "
        "claim: > 0. Interval: t over seeds, or (one seed) a paired bootstrap over the "
        "corrupted test images (`corruption.arrays.correct`: the same images for every "
        "model). Paper: poster Fig 8c (docs/methods/corruption.md)."
    )
    have = [r for r in runs if NAME in r.results]
    if not have:
        return finding("robustness", claim, detail, [], none_run(NAME, runs))
    rhos: list[Measure] = []
    margins: list[Measure] = []
    notes: list[str] = []
    by_data: dict[str, list[StudyRun]] = {}
    for r in have:
        by_data.setdefault(r.dataset, []).append(r)
    for dataset, rs in sorted(by_data.items()):
        pairs = [(r, r.results[NAME].values.get(Keys.CLEAN_ACC),
                  r.results[NAME].values.get(Keys.MEAN_ACC)) for r in rs]  # fmt: skip
        pairs = [(r, c, m) for r, c, m in pairs if finite(c) and finite(m)]
        listing = ", ".join(f"{r.name} {c:.1f}/{m:.1f}%" for r, c, m in pairs)
        got = rank_correlation(
            f"{dataset}: ρ(clean accuracy, robustness)", [c for _, c, _ in pairs],
            [m for _, _, m in pairs], f"clean/robust: {listing}",
        )  # fmt: skip
        if isinstance(got, str):
            notes.append(f"{dataset}: {got}")
        else:
            rhos.append(got)
    for key in sorted({r.key for r in have}):
        at = [r for r in have if r.key == key]
        others = sorted({r.family for r in at} - {"AlterNet"})
        if not any(r.family == "AlterNet" for r in at) or not others:
            continue

        def margin(rs: Sequence[StudyRun], resample: Resample, others=others) -> float | None:
            alter = mean_over(robustness(r, resample) for r in rs if r.family == "AlterNet")
            best = [
                mean_over(robustness(r, resample) for r in rs if r.family == fam) for fam in others
            ]
            best = [b for b in best if b is not None]
            return None if alter is None or not best else alter - max(best)

        def context(rs: Sequence[StudyRun], others=others) -> str:
            fams = ["AlterNet", *others]
            vals = {f: mean_over(robustness(r, Resample()) for r in rs if r.family == f)
                    for f in fams}  # fmt: skip
            return ", ".join(f"{f} {v:.1f}%" for f, v in vals.items() if v is not None)

        m = measure(
            at, margin, label=f"{key_str(key)}: robustness AlterNet - best other (points)",
            unit="test images", side="greater", fmt="+.2f", context=context,
        )  # fmt: skip
        if m is not None:
            margins.append(m)
    if not margins:
        notes.append("needs corruption results of AlterNet and another family at one fraction")
    if not rhos or not margins:  # both effects are the claim: one alone is inconclusive
        texts = [m.text() for m in (*rhos, *margins)]
        return finding("robustness", claim, detail, [], "; ".join(texts + notes))
    return finding("robustness", claim, detail, [*rhos, *margins], "; ".join(notes))
