"""Curated block rules: the paper's units of a known foreign architecture.

A rule recognises a model by its class (name and defining package, so timm, torchvision and
Hugging Face need not be importable to describe one) and lists its units: ``stem``,
``conv``/``msa``/``mlp``/``pool`` residual units and the ``head``, each with where its
stream is read (:class:`~vitscope.models.blocks.Tap`) and how a lesion removes it. Stage and
downsample are left to the shapes of one forward pass
(:func:`vitscope.models.blocks.annotate`).

Rules for each library live in :mod:`.timm_rules`, :mod:`.torchvision_rules` and
:mod:`.hf_rules`; :func:`rule` registers one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..models.blocks import Block, Tap


@dataclass(frozen=True)
class Rule:
    """A decomposition for one architecture.

    Attributes:
        name: e.g. ``timm.VisionTransformer``.
        family: the report's family (``ViT``, ``Swin``, ``ConvNeXt``, ``ResNet``, ``PiT``).
        package: the top-level package that defines the model class (``timm``, ...).
        classes: model class names the rule applies to.
        units: ``model -> [Block]`` (stage 0; the shapes give stages later).
    """

    name: str
    family: str
    package: str
    classes: tuple[str, ...]
    units: Callable[[nn.Module], list[Block]]

    def matches(self, model: nn.Module) -> bool:
        cls = type(model)
        return cls.__name__ in self.classes and cls.__module__.split(".")[0] == self.package


RULES: list[Rule] = []


def rule(name: str, family: str, package: str, *classes: str):
    """Decorator: register ``fn(model) -> [Block]`` as the rule for ``classes``."""

    def register(fn: Callable[[nn.Module], list[Block]]):
        RULES.append(Rule(name, family, package, classes, fn))
        return fn

    return register


def find_rule(model: nn.Module) -> Rule | None:
    """The curated rule for ``model``'s class, if there is one."""
    from . import hf_rules, timm_rules, torchvision_rules  # noqa: F401 - they register

    return next((r for r in RULES if r.matches(model)), None)


class Units:
    """Collects a model's units by module, naming each from the model's tree."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): name for name, m in model.named_modules()}
        self.items: list[Block] = []

    def add(
        self,
        module: nn.Module,
        kind: str,
        *,
        tap: nn.Module | None = None,
        where: str = "output",
        branch: nn.Module | None = None,
        skip: nn.Module | None = None,
        layout: str | None = None,
        prefix: int | None = None,
    ) -> Units:
        """One unit; ``tap``/``where``: where its stream is read (default: its output)."""
        self.items.append(
            Block(
                self.names[id(module)],
                kind,
                0,
                module,
                tap=Tap(tap, where) if tap is not None else None,
                branch=branch,
                skip=skip,
                layout=layout,
                prefix=prefix,
            )
        )
        return self

    def done(self) -> list[Block]:
        return self.items


def has_attention(module: nn.Module) -> bool:
    """Whether a module holds a self-attention (by class name, or ``nn.MultiheadAttention``)."""
    return any(
        isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
        for m in module.modules()
    )


def has_conv(module: nn.Module) -> bool:
    """Whether a module holds a spatial convolution (kernel larger than 1x1)."""
    return any(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 for m in module.modules())


__all__ = ["RULES", "Rule", "Units", "find_rule", "has_attention", "has_conv", "rule"]
