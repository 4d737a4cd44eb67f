"""Curvature numerics: Hessian-vector products, Lanczos, SLQ densities, Hutchinson traces.

Every estimator takes a ``matvec`` (a :class:`HessianOperator`, any ``v -> A v`` callable,
or a dense matrix) and returns a dataclass of float64 numbers; nothing here knows about
models, data or devices beyond the operator's own dtype and device.
"""

from vitscope.curvature.density import SLQResult, slq_density
from vitscope.curvature.hvp import HessianOperator, dense_hessian, flatten, unflatten
from vitscope.curvature.lanczos import (
    LanczosResult,
    PowerIterationResult,
    lanczos,
    lanczos_steps,
    power_iteration,
    tridiagonal_eigh,
)
from vitscope.curvature.trace import TraceResult, hutchinson_trace

__all__ = [
    "HessianOperator",
    "LanczosResult",
    "PowerIterationResult",
    "SLQResult",
    "TraceResult",
    "dense_hessian",
    "flatten",
    "hutchinson_trace",
    "lanczos",
    "lanczos_steps",
    "power_iteration",
    "slq_density",
    "tridiagonal_eigh",
    "unflatten",
]
