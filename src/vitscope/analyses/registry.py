"""The analysis registry, derived and never hand-kept.

Sources, in this order:

1. built-ins: every module of :mod:`vitscope.analyses` that defines ``ANALYSIS``;
2. installed plug-ins: the ``vitscope.analyses`` entry-point group (each value names a
   module that defines ``ANALYSIS``, or ``module:OBJECT``);
3. ``VITSCOPE_PLUGINS=mod1,mod2`` in the environment;
4. :func:`load_plugin` (``--plugin mod`` on the CLI, ``plugins:`` in a study).

Names are unique: a second analysis with a taken name raises, naming both modules.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import sys

from ..errors import VitscopeError
from .spec import Analysis

ENTRY_POINT_GROUP = "vitscope.analyses"
ENV_VAR = "VITSCOPE_PLUGINS"

_ANALYSES: dict[str, Analysis] = {}
_SOURCES: dict[str, str] = {}  # name -> the module it came from
_loaded = False


def _register(analysis: Analysis, source: str) -> Analysis:
    known = _ANALYSES.get(analysis.name)
    if known is not None:
        if known is analysis:
            return analysis
        raise VitscopeError(
            f"two analyses are named {analysis.name!r}: {_SOURCES[analysis.name]} and {source}"
        )
    _ANALYSES[analysis.name] = analysis
    _SOURCES[analysis.name] = source
    return analysis


def _import(target: str, what: str) -> Analysis:
    """The Analysis named by ``module`` (its ``ANALYSIS``) or ``module:OBJECT``."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise VitscopeError(f"{what} {target!r}: cannot import {module_name!r} ({e})") from None
    obj = getattr(module, attr or "ANALYSIS", None)
    if not isinstance(obj, Analysis):
        raise VitscopeError(
            f"{what} {target!r}: {module_name} defines no {attr or 'ANALYSIS'} = Analysis(...)"
        )
    return obj


def _builtins() -> None:
    package = sys.modules[__package__]
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        analysis = getattr(module, "ANALYSIS", None)
        if isinstance(analysis, Analysis):
            _register(analysis, module.__name__)


def _entry_points() -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", "?")
        try:
            _register(_import(ep.value, f"plug-in {ep.name!r} of {dist}"), ep.value)
        except VitscopeError as e:  # a broken plug-in must not take every command down
            print(f"warning: {e}; skipped", file=sys.stderr)


def _ensure() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    _builtins()
    _entry_points()
    for target in filter(None, (t.strip() for t in os.environ.get(ENV_VAR, "").split(","))):
        load_plugin(target)


def load_plugin(target: str) -> Analysis:
    """Import and register a third-party analysis: ``module`` or ``module:OBJECT``."""
    _ensure()
    return _register(_import(target, "plug-in"), target)


def load_plugins(targets: list[str] | tuple[str, ...] | None) -> None:
    for target in targets or ():
        load_plugin(target)


def analyses() -> dict[str, Analysis]:
    """Every registered analysis by name, in their declared order."""
    _ensure()
    return dict(sorted(_ANALYSES.items(), key=lambda kv: (kv[1].order, kv[0])))


def get_analysis(name: str) -> Analysis:
    """The analysis called ``name``; unknown names list the valid ones."""
    found = analyses()
    if name not in found:
        raise VitscopeError(f"unknown analysis {name!r}; valid analyses: {', '.join(found)}")
    return found[name]


def list_analyses() -> list[str]:
    return list(analyses())


def source_of(name: str) -> str:
    """The module an analysis was registered from."""
    get_analysis(name)
    return _SOURCES[name]


__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "analyses",
    "get_analysis",
    "list_analyses",
    "load_plugin",
    "load_plugins",
    "source_of",
]
