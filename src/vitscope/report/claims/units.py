"""Claims 1-4: what each unit does to a per-unit quantity (Fourier amplitude, variance).

Each claim is a :class:`UnitClaim`: which analysis and value, which units, which direction.
One rule (:func:`check_units`) decides them all: the effect is the median change of the
quantity over the selected units (the runs of a seed pooled), against the null 0. A median
rather than a share of units: it is continuous, so seeds that agree still leave an interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...analyses.keys import FourierKeys, VarianceKeys
from ..load import StudyRun
from . import samples
from .base import MIN_UNITS, Finding, Resample, by_seed, finding, is_msa, measure, missing, none_run


def is_conv(u: dict) -> bool:
    return u.get("kind") == "conv" and not u.get("downsample")


def is_conv_or_mlp(u: dict) -> bool:
    return is_conv(u) or u.get("kind") == "mlp"


@dataclass(frozen=True)
class UnitClaim:
    """A claim that the ``select``-ed units lower (or raise) ``analysis.values[key]``."""

    id: str
    claim: str
    analysis: str
    key: str  # the per-unit value
    images_key: str  # the per-image values behind it (units x images)
    select: Callable[[dict], bool]
    what: str  # the units, in the evidence ("MSA")
    lowers: bool
    quantity: str
    paper: str
    log: bool = False  # Δ is log(value[i] / value[i-1]): scale-free across models

    def detail(self) -> str:
        sign, rel = ("lower", "below") if self.lowers else ("raise", "above")
        delta = (
            f"Δ = log of the ratio of the {self.quantity} of unit i to that of unit i-1 "
            "(scale-free, so models whose features differ in scale pool fairly; "
            if self.log
            else f"Δ = {self.quantity} of unit i minus that of unit i-1 ("
        )
        return (
            f"{delta}`{self.analysis}.values.{self.key}`, the mean over test images), for "
            f"every {self.what} unit of every run. Effect: the median Δ over those units "
            "(pooled over the runs of a seed); the "
            f"claim: they {sign} it, so the median lies {rel} 0. Holds when the 95% interval "
            f"lies {rel} 0, does not hold when on the other side, inconclusive when it "
            f"straddles 0 or with < {MIN_UNITS} units. Interval: t over seeds, or (one seed) a "
            "bootstrap over test images (the same images for every unit and run). The share "
            f"of units that {sign} it is in the evidence. {self.paper}"
        )

    def changes(self, run: StudyRun, rs: Resample) -> list[float]:
        got = samples.unit_changes(
            run, self.analysis, self.key, self.images_key, self.select, rs, self.log
        )
        return [d for _, d in got]

    def agrees(self, d: float) -> bool:
        return d < 0 if self.lowers else d > 0


def check_units(runs: Sequence[StudyRun], spec: UnitClaim) -> Finding:
    """The share rule over every selected unit of every run with the result."""
    claim, analysis, detail = spec.claim, spec.analysis, spec.detail()
    have = [r for r in runs if analysis in r.results]
    if not have:
        return finding(spec.id, claim, detail, [], none_run(analysis, runs))
    counts = {
        s: sum(len(spec.changes(r, Resample())) for r in rs) for s, rs in by_seed(have).items()
    }
    if max(counts.values()) < MIN_UNITS:
        runs_with = ", ".join(r.name for r in have)
        why = (
            f"only {max(counts.values())} {spec.what} unit(s) in the runs with {analysis} "
            f"results ({runs_with}); need ≥ {MIN_UNITS}{missing(runs, analysis)}"
        )
        return finding(spec.id, claim, detail, [], why)

    def median(rs: Sequence[StudyRun], resample: Resample) -> float | None:
        deltas = [d for r in rs for d in spec.changes(r, resample)]
        return float(np.median(deltas)) if len(deltas) >= MIN_UNITS else None

    def context(rs: Sequence[StudyRun]) -> str:
        per_run, agree, n = [], 0, 0
        for r in rs:
            ch = spec.changes(r, Resample())
            if ch:
                k = sum(map(spec.agrees, ch))
                agree, n = agree + k, n + len(ch)
                per_run.append(f"{r.name} {k}/{len(ch)}")
        sign = "lower" if spec.lowers else "raise"
        return f"{agree}/{n} {spec.what} units {sign} it; per run: {', '.join(per_run)}"

    m = measure(
        have,
        median,
        label=f"median {'log ratio' if spec.log else 'Δ'} {spec.quantity}, {spec.what} units",
        unit="test images",
        side="less" if spec.lowers else "greater",
        fmt="+.3g",
        context=context,
    )
    return finding(spec.id, claim, detail, [m] if m else [], missing(runs, analysis).lstrip("; "))


_HIGH_FREQ = dict(
    analysis="fourier",
    key=FourierKeys.HIGH_FREQ,
    images_key=FourierKeys.HIGH_FREQ_IMAGES,
    quantity="ΔLog amplitude at 1.0π",
    paper="Paper: Fig 2a, Fig 8 (docs/methods/fourier.md).",
)
_VARIANCE = dict(
    analysis="variance",
    key=VarianceKeys.VARIANCE,
    images_key=VarianceKeys.VARIANCE_IMAGES,
    quantity="feature-map variance",
    paper="Paper: Fig 9, D.1 (docs/methods/variance.md).",
    log=True,
)

MSA_HIGH_FREQ = UnitClaim(
    id="msa-low-pass",
    claim="MSA units lower the high-frequency amplitude of feature maps (low-pass filters)",
    select=is_msa, what="MSA", lowers=True, **_HIGH_FREQ,
)  # fmt: skip
CONV_HIGH_FREQ = UnitClaim(
    id="conv-high-pass",
    claim="Conv units raise the high-frequency amplitude of feature maps (high-pass filters)",
    select=is_conv, what="Conv (non-downsampling)", lowers=False, **_HIGH_FREQ,
)  # fmt: skip
MSA_VARIANCE = UnitClaim(
    id="msa-variance",
    claim="MSA units reduce feature-map variance",
    select=is_msa, what="MSA", lowers=True, **_VARIANCE,
)  # fmt: skip
CONV_VARIANCE = UnitClaim(
    id="conv-variance",
    claim="Conv and MLP units increase feature-map variance",
    select=is_conv_or_mlp, what="Conv (non-downsampling) or MLP", lowers=False, **_VARIANCE,
)  # fmt: skip


def check_msa_high_freq(runs: Sequence[StudyRun]) -> Finding:
    """Claim 1: MSA units lower the high-frequency ΔLog amplitude (Fig 8)."""
    return check_units(runs, MSA_HIGH_FREQ)


def check_conv_high_freq(runs: Sequence[StudyRun]) -> Finding:
    """Claim 2: Conv units (not downsampling) raise the high-frequency amplitude (Fig 8)."""
    return check_units(runs, CONV_HIGH_FREQ)


def check_msa_variance(runs: Sequence[StudyRun]) -> Finding:
    """Claim 3: MSA units reduce feature-map variance (Fig 9)."""
    return check_units(runs, MSA_VARIANCE)


def check_conv_variance(runs: Sequence[StudyRun]) -> Finding:
    """Claim 4: Conv (non-downsampling) and MLP units increase feature-map variance (Fig 9)."""
    return check_units(runs, CONV_VARIANCE)
