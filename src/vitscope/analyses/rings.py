"""The L∞ rings of a loss-landscape grid, torch-free (the landscape analysis summarises them,
the report's claim rules read per-batch rises off them; ``docs/methods/landscape.md``)."""

from __future__ import annotations

import numpy as np

RING_STEP = 0.1  # spacing of the L∞ rings summarised (``docs/methods/landscape.md``'s table)


def ring_index(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The ring of every grid point, ``(len(ys), len(xs))`` ints: ring ``k`` (radius
    ``k * RING_STEP``) holds the points whose L∞ radius ``max(|a|, |b|)`` lies in
    ``(r - 0.05, r + 0.05]``; ring 1 also takes anything nearer than that, ring 0 is the
    centre alone."""
    a, b = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))
    radius = np.maximum(np.abs(a), np.abs(b))
    ring = np.ceil(radius / RING_STEP - 0.5 - 1e-9).astype(int)
    ring[(radius > 1e-12) & (ring < 1)] = 1
    ring[radius <= 1e-12] = 0
    return ring


__all__ = ["RING_STEP", "ring_index"]
