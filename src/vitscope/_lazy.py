"""Lazy package attributes (PEP 562): a name's module is imported on first use.

Packages re-export their public names through :func:`exports`, so importing a package (and
everything only a reader needs, such as :mod:`vitscope.results` or :mod:`vitscope.report`)
loads no torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` (relative to ``package``)."""

    def __getattr__(attr: str) -> Any:
        module = names.get(attr)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(module, package), attr)

    return __getattr__
