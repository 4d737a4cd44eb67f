"""Analyses: one module per analysis, each declaring ``ANALYSIS = Analysis(...)``.

The registry is derived (:mod:`.registry`): the modules of this package that declare an
``ANALYSIS``, then plug-ins from the ``vitscope.analyses`` entry-point group,
``VITSCOPE_PLUGINS`` and :func:`load_plugin`. See ``docs/plugins.md``.

Names load on first use (PEP 562), so the torch-free :mod:`.spec` can be imported alone.
"""

from __future__ import annotations

from .._lazy import exports

_EXPORTS = {
    "Analysis": ".spec",
    "Context": ".spec",
    "FigureSpec": ".spec",
    "EvalData": ".base",
    "TrainData": ".base",
    "eval_mode": ".base",
    "feature_units": ".base",
    "analyses": ".registry",
    "get_analysis": ".registry",
    "list_analyses": ".registry",
    "load_plugin": ".registry",
    "load_plugins": ".registry",
    "Result": "..results",
}


__getattr__ = exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
