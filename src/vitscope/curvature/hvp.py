"""Exact Hessian-vector products of a scalar loss, as a linear operator on flat vectors.

``H v = d/dθ <∇_θ L(θ), v>`` (Pearlmutter 1994, "Fast Exact Multiplication by the Hessian"):
double backward through a gradient graph that is built once and reused for every product.
That is the cheapest exact HVP measured on CPU; rebuilding the graph per product (as
PyHessian does) costs an extra forward and backward each time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vitscope.errors import VitscopeError

MatVec = Callable[[Tensor], Tensor]


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one 1-D vector (the order of ``tensors`` is the layout)."""
    if len(tensors) == 0:
        raise VitscopeError("flatten: got an empty list of tensors")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like ``like`` (the inverse of :func:`flatten`)."""
    numels = [t.numel() for t in like]
    if vec.dim() != 1 or vec.numel() != sum(numels):
        raise VitscopeError(
            f"unflatten: expected a 1-D vector of {sum(numels)} entries, got shape "
            f"{tuple(vec.shape)}"
        )
    return [p.view_as(t) for p, t in zip(vec.split(numels), like)]


class HessianOperator:
    """The Hessian ``H = ∇²_θ L`` of a scalar loss w.r.t. ``params``, applied to flat vectors.

    The gradient ``g = ∇_θ L`` is computed once with ``create_graph=True``; each product is
    one double backward ``H v = ∇_θ <g, v>`` over the retained graph (Pearlmutter 1994).
    The loss is evaluated exactly once, on the parameter values at construction time, so the
    operator stays the Hessian at that point even if the parameters change later.

    An analytic term ``l2_shift * I`` can be added: the Hessian of ``0.5 * wd * ||θ||²`` is
    ``wd * I``, so the analyses pass ``l2_shift=wd`` instead of putting the regulariser into
    the autograd graph (``docs/methods/decisions.md#decisions``, ``l2="squared"``).

    Args:
        loss_fn: closure returning the scalar loss on a fixed batch with the current
            parameter values (model in the mode it should be analysed in, e.g. ``eval()``).
        params: tensors with ``requires_grad=True``, all of one dtype and device.
        l2_shift: ``s`` in ``(H + s I) v``.

    Example:
        >>> op = HessianOperator(lambda: F.cross_entropy(model(x), y), list(model.parameters()))
        >>> hv = op @ torch.randn(op.dim)
        >>> op.close()
    """

    def __init__(
        self, loss_fn: Callable[[], Tensor], params: Sequence[Tensor], *, l2_shift: float = 0.0
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise VitscopeError("HessianOperator: params is empty")
        if not all(p.requires_grad for p in self.params):
            raise VitscopeError("HessianOperator: every parameter must have requires_grad=True")
        if len({(p.dtype, p.device) for p in self.params}) != 1:
            raise VitscopeError("HessianOperator: parameters must share one dtype and device")
        self.l2_shift = float(l2_shift)
        self.num_matvecs = 0
        with torch.enable_grad():
            loss = loss_fn()
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise VitscopeError("HessianOperator: loss_fn must return a scalar tensor")
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.loss = float(loss.detach())
        # A gradient without a graph (parameter unused, or entering the loss linearly) has a
        # zero Hessian row; only the others take part in the double backward.
        self._used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads: list[Tensor] | None = [grads[i] for i in self._used]
        self._numels = [p.numel() for p in self.params]

    @property
    def dim(self) -> int:
        """Number of parameters (the side of the square Hessian)."""
        return sum(self._numels)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def matvec(self, v: Tensor) -> Tensor:
        """``(H + l2_shift I) v`` for a flat vector ``v`` of length :attr:`dim`."""
        if self._grads is None:
            raise VitscopeError("HessianOperator: used after close()")
        if v.dim() != 1 or v.numel() != self.dim:
            raise VitscopeError(
                f"HessianOperator: expected a vector of {self.dim} entries, got shape "
                f"{tuple(v.shape)}"
            )
        v = v.to(dtype=self.dtype, device=self.device)
        v_split = v.split(self._numels)
        out = [torch.zeros_like(p) for p in self.params]
        if self._grads:
            hv = torch.autograd.grad(
                self._grads,
                self.params,
                grad_outputs=[v_split[i].view_as(self.params[i]) for i in self._used],
                retain_graph=True,
                allow_unused=True,
            )
            out = [h if h is not None else o for h, o in zip(hv, out)]
        self.num_matvecs += 1
        hv_flat = flatten(out).detach()
        if self.l2_shift != 0.0:
            hv_flat = hv_flat + self.l2_shift * v
        return hv_flat

    def __matmul__(self, v: Tensor) -> Tensor:
        """``H @ v`` for a vector ``(dim,)`` or column by column for a matrix ``(dim, m)``."""
        if v.dim() == 2:
            return torch.stack([self.matvec(c) for c in v.unbind(1)], dim=1)
        return self.matvec(v)

    __call__ = matvec

    def close(self) -> None:
        """Free the retained gradient graph; the operator cannot be used afterwards."""
        self._grads = None

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, dtype={self.dtype}, device={self.device}, "
            f"l2_shift={self.l2_shift}, num_matvecs={self.num_matvecs})"
        )


def dense_hessian(loss_of_flat: Callable[[Tensor], Tensor], theta: Tensor) -> Tensor:
    """The full Hessian ``∇²L(θ)`` of ``loss_of_flat`` at the flat vector ``theta``.

    Forward-over-reverse with :func:`torch.func.hessian`: ``dim`` times the cost of a
    gradient, and ``dim²`` memory. A reference for checking the fast estimators on small
    models (in float64), not something to run on a real network. Build ``loss_of_flat`` with
    :func:`torch.func.functional_call` and :func:`unflatten`.

    Returns:
        ``(dim, dim)`` tensor, in ``theta``'s dtype and device.
    """
    if theta.dim() != 1:
        raise VitscopeError(f"dense_hessian: theta must be 1-D, got shape {tuple(theta.shape)}")
    with warnings.catch_warnings():
        # torch's forward-AD decompositions use torch.jit.script on first import (torch 2.13)
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=DeprecationWarning)
        hess = torch.func.hessian(loss_of_flat)(theta.detach())
    if hess.shape != (theta.numel(), theta.numel()):
        raise VitscopeError("dense_hessian: loss_of_flat must return a scalar")
    return hess


def _resolve_operator(
    matvec: MatVec | Tensor,
    dim: int | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> tuple[MatVec, int, torch.dtype, torch.device]:
    """Turn an operator, a callable or a dense matrix into ``(matvec, dim, dtype, device)``.

    Unspecified ``dtype``/``device`` come from the operator (``.dtype``/``.device``, as on
    :class:`HessianOperator` or a tensor), else the default dtype on the CPU.
    """
    if isinstance(matvec, Tensor):
        mat = matvec
        if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
            raise VitscopeError(f"expected a square matrix, got shape {tuple(mat.shape)}")
        matvec = mat.__matmul__
        op_dim, op_dtype, op_device = mat.shape[0], mat.dtype, mat.device
    else:
        op_dim = getattr(matvec, "dim", None)
        op_dtype = getattr(matvec, "dtype", None)
        op_device = getattr(matvec, "device", None)
    if dim is None:
        if not isinstance(op_dim, int):
            raise VitscopeError("dim is required when the operator has no integer .dim")
        dim = op_dim
    elif isinstance(op_dim, int) and op_dim != dim:
        raise VitscopeError(f"dim={dim} but the operator has dim {op_dim}")
    if dim < 1:
        raise VitscopeError(f"dim must be positive, got {dim}")
    dtype = dtype or op_dtype or torch.get_default_dtype()
    device = torch.device(device or op_device or "cpu")
    return matvec, int(dim), dtype, device
