"""Shape or texture, measured directly: two claims, declared by the ``filtered``, ``shuffle``
and ``cueconflict`` analyses. Numpy only.

* ``shape`` (``filtered``, ``cueconflict``): MSA models rely more on shape than Conv models.
  Park & Kim (2022, §2.2) infer it from the Fourier analysis (low frequencies carry shape,
  high frequencies texture); here it is read from low-pass filtered images (texture removed,
  shape kept: a shape-reliant model keeps more of its accuracy) and, where the user has them,
  cue-conflict images (Geirhos et al., ICLR 2019: the shape bias).
* ``shuffle`` (``shuffle``): MSA models keep more of their accuracy than Conv models when the
  image's patches are shuffled (Naseer et al., NeurIPS 2021, Fig 5). Shuffling destroys global
  shape and keeps local texture, so this is *not* a test of shape reliance (a model that read
  only shape would lose everything); it measures how little a model depends on where its
  patches are, and Naseer et al. found ViTs the less dependent. It is a row of its own so the
  two readings are not mixed into one verdict.

Both compare models of different clean accuracy, so each reads the share of a run's accuracy
*above chance* that survives the perturbation (its *retention*),

    retention = mean over conditions of (acc_condition - chance) / (acc_clean - chance),

chance being the commonest test label's share (10% for balanced 10-class data). AlterNet is
claimed in between or above: AlterNet - ResNet > 0 as well (``docs/methods/shape.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...analyses.keys import CueConflictKeys, FilteredKeys, ShuffleKeys
from ...analyses.shape_bias import shape_bias_counts
from ..load import StudyRun, finite
from . import samples
from .base import Finding, Measure, NoSamples, Resample, finding, key_str, mean_over, measure

MSA_FAMILIES = ("ViT", "PiT", "Swin")
BASELINE = "ResNet"
MIN_ABOVE_CHANCE = 5.0  # points: a run whose clean accuracy is closer to chance has no retention


def _retention(acc: np.ndarray, rows: Sequence[int], chance: float) -> float | None:
    """Mean over ``rows`` of ``(acc[row] - chance) / (acc[0] - chance)``; accuracies in %."""
    gap = acc[0] - chance
    if not rows or gap < MIN_ABOVE_CHANCE:
        return None
    return float(np.mean([(acc[k] - chance) / gap for k in rows]))


def _accuracies(run: StudyRun, name: str, key: str, listed: np.ndarray, rs: Resample):
    """Row accuracies (%) over resampled test images; the stored ones when the result kept no
    per-image values and nothing resamples."""
    acc = samples.row_accuracies(run, name, key, rs)
    return listed if acc is None else 100.0 * acc


def low_pass_retention(run: StudyRun, rs: Resample) -> float | None:
    """Retention over the low-pass cut-offs of the ``filtered`` result."""
    v = run.results["filtered"].values
    n = len(v.get(FilteredKeys.CUTOFFS) or [])
    chance = v.get(FilteredKeys.CHANCE_ACC)
    if not n or not finite(chance) or not finite(v.get(FilteredKeys.CLEAN_ACC)):
        return None
    listed = np.asarray([v[FilteredKeys.CLEAN_ACC], *v[FilteredKeys.LOW_ACC]], float)
    acc = _accuracies(run, "filtered", FilteredKeys.CORRECT, listed, rs)
    return _retention(acc, list(range(1, n + 1)), float(chance))


def shuffle_retention(run: StudyRun, rs: Resample) -> float | None:
    """Retention over the grids g > 1 of the ``shuffle`` result (row 0: g = 1, intact)."""
    v = run.results["shuffle"].values
    grids = list(v.get(ShuffleKeys.GRIDS) or [])
    chance = v.get(ShuffleKeys.CHANCE_ACC)
    if not grids or grids[0] != 1 or not finite(chance):
        return None
    listed = np.asarray(v[ShuffleKeys.ACCURACY], float)
    acc = _accuracies(run, "shuffle", ShuffleKeys.CORRECT, listed, rs)
    return _retention(acc, list(range(1, len(grids))), float(chance))


def shape_bias(run: StudyRun, rs: Resample) -> float | None:
    """The cue-conflict shape bias over resampled images (the same draw for every run that
    read the same folder)."""
    res = run.results["cueconflict"]
    arrays = [res.arrays.get(k) for k in (CueConflictKeys.SHAPE, CueConflictKeys.TEXTURE,
                                          CueConflictKeys.DECISION)]  # fmt: skip
    if any(a is None for a in arrays):
        if rs.active:
            raise NoSamples(f"{run.name}'s cueconflict result has no per-image decisions")
        rs(("cue-conflict images", str(res.config.get("source"))), 0)
        v = res.values.get(CueConflictKeys.SHAPE_BIAS)
        return float(v) if finite(v) else None
    shape, texture, decision = (np.asarray(a, int) for a in arrays)
    idx = rs(("cue-conflict images", str(res.config.get("source"))), len(shape))
    shape, texture, decision = shape[idx], texture[idx], decision[idx]
    k, t, _, _ = shape_bias_counts(shape, texture, decision)
    return k / (k + t) if k + t else None


#: the shape claim's tests: (analysis, what is measured, the run's number)
#: and what a one-seed bootstrap resamples
SHAPE_TESTS: tuple[tuple[str, str, Callable[[StudyRun, Resample], float | None], str], ...] = (
    ("filtered", "low-pass retention", low_pass_retention, "test images"),
    ("cueconflict", "shape bias", shape_bias, "cue-conflict images"),
)
SHUFFLE_TESTS = (("shuffle", "patch-shuffle retention", shuffle_retention, "test images"),)
RETENTION = (
    "*retention*: the mean over the conditions of (accuracy - chance) / (clean accuracy - "
    "chance), chance the commonest test label's share, so models of different clean accuracy "
    f"compare (undefined within {MIN_ABOVE_CHANCE:g} points of chance)"
)
INTERVAL = (
    "Interval: t over seeds, or (one seed) a paired bootstrap over the test images (the same "
    "images for every model) or the cue-conflict images."
)


def check_shape_reliance(runs: Sequence[StudyRun]) -> Finding:
    """MSA models keep more of their accuracy than ResNet on low-pass images and are more
    shape-biased on cue-conflict images; AlterNet is at or above ResNet."""
    claim = (
        "MSA models rely more on shape than Conv models: ViT/PiT/Swin keep more accuracy than "
        "ResNet on low-pass images (and are more shape-biased on cue-conflict images), "
        "AlterNet in between or above ResNet"
    )
    detail = (
        "Per dataset and fraction, for each family beside ResNet (ViT, PiT, Swin, AlterNet): "
        "its number minus ResNet's, for each test both ran: low-pass " + RETENTION + ", over "
        "the cut-offs of `filtered`; the cue-conflict shape bias (`cueconflict`, when run). "
        "The claim: every difference > 0. " + INTERVAL + " Paper: §2.2 infers it from Fig 2; "
        "Geirhos et al. 2019 (docs/methods/shape.md)."
    )
    return _check(runs, "shape", claim, detail, SHAPE_TESTS)


def check_shuffle(runs: Sequence[StudyRun]) -> Finding:
    """MSA models keep more of their accuracy than ResNet on patch-shuffled images; AlterNet
    is at or above ResNet."""
    claim = (
        "MSA models keep more accuracy than Conv models on patch-shuffled images "
        "(ViT/PiT/Swin above ResNet, AlterNet in between or above)"
    )
    detail = (
        "Per dataset and fraction, for each family beside ResNet (ViT, PiT, Swin, AlterNet): "
        "its patch-shuffle " + RETENTION + ", over the grids g > 1 of `shuffle`, minus "
        "ResNet's. The claim: every difference > 0. " + INTERVAL + " Not a test of shape "
        "reliance (shuffling removes shape). Naseer et al. 2021 Fig 5 (docs/methods/shape.md)."
    )
    return _check(runs, "shuffle", claim, detail, SHUFFLE_TESTS)


def _check(runs: Sequence[StudyRun], ident: str, claim: str, detail: str, tests) -> Finding:
    names = [t[0] for t in tests]
    have = [r for r in runs if any(n in r.results for n in names)]
    if not have:
        return finding(ident, claim, detail, [], f"no {' or '.join(names)} result in any run "
                       "(not run)")  # fmt: skip
    measures: list[Measure] = []
    notes: list[str] = []
    for key in sorted({r.key for r in have}):
        at = [r for r in have if r.key == key]
        others = [f for f in (*MSA_FAMILIES, "AlterNet") if any(r.family == f for r in at)]
        if not any(r.family == BASELINE for r in at) or not others:
            notes.append(f"{key_str(key)}: needs a ResNet and an MSA model or AlterNet")
            continue
        for name, what, number, unit in tests:
            ran = [r for r in at if name in r.results]
            for fam in others:
                pair = [r for r in ran if r.family in (fam, BASELINE)]
                if {r.family for r in pair} != {fam, BASELINE}:
                    continue
                m = measure(
                    pair, _difference(number, fam), label=f"{key_str(key)}: {what} {fam} - "
                    f"{BASELINE}", unit=unit, fmt="+.3f", context=_context(number, fam),
                )  # fmt: skip
                if m is not None:
                    measures.append(m)
                else:
                    notes.append(f"{key_str(key)}: {what} of {fam} or {BASELINE} undefined "
                                 f"(clean accuracy within {MIN_ABOVE_CHANCE:g} points of "
                                 "chance, or no decision)")  # fmt: skip
    return finding(ident, claim, detail, measures, "; ".join(notes))


def _difference(number, fam: str):
    def effect(rs: Sequence[StudyRun], resample: Resample) -> float | None:
        a = mean_over(number(r, resample) for r in rs if r.family == fam)
        b = mean_over(number(r, resample) for r in rs if r.family == BASELINE)
        return None if a is None or b is None else a - b

    return effect


def _context(number, fam: str):
    def text(rs: Sequence[StudyRun]) -> str:
        vals = {f: mean_over(number(r, Resample()) for r in rs if r.family == f)
                for f in (fam, BASELINE)}  # fmt: skip
        return ", ".join(f"{f} {v:.3f}" for f, v in vals.items() if v is not None)

    return text
