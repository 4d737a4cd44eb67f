"""Claims 1-4: what each unit does to a per-unit quantity (Fourier amplitude, variance).

Each claim is a :class:`UnitClaim`: which analysis and value, which units, which direction.
One rule (:func:`check_units`) decides them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...analyses.keys import FourierKeys, VarianceKeys
from ...results import Result
from ..load import StudyRun, finite
from .base import (
    FAILS_SHARE,
    HOLDS_SHARE,
    INCONCLUSIVE,
    MIN_UNITS,
    Finding,
    by_share,
    is_msa,
    missing,
    none_run,
)


def is_conv(u: dict) -> bool:
    return u.get("kind") == "conv" and not u.get("downsample")


def is_conv_or_mlp(u: dict) -> bool:
    return is_conv(u) or u.get("kind") == "mlp"


def unit_changes(
    result: Result, key: str, select: Callable[[dict], bool], units_key: str = FourierKeys.UNITS
) -> list[tuple[str, float]]:
    """``(unit name, value[i] - value[i-1])`` for the units ``select`` picks (index >= 1).

    ``units_key`` is the key of the result's unit table (``<Analysis>Keys.UNITS``).
    """
    units, values = result.values.get(units_key, []), result.values.get(key, [])
    out = []
    for i in range(1, min(len(units), len(values))):
        a, b = values[i - 1], values[i]
        if select(units[i]) and finite(a) and finite(b):
            out.append((str(units[i].get("name", i)), float(b) - float(a)))
    return out


@dataclass(frozen=True)
class UnitClaim:
    """A claim that the ``select``-ed units lower (or raise) ``analysis.values[key]``."""

    claim: str
    analysis: str
    key: str  # the per-unit value
    units: str  # the unit table
    select: Callable[[dict], bool]
    what: str  # the units, in the evidence ("MSA")
    lowers: bool
    quantity: str
    paper: str

    def detail(self) -> str:
        sign = "lower" if self.lowers else "raise"
        return (
            f"Δ = {self.quantity} of unit i minus that of unit i-1 "
            f"(`{self.analysis}.values.{self.key}`), for every {self.what} unit of every run. "
            f"Holds if ≥ {HOLDS_SHARE:.0%} of them {sign} it, does not hold if ≤ "
            f"{FAILS_SHARE:.0%}, inconclusive in between or with < {MIN_UNITS} units. "
            f"{self.paper}"
        )


def check_units(runs: Sequence[StudyRun], spec: UnitClaim) -> Finding:
    """The share rule over every selected unit of every run with the result."""
    claim, analysis, detail = spec.claim, spec.analysis, spec.detail()
    have = [r for r in runs if analysis in r.results]
    if not have:
        return Finding(claim, INCONCLUSIVE, none_run(analysis, runs), detail)
    agree = n = 0
    per_run, deltas = [], []
    for r in have:
        ch = [d for _, d in unit_changes(r.results[analysis], spec.key, spec.select, spec.units)]
        if not ch:
            continue
        k = sum((d < 0) if spec.lowers else (d > 0) for d in ch)
        agree, n = agree + k, n + len(ch)
        deltas += ch
        per_run.append(f"{r.name} {k}/{len(ch)}")
    if n < MIN_UNITS:
        runs_with = ", ".join(r.name for r in have)
        return Finding(
            claim,
            INCONCLUSIVE,
            f"only {n} {spec.what} unit(s) in the runs with {analysis} results ({runs_with}); "
            f"need ≥ {MIN_UNITS}{missing(runs, analysis)}",
            detail,
        )
    share = agree / n
    evidence = (
        f"{agree}/{n} {spec.what} units ({share:.0%}) {'lower' if spec.lowers else 'raise'} "
        f"the {spec.quantity}; median Δ = {np.median(deltas):+.3g}; per run: "
        f"{', '.join(per_run)}{missing(runs, analysis)}"
    )
    return Finding(claim, by_share(share), evidence, detail)


_HIGH_FREQ = dict(
    analysis="fourier",
    key=FourierKeys.HIGH_FREQ,
    units=FourierKeys.UNITS,
    quantity="ΔLog amplitude at 1.0π",
    paper="Paper: Fig 2a, Fig 8 (docs/methods/fourier.md).",
)
_VARIANCE = dict(
    analysis="variance",
    key=VarianceKeys.VARIANCE,
    units=VarianceKeys.UNITS,
    quantity="feature-map variance",
    paper="Paper: Fig 9, D.1 (docs/methods/variance.md).",
)

MSA_HIGH_FREQ = UnitClaim(
    claim="MSA units lower the high-frequency amplitude of feature maps (low-pass filters)",
    select=is_msa, what="MSA", lowers=True, **_HIGH_FREQ,
)  # fmt: skip
CONV_HIGH_FREQ = UnitClaim(
    claim="Conv units raise the high-frequency amplitude of feature maps (high-pass filters)",
    select=is_conv, what="Conv (non-downsampling)", lowers=False, **_HIGH_FREQ,
)  # fmt: skip
MSA_VARIANCE = UnitClaim(
    claim="MSA units reduce feature-map variance",
    select=is_msa, what="MSA", lowers=True, **_VARIANCE,
)  # fmt: skip
CONV_VARIANCE = UnitClaim(
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
