"""Class-balanced, seeded subsets of a training set: the small-data regime
(``docs/methods/overfitting.md``)."""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import ConfigError


def balanced_subset(labels, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a class-stratified random subset, as ``datasets.subsample`` in the paper's code.

    For each class ``c`` with ``n_c`` images, ``int(n_c * fraction)`` of its indices are kept,
    drawn without replacement from a ``torch.Generator`` seeded with ``seed`` (classes in
    ascending order), so the subset depends only on ``(labels, fraction, seed)`` and not on
    the global RNG. As in the official code the count is truncated, not rounded: with
    ``n_c = 100``, ``fraction=0.29`` keeps 28 images because ``100 * 0.29 == 28.999...``.
    The paper's one confirmed setting is 6 % of CIFAR-100 (30 images per class).

    Args:
        labels: 1-D integer class labels (tensor, array or list).
        fraction: fraction of each class to keep, in ``(0, 1]``; ``1.0`` keeps everything.
        seed: seed of the per-class draws.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        ConfigError: ``fraction`` outside ``(0, 1]``, or so small that a class keeps nothing.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(
            f"labels must be a 1-D integer tensor, "
            f"got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, numbers.Real)
        or not 0.0 < fraction <= 1.0
    ):
        raise ConfigError(f"subset fraction must be in (0, 1], got {fraction!r}")
    if fraction == 1.0:
        return torch.arange(len(labels), dtype=torch.int64)
    classes, counts = torch.unique(labels, return_counts=True)
    g = torch.Generator().manual_seed(int(seed))
    kept = []
    for c, n in zip(classes.tolist(), counts.tolist()):
        k = int(n * fraction)
        if k == 0:
            raise ConfigError(
                f"subset fraction {fraction:g} leaves class {c} empty ({n} images); "
                f"use a fraction >= {_smallest_fraction(counts.min().item()):g}"
            )
        idx = torch.nonzero(labels == c).flatten()
        kept.append(idx[torch.randperm(n, generator=g)[:k]])
    return torch.sort(torch.cat(kept)).values.to(torch.int64)


def _smallest_fraction(n_min: int) -> float:
    """The smallest 6-decimal fraction f with ``int(n_min * f) >= 1`` (``1/n`` can round down)."""
    f = math.ceil(1e6 / n_min) / 1e6
    while int(n_min * f) < 1:
        f += 1e-6
    return min(f, 1.0)
