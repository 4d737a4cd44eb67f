"""The paper's claims checked against a study's saved results (read, never recomputed).

:func:`check_all` turns the :class:`~vitscope.report.load.StudyRun` records of a study into
:class:`Finding` rows, one per rule of :data:`CHECKS` and :data:`ABLATION_CHECKS`. Every rule
states its effect (an accuracy difference, a share of units, a ratio, Spearman's ρ), the
effect's null and the claim's side of it; :func:`.base.measure` estimates the effect with a
95% interval (t over seeds, or a bootstrap over test images or mini-batches inside the runs of
one seed) and the verdict is read from the interval: *holds* when it lies on the claim's side
of the null, *does not hold* when on the other, *inconclusive* when it straddles it or the
data are missing. Claims are from Park & Kim (ICLR 2022); the rules' reference is
``docs/methods/findings.md``.

The rules, by topic: :mod:`.units` (claims 1-4), :mod:`.curvature` (5-7), :mod:`.accuracy`
(8-9), :mod:`.robustness` (10-11), :mod:`.ablations` (GAP head, local MSA); what they read
from a run under resampling is :mod:`.samples`. A new claim is one new rule function in one
of them, listed below.

Plain numpy and scipy: no torch, no models, no matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..load import StudyRun
from .ablations import check_gap_head, check_local_msa
from .accuracy import check_alternet, check_no_overfitting
from .base import FAILS, HOLDS, INCONCLUSIVE, VERDICTS, Finding, Measure, Rule
from .curvature import check_flat_landscape, check_hessian_negative, check_hessian_small_data
from .robustness import check_lesion, check_noise
from .units import (
    check_conv_high_freq,
    check_conv_variance,
    check_msa_high_freq,
    check_msa_variance,
)

#: the rules on the main runs, in the paper's order
CHECKS: tuple[Rule, ...] = (
    check_msa_high_freq,
    check_conv_high_freq,
    check_msa_variance,
    check_conv_variance,
    check_hessian_negative,
    check_hessian_small_data,
    check_flat_landscape,
    check_no_overfitting,
    check_alternet,
    check_noise,
    check_lesion,
)

#: rules that read the ablation runs too (the others read the main runs only)
ABLATION_CHECKS: tuple[Rule, ...] = (
    check_gap_head,
    check_local_msa,
)


#: the analyses whose claims are the rules above; any other analysis may declare its own
#: (``Analysis.claims``, ``docs/plugins.md``)
PAPER_ANALYSES = ("overfitting", "landscape", "hessian", "fourier", "variance", "noise", "lesion")

#: analyses the paper's Q2 section shows (shape or texture) whose claim rules they declare
#: themselves (``vitscope.report.claims.shape``)
SHAPE_ANALYSES = ("filtered", "shuffle", "cueconflict")


def declared_rules(runs: Sequence[StudyRun]) -> list[Rule]:
    """The claim rules the analyses with results in ``runs`` declare (not the paper's seven,
    whose rules are :data:`CHECKS`), in the order of the analyses' names. The registry (which
    imports the analyses, hence torch) is read only when such a result is there. A rule
    that several analyses declare (the shape claim: ``filtered`` and ``cueconflict``) is
    listed once, where the first of them is."""
    found = sorted({a for r in runs for a in r.results} - set(PAPER_ANALYSES))
    if not found:
        return []
    from ...analyses import analyses

    known = analyses()
    rules = [rule for a in found if a in known for rule in known[a].claim_rules()]
    return list(dict.fromkeys(rules))  # a rule several analyses declare runs once


def check_all(runs: Sequence[StudyRun], ablations: Sequence[StudyRun] = ()) -> list[Finding]:
    """Every claim of :data:`CHECKS`, in the paper's order, then the ablations' claims, then
    those the other analyses declare (:func:`declared_rules`)."""
    both = [*runs, *ablations]
    return (
        [check(runs) for check in CHECKS]
        + [check(both) for check in ABLATION_CHECKS]
        + [check(runs) for check in declared_rules(runs)]
    )


__all__ = [
    "ABLATION_CHECKS",
    "CHECKS",
    "PAPER_ANALYSES",
    "SHAPE_ANALYSES",
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "VERDICTS",
    "Finding",
    "Measure",
    "Rule",
    "check_all",
    "declared_rules",
    "check_msa_high_freq",
    "check_conv_high_freq",
    "check_msa_variance",
    "check_conv_variance",
    "check_hessian_negative",
    "check_hessian_small_data",
    "check_flat_landscape",
    "check_no_overfitting",
    "check_alternet",
    "check_noise",
    "check_lesion",
    "check_gap_head",
    "check_local_msa",
]
