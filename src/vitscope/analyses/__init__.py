"""Analyses: one module per analysis, each with ``Config`` and ``run(model, data, cfg)``.

The module path is the registry: ``ANALYSES[name]`` is the module ``vitscope.analyses.<name>``.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import VitscopeError
from . import fourier, hessian, landscape, lesion, noise, overfitting, variance
from .base import EvalData, Result, TrainData

_MODULES = (fourier, variance, noise, lesion, overfitting, landscape, hessian)
ANALYSES: dict[str, ModuleType] = {m.__name__.rsplit(".", 1)[1]: m for m in _MODULES}


def get_analysis(name: str) -> ModuleType:
    """The analysis module called ``name``; unknown names list the valid ones."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise VitscopeError(
            f"unknown analysis {name!r}; valid analyses: {', '.join(ANALYSES)}"
        ) from None


def list_analyses() -> list[str]:
    return list(ANALYSES)


__all__ = ["ANALYSES", "EvalData", "Result", "TrainData", "get_analysis", "list_analyses"]
