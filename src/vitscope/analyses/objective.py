"""The curvature analyses' objective: ``NLL + L2`` (spec in ``docs/methods/landscape.md``).

``NLL`` is the soft-target cross-entropy of the run's augmented batches
(:func:`vitscope.data.augment.soft_cross_entropy`); the L2 term is one of

* ``squared``: ``0.5·wd·Σθ²``, the regulariser whose Hessian is ``wd·I``;
* ``official``: ``wd·Σ_p ‖θ_p‖₂``, a sum of unsquared per-tensor norms, as the released
  landscape code computes it;
* ``none``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import ConfigError

L2_MODES = ("squared", "official", "none")


def l2_penalty(
    params: Iterable[torch.Tensor],
    mode: str,
    weight_decay: float,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The L2 term over ``params``, differentiable, as a 0-d tensor (in ``dtype`` if given).

    For ``official`` a tensor with ``‖θ_p‖ = 0`` is left out: the norm has no Hessian there
    (it diverges as ``1/‖θ_p‖``), its zero subgradient is taken, and its value is 0 anyway.
    """
    if mode not in L2_MODES:
        raise ConfigError(f"l2 must be one of {', '.join(L2_MODES)}, got {mode!r}")
    params = [p if dtype is None else p.to(dtype) for p in params]
    zero = params[0].new_zeros(()) if params else torch.zeros((), dtype=dtype)
    if mode == "none" or weight_decay == 0.0:
        return zero
    if mode == "squared":
        return 0.5 * weight_decay * sum((p.pow(2).sum() for p in params), zero)
    return weight_decay * sum((p.norm() for p in params if bool(p.detach().any())), zero)


__all__ = ["L2_MODES", "l2_penalty"]
