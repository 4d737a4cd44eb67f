"""What every claim rule shares: :class:`Finding`, the verdicts, the thresholds, the helpers.

Each rule is a function ``check_<what>(runs) -> Finding`` with a documented rule whose
thresholds are the constants below (their reference: ``docs/methods/findings.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ...results import Result
from ..load import StudyRun, pct

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)

# ---- thresholds of the rules (documented in each check) ----------------------------------------
HOLDS_SHARE = 2 / 3  # a per-unit claim holds when at least this share of the units agree ...
FAILS_SHARE = 1 / 3  # ... and does not hold when at most this share does
MIN_UNITS = 3  # fewer units than this (over all runs) leave a per-unit claim inconclusive
NOISE_LOW_MAX = 0.3  # noise bands centred at f <= 0.3π are "low frequency"
NOISE_HIGH_MIN = 0.6  # noise bands centred at f >= 0.6π are "high frequency"
LANDSCAPE_RING = 0.5  # L∞ ring (in direction units) where the rise of NLL + L2 is compared
HESSIAN_NEG_MARGIN = 0.0  # ViT's negative share must exceed ResNet's by more than this
MIN_OVERFIT_RUNS = 3  # runs needed (per dataset) for the rank correlation of claim 8
OVERFIT_RHO_MIN = 0.0  # Spearman ρ(train NLL, test error) above this -> "holds"
ALTERNET_MARGIN = 0.0  # AlterNet holds when its accuracy >= ResNet's - this (points)
MIN_LESION_STAGES = 2  # stages with >= 2 MSA units needed for claim 11


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and what the study's results say about it.

    Attributes:
        claim: the claim, in the paper's words where possible.
        verdict: ``holds``, ``does not hold`` or ``inconclusive``.
        evidence: the measured numbers behind the verdict (or why there are none).
        detail: the rule and its thresholds, and where the paper makes the claim.
    """

    claim: str
    verdict: str
    evidence: str
    detail: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


Rule = Callable[[Sequence[StudyRun]], Finding]


def by_share(share: float) -> str:
    """The share rule: ≥ ``HOLDS_SHARE`` holds, ≤ ``FAILS_SHARE`` does not, else inconclusive."""
    if share >= HOLDS_SHARE:
        return HOLDS
    return FAILS if share <= FAILS_SHARE else INCONCLUSIVE


def unanimous(votes: Sequence[bool]) -> str:
    """All true -> holds, all false -> does not hold, mixed or none -> inconclusive."""
    if not votes:
        return INCONCLUSIVE
    if all(votes):
        return HOLDS
    return FAILS if not any(votes) else INCONCLUSIVE


def missing(runs: Sequence[StudyRun], analysis: str) -> str:
    """``; <analysis> not run for a, b`` when some (not all) runs lack the result."""
    names = [r.name for r in runs if analysis not in r.results]
    return (
        f"; {analysis} not run for {', '.join(names)}" if names and len(names) < len(runs) else ""
    )


def none_run(analysis: str, runs: Sequence[StudyRun]) -> str:
    """Why no run has a result: not run, and which were unreadable."""
    bad = [f"{r.name} ({r.errors[analysis]})" for r in runs if analysis in r.errors]
    why = f"; unreadable: {'; '.join(bad)}" if bad else ""
    return f"no {analysis} result in any run (not run){why}"


def is_msa(u: dict) -> bool:
    return u.get("kind") == "msa"


def key_str(key: tuple) -> str:
    """A (dataset, fraction) key as ``cifar10 6%``."""
    return f"{key[0]} {pct(key[1])}"


def family_groups(runs: Iterable[StudyRun], fam: str, analysis: str) -> dict[tuple, list[StudyRun]]:
    """(dataset, fraction) -> the runs of family ``fam`` with an ``analysis`` result."""
    out: dict[tuple, list[StudyRun]] = {}
    for r in runs:
        if r.family == fam and analysis in r.results:
            out.setdefault(r.key, []).append(r)
    return out


def mean_of(
    runs: Sequence[StudyRun], fn: Callable[[Result], float | None], analysis: str
) -> float | None:
    """The mean of ``fn(result)`` over the runs where it is defined (None if nowhere)."""
    vals = [fn(r.results[analysis]) for r in runs]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def family_pairs(
    runs: Sequence[StudyRun],
    fam_a: str,
    fam_b: str,
    analysis: str,
    fn: Callable[[Result], float | None],
) -> tuple[list[tuple], str]:
    """``(key, a, b)`` for every (dataset, fraction) with both families; a reason if none."""
    ga, gb = family_groups(runs, fam_a, analysis), family_groups(runs, fam_b, analysis)
    pairs = []
    for key in sorted(set(ga) & set(gb)):
        a, b = mean_of(ga[key], fn, analysis), mean_of(gb[key], fn, analysis)
        if a is not None and b is not None:
            pairs.append((key, a, b))
    if pairs:
        return pairs, ""
    if not any(analysis in r.results for r in runs):
        return [], none_run(analysis, runs)
    have = lambda g: ", ".join(map(key_str, sorted(g))) or "none"  # noqa: E731
    return [], (
        f"needs {analysis} results of a {fam_a} and a {fam_b} run on the same dataset and "
        f"fraction; {fam_a}: {have(ga)}; {fam_b}: {have(gb)}"
    )
