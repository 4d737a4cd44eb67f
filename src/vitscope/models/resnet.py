"""Post-activation ResNets (He et al., 2016) as in the paper's CIFAR code
(``docs/methods/training.md``).

CIFAR stem: 3x3/1 conv + BN + ReLU, no max-pool. ImageNet stem: 7x7/2 conv + BN + ReLU +
3x3/2 max-pool. Bottlenecks put the stride on the 3x3 conv (v1.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from . import build, register_model
from .blocks import Block, make_blocks
from .layers import ConvBnAct, DropPath, GapHead, drop_path_rates, init_weights

FAMILY = "ResNet"  # the family the report groups these variants under


class PostActUnit(nn.Module):
    """``relu(skip(x) + drop_path(branch(x)))``; the skip is 1x1 conv + BN where shapes change.

    Subclasses set ``branch``.
    """

    branch: nn.Module

    def __init__(self, in_dim: int, out_dim: int, stride: int, drop_path: float) -> None:
        super().__init__()
        self.shortcut = nn.Identity()
        if stride != 1 or in_dim != out_dim:
            self.shortcut = ConvBnAct(in_dim, out_dim, 1, stride, act=False)
        self.drop_path = DropPath(drop_path)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.skip(x) + self.drop_path(self.branch(x)))

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The skip path alone (what remains when the unit is removed)."""
        return self.shortcut(x)


class BasicBlock(PostActUnit):
    """Two 3x3 convs, the first strided."""

    expansion = 1

    def __init__(self, in_dim: int, width: int, *, stride: int = 1, drop_path: float = 0.0):
        super().__init__(in_dim, width, stride, drop_path)
        self.branch = nn.Sequential(
            ConvBnAct(in_dim, width, 3, stride), ConvBnAct(width, width, 3, act=False)
        )


class Bottleneck(PostActUnit):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_dim: int, width: int, *, stride: int = 1, drop_path: float = 0.0):
        super().__init__(in_dim, width * self.expansion, stride, drop_path)
        self.branch = nn.Sequential(
            ConvBnAct(in_dim, width, 1),
            ConvBnAct(width, width, 3, stride),
            ConvBnAct(width, width * self.expansion, 1, act=False),
        )


def conv_stem(in_chans: int, dim: int, kind: str, *, pre_act: bool = False) -> nn.Sequential:
    """``cifar``: 3x3/1 conv; ``imagenet``: 7x7/2 conv then 3x3/2 max-pool.

    Post-activation stems add BN + ReLU after the conv; pre-activation stems (AlterNet) do not.
    """
    if kind not in ("cifar", "imagenet"):
        raise ConfigError(f"stem must be 'cifar' or 'imagenet', got {kind!r}")
    k, s = (3, 1) if kind == "cifar" else (7, 2)
    if pre_act:
        layers: list[nn.Module] = [nn.Conv2d(in_chans, dim, k, s, padding=k // 2, bias=False)]
    else:
        layers = list(ConvBnAct(in_chans, dim, k, s))
    if kind == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, padding=1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A post-activation ResNet.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        block: ``"basic"`` or ``"bottleneck"``.
        depths: blocks per stage.
        widths: block width per stage (output channels are ``width * expansion``).
        stem: ``"cifar"`` or ``"imagenet"``.
        stem_width: stem output channels.
        drop_path: stochastic depth of the last block (linear in depth from 0).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        block: str = "basic",
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "cifar",
        stem_width: int = 64,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        blocks_by_name = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks_by_name or len(depths) != len(widths):
            raise ConfigError(
                f"need block in {sorted(blocks_by_name)} and one width per stage; "
                f"got block={block!r}, depths={tuple(depths)}, widths={tuple(widths)}"
            )
        unit = blocks_by_name[block]
        self.num_classes = num_classes
        self.stem = conv_stem(in_chans, stem_width, stem)
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        dim, stages = stem_width, []
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stage = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(unit(dim, width, stride=stride, drop_path=next(rates)))
                dim = width * unit.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = GapHead(dim, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))  # (B, num_classes)

    def vitscope_blocks(self) -> list[Block]:
        """Stem, every residual block (the first of stages 2+ downsamples), head."""
        units = [(self.stem, "stem", 0, False)]
        for i, stage in enumerate(self.stages, start=1):
            units += [(b, "conv", i, i > 1 and j == 0) for j, b in enumerate(stage)]
        units.append((self.head, "head", len(self.stages) + 1, False))
        return make_blocks(self, units)


def _resnet(defaults: dict, **overrides) -> nn.Module:
    return build(ResNet, defaults, overrides)


@register_model
def resnet18(**kw) -> nn.Module:
    """ResNet-18 for CIFAR (11.2M parameters at 100 classes)."""
    return _resnet(dict(block="basic", depths=(2, 2, 2, 2)), **kw)


@register_model
def resnet50(**kw) -> nn.Module:
    """ResNet-50 for CIFAR (23.7M parameters at 100 classes)."""
    return _resnet(dict(block="bottleneck", depths=(3, 4, 6, 3)), **kw)


@register_model
def resnet50_imagenet(**kw) -> nn.Module:
    """ResNet-50 with the ImageNet stem (7x7/2 conv + max-pool)."""
    return _resnet(dict(block="bottleneck", depths=(3, 4, 6, 3), stem="imagenet"), **kw)


@register_model
def resnet_tiny(**kw) -> nn.Module:
    """A narrow 4-stage ResNet-18 layout for CPU runs: 28x28 input -> maps 28, 14, 7, 4."""
    return _resnet(
        dict(block="basic", depths=(2, 2, 2, 2), widths=(16, 32, 48, 64), stem_width=16), **kw
    )
