"""Curvature numerics against slow, obvious float64 references (style rule 8).

References: ``torch.linalg.eigvalsh`` of matrices with known spectra, and the dense Hessian
from ``torch.func.hessian`` of tiny real models (MLP, CNN with eval-mode BatchNorm, explicit
softmax self-attention).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from vitscope.curvature import (
    HessianOperator,
    dense_hessian,
    flatten,
    hutchinson_trace,
    lanczos,
    lanczos_steps,
    power_iteration,
    slq_density,
    unflatten,
)
from vitscope.errors import ConfigError, VitscopeError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def by_magnitude(eigs: torch.Tensor, k: int) -> torch.Tensor:
    return eigs[torch.argsort(eigs.abs(), descending=True)][:k]


def matrix_with_spectrum(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigs) Qᵀ`` with a random orthogonal ``Q`` (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=F64))
    a = q @ torch.diag(eigs.to(F64)) @ q.T
    return (a + a.T) / 2


def uniform(n: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64) * (hi - lo) + lo


SPECTRA = {
    # outliers of both signs over a bulk in [-1, 1]
    "separated": torch.cat(
        [torch.tensor([100.0, -80.0, 60.0, 45.0, -40.0]), uniform(195, -1, 1, 1)]
    ),
    # a continuum reaching further on the negative side than the positive one
    "negative_bulk": uniform(120, -7, 5, 2),
    # a tight cluster at the top and a negative pair, over a bulk
    "clustered": torch.cat(
        [torch.tensor([10.0, 10.001, 10.002, -9.5, -9.499]), uniform(295, -1, 2, 3)]
    ),
    "small_gaussian": torch.randn(50, generator=torch.Generator().manual_seed(4), dtype=F64),
}


# ---------------------------------------------------------------- Lanczos on known spectra


@pytest.mark.parametrize("name", list(SPECTRA))
def test_lanczos_matches_eigvalsh(name):
    a = matrix_with_spectrum(SPECTRA[name])
    ref = torch.linalg.eigvalsh(a)
    res = lanczos(lambda v: a @ v, a.shape[0], k=5, tol=1e-10, max_iter=a.shape[0], dtype=F64)
    assert res.converged
    assert res.eigenvalues.dtype == F64
    torch.testing.assert_close(res.eigenvalues, by_magnitude(ref, 5), rtol=1e-6, atol=0)
    assert res.largest == pytest.approx(ref[-1].item(), rel=1e-6)
    assert res.smallest == pytest.approx(ref[0].item(), rel=1e-6)
    assert res.residuals.shape == (5,) and res.eigenvectors is None


def test_lanczos_stops_on_residuals_before_max_iter():
    a = matrix_with_spectrum(SPECTRA["separated"])
    ref = torch.linalg.eigvalsh(a)
    res = lanczos(a, k=5, tol=1e-6, max_iter=200)
    print(f"\nseparated spectrum, dim 200: Lanczos stopped after {res.num_matvecs} matvecs")
    assert res.converged and res.num_matvecs < 60
    assert bool((res.residuals <= 1e-6 * res.eigenvalues.abs()).all())
    torch.testing.assert_close(res.eigenvalues, by_magnitude(ref, 5), rtol=1e-8, atol=0)
    # both ends of the spectrum come out of the same run
    assert res.largest == pytest.approx(100.0, rel=1e-8)
    assert res.smallest == pytest.approx(-80.0, rel=1e-8)


def test_lanczos_does_not_stop_early_when_tolerance_is_unreachable():
    a = matrix_with_spectrum(SPECTRA["negative_bulk"])
    res = lanczos(a, k=5, tol=1e-6, max_iter=10)
    assert res.num_matvecs == 10 and not res.converged


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_lanczos_which_orders(which):
    a = matrix_with_spectrum(SPECTRA["negative_bulk"])
    ref = torch.linalg.eigvalsh(a)
    want = {"LA": ref.flip(0)[:3], "SA": ref[:3], "LM": by_magnitude(ref, 3)}[which]
    res = lanczos(a, k=3, tol=1e-10, max_iter=120, which=which)
    torch.testing.assert_close(res.eigenvalues, want, rtol=1e-6, atol=0)


def test_lanczos_seeds_are_reproducible():
    a = matrix_with_spectrum(SPECTRA["clustered"])
    r1, r2 = lanczos(a, k=5, tol=1e-4, seed=3), lanczos(a, k=5, tol=1e-4, seed=3)
    assert torch.equal(r1.ritz_values, r2.ritz_values) and r1.num_matvecs == r2.num_matvecs
    r3 = lanczos(a, k=5, tol=1e-4, seed=4)
    assert not torch.equal(r1.ritz_values, r3.ritz_values)


def test_lanczos_invariant_subspace_and_repeated_eigenvalues():
    # three distinct eigenvalues, each repeated: the Krylov space is 3-dimensional
    a = matrix_with_spectrum(torch.tensor([5.0, -2.0, 1.0]).repeat_interleave(20))
    res = lanczos(a, k=5, tol=1e-8, max_iter=60)
    assert res.converged and res.num_matvecs == 3
    torch.testing.assert_close(res.eigenvalues, torch.tensor([5.0, -2.0, 1.0], dtype=F64))


def test_lanczos_float32_vectors_and_ritz_vectors():
    a64 = matrix_with_spectrum(SPECTRA["separated"])
    a = a64.float()
    res = lanczos(a, k=3, tol=1e-4, return_vectors=True)
    assert res.eigenvalues.dtype == F64 and res.eigenvectors.dtype == torch.float32
    torch.testing.assert_close(res.eigenvalues, torch.tensor([100.0, -80.0, 60.0], dtype=F64))
    x = res.eigenvectors
    torch.testing.assert_close(x.T @ x, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(a @ x, x * res.eigenvalues.float(), atol=1e-2, rtol=0)


def test_lanczos_rejects_bad_arguments():
    a = torch.eye(4, dtype=F64)
    with pytest.raises(ConfigError, match="which"):
        lanczos(a, which="BE")
    with pytest.raises(ConfigError, match="k must"):
        lanczos(a, k=0)
    with pytest.raises(VitscopeError, match="dim"):
        lanczos(lambda v: v)
    with pytest.raises(VitscopeError, match="dim=5"):
        lanczos(a, 5)


def test_power_iteration_reference():
    a = matrix_with_spectrum(SPECTRA["separated"])
    res = power_iteration(a, k=5, tol=1e-8, max_iter=500)
    assert res.converged
    torch.testing.assert_close(
        res.eigenvalues,
        torch.tensor([100.0, -80.0, 60.0, 45.0, -40.0], dtype=F64),
        rtol=1e-5,
        atol=0,
    )


# ------------------------------------------------------------ Hutchinson and SLQ, dense


def test_hutchinson_on_dense_matrices():
    d = matrix_with_spectrum(SPECTRA["negative_bulk"])
    ref = torch.trace(d).item()
    for dist in ("rademacher", "normal"):
        est = hutchinson_trace(d, num_matvecs=400, dist=dist, seed=1)
        assert est.samples.shape == (400,)
        assert abs(est.estimate - ref) <= 3 * est.std_error, (dist, est.estimate, ref)
    diag = torch.diag(SPECTRA["negative_bulk"])  # Rademacher: v^T D v = tr(D) exactly
    est = hutchinson_trace(diag, num_matvecs=3)
    assert est.estimate == pytest.approx(ref, rel=1e-12) and est.std_error < 1e-10
    with pytest.raises(ConfigError, match="dist"):
        hutchinson_trace(diag, dist="uniform")


def test_slq_on_dense_matrices():
    eigs = SPECTRA["separated"]
    # Rademacher probes on a diagonal matrix: every quadrature moment p < 2m is exact
    slq = slq_density(torch.diag(eigs), num_probes=2, num_steps=10)
    for p in (1, 2, 3):
        assert slq.moment(p) == pytest.approx(eigs.pow(p).mean().item(), rel=1e-10)
    assert slq.nodes.shape == slq.weights.shape == (2, 10)
    torch.testing.assert_close(slq.weights.sum(1), torch.ones(2, dtype=F64))
    assert slq.num_matvecs == 20
    # the broadened density is normalised and puts its mass where the spectrum is
    grid = torch.linspace(-120, 120, 4801, dtype=F64)
    dens = slq.density(grid, sigma=1.0)
    assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-6)
    bulk = (grid.abs() <= 4).to(F64)
    assert torch.trapezoid(dens * bulk, grid).item() > 0.9  # 195 of 200 eigenvalues
    # num_steps is capped at dim, and an invariant Krylov space leaves zero weights
    small = slq_density(torch.diag(torch.tensor([1.0, 1.0, 3.0], dtype=F64)), num_steps=10)
    assert small.nodes.shape == (4, 3)
    assert small.moment(1) == pytest.approx(5 / 3) and small.moment(2) == pytest.approx(11 / 3)


# ------------------------------------------------------------------ tiny real models


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):  # (B, 3, 8, 8)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 4, 8, 8)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 6, 4, 4)
        return self.fc(x.mean((2, 3)))


class TinyAttention(nn.Module):
    """One head, explicit ``softmax(q kᵀ / sqrt(d)) v``: fused SDPA has no double backward."""

    def __init__(self, d_in: int = 4, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.d = d
        self.embed, self.qkv = nn.Linear(d_in, d), nn.Linear(d, 3 * d)
        self.proj, self.head = nn.Linear(d, d), nn.Linear(d, classes)

    def forward(self, x):  # (B, T, d_in)
        h = self.embed(x)  # (B, T, d)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d), dim=-1)  # (B, T, T)
        h = h + self.proj(att @ v)
        return self.head(h.mean(1))


def make_model(name: str, dtype=F64):
    torch.manual_seed(0)
    if name == "mlp":
        model, x, y = TinyMLP(), torch.randn(24, 6), torch.randint(0, 4, (24,))
    elif name == "cnn":
        model, x, y = TinyCNN(), torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
        for bn in (model.bn1, model.bn2):  # non-trivial frozen statistics and affine params
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.normal_(1, 0.2)
            bn.bias.data.normal_(0, 0.2)
    else:
        model, x, y = TinyAttention(), torch.randn(6, 5, 4), torch.randint(0, 3, (6,))
    return model.to(dtype).eval(), x.to(dtype), y


@dataclass
class Case:
    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    hessian: torch.Tensor  # dense reference (dim, dim)
    eigs: torch.Tensor  # eigvalsh of it, ascending

    def loss(self) -> torch.Tensor:
        return F.cross_entropy(self.model(self.x), self.y)

    @property
    def params(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def operator(self, **kw) -> HessianOperator:
        return HessianOperator(self.loss, self.params, **kw)


def dense_reference(model, x, y) -> torch.Tensor:
    """``torch.func.hessian`` of the loss as a function of the flat parameter vector."""
    names, params = zip(*model.named_parameters())

    def loss_of_flat(theta):
        out = functional_call(model, dict(zip(names, unflatten(theta, params))), (x,))
        return F.cross_entropy(out, y)

    return dense_hessian(loss_of_flat, flatten(params))


@functools.cache
def make_case(name: str) -> Case:
    model, x, y = make_model(name)
    h = dense_reference(model, x, y)
    torch.testing.assert_close(h, h.T)
    return Case(name, model, x, y, h, torch.linalg.eigvalsh(h))


@pytest.fixture(params=["mlp", "cnn", "attention"])
def case(request) -> Case:
    return make_case(request.param)


def test_hvp_matches_dense_hessian(case):
    op = case.operator()
    assert op.dim == case.hessian.shape[0] and op.dtype == F64
    v = torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(op.matvec(v[:, 0]), case.hessian @ v[:, 0], rtol=1e-9, atol=1e-12)
    assert op.num_matvecs == 4
    with pytest.raises(VitscopeError, match="entries"):
        op.matvec(v[:-1, 0])
    op.close()
    with pytest.raises(VitscopeError, match="close"):
        op @ v[:, 0]


def test_lanczos_matches_dense_spectrum(case):
    with case.operator() as op:
        top = lanczos(op, k=5, tol=1e-10, max_iter=op.dim)
        low = lanczos(op, k=1, which="SA", tol=1e-8, max_iter=op.dim)
    print(f"\n{case.name}: dim {op.dim}, top-5 {top.eigenvalues.tolist()}, min {low.smallest:.4g}")
    assert top.converged and low.converged
    torch.testing.assert_close(top.eigenvalues, by_magnitude(case.eigs, 5), rtol=1e-6, atol=0)
    assert case.eigs[0] < 0  # the point is indefinite, so "most negative" means something
    assert low.smallest == pytest.approx(case.eigs[0].item(), rel=1e-6)
    assert low.eigenvalues.item() == low.smallest
    assert top.largest == pytest.approx(case.eigs[-1].item(), rel=1e-6)


def test_hutchinson_trace_of_hessian(case):
    est = hutchinson_trace(case.operator(), num_matvecs=1000)
    exact = torch.trace(case.hessian).item()
    print(f"\n{case.name}: trace {exact:.5g}, Hutchinson {est.estimate:.5g} ± {est.std_error:.2g}")
    assert abs(est.estimate - exact) <= 3 * est.std_error
    # Rademacher probes: Var[vᵀHv] = 2 Σ_{i≠j} H_ij²
    h = case.hessian
    var = 2 * (h.pow(2).sum() - h.diag().pow(2).sum()).item()
    assert est.samples.var().item() == pytest.approx(var, rel=0.25)


def test_slq_moments_of_hessian(case):
    op = case.operator()
    slq = slq_density(op, num_probes=50, num_steps=15)
    for p in (1, 2):
        exact = case.eigs.pow(p).mean().item()
        per_probe = slq.probe_moments(p)
        se = per_probe.std().item() / math.sqrt(len(per_probe))
        print(f"\n{case.name}: tr(H^{p})/d {exact:.4g}, SLQ {slq.moment(p):.4g} ± {se:.2g}")
        assert abs(slq.moment(p) - exact) <= 4 * se
    # Gauss quadrature is exact for degree < 2m: per probe it is Hutchinson's qᵀHq
    hutch = hutchinson_trace(op, num_matvecs=50)
    torch.testing.assert_close(slq.probe_moments(1), hutch.samples / op.dim, rtol=1e-9, atol=1e-12)


def test_l2_shift_moves_every_eigenvalue_by_wd(case):
    wd = 0.05
    shifted = case.operator(l2_shift=wd)
    # the analytic shift is the Hessian of 0.5 * wd * ||theta||^2 put into the loss
    l2 = lambda: case.loss() + 0.5 * wd * sum(p.pow(2).sum() for p in case.params)  # noqa: E731
    regularised = HessianOperator(l2, case.params)
    v = torch.randn(shifted.dim, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(shifted @ v, regularised @ v, rtol=1e-9, atol=1e-12)
    dense_shifted = shifted @ torch.eye(shifted.dim, dtype=F64)  # column by column
    spectrum = torch.linalg.eigvalsh((dense_shifted + dense_shifted.T) / 2)
    torch.testing.assert_close(
        spectrum - case.eigs, torch.full_like(spectrum, wd), rtol=0, atol=1e-10
    )
    top = lanczos(shifted, k=1, which="LA", tol=1e-10, max_iter=shifted.dim)
    assert top.eigenvalues.item() == pytest.approx(case.eigs[-1].item() + wd, rel=1e-8)


def test_parameters_unchanged_bitwise(case):
    before = [p.detach().clone() for p in case.params]
    buffers = [b.clone() for b in case.model.buffers()]
    with torch.no_grad():  # building and applying must not depend on the caller's grad mode
        op = case.operator(l2_shift=0.1)
        lanczos(op, k=2, max_iter=10)
        hutchinson_trace(op, num_matvecs=3)
        slq_density(op, num_probes=1, num_steps=5)
    op.close()
    assert all(torch.equal(a, p) for a, p in zip(before, case.params))
    assert all(torch.equal(a, b) for a, b in zip(buffers, case.model.buffers()))
    assert all(p.grad is None for p in case.params)


def test_lanczos_needs_fewer_matvecs_than_power_iteration(case):
    op = case.operator()
    lz = lanczos(op, k=5, tol=1e-3, max_iter=100)
    pw = power_iteration(op, k=5, tol=1e-3, max_iter=100)
    ref = by_magnitude(case.eigs, 5)
    err_lz = ((lz.eigenvalues - ref).abs() / ref.abs()).max().item()
    err_pw = ((pw.eigenvalues - ref).abs() / ref.abs()).max().item()
    ratio = pw.num_matvecs / lz.num_matvecs
    print(
        f"\n{case.name} (dim {op.dim}): top-5 matvecs Lanczos {lz.num_matvecs} "
        f"(max rel err {err_lz:.1e}) vs power iteration {pw.num_matvecs} "
        f"(max rel err {err_pw:.1e}), ratio {ratio:.1f}"
    )
    assert lz.converged and err_lz < 1e-3
    if case.name == "cnn":
        assert ratio >= 2


def test_float32_operator():
    model, x, y = make_model("cnn", dtype=torch.float32)
    ref = make_case("cnn").eigs
    op = HessianOperator(lambda: F.cross_entropy(model(x), y), list(model.parameters()))
    res = lanczos(op, k=3, tol=1e-4)
    assert op.dtype == torch.float32 and res.eigenvalues.dtype == F64
    torch.testing.assert_close(res.eigenvalues, by_magnitude(ref, 3), rtol=1e-4, atol=0)


def test_operator_rejects_bad_inputs():
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(VitscopeError, match="requires_grad"):
        HessianOperator(lambda: w.sum(), [torch.randn(3)])
    with pytest.raises(VitscopeError, match="scalar"):
        HessianOperator(lambda: w * 2, [w])
    with pytest.raises(VitscopeError, match="empty"):
        HessianOperator(lambda: w.sum(), [])
    # a parameter the loss does not use, and one entering linearly, have zero Hessian rows
    u, b = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    op = HessianOperator(lambda: (w**3).sum() + b.sum(), [w, u, b])
    v = torch.ones(7)
    torch.testing.assert_close(op @ v, torch.cat([6 * w.detach(), torch.zeros(4)]))


def test_dense_hessian_of_quadratic():
    a = matrix_with_spectrum(SPECTRA["small_gaussian"][:10])
    theta = torch.randn(10, dtype=F64)
    torch.testing.assert_close(dense_hessian(lambda t: 0.5 * t @ a @ t, theta), a)


def test_the_lanczos_basis_grows_with_the_steps_taken_not_max_iter():
    """The basis is allocated a chunk at a time: after m steps ceil(m / CHUNK) chunks exist,
    and its rows stay orthonormal across chunk boundaries."""
    from vitscope.curvature.lanczos import KrylovBasis

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 300, dtype=torch.float64, generator=g)
    a = a + a.T
    q0 = torch.randn(300, dtype=torch.float64, generator=g)
    steps = 0
    for _, _, basis in lanczos_steps(lambda v: a @ v, q0, 19):
        steps += 1
        assert len(basis) == steps
        assert len(basis._chunks) == math.ceil(steps / KrylovBasis.CHUNK)
    q = basis.rows()
    assert q.shape == (19, 300)
    assert torch.allclose(q @ q.T, torch.eye(19, dtype=torch.float64), atol=1e-12)
    c = torch.randn(19, 3, dtype=torch.float64, generator=g)
    assert torch.allclose(basis.combine(c), q.T @ c) and torch.allclose(basis.project(q0), q @ q0)
