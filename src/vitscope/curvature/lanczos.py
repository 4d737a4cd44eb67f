"""Extreme eigenvalues of a symmetric operator: Lanczos, and power iteration as a reference.

Lanczos (Lanczos 1950; Golub & Van Loan, "Matrix Computations", §10.1) builds an orthonormal
Krylov basis ``Q_m`` of ``span{q, Aq, ..., A^{m-1} q}`` in which ``A`` is the tridiagonal
``T_m = Q_mᵀ A Q_m``; the eigenvalues of ``T_m`` (Ritz values) converge to both ends of the
spectrum at once. In floating point the basis loses orthogonality and ghost copies of
converged eigenvalues appear, so every new vector is re-orthogonalised against the whole
basis, twice, with classical Gram-Schmidt ("twice is enough", Giraud et al. 2005). ``T_m`` is
kept in float64 and diagonalised with :func:`torch.linalg.eigh`.

A Ritz pair ``(θ_i, Q_m s_i)`` has residual ``||A Q_m s_i - θ_i Q_m s_i|| = |β_m s_{m,i}|``,
known without another product, so the iteration stops as soon as the wanted Ritz values
are accurate (``docs/methods/decisions.md``: about 4x fewer Hessian-vector products than power
iteration).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from vitscope.curvature.hvp import MatVec, _resolve_operator
from vitscope.errors import ConfigError

WHICH = ("LM", "LA", "SA")


@dataclass
class LanczosResult:
    """What one Lanczos run found.

    Attributes:
        eigenvalues: ``(k',)`` float64, the wanted Ritz values (``k' = min(k, m)``) ordered by
            ``which``: magnitude descending (LM), descending (LA) or ascending (SA).
        eigenvectors: ``(dim, k')`` Ritz vectors in the vector dtype, or ``None`` unless
            ``return_vectors=True``.
        residuals: ``(k',)`` float64, ``|β_m s_{m,i}|`` of each wanted Ritz pair.
        largest: the largest algebraic Ritz value of the same run.
        smallest: the smallest (most negative) algebraic Ritz value of the same run.
        ritz_values: ``(m,)`` float64, all Ritz values, ascending.
        ritz_residuals: ``(m,)`` float64, residuals of ``ritz_values``.
        num_matvecs: operator applications used (``m``).
        converged: every wanted Ritz pair met the tolerance, or the Krylov space became
            invariant (then the Ritz values are exact eigenvalues).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    largest: float
    smallest: float
    ritz_values: Tensor
    ritz_residuals: Tensor
    num_matvecs: int
    converged: bool


@dataclass
class PowerIterationResult:
    """Top eigenvalues found by power iteration with deflation.

    Attributes:
        eigenvalues: ``(k,)`` float64 Rayleigh quotients, in the order found (which is
            magnitude descending when each run converged).
        eigenvectors: ``(dim, k)`` or ``None`` unless ``return_vectors=True``.
        num_matvecs: operator applications used.
        converged: every eigenvalue met the tolerance before ``max_iter``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    num_matvecs: int
    converged: bool


def _check_args(k: int, max_iter: int, tol: float, which: str = "LM") -> None:
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ConfigError(f"tol must be > 0, got {tol}")
    if which not in WHICH:
        raise ConfigError(f"which must be one of {WHICH}, got {which!r}")


def _start_vector(
    dim: int, seed: int, dtype: torch.dtype, device: torch.device, dist: str = "normal"
) -> Tensor:
    """A seeded random vector, drawn on the CPU so the same seed gives it on every device."""
    gen = torch.Generator().manual_seed(seed)
    if dist == "normal":
        v = torch.randn(dim, generator=gen, dtype=torch.float64)
    elif dist == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64) * 2 - 1
    else:
        raise ConfigError(f"dist must be 'rademacher' or 'normal', got {dist!r}")
    return v.to(dtype=dtype, device=device)


class KrylovBasis:
    """The orthonormal Lanczos basis ``Q_m`` (rows), grown :attr:`CHUNK` vectors at a time.

    Only the rows used are allocated (rounded up to a chunk), never ``max_iter`` of them up
    front: a ResNet-50 (25.6M parameters, float32) costs 0.8 GB per chunk of 8 vectors,
    and a run that converges in 30 products holds four chunks (3.3 GB), not the 10 GB of a
    100-product reservation.
    """

    CHUNK = 8

    def __init__(self, like: Tensor):
        self.dim, self.dtype, self.device = like.numel(), like.dtype, like.device
        self._chunks: list[Tensor] = []
        self.m = 0

    def __len__(self) -> int:
        return self.m

    def append(self, q: Tensor) -> None:
        if self.m == len(self._chunks) * self.CHUNK:
            self._chunks.append(q.new_empty((self.CHUNK, self.dim)))
        self._chunks[-1][self.m % self.CHUNK] = q
        self.m += 1

    def _parts(self) -> Iterator[Tensor]:
        for c, chunk in enumerate(self._chunks):
            rows = min(self.CHUNK, self.m - c * self.CHUNK)
            if rows > 0:
                yield chunk[:rows]

    def project(self, w: Tensor) -> Tensor:
        """``Q_m w`` ``(m,)``."""
        return torch.cat([part @ w for part in self._parts()])

    def combine(self, coeffs: Tensor) -> Tensor:
        """``Q_mᵀ coeffs``: ``(dim,)`` for ``(m,)`` coefficients, ``(dim, k)`` for ``(m, k)``."""
        out, start = None, 0
        for part in self._parts():
            c = coeffs[start : start + len(part)].to(dtype=part.dtype, device=part.device)
            term = part.T @ c
            out = term if out is None else out + term
            start += len(part)
        return out

    def rows(self) -> Tensor:
        """The basis as one ``(m, dim)`` tensor (a copy)."""
        return torch.cat(list(self._parts()))


def lanczos_steps(
    matvec: MatVec, q0: Tensor, max_steps: int
) -> Iterator[tuple[Tensor, Tensor, KrylovBasis]]:
    """Lanczos with full re-orthogonalisation from ``q0``, yielding after every step.

    After step ``m`` yields ``(alpha, beta, basis)``: float64 tensors of length ``m`` such
    that ``T_m`` has diagonal ``alpha`` and off-diagonal ``beta[:-1]``, while ``beta[-1]`` is
    the coupling to the next basis vector (the residual scale of every Ritz pair); and the
    orthonormal basis ``Q_m`` (a :class:`KrylovBasis` of ``m`` vectors in ``q0``'s dtype).
    The generator ends after ``max_steps`` or, earlier, when the Krylov space is invariant
    (``β_m`` at the rounding level of ``||A||``).

    Re-orthogonalisation needs the whole basis, so it is stored: ``m * dim`` numbers,
    allocated as the iterations use them (:class:`KrylovBasis`).
    """
    eps = torch.finfo(q0.dtype).eps
    basis = KrylovBasis(q0)
    basis.append(q0 / q0.norm())
    q = basis._chunks[0][0]
    alpha: list[float] = []
    beta: list[float] = []
    a_norm = 0.0  # running lower bound on ||A|| from ||A q_j||, for the breakdown test
    for j in range(max_steps):
        w = matvec(q).to(q0.dtype)
        a_norm = max(a_norm, float(w.norm()))
        a_j = 0.0
        for _ in range(2):  # classical Gram-Schmidt, twice, against the whole basis
            # (j+1,): h[j] is alpha_j, h[j-1] is beta_{j-1}, the rest rounding
            h = basis.project(w)
            w = w - basis.combine(h)
            a_j += float(h[j])
        alpha.append(a_j)
        beta.append(float(w.norm()))
        yield (
            torch.tensor(alpha, dtype=torch.float64),
            torch.tensor(beta, dtype=torch.float64),
            basis,
        )
        if j + 1 == max_steps or beta[-1] <= 100 * eps * a_norm:
            return
        q = w / beta[-1]
        basis.append(q)


def tridiagonal_eigh(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigen-decomposition of the Lanczos tridiagonal, in float64.

    Returns:
        ``(theta, s, residuals)``: Ritz values ascending ``(m,)``, eigenvectors of ``T_m``
        as columns ``(m, m)``, and Ritz residuals ``|β_m s_{m,i}|`` ``(m,)``.
    """
    t = torch.diag(alpha) + torch.diag(beta[:-1], 1) + torch.diag(beta[:-1], -1)
    theta, s = torch.linalg.eigh(t)
    return theta, s, (beta[-1] * s[-1]).abs()


def _order(theta: Tensor, which: str) -> Tensor:
    """Indices of ``theta`` in the order of ``which`` (wanted first)."""
    if which == "LM":
        return torch.argsort(theta.abs(), descending=True, stable=True)
    return torch.argsort(theta, descending=(which == "LA"), stable=True)


def lanczos(
    matvec: MatVec | Tensor,
    dim: int | None = None,
    *,
    k: int = 5,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    which: str = "LM",
    return_vectors: bool = False,
    v0: Tensor | None = None,
) -> LanczosResult:
    """The ``k`` extreme eigenvalues of a symmetric operator by Lanczos.

    Full re-orthogonalisation (classical Gram-Schmidt twice against all basis vectors),
    float64 tridiagonal diagonalised with :func:`torch.linalg.eigh`. Stops when each of the
    ``k`` wanted Ritz values has ``|β_m s_{m,i}| <= tol * max(|θ_i|, sqrt(eps) max_j |θ_j|)``
    (relative residual, floored near the rounding level of the vectors so that near-zero
    eigenvalues can converge; ``eps`` of the vector dtype), when the Krylov space is
    invariant, or after ``min(max_iter, dim)`` products. The same run gives both ends of the
    spectrum: ``largest`` and ``smallest`` (check ``ritz_residuals`` before trusting an end
    that is not among the wanted ones).

    A single start vector sees one copy of each distinct eigenvalue, so an exactly repeated
    eigenvalue is reported once (power iteration with deflation would repeat it).

    Args:
        matvec: ``v -> A v`` (e.g. a :class:`HessianOperator`) or a dense symmetric matrix.
        dim: length of the vectors; taken from ``matvec.dim`` / the matrix when ``None``.
        k: how many eigenvalues to return.
        max_iter: maximum number of products (Krylov dimension).
        tol: relative residual tolerance.
        seed: seed of the Gaussian start vector.
        dtype, device: of the Krylov vectors; default from the operator.
        which: ``"LM"`` largest magnitude (PyHessian's top-k, ``docs/methods/hessian.md``),
        ``"LA"`` largest
            algebraic, ``"SA"`` smallest algebraic.
        return_vectors: also return the Ritz vectors of the wanted values.
        v0: the start vector (any nonzero scale) instead of the seeded Gaussian one, e.g.
            a warm start from a nearby operator's Ritz vectors.
    """
    _check_args(k, max_iter, tol, which)
    matvec, dim, dtype, device = _resolve_operator(matvec, dim, dtype, device)
    max_steps = min(max_iter, dim)
    floor = torch.finfo(dtype).eps ** 0.5
    converged = False
    if v0 is None:
        q0 = _start_vector(dim, seed, dtype, device)
    else:
        q0 = v0.reshape(-1).to(dtype=dtype, device=device)
        if q0.numel() != dim or not bool(torch.isfinite(q0).all()) or float(q0.norm()) == 0:
            raise ConfigError(f"v0 must be a finite nonzero vector of length {dim}")
    for state in lanczos_steps(matvec, q0, max_steps):
        alpha, beta, basis = state
        theta, s, res = tridiagonal_eigh(alpha, beta)
        wanted = _order(theta, which)[:k]
        scale = torch.clamp(theta[wanted].abs(), min=floor * theta.abs().max().item())
        if alpha.numel() >= k and bool((res[wanted] <= tol * scale).all()):
            converged = True
            break
    m = alpha.numel()
    # Ending before max_steps without convergence means an invariant Krylov space, and a
    # full-dimensional one is the whole space: either way the Ritz values are exact.
    converged = converged or m < max_steps or m == dim
    vectors = None
    if return_vectors:
        vectors = basis.combine(s[:, wanted])
        vectors = vectors / vectors.norm(dim=0, keepdim=True)
    return LanczosResult(
        eigenvalues=theta[wanted],
        eigenvectors=vectors,
        residuals=res[wanted],
        largest=float(theta[-1]),
        smallest=float(theta[0]),
        ritz_values=theta,
        ritz_residuals=res,
        num_matvecs=m,
        converged=converged,
    )


def power_iteration(
    matvec: MatVec | Tensor,
    dim: int | None = None,
    *,
    k: int = 5,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    return_vectors: bool = False,
) -> PowerIterationResult:
    """Top-``k`` eigenvalues by magnitude with power iteration and deflation, as PyHessian.

    Ghorbani, Krishnan & Xiao (2019), "An Investigation into Neural Net Optimization via
    Hessian Eigenvalue Density" / PyHessian ``hessian.eigenvalues``: for each ``i < k``,
    from a fresh random vector, repeat ``v <- orth(v, v_1..v_{i-1})``, ``λ = vᵀAv``,
    ``v <- Av / ||Av||`` until ``|λ - λ_prev| / (|λ_prev| + 1e-6) < tol`` or ``max_iter``.
    Kept as the reference the paper used (``docs/methods/hessian.md``) and for the matvec-count
    comparison.
    """
    _check_args(k, max_iter, tol)
    matvec, dim, dtype, device = _resolve_operator(matvec, dim, dtype, device)
    k = min(k, dim)
    found: list[Tensor] = []
    values: list[float] = []
    num_matvecs = 0
    converged = True
    for i in range(k):
        v = _start_vector(dim, seed + i, dtype, device)
        v = v / v.norm()
        value = None
        for _ in range(max_iter):
            for u in found:  # deflation by projection, as PyHessian's orthnormal()
                v = v - (u @ v) * u
            v = v / v.norm()
            av = matvec(v).to(dtype)
            num_matvecs += 1
            new = float(av.double() @ v.double())
            v = av / av.norm()
            if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                value = new
                break
            value = new
        else:
            converged = False
        values.append(value)
        found.append(v)
    vectors = torch.stack(found, dim=1) if return_vectors else None
    return PowerIterationResult(
        eigenvalues=torch.tensor(values, dtype=torch.float64),
        eigenvectors=vectors,
        num_matvecs=num_matvecs,
        converged=converged,
    )
