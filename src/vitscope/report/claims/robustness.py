"""Claims 10-11: robustness to frequency-based noise, and which MSAs a model needs (lesion)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...analyses.keys import LesionKeys, NoiseKeys
from ...results import Result
from ..load import StudyRun, finite
from . import samples
from .base import (
    MIN_LESION_STAGES,
    NOISE_HIGH_MIN,
    NOISE_LOW_MAX,
    Finding,
    Resample,
    by_seed,
    finding,
    is_msa,
    mean_over,
    measure,
    missing,
    none_run,
)

# ---- claim 10: noise -------------------------------------------------------------------------


def _bands(f: np.ndarray, d: np.ndarray) -> tuple[float | None, float | None]:
    low = d[(f <= NOISE_LOW_MAX + 1e-9) & np.isfinite(d)]
    high = d[(f >= NOISE_HIGH_MIN - 1e-9) & np.isfinite(d)]
    return (float(low.mean()) if low.size else None, float(high.mean()) if high.size else None)


def noise_bands(result: Result) -> tuple[float | None, float | None]:
    """Mean ΔAccuracy (%) over low (f ≤ 0.3π) and high (f ≥ 0.6π) noise-frequency bands."""
    f = np.asarray(result.values.get(NoiseKeys.FREQUENCIES) or [], float)
    d = np.asarray(
        [np.nan if v is None else v for v in result.values.get(NoiseKeys.DELTA_ACC) or []], float
    )
    n = min(len(f), len(d))
    return _bands(f[:n], d[:n])


def _band_gap(run: StudyRun, rs: Resample) -> float | None:
    """High-band minus low-band mean ΔAccuracy of one run (points), resampled images."""
    low, high = _bands(*samples.noise_deltas(run, rs))
    return None if low is None or high is None else high - low


def check_noise(runs: Sequence[StudyRun]) -> Finding:
    """Claim 10: Convs are hurt most by high-frequency noise, ViTs by low-frequency (Fig 2b)."""
    claim = "Convs are hurt most by high-frequency noise, ViTs by low-frequency noise"
    detail = (
        "Effect per family: mean ΔAccuracy over the noise bands with f ≥ "
        f"{NOISE_HIGH_MIN:g}π (high) minus that over f ≤ {NOISE_LOW_MAX:g}π (low), in points, "
        "averaged over the family's runs (`noise.arrays.correct`). The claim: ResNet's is "
        "< 0 (high-frequency noise hurts more) and ViT's > 0. Holds when both 95% intervals "
        "lie on the claimed side of 0, does not hold when both lie on the other, else "
        "inconclusive. Interval: t over seeds, or (one seed) a bootstrap over the test images "
        "(the same images for every band). Paper: Fig 2b (docs/methods/noise.md)."
    )
    have = [r for r in runs if "noise" in r.results]
    out = []
    for fam, side in (("ResNet", "less"), ("ViT", "greater")):
        at = [r for r in have if r.family == fam]
        if not at:
            continue

        def gap(rs: Sequence[StudyRun], resample: Resample, fam=fam) -> float | None:
            return mean_over(_band_gap(r, resample) for r in rs if r.family == fam)

        def context(rs: Sequence[StudyRun], fam=fam) -> str:
            bands = [noise_bands(r.results["noise"]) for r in rs if r.family == fam]
            lows = [b[0] for b in bands if b[0] is not None]
            highs = [b[1] for b in bands if b[1] is not None]
            if not lows or not highs:
                return ""
            return f"low {np.mean(lows):+.2f}, high {np.mean(highs):+.2f} points"

        m = measure(
            at, gap, label=f"{fam}: ΔAcc high band - low band (points)", unit="test images",
            side=side, fmt="+.2f", context=context,
        )  # fmt: skip
        if m is not None:
            out.append(m)
    why = ""
    if {m.label.split(":")[0] for m in out} != {"ResNet", "ViT"}:
        why = (
            none_run("noise", runs)
            if not have
            else "needs noise results with low and high bands for a ResNet and a ViT run"
        )
        return finding("noise", claim, detail, [], "; ".join([why] + [m.text() for m in out]))
    return finding("noise", claim, detail, out)


# ---- claim 11: lesion ------------------------------------------------------------------------


def stage_msas(result: Result) -> dict[int, list[int]]:
    """Stage -> the indices of its removable MSA units (lesion result)."""
    units = result.values.get(LesionKeys.UNITS, [])
    deltas = result.values.get(LesionKeys.DELTA_ACC, [])
    out: dict[int, list[int]] = {}
    for i, (u, d) in enumerate(zip(units, deltas)):
        if is_msa(u) and finite(d):
            out.setdefault(int(u.get("stage", 0)), []).append(i)
    return out


def lesion_stages(
    result: Result, deltas: Sequence[float | None] | None = None
) -> list[tuple[int, str, bool, float]]:
    """Per stage holding ≥ 2 removable MSA units: ``(stage, name of the most harmful MSA,
    whether that is the stage's last MSA, margin)``, where the margin is |ΔAcc| of the last
    MSA minus the largest |ΔAcc| of the stage's other MSAs (points; > 0: the last matters
    most). ``deltas``: resampled ΔAcc per unit; default the result's."""
    units = result.values.get(LesionKeys.UNITS, [])
    deltas = result.values.get(LesionKeys.DELTA_ACC, []) if deltas is None else deltas
    out = []
    for stage, msas in sorted(stage_msas(result).items()):
        size = {i: abs(deltas[i]) for i in msas if deltas[i] is not None}
        if len(msas) < 2 or len(size) < len(msas):
            continue
        worst = max(msas, key=lambda i: (size[i], i))  # ties: the later MSA
        margin = size[msas[-1]] - max(size[i] for i in msas[:-1])
        out.append((stage, str(units[worst].get("name", worst)), worst == msas[-1], margin))
    return out


def _stage_count(result: Result) -> int:
    return len(
        {
            u.get("stage")
            for u in result.values.get(LesionKeys.UNITS, [])
            if u.get("kind") in ("msa", "mlp", "conv")
        }
    )


def check_lesion(runs: Sequence[StudyRun]) -> Finding:
    """Claim 11: MSAs at the end of a stage matter most (lesion study, docs/methods/lesion.md)."""
    claim = "MSAs at the end of a stage matter most (removing them hurts most)"
    detail = (
        f"Lesion study (`lesion.values.{LesionKeys.DELTA_ACC}`, `{LesionKeys.UNITS}[i].stage`) "
        "of multi-stage models, in each stage with ≥ 2 MSA units: the margin |ΔAcc| of the "
        "stage's last MSA minus the largest |ΔAcc| of its other MSAs (points). Effect: the "
        "mean margin over those stages (pooled over the runs of a seed); the claim: > 0. "
        "Holds when the 95% interval lies above 0, does not hold when below, inconclusive "
        f"when it straddles 0 or with < {MIN_LESION_STAGES} stages. Single-stage models "
        "(ViT) are left out: there the middle MSAs matter most (issue #41). Interval: t over "
        "seeds, or (one seed) a bootstrap over the test images. The share of stages whose "
        "last MSA matters most, and chance, are in the evidence. Paper: docs/methods/lesion.md "
        "(Swin lesion study)."
    )
    have = [r for r in runs if "lesion" in r.results]
    if not have:
        return finding("lesion", claim, detail, [], none_run("lesion", runs))
    multi = [r for r in have if _stage_count(r.results["lesion"]) >= 2]
    multi_ids = {id(r) for r in multi}
    stages = {r.name: lesion_stages(r.results["lesion"]) for r in multi}
    n_stages = max((sum(len(stages[r.name]) for r in rs) for rs in by_seed(multi).values()),
                   default=0)  # fmt: skip
    if n_stages < MIN_LESION_STAGES:
        names = ", ".join(r.name for r in multi) or "none"
        why = (
            f"only {n_stages} stage(s) with ≥ 2 MSA units in the multi-stage models with "
            f"lesion results ({names}); need ≥ {MIN_LESION_STAGES}. A stage with one MSA "
            f"(e.g. AlterNet's) cannot tell where in a stage MSAs matter"
            f"{missing(runs, 'lesion')}"
        )
        return finding("lesion", claim, detail, [], why)

    def margin(rs: Sequence[StudyRun], resample: Resample) -> float | None:
        got = [
            m
            for r in rs
            if id(r) in multi_ids
            for *_, m in lesion_stages(r.results["lesion"], samples.lesion_deltas(r, resample))
        ]
        return float(np.mean(got)) if len(got) >= MIN_LESION_STAGES else None

    def context(rs: Sequence[StudyRun]) -> str:
        rows = [(r, stages[r.name]) for r in rs if stages.get(r.name)]
        hits = sum(end for _, st in rows for _, _, end, _ in st)
        total = sum(len(st) for _, st in rows)
        chance = np.mean(
            [1 / len(stage_msas(r.results["lesion"])[s]) for r, st in rows for s, *_ in st]
        )
        per_run = ", ".join(f"{r.name} {sum(e for _, _, e, _ in st)}/{len(st)}" for r, st in rows)
        return (
            f"the last MSA matters most in {hits}/{total} stages (chance {chance:.0%}); "
            f"per run: {per_run}"
        )

    m = measure(
        multi, margin, label="mean margin |ΔAcc| last MSA - other MSAs (points)",
        unit="test images", fmt="+.2f", context=context,
    )  # fmt: skip
    return finding("lesion", claim, detail, [m] if m else [], missing(runs, "lesion").lstrip("; "))
