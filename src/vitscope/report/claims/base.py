"""What every claim rule shares: :class:`Finding` and :class:`Measure`, the verdicts, how an
effect becomes an estimate with an interval (:func:`estimate`), and the helpers.

A rule is a function ``check_<what>(runs) -> Finding``. It states one or more *effects* (an
accuracy difference in points, a share of units, a ratio of landscape rises, ...), each a
function ``effect(runs of one seed, resample) -> float | None``, and :func:`measure` turns
each into a :class:`Measure`: the estimate, its 95% interval, n, the resampling unit, and
the verdict read from the interval against the claim's null (``docs/methods/statistics.md``,
``docs/methods/findings.md``):

* runs of **two or more seeds**: the effect per seed, a Student-t interval over seeds
  (n = seeds);
* **one seed**: a seeded bootstrap over the units inside the runs (test images,
  mini-batches), resampled with the same indices for every run that shares them (a paired
  design), n = those units; the expanded percentile interval (:func:`expanded_quantile`),
  which keeps its coverage with few mini-batches. Results saved without per-image or
  per-batch values cannot be resampled: the interval is unbounded and the evidence says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..load import StudyRun, pct
from ..stats import Estimate, mean_interval

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)

# ---- what the rules measure with (documented in docs/methods/findings.md) ----------------------
LEVEL = 0.95  # coverage of every interval
RESAMPLES = 2000  # bootstrap resamples of a one-seed estimate
BOOTSTRAP_SEED = 0  # the bootstrap's generator: the same report twice gives the same intervals
MIN_RESAMPLE_UNITS = 5  # fewer test images / batches than this: no bootstrap interval
MIN_UNITS = 3  # fewer selected units (over the runs of a seed) leave a per-unit claim undecided
NOISE_LOW_MAX = 0.3  # noise bands centred at f <= 0.3π are "low frequency"
NOISE_HIGH_MIN = 0.6  # noise bands centred at f >= 0.6π are "high frequency"
LANDSCAPE_RING = 0.5  # L∞ ring (in direction units) where the rise of NLL + L2 is compared
MIN_OVERFIT_RUNS = 4  # runs of one dataset needed for the Fisher-z interval of claim 8
MIN_LESION_STAGES = 2  # stages with >= 2 MSA units needed for claim 11


class NoSamples(Exception):
    """A result lacks the per-image or per-batch values a resample needs (the message: which)."""


class Resample:
    """Indices into the units inside runs (test images, mini-batches) for one bootstrap draw.

    ``Resample()`` is the identity (the point estimate). ``Resample(rng)`` draws, per
    *domain* (e.g. the test set of a dataset, the Hessian batches of a training set), one
    set of indices with replacement and gives the same to every run of that domain, so
    paired designs stay paired. ``sizes`` records each domain's size (the n of the estimate).
    """

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self.rng = rng
        self.sizes: dict[Hashable, int] = {}
        self._drawn: dict[Hashable, np.ndarray] = {}

    @property
    def active(self) -> bool:
        return self.rng is not None

    def __call__(self, domain: Hashable, n: int) -> np.ndarray:
        key = (domain, n)
        self.sizes[key] = n
        if self.rng is None:
            return np.arange(n)
        if key not in self._drawn:
            self._drawn[key] = self.rng.integers(0, n, n)
        return self._drawn[key]

    def weights(self, domain: Hashable, n: int) -> np.ndarray:
        """The draw as weights summing to 1 (``table @ weights`` is the resampled mean)."""
        key = ("weights", domain, n)
        if key not in self._drawn:
            self._drawn[key] = np.bincount(self(domain, n), minlength=n) / n
        return self._drawn[key]


Effect = Callable[[Sequence[StudyRun], Resample], "float | None"]


@dataclass(frozen=True)
class Measure:
    """One effect of a claim, estimated with its interval, and the verdict it gives.

    Attributes:
        label: what is measured, e.g. ``fashion-mnist 100%: AlterNet - ResNet accuracy``.
        estimate: the effect, its interval, n and the resampling unit.
        null: the value of no effect (0 for a difference, 1 for a ratio, chance for a share).
        side: ``greater`` or ``less``: where the claim puts the effect against the null.
        fmt: how the numbers print (a format spec, e.g. ``+.2f``).
        per_seed: the effect per seed, when the interval is over seeds.
        note: why the interval is unbounded, or anything else the reader must know.
        context: the raw numbers behind the effect (point estimates), for the evidence.
    """

    label: str
    estimate: Estimate
    null: float
    side: str
    fmt: str = "+.3g"
    per_seed: dict[int, float] = field(default_factory=dict)
    note: str = ""
    context: str = ""

    @property
    def verdict(self) -> str:
        return self.estimate.verdict(self.null, self.side)

    def interval_text(self) -> str:
        e, f = self.estimate, self.fmt
        lo = "-inf" if not math.isfinite(e.low) else format(e.low, f)
        hi = "inf" if not math.isfinite(e.high) else format(e.high, f)
        return f"{format(e.value, f)} [{lo}, {hi}]"

    def core(self) -> str:
        """``label = value [low, high] (95% t interval, n = 3 seeds; claim: > 0) → verdict``."""
        e = self.estimate
        rel = ">" if self.side == "greater" else "<"
        how = {"t": "t", "log-t": "t (of the logs)", "bootstrap": "bootstrap",
               "fisher-z": "Fisher z"}.get(e.method, e.method)  # fmt: skip
        null = format(self.null, self.fmt.lstrip("+"))
        return (
            f"{self.label} = {self.interval_text()} ({e.level:.0%} {how} interval, n = {e.n} "
            f"{e.unit}; claim: {rel} {null}) → {self.verdict}"
        )

    def details(self) -> str:
        """The per-seed values, the raw numbers and the note."""
        parts = []
        if self.per_seed:
            seeds = ", ".join(
                f"{s}: {format(v, self.fmt)}" for s, v in sorted(self.per_seed.items())
            )
            parts.append(f"per seed {seeds}")
        if self.context:
            parts.append(self.context)
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def text(self) -> str:
        return self.core() + (f"; {self.details()}" if self.details() else "")

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            **self.estimate.to_dict(),
            "null": self.null,
            "side": self.side,
            "verdict": self.verdict,
            "per_seed": {str(k): v for k, v in sorted(self.per_seed.items())},
            "note": self.note,
            "context": self.context,
        }


def combine(measures: Sequence[Measure]) -> str:
    """Every measure holds -> holds; every one does not -> does not hold; else inconclusive."""
    verdicts = {m.verdict for m in measures}
    if verdicts == {HOLDS}:
        return HOLDS
    return FAILS if verdicts == {FAILS} else INCONCLUSIVE


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and what the study's results say about it.

    Attributes:
        claim: the claim, in the paper's words where possible.
        verdict: ``holds``, ``does not hold`` or ``inconclusive``; with measures, the
            :func:`combine` of their verdicts.
        evidence: the measured numbers behind the verdict (or why there are none).
        detail: the rule (effect, null, resampling) and where the paper makes the claim.
        id: a stable short name (``alternet``, ``msa-low-pass``, ...) for ``findings.json``.
        measures: the estimates the verdict is read from (none: inconclusive, evidence says
            why).
    """

    claim: str
    verdict: str
    evidence: str
    detail: str
    id: str = ""
    measures: tuple[Measure, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.measures and self.verdict != combine(self.measures):
            raise ValueError(f"verdict {self.verdict!r} is not what the measures give")

    def to_dict(self) -> dict:
        """The ``findings.json`` row: the first measure's estimate at the top level."""
        first = self.measures[0] if self.measures else None
        e = first.estimate.to_dict() if first else {}
        return {
            "id": self.id,
            "claim": self.claim,
            "verdict": self.verdict,
            "estimate": e.get("value"),
            "interval": [e.get("low"), e.get("high")] if first else None,
            "level": e.get("level"),
            "n": e.get("n"),
            "unit": e.get("unit"),
            "null": first.null if first else None,
            "side": first.side if first else None,
            "measures": [m.to_dict() for m in self.measures],
            "evidence": self.evidence,
            "rule": self.detail,
        }


def finding(
    id: str, claim: str, detail: str, measures: Sequence[Measure], why: str = ""
) -> Finding:
    """The Finding of ``measures`` (their texts are the evidence); none: inconclusive, ``why``."""
    if not measures:
        return Finding(claim, INCONCLUSIVE, why or "nothing to measure", detail, id)
    evidence = "; ".join(m.text() for m in measures) + (f"; {why}" if why else "")
    return Finding(claim, combine(measures), evidence, detail, id, tuple(measures))


Rule = Callable[[Sequence[StudyRun]], Finding]


# ---- estimates -------------------------------------------------------------------------------


def by_seed(runs: Iterable[StudyRun]) -> dict[int, list[StudyRun]]:
    out: dict[int, list[StudyRun]] = {}
    for r in runs:
        out.setdefault(r.seed, []).append(r)
    return dict(sorted(out.items()))


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def measure(
    runs: Sequence[StudyRun],
    effect: Effect,
    *,
    label: str,
    unit: str,
    null: float = 0.0,
    side: str = "greater",
    fmt: str = "+.3g",
    context: Callable[[Sequence[StudyRun]], str] | None = None,
    log: bool = False,
) -> Measure | None:
    """``effect`` estimated over ``runs`` (see the module doc); None where it is undefined.

    Args:
        runs: every run the effect may read, of every seed.
        effect: ``effect(runs of one seed, resample) -> float | None``.
        label, null, side, fmt: of the :class:`Measure`.
        unit: what a one-seed bootstrap resamples (``test images``, ``mini-batches``).
        context: the raw numbers of the seed(s) behind the estimate, for the evidence.
        log: the effect is a positive ratio: over seeds, the t interval is taken of its log
            and mapped back (a geometric mean, an interval that stays above 0); the one-seed
            percentile bootstrap is the same either way.
    """
    groups = by_seed(runs)
    probes = {s: Resample() for s in groups}  # the point estimates; they record the n
    values = {s: effect(rs, probes[s]) for s, rs in groups.items()}
    values = {s: float(v) for s, v in values.items() if _finite(v)}
    if not values:
        return None
    used = [r for s in values for r in groups[s]]
    ctx = context(used) if context else ""
    if len(values) >= 2:
        if log and all(v > 0 for v in values.values()):
            e = mean_interval([math.log(v) for v in values.values()], level=LEVEL, unit="seeds")
            est = replace(e, value=math.exp(e.value), low=math.exp(e.low),
                          high=math.exp(e.high), method="log-t")  # fmt: skip
        else:
            est = mean_interval(list(values.values()), level=LEVEL, unit="seeds")
        return Measure(label, est, null, side, fmt, values, context=ctx)
    ((s, value),) = values.items()
    est, note = _bootstrap(groups[s], effect, value, unit, probes[s].sizes)
    return Measure(label, est, null, side, fmt, note=note, context=ctx)


def _bootstrap(
    runs: Sequence[StudyRun], effect: Effect, value: float, unit: str, sizes: dict
) -> tuple[Estimate, str]:
    """The one-seed interval: a seeded expanded-percentile bootstrap over the units inside
    the runs (``sizes``: each domain's size, as the point estimate's resample recorded)."""

    def unbounded(n: int, why: str) -> tuple[Estimate, str]:
        return Estimate(value, -math.inf, math.inf, n, unit, "bootstrap", LEVEL), why

    n = min(sizes.values()) if sizes else 0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = np.empty(RESAMPLES)
    for b in range(RESAMPLES):
        try:
            v = effect(runs, Resample(rng))
        except NoSamples as e:
            return unbounded(n, f"one seed, and {e}")
        draws[b] = v if _finite(v) else np.nan
    if n < MIN_RESAMPLE_UNITS:
        return unbounded(n, f"one seed and only {n} {unit}: too few to resample")
    if not np.all(np.isfinite(draws)):
        bad = int((~np.isfinite(draws)).sum())
        return unbounded(n, f"undefined in {bad} of {RESAMPLES} resamples")
    q = expanded_quantile(n)
    low, high = np.quantile(draws, [q, 1 - q])
    return Estimate(value, float(low), float(high), n, unit, "bootstrap", LEVEL), ""


def expanded_quantile(n: int, level: float = LEVEL) -> float:
    """The lower percentile of Hesterberg's expanded percentile interval: the plain
    percentile bootstrap is too narrow for small n (it uses z for t and the n-divisor
    variance); its tails move to ``Φ(-sqrt(n / (n - 1)) t_{n-1}(1 - α/2))``, which tends to
    α/2 as n grows (Hesterberg 2015, "What teachers should know about the bootstrap")."""
    from scipy import stats as sps

    t = float(sps.t.ppf(0.5 + level / 2, n - 1))
    return float(sps.norm.cdf(-math.sqrt(n / (n - 1)) * t))


# ---- helpers ---------------------------------------------------------------------------------


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


def family_keys(
    runs: Sequence[StudyRun], families: Sequence[str], analysis: str | None
) -> tuple[list[tuple], str]:
    """The (dataset, fraction) keys where every one of ``families`` has a run (with an
    ``analysis`` result, unless None), and why there are none."""
    have = {
        fam: {
            r.key for r in runs if r.family == fam and (analysis is None or analysis in r.results)
        }
        for fam in families
    }
    keys = sorted(set.intersection(*have.values()))
    if keys:
        return keys, ""
    if analysis is not None and not any(analysis in r.results for r in runs):
        return [], none_run(analysis, runs)
    what = f"{analysis} results of " if analysis else "runs of "
    listed = "; ".join(
        f"{fam}: {', '.join(map(key_str, sorted(k))) or 'none'}" for fam, k in have.items()
    )
    return [], f"needs {what}{' and '.join(families)} on the same dataset and fraction; {listed}"


def mean_over(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values (None if there are none)."""
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None
