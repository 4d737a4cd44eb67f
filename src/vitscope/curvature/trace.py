"""Trace of an operator from matrix-vector products alone: Hutchinson's estimator.

``tr(A) = E[vᵀ A v]`` for any random ``v`` with ``E[v vᵀ] = I`` (Hutchinson 1989, "A
Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
Splines"). Rademacher probes give the smallest variance among i.i.d. probes,
``2 Σ_{i≠j} A_ij²``, which is zero for a diagonal ``A``; Gaussian probes give ``2 ||A||_F²``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vitscope.curvature.hvp import MatVec, _resolve_operator
from vitscope.curvature.lanczos import _start_vector
from vitscope.errors import ConfigError


@dataclass
class TraceResult:
    """A Monte-Carlo trace estimate.

    Attributes:
        estimate: mean of ``samples``.
        std_error: standard error of the mean, ``std(samples, ddof=1) / sqrt(n)`` (``nan``
            for a single sample).
        samples: ``(n,)`` float64 per-probe values ``vᵀ A v``.
    """

    estimate: float
    std_error: float
    samples: Tensor


def hutchinson_trace(
    matvec: MatVec | Tensor,
    dim: int | None = None,
    *,
    num_matvecs: int = 100,
    seed: int = 0,
    dist: str = "rademacher",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> TraceResult:
    """Hutchinson's estimate ``tr(A) ≈ (1/n) Σ_i v_iᵀ A v_i`` with ``n = num_matvecs``.

    Args:
        matvec: ``v -> A v`` (e.g. a :class:`HessianOperator`) or a dense square matrix.
        dim: vector length, taken from the operator when ``None``.
        num_matvecs: number of probes (one product each).
        seed: probe ``i`` is drawn with seed ``seed + i``.
        dist: ``"rademacher"`` (±1 entries) or ``"normal"``.
        dtype, device: of the probes; default from the operator.
    """
    if num_matvecs < 1:
        raise ConfigError(f"num_matvecs must be >= 1, got {num_matvecs}")
    matvec, dim, dtype, device = _resolve_operator(matvec, dim, dtype, device)
    samples = torch.empty(num_matvecs, dtype=torch.float64)
    for i in range(num_matvecs):
        v = _start_vector(dim, seed + i, dtype, device, dist=dist)
        samples[i] = (v.double() @ matvec(v).double()).cpu()
    std_error = float(samples.std() / math.sqrt(num_matvecs)) if num_matvecs > 1 else math.nan
    return TraceResult(estimate=float(samples.mean()), std_error=std_error, samples=samples)
