"""Model zoo: ResNet, ViT, PiT, Swin and AlterNet, paper-sized and tiny CPU variants.

Every variant is a registered builder whose body is a dict of hyper-parameters::

    model = create_model("vit_ti", num_classes=100, drop_path=0.1, head="gap")
    units = blocks(model)  # the residual stream, as the analyses see it
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .blocks import Block, blocks, feature_maps, replace_unit

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_FAMILIES: dict[str, str] = {}  # model name -> family (the metadata the report groups by)


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a variant builder under its function name.

    The variant's family is its module's ``FAMILY`` (``ResNet``, ``ViT``, ...), else ``other``.
    """
    MODELS.register()(builder)
    module = sys.modules.get(builder.__module__)
    _FAMILIES[builder.__name__] = str(getattr(module, "FAMILY", "other"))
    return builder


def model_family(name: str) -> str:
    """The family of a registered model (``ResNet``, ``ViT``, ``PiT``, ``Swin``, ``AlterNet``);
    ``other`` for names the registry does not know (a user's own model)."""
    return _FAMILIES.get(name, "other")


def build(cls: type[nn.Module], defaults: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """Instantiate ``cls(**defaults, **overrides)``, rejecting keys the constructor lacks.

    ``img_size`` is dropped for families that work at any input size.
    """
    valid = {
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(overrides) - valid - {"img_size"})
    if unknown:
        choices = ", ".join(sorted(valid - {"num_classes"}))
        raise ConfigError(f"unknown hyper-parameter(s) {unknown}; valid: {choices}")
    kwargs = {**defaults, **overrides}
    if "img_size" not in valid:
        kwargs.pop("img_size", None)
    return cls(**kwargs)


def create_model(
    name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 32, **overrides: Any
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry key (see :func:`list_models`).
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: input side length (used by models with position embeddings).
        **overrides: hyper-parameters of the variant, e.g. ``drop_path=0.1``, ``head="gap"``,
            ``msas=(0, 1, 1, 2)``.

    Returns:
        The model, on the CPU in float32, in training mode.

    Raises:
        VitscopeError: unknown model name (the message lists the valid ones).
        ConfigError: unknown or invalid hyper-parameter (the message names the model).
    """
    builder = MODELS.get(name)
    try:
        return builder(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **overrides)
    except ConfigError as e:
        raise ConfigError(f"model {name!r}: {e}") from None


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


# The families register their variants on import; they need MODELS and register_model above.
from . import alternet, pit, resnet, swin, vit  # noqa: E402, F401

__all__ = [
    "MODELS",
    "Block",
    "blocks",
    "build",
    "create_model",
    "feature_maps",
    "list_models",
    "model_family",
    "register_model",
    "replace_unit",
]
