"""A run's numbers under a :class:`~.base.Resample`: the point value with the identity, a
bootstrap draw otherwise (test images or mini-batches drawn with replacement).

Each function reads the per-image or per-batch values a result keeps (``docs/methods/
statistics.md``) and raises :class:`~.base.NoSamples` when a draw needs them and they are
missing (a result saved by an older vitscope); the point value then comes from the per-unit
numbers, so old studies keep their estimates, without intervals.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from ...analyses.keys import FourierKeys, HessianKeys, LandscapeKeys, LesionKeys, NoiseKeys
from ...analyses.rings import ring_index
from ...results import Result
from ..load import StudyRun, finite
from .base import NoSamples, Resample

_CACHE: dict[tuple[int, str], object] = {}


def _once(owner: object, what: str, make):
    """``make()`` computed once per loaded result (each bootstrap draw only indexes it); the
    entry goes when the result is garbage-collected, so a long process does not pin them."""
    key = (id(owner), what)
    if key not in _CACHE:
        _CACHE[key] = make()
        weakref.finalize(owner, _CACHE.pop, key, None)
    return _CACHE[key]


def _test(run: StudyRun) -> tuple:
    """The resampling domain of a run's test images: paired across runs of one dataset."""
    return ("test images", run.dataset)


def _train(run: StudyRun, what: str) -> tuple:
    """The domain of a run's augmented training batches: the same batches for every model
    trained on one subset (the analyses draw batch i of seed s alike)."""
    return (what, run.dataset, round(run.fraction, 6))


# ---- accuracy --------------------------------------------------------------------------------


def accuracy(run: StudyRun, rs: Resample) -> float | None:
    """The best epoch's test accuracy (%), over resampled test images."""
    if run.best_acc is None:
        return None
    correct = run.correct()
    if isinstance(correct, str):
        if rs.active:
            raise NoSamples(correct)
        rs(_test(run), 0)  # no per-image values: the estimate has no interval
        return 100.0 * run.best_acc
    return 100.0 * float(correct @ rs.weights(_test(run), len(correct)))


def error(run: StudyRun, rs: Resample) -> float | None:
    acc = accuracy(run, rs)
    return None if acc is None else 100.0 - acc


# ---- per-unit values (Fourier, variance) ------------------------------------------------------


def unit_values(
    run: StudyRun, analysis: str, key: str, images_key: str, rs: Resample
) -> list[float | None]:
    """``values[key]`` per unit: the mean over resampled images of ``arrays[images_key]``."""
    res = run.results[analysis]
    table = res.arrays.get(images_key)
    if table is not None and table.ndim == 2:
        table = _once(res, images_key, lambda: table.astype(float))
    if table is None or table.ndim != 2:
        if rs.active:
            raise NoSamples(
                f"{run.name}'s {analysis} result has no per-image values (`{images_key}`); "
                f"rerun `vitscope analyze {run.path} --only {analysis} --force`"
            )
        rs(_test(run), 0)
        return [float(v) if finite(v) else None for v in res.values.get(key, [])]
    means = table @ rs.weights(_test(run), table.shape[1])
    return [float(v) if np.isfinite(v) else None for v in means]


def unit_changes(
    run: StudyRun, analysis: str, key: str, images_key: str, select, rs: Resample,
    log: bool = False,
) -> list[tuple[str, float]]:  # fmt: skip
    """``(unit name, value[i] - value[i-1])`` for the units ``select`` picks (index >= 1);
    with ``log``, ``log(value[i] / value[i-1])`` (scale-free; units with a value <= 0 are
    left out)."""
    units = run.results[analysis].values.get(FourierKeys.UNITS, [])
    values = unit_values(run, analysis, key, images_key, rs)
    out = []
    for i in range(1, min(len(units), len(values))):
        a, b = values[i - 1], values[i]
        if not select(units[i]) or a is None or b is None:
            continue
        if not log:
            out.append((str(units[i].get("name", i)), b - a))
        elif a > 0 and b > 0:
            out.append((str(units[i].get("name", i)), math.log(b / a)))
    return out


# ---- Hessian (per batch) ---------------------------------------------------------------------


def _batches(run: StudyRun, rows: list, rs: Resample, what: str) -> np.ndarray:
    """Indices of resampled Hessian/landscape batches (rows of a per-batch list)."""
    return rs(_train(run, what), len(rows))


def negative_counts(res: Result) -> tuple[np.ndarray, np.ndarray]:
    """Per batch with eigenvalues: how many of its top-k are negative, and how many finite."""
    rows = [
        [v for v in (row if isinstance(row, list) else [row]) if finite(v)]
        for row in res.values.get(HessianKeys.EIGENVALUES) or []
    ]
    rows = [row for row in rows if row]
    neg = np.asarray([sum(v < 0 for v in row) for row in rows], float)
    return neg, np.asarray([len(row) for row in rows], float)


def negative_share_of(res: Result) -> float | None:
    """A Hessian result's share of negative values among all its batches' top-k eigenvalues
    (else ``values.summary.negative_fraction``)."""
    neg, count = _once(res, "negative counts", lambda: negative_counts(res))
    if len(count):
        return float(neg.sum() / count.sum())
    v = (res.values.get(HessianKeys.SUMMARY) or {}).get("negative_fraction")
    return float(v) if finite(v) else None


def negative_share(run: StudyRun, rs: Resample) -> float | None:
    """Share of negative values among the top-k Hessian eigenvalues of resampled batches."""
    res = run.results["hessian"]
    neg, count = _once(res, "negative counts", lambda: negative_counts(res))
    if not len(count):
        if rs.active:
            raise NoSamples(f"{run.name}'s hessian result has no per-batch eigenvalues")
        rs(_train(run, "hessian batches"), 0)
        return negative_share_of(res)
    idx = rs(_train(run, "hessian batches"), len(count))
    return float(neg[idx].sum() / count[idx].sum())


def largest_per_batch(res: Result) -> np.ndarray:
    """Each batch's largest Hessian eigenvalue (``values.largest``, else the top-k max)."""
    largest = [float(v) for v in res.values.get(HessianKeys.LARGEST) or [] if finite(v)]
    if not largest:
        rows = res.values.get(HessianKeys.EIGENVALUES) or []
        largest = [max(v for v in row if finite(v)) for row in rows if any(map(finite, row))]
    return np.asarray(largest, float)


def top_eigenvalue(run: StudyRun, rs: Resample) -> float | None:
    """Mean over resampled batches of the largest Hessian eigenvalue."""
    res = run.results["hessian"]
    largest = _once(res, "largest", lambda: largest_per_batch(res))
    if not len(largest):
        return None
    return float(largest[rs(_train(run, "hessian batches"), len(largest))].mean())


# ---- landscape (per batch) -------------------------------------------------------------------


def landscape_rise(run: StudyRun, ring: float, rs: Resample) -> float | None:
    """Mean NLL + L2 on the L∞ ring nearest ``ring`` minus that at the centre, over
    resampled batches (each batch's rise, then their mean). Only a landscape along random
    filter-normalised directions (Li et al., the paper's Fig 1a) is read: one drawn along the
    training trajectory or the Hessian's eigenvectors (``landscape.directions``) rises for
    other reasons, and gives None."""
    res = run.results["landscape"]
    if (res.values.get("directions") or {}).get("kind", "random") != "random":
        return None
    rise = _once(res, f"rise {ring}", lambda: _batch_rises(res, ring))
    if isinstance(rise, str):
        if rs.active:
            raise NoSamples(f"{run.name}'s landscape result {rise}")
        rs(_train(run, "landscape batches"), 0)
        return _rise_from_rings(res, ring)
    if rise is None:
        return None
    return float(rise[rs(_train(run, "landscape batches"), len(rise))].mean())


def _batch_rises(res: Result, ring: float) -> np.ndarray | str | None:
    """Each batch's rise of NLL + L2 at the ring nearest ``ring`` (None: undefined), or why
    there are no per-batch values."""
    per_batch = res.arrays.get(LandscapeKeys.NLL_BATCHES)
    xs, ys = res.arrays.get(LandscapeKeys.XS), res.arrays.get(LandscapeKeys.YS)
    l2 = res.arrays.get(LandscapeKeys.L2)
    if any(a is None for a in (per_batch, xs, ys, l2)) or per_batch.ndim != 3:
        return "has no per-batch NLL"
    if not np.isfinite(per_batch).all(axis=2).any():
        return "has no per-batch NLL (its points were saved before they were kept)"
    rings = ring_index(xs, ys)
    radii = sorted({int(k) for k in np.unique(rings) if k > 0})
    if not radii:
        return None
    k = min(radii, key=lambda k: (abs(0.1 * k - ring), k))
    loss = per_batch + l2[..., None]  # (ys, xs, batches)
    j0, i0 = len(ys) // 2, len(xs) // 2
    on_ring = loss[rings == k]  # (points, batches)
    ok = np.isfinite(on_ring).all(axis=1)
    if not ok.any() or not np.isfinite(loss[j0, i0]).all():
        return None
    return on_ring[ok].mean(axis=0) - loss[j0, i0]


def ring_rise(result: Result, ring: float) -> tuple[float, float] | None:
    """``(r, mean NLL+L2 on the ring nearest ring - NLL+L2 at the centre)`` from the saved
    ring means (``landscape.values.rings``), or None."""
    center = (result.values.get(LandscapeKeys.CENTER) or {}).get("loss")
    rows = [
        row
        for row in result.values.get(LandscapeKeys.RINGS) or []
        if row.get("r", 0) > 0 and finite(row.get("loss"))
    ]
    if not finite(center) or not rows:
        return None
    row = min(rows, key=lambda row: (abs(row["r"] - ring), row["r"]))
    return float(row["r"]), float(row["loss"]) - float(center)


def _rise_from_rings(res: Result, ring: float) -> float | None:
    got = ring_rise(res, ring)
    return None if got is None else got[1]


# ---- noise and lesion (per image) ------------------------------------------------------------


def row_accuracies(run: StudyRun, analysis: str, key: str, rs: Resample) -> np.ndarray | None:
    """The accuracy (a fraction) of each row of per-image correctness (row 0: clean/intact)
    over resampled test images; None: not kept."""
    res = run.results[analysis]
    table = res.arrays.get(key)
    if table is None or table.ndim != 2:
        if rs.active:
            raise NoSamples(f"{run.name}'s {analysis} result has no per-image correctness")
        rs(_test(run), 0)
        return None
    table = _once(res, key, lambda: table.astype(float))
    return table @ rs.weights(_test(run), table.shape[1])


def noise_deltas(run: StudyRun, rs: Resample) -> tuple[np.ndarray, np.ndarray]:
    """``(band centres, ΔAccuracy in points)``, over resampled test images."""
    res = run.results["noise"]
    f = np.asarray(res.values.get(NoiseKeys.FREQUENCIES) or [], float)
    acc = row_accuracies(run, "noise", NoiseKeys.CORRECT, rs)
    if acc is not None and len(acc) == len(f) + 1:
        return f, 100.0 * (acc[1:] - acc[0])
    d = [np.nan if v is None else v for v in res.values.get(NoiseKeys.DELTA_ACC) or []]
    n = min(len(f), len(d))
    return f[:n], np.asarray(d[:n], float)


def lesion_deltas(run: StudyRun, rs: Resample) -> list[float | None]:
    """ΔAccuracy (points) without each unit (None: not removed), over resampled images."""
    res = run.results["lesion"]
    deltas = list(res.values.get(LesionKeys.DELTA_ACC) or [])
    removed = res.values.get(LesionKeys.REMOVED)
    acc = row_accuracies(run, "lesion", LesionKeys.CORRECT, rs)
    if acc is None or removed is None or len(acc) != len(removed) + 1:
        if rs.active:
            raise NoSamples(f"{run.name}'s lesion result has no per-image correctness")
        return [float(d) if finite(d) else None for d in deltas]
    acc = 100.0 * acc
    out: list[float | None] = [None] * len(deltas)
    for j, unit in enumerate(removed, 1):
        out[int(unit)] = float(acc[j] - acc[0])
    return out
