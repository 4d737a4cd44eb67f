"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

For a probe ``v`` with ``E[v vᵀ] = I`` and ``q = v / ||v||``, ``m`` Lanczos steps from ``q``
give the Gauss quadrature rule ``qᵀ f(A) q ≈ Σ_i τ_i² f(θ_i)``, with nodes ``θ_i`` the Ritz
values and weights ``τ_i²`` the squared first components of the eigenvectors of ``T_m``
(Golub & Meurant 1994). Averaging over probes estimates the normalised spectral density
``φ(t) = (1/n) Σ_j δ(t - λ_j)`` and ``tr f(A) / n`` (Ubaru, Chen & Saad 2017, "Fast
Estimation of tr(f(A)) via Stochastic Lanczos Quadrature"; Ghorbani, Krishnan & Xiao 2019,
"An Investigation into Neural Net Optimization via Hessian Eigenvalue Density", PyHessian).
The rule is exact for polynomials of degree ``<= 2m - 1``, so :meth:`SLQResult.moment`
with ``p < 2m`` is exactly the Hutchinson estimate with the same probes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from vitscope.curvature.hvp import MatVec, _resolve_operator
from vitscope.curvature.lanczos import _start_vector, lanczos_steps, tridiagonal_eigh
from vitscope.errors import ConfigError


@dataclass
class SLQResult:
    """Quadrature nodes and weights of every probe.

    Attributes:
        nodes: ``(num_probes, num_steps)`` float64 Ritz values (ascending per probe).
        weights: ``(num_probes, num_steps)`` float64, each row sums to 1. A probe whose
            Krylov space became invariant early has its unused slots at node 0, weight 0.
        dim: side of the operator.
        num_matvecs: operator applications used in total.
    """

    nodes: Tensor
    weights: Tensor
    dim: int
    num_matvecs: int

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """Gaussian-broadened density ``φ_σ(t) = mean_probes Σ_i w_i N(t; θ_i, σ²)``.

        Each Gaussian is normalised on the real line, so ``φ_σ`` integrates to 1; on a grid
        that covers the nodes by a few ``σ`` a trapezoid sum is 1 up to truncation.

        Args:
            grid: ``(G,)`` points ``t``.
            sigma: broadening, in eigenvalue units (> 0).

        Returns:
            ``(G,)`` float64 density values.
        """
        if not sigma > 0:
            raise ConfigError(f"sigma must be > 0, got {sigma}")
        t = grid.detach().to(torch.float64).cpu().reshape(-1, 1, 1)  # (G, 1, 1)
        z = (t - self.nodes) / sigma  # (G, probes, steps)
        gauss = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return (gauss * self.weights).sum(-1).mean(-1)

    def probe_moments(self, p: int) -> Tensor:
        """``(num_probes,)``: each probe's quadrature estimate of ``tr(A^p) / dim``."""
        return (self.weights * self.nodes.pow(p)).sum(-1)

    def moment(self, p: int) -> float:
        """Estimate of ``tr(A^p) / dim`` (the ``p``-th moment of the spectral density)."""
        return float(self.probe_moments(p).mean())


def slq_density(
    matvec: MatVec | Tensor,
    dim: int | None = None,
    *,
    num_probes: int = 4,
    num_steps: int = 30,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> SLQResult:
    """Stochastic Lanczos quadrature of the spectral density of a symmetric operator.

    Per Rademacher probe ``v`` (drawn with seed ``seed + probe``): ``num_steps`` Lanczos steps
    with full re-orthogonalisation from ``v / ||v||``; nodes are the Ritz values and weights
    the squared first components of the eigenvectors of the float64 tridiagonal. PyHessian
    uses ``num_probes=1, num_steps=100``; the defaults here trade steps for probes, which
    reduces the variance of the moments.

    Args:
        matvec: ``v -> A v`` or a dense symmetric matrix.
        dim: vector length, taken from the operator when ``None``.
        num_probes: number of random probes.
        num_steps: Lanczos steps (nodes) per probe; capped at ``dim``.
        seed: seed of the first probe.
        dtype, device: of the Krylov vectors; default from the operator.
    """
    if num_probes < 1:
        raise ConfigError(f"num_probes must be >= 1, got {num_probes}")
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    matvec, dim, dtype, device = _resolve_operator(matvec, dim, dtype, device)
    steps = min(num_steps, dim)
    nodes = torch.zeros(num_probes, steps, dtype=torch.float64)
    weights = torch.zeros(num_probes, steps, dtype=torch.float64)
    num_matvecs = 0
    for i in range(num_probes):
        v = _start_vector(dim, seed + i, dtype, device, dist="rademacher")
        # run to the end (num_steps, or an invariant subspace) and keep the last state
        alpha, beta, _ = deque(lanczos_steps(matvec, v, steps), maxlen=1).pop()
        theta, s, _ = tridiagonal_eigh(alpha, beta)
        m = theta.numel()
        nodes[i, :m] = theta
        weights[i, :m] = s[0] ** 2
        num_matvecs += m
    return SLQResult(nodes=nodes, weights=weights, dim=dim, num_matvecs=num_matvecs)
