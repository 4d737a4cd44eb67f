"""The cue-conflict shape-bias count (Geirhos et al. 2019), without torch: shared by the
``cueconflict`` analysis and the report's ``shape`` claim, which resamples images."""

from __future__ import annotations

import numpy as np


def shape_bias_counts(
    shape: np.ndarray, texture: np.ndarray, decision: np.ndarray
) -> tuple[int, int, int, np.ndarray]:
    """``(shape decisions, texture decisions, other decisions, counted mask)`` over the
    images whose shape and texture class differ and are both mapped (>= 0)."""
    counted = (shape >= 0) & (texture >= 0) & (shape != texture)
    by_shape = counted & (decision == shape)
    by_texture = counted & (decision == texture)
    n_shape, n_texture = int(by_shape.sum()), int(by_texture.sum())
    return n_shape, n_texture, int(counted.sum()) - n_shape - n_texture, counted
