"""Spread over seeds in the report's figures: runs that differ only in their training seed
are one *group* (``meta["group"]``); a group's curves are drawn as their mean with a band, the
pointwise 95% Student-t interval of the mean over seeds (the same interval the findings use),
and a one-seed group as its plain curve.

Plain numpy (and a matplotlib Axes passed in): no torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from ..results import Result

BAND = dict(alpha=0.2, lw=0)  # fill_between style of a band


def group_of(result: Result) -> str:
    """The group a labelled result belongs to (its label when it has no group)."""
    return str(result.meta.get("group") or result.label(result.meta.get("run", "?")))


def groups(results: Sequence[Result]) -> list[tuple[str, list[Result]]]:
    """``(group, its results)`` in first-seen order."""
    out: dict[str, list[Result]] = {}
    for r in results:
        out.setdefault(group_of(r), []).append(r)
    return list(out.items())


def mean_band(rows: Sequence[Sequence[float]], level: float = 0.95) -> tuple[np.ndarray, ...]:
    """``(mean, low, high, n)`` pointwise over ``rows`` (one per seed, equal length; NaN
    ignored): the mean and its Student-t interval; with one value per point, low = high =
    mean."""
    a = np.atleast_2d(np.asarray(rows, dtype=float))
    n = np.isfinite(a).sum(axis=0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns, one seed
        mean = np.nanmean(a, axis=0)
        sd = np.nanstd(a, axis=0, ddof=1)
    half = np.zeros_like(mean)
    several = n > 1
    half[several] = sps.t.ppf(0.5 + level / 2, n[several] - 1) * sd[several] / np.sqrt(n[several])
    return mean, mean - half, mean + half, n


def group_label(group: str, members: Sequence[Result]) -> str:
    """The legend entry of a group: ``vit_tiny (6%), 3 seeds`` (one seed: the group)."""
    return group if len(members) < 2 else f"{group}, {len(members)} seeds"


def plot_band(ax, x, rows: Sequence[Sequence[float]], label: str, **line) -> None:
    """The mean of ``rows`` over ``x`` with its 95% band (``line``: the Line2D style)."""
    mean, low, high, _ = mean_band(rows)
    (handle,) = ax.plot(x, mean, label=label, **line)
    if len(rows) > 1:
        ax.fill_between(x, low, high, color=handle.get_color(), **BAND)


def same_length(rows: Sequence[Sequence[float]]) -> bool:
    return len({len(r) for r in rows}) == 1


CAPTION = "Several seeds: mean over seeds, band = 95% t interval of the mean."

__all__ = ["BAND", "CAPTION", "group_label", "group_of", "groups", "mean_band", "plot_band"]
