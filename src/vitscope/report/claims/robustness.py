"""Claims 10-11: robustness to frequency-based noise, and which MSAs a model needs (lesion)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...analyses.keys import LesionKeys, NoiseKeys
from ...results import Result
from ..load import StudyRun, finite
from .base import (
    FAILS,
    FAILS_SHARE,
    HOLDS,
    HOLDS_SHARE,
    INCONCLUSIVE,
    MIN_LESION_STAGES,
    NOISE_HIGH_MIN,
    NOISE_LOW_MAX,
    Finding,
    by_share,
    is_msa,
    missing,
    none_run,
)

# ---- claim 10: noise -------------------------------------------------------------------------


def noise_bands(result: Result) -> tuple[float | None, float | None]:
    """Mean ΔAccuracy (%) over low (f ≤ 0.3π) and high (f ≥ 0.6π) noise-frequency bands."""
    f = np.asarray(result.values.get(NoiseKeys.FREQUENCIES) or [], float)
    d = np.asarray(
        [np.nan if v is None else v for v in result.values.get(NoiseKeys.DELTA_ACC) or []], float
    )
    n = min(len(f), len(d))
    f, d = f[:n], d[:n]
    low, high = (
        d[(f <= NOISE_LOW_MAX + 1e-9) & np.isfinite(d)],
        d[(f >= NOISE_HIGH_MIN - 1e-9) & np.isfinite(d)],
    )
    return (float(low.mean()) if low.size else None, float(high.mean()) if high.size else None)


def check_noise(runs: Sequence[StudyRun]) -> Finding:
    """Claim 10: Convs are hurt most by high-frequency noise, ViTs by low-frequency (Fig 2b)."""
    claim = "Convs are hurt most by high-frequency noise, ViTs by low-frequency noise"
    detail = (
        "Mean ΔAccuracy over noise bands with f ≥ "
        f"{NOISE_HIGH_MIN:g}π (high) and f ≤ {NOISE_LOW_MAX:g}π (low), averaged over the runs "
        "of a family (`noise.values`). Holds if ResNet's high-band drop is larger than its "
        "low-band drop and ViT's low-band drop larger than its high-band drop; does not hold if "
        "both are the other way round; else inconclusive. Paper: Fig 2b (docs/methods/noise.md)."
    )
    fams: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        res = r.results.get("noise")
        if res is None:
            continue
        low, high = noise_bands(res)
        if low is not None and high is not None:
            fams.setdefault(r.family, []).append((low, high))
    means = {fam: tuple(np.mean(v, axis=0)) for fam, v in fams.items()}
    parts = [f"{fam}: low {lo:+.2f}, high {hi:+.2f} points" for fam, (lo, hi) in means.items()]
    if "ResNet" not in means or "ViT" not in means:
        why = (
            none_run("noise", runs)
            if not any("noise" in r.results for r in runs)
            else "needs noise results with low and high bands for a ResNet and a ViT run"
        )
        return Finding(claim, INCONCLUSIVE, "; ".join([why] + parts), detail)
    conv_ok = means["ResNet"][1] < means["ResNet"][0]
    vit_ok = means["ViT"][0] < means["ViT"][1]
    verdict = HOLDS if conv_ok and vit_ok else FAILS if not (conv_ok or vit_ok) else INCONCLUSIVE
    return Finding(claim, verdict, "; ".join(parts), detail)


# ---- claim 11: lesion ------------------------------------------------------------------------


def lesion_stages(result: Result) -> list[tuple[int, str, bool]]:
    """``(stage, name of the most harmful MSA, whether it is the stage's last MSA)`` per stage
    holding ≥ 2 removable MSA units whose |ΔAcc| are not all equal."""
    units = result.values.get(LesionKeys.UNITS, [])
    deltas = result.values.get(LesionKeys.DELTA_ACC, [])
    stages: dict[int, list[tuple[int, float]]] = {}
    for i, (u, d) in enumerate(zip(units, deltas)):
        if is_msa(u) and finite(d):
            stages.setdefault(int(u.get("stage", 0)), []).append((i, float(d)))
    out = []
    for stage, msas in sorted(stages.items()):
        size = [abs(d) for _, d in msas]
        if len(msas) < 2 or max(size) == min(size):  # no MSA stands out: nothing to tell
            continue
        worst = [i for i, d in msas if abs(d) == max(size)]
        out.append((stage, str(units[worst[-1]].get("name", worst[-1])), msas[-1][0] in worst))
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
        "of multi-stage models: in each stage with ≥ 2 MSA units, is the MSA whose removal "
        "changes accuracy most (largest |ΔAcc|) the stage's last MSA? Holds if in ≥ "
        f"{HOLDS_SHARE:.0%} of such stages, does not hold if in ≤ {FAILS_SHARE:.0%}, "
        f"inconclusive in between or with < {MIN_LESION_STAGES} stages. Single-stage models "
        "(ViT) are left out: there the middle MSAs matter most (issue #41). Paper: "
        "docs/methods/lesion.md (Swin "
        "lesion study)."
    )
    have = [r for r in runs if "lesion" in r.results]
    if not have:
        return Finding(claim, INCONCLUSIVE, none_run("lesion", runs), detail)
    hits, chance, per_run = [], [], []
    for r in have:
        res = r.results["lesion"]
        if _stage_count(res) < 2:
            continue
        stages = lesion_stages(res)
        if not stages:
            continue
        k = sum(end for _, _, end in stages)
        hits += [end for _, _, end in stages]
        per_run.append(f"{r.name} {k}/{len(stages)}")
        units = res.values[LesionKeys.UNITS]
        for stage, _, _ in stages:
            chance.append(1 / sum(is_msa(u) and u.get("stage") == stage for u in units))
    if len(hits) < MIN_LESION_STAGES:
        multi = [r.name for r in have if _stage_count(r.results["lesion"]) >= 2]
        return Finding(
            claim,
            INCONCLUSIVE,
            f"only {len(hits)} stage(s) with ≥ 2 MSA units (and unequal |ΔAcc|) in the "
            f"multi-stage models with lesion results ({', '.join(multi) or 'none'}); need ≥ "
            f"{MIN_LESION_STAGES}. A stage with one MSA (e.g. AlterNet's) cannot tell where in "
            f"a stage MSAs matter{missing(runs, 'lesion')}",
            detail,
        )
    share = sum(hits) / len(hits)
    evidence = (
        f"the most harmful MSA is the stage's last in {sum(hits)}/{len(hits)} stages "
        f"({share:.0%}; chance {np.mean(chance):.0%}); per run: {', '.join(per_run)}"
        f"{missing(runs, 'lesion')}"
    )
    return Finding(claim, by_share(share), evidence, detail)
