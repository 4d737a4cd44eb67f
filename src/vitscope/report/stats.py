"""Estimates with 95% intervals, and verdicts read from the interval.

Every finding is to be an effect size with an interval from the right resampling unit (test
images, mini-batches, seeds), and its verdict the interval's position against the claim's null:
*holds* when the whole interval lies on the claim's side, *does not hold* when it lies on the
other side, *inconclusive* when it straddles the null. The claim rules
(:mod:`vitscope.report.claims`) build on it. Methods (``docs/methods/statistics.md``):

* :func:`mean_interval`: Student-t interval of a mean (seeds, batches).
* :func:`proportion_interval`: Wilson score interval of a binomial proportion (a share of
  units, an accuracy over test images).
* :func:`bootstrap_interval`: seeded percentile bootstrap of any statistic over the first axis
  of one or more arrays resampled together (paired designs: the same test images for two
  models).
* :func:`spearman_interval`: Spearman's ρ with a Fisher-z interval (standard error
  ``sqrt(1.06 / (n - 3))``, Fieller, Hartley and Pearson 1957); a perfect ρ is bounded as
  the nearest imperfect ρ its n allows.

Plain numpy and scipy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from ..errors import VitscopeError

VERDICTS = ("holds", "does not hold", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """An effect size with its interval.

    Attributes:
        value: the point estimate.
        low, high: the interval (``-inf``/``inf`` where the data cannot bound it, e.g. n = 1).
        n: the number of resampling units behind it.
        unit: what was resampled (``seeds``, ``test images``, ``mini-batches``, ``units``).
        method: how the interval was made (``t``, ``log-t``: t of the logs mapped back,
            ``wilson``, ``bootstrap``, ``fisher-z``).
        level: the coverage the interval aims at.
    """

    value: float
    low: float
    high: float
    n: int
    unit: str
    method: str
    level: float = 0.95

    def verdict(self, null: float = 0.0, side: str = "greater") -> str:
        """``holds`` when the interval lies beyond ``null`` on the claim's ``side``
        (``greater``: the claim says the effect exceeds the null; ``less``: falls below it),
        ``does not hold`` when it lies beyond on the other side, else ``inconclusive``."""
        if side not in ("greater", "less"):
            raise VitscopeError(f"side must be greater or less, got {side!r}")
        above, below = self.low > null, self.high < null
        if side == "less":
            above, below = below, above
        return "holds" if above else "does not hold" if below else "inconclusive"

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}  # fmt: skip


def _level(level: float) -> float:
    if not 0 < level < 1:
        raise VitscopeError(f"interval level must be in (0, 1), got {level!r}")
    return level


def _finite(x: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        raise VitscopeError(f"{what}: no values")
    if not np.all(np.isfinite(a)):
        raise VitscopeError(f"{what}: non-finite values")
    return a


def mean_interval(x: Sequence[float], *, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """The mean of ``x`` with its Student-t interval ``mean ± t(1 - α/2, n - 1) s / √n``;
    one value gives an unbounded interval (its uncertainty is unknown)."""
    a = _finite(x, "mean_interval")
    n, m = a.size, float(a.mean())
    if n < 2:
        return Estimate(m, -math.inf, math.inf, n, unit, "t", _level(level))
    half = float(sps.t.ppf(0.5 + _level(level) / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return Estimate(m, m - half, m + half, n, unit, "t", level)


def proportion_interval(k: int, n: int, *, level: float = 0.95, unit: str = "units") -> Estimate:
    """``k / n`` with the Wilson score interval (sensible at 0/n and n/n, unlike Wald)."""
    if n < 1 or not 0 <= k <= n:
        raise VitscopeError(f"proportion_interval: need 0 <= k <= n and n >= 1, got {k}/{n}")
    z = float(sps.norm.ppf(0.5 + _level(level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, unit, "wilson", level)


def bootstrap_interval(
    statistic: Callable[..., float],
    *arrays: Sequence | np.ndarray,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    unit: str = "test images",
) -> Estimate:
    """``statistic(*arrays)`` with a seeded percentile-bootstrap interval.

    The arrays share their first axis (the resampling unit) and are resampled with the same
    indices, so a paired design (two models on the same test images) stays paired.
    """
    data = [np.asarray(a) for a in arrays]
    if not data:
        raise VitscopeError("bootstrap_interval: no arrays")
    n = len(data[0])
    if n < 1 or any(len(a) != n for a in data):
        raise VitscopeError("bootstrap_interval: arrays must share a non-empty first axis")
    if resamples < 100:
        raise VitscopeError(f"bootstrap_interval: resamples must be >= 100, got {resamples}")
    value = float(statistic(*data))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        draws[r] = statistic(*(a[idx] for a in data))
    alpha = 1 - _level(level)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(low), float(high), n, unit, "bootstrap", level)


def spearman_interval(
    x: Sequence[float], y: Sequence[float], *, level: float = 0.95, unit: str = "units"
) -> Estimate:
    """Spearman's ρ of ``x`` and ``y`` with the Fisher-z interval (n ≥ 4; fewer pairs give an
    unbounded interval)."""
    a, b = _finite(x, "spearman_interval"), _finite(y, "spearman_interval")
    if a.shape != b.shape:
        raise VitscopeError("spearman_interval: x and y differ in length")
    n = a.size
    rho = float(sps.spearmanr(a, b).statistic) if n >= 2 else math.nan
    if n < 4 or not math.isfinite(rho):
        return Estimate(rho, -1.0, 1.0, n, unit, "fisher-z", _level(level))
    # Fisher z is infinite at |ρ| = 1: a perfect ρ is bounded like the nearest imperfect one
    # n points can give (one adjacent swap: 1 - 12 / (n (n² - 1))), and reaches ±1 itself
    top = 1 - 12 / (n * (n * n - 1))
    z = math.atanh(max(min(rho, top), -top))
    half = float(sps.norm.ppf(0.5 + _level(level) / 2)) * math.sqrt(1.06 / (n - 3))
    low, high = math.tanh(z - half), math.tanh(z + half)
    if rho >= top:
        high = 1.0
    if rho <= -top:
        low = -1.0
    return Estimate(rho, min(low, rho), max(high, rho), n, unit, "fisher-z", level)


__all__ = [
    "VERDICTS",
    "Estimate",
    "bootstrap_interval",
    "mean_interval",
    "proportion_interval",
    "spearman_interval",
]
