"""AlterNet (Park & Kim, 2022, §4): a pre-activation ResNet whose stage-ending blocks are MSAs.

Within a stage of ``n1`` blocks with ``n2`` MSAs the layout is
``[Conv] * (n1 - 2*n2) + [Conv, MSA] * n2`` (``docs/methods/alternet.md``). The MSA block
(``AttentionBlockB``)
has no MLP inside: the following conv blocks play that role. Its windowed attention carries a
single relative-position table shared by all heads. With ``msas`` all zero this is the
baseline pre-activation ResNet of the paper's build-up study.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from einops import rearrange
from torch import nn

from ..errors import ConfigError
from . import build, register_model
from .blocks import Block, make_blocks
from .layers import Attention, DropPath, GapHead, drop_path_rates, init_weights
from .resnet import conv_stem

FAMILY = "AlterNet"  # the family the report groups these variants under


def _bn_act(dim: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(dim), act())


class PreActUnit(nn.Module):
    """``skip(x) + drop_path(branch(pre(x)))``; a projecting skip also sees ``pre(x)``.

    Subclasses set ``pre``, ``branch`` and ``shortcut`` (None: identity skip).
    """

    pre: nn.Module
    branch: nn.Module
    shortcut: nn.Module | None

    def __init__(self, in_dim: int, out_dim: int, stride: int, drop_path: float) -> None:
        super().__init__()
        self.shortcut = None
        if stride != 1 or in_dim != out_dim:
            self.shortcut = nn.Conv2d(in_dim, out_dim, 1, stride, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        return self.skip(x, a) + self.drop_path(self.branch(a))

    def skip(self, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """The skip path alone (what remains when the unit is removed)."""
        if self.shortcut is None:
            return x
        return self.shortcut(self.pre(x) if a is None else a)


class PreActBasic(PreActUnit):
    """Pre-activation basic block: two 3x3 convs, the first strided."""

    expansion = 1

    def __init__(self, in_dim: int, width: int, *, stride: int = 1, drop_path: float = 0.0):
        super().__init__(in_dim, width, stride, drop_path)
        self.pre = _bn_act(in_dim)
        self.branch = nn.Sequential(
            nn.Conv2d(in_dim, width, 3, stride, padding=1, bias=False),
            _bn_act(width),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
        )


class PreActBottleneck(PreActUnit):
    """Pre-activation bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_dim: int, width: int, *, stride: int = 1, drop_path: float = 0.0):
        super().__init__(in_dim, width * self.expansion, stride, drop_path)
        self.pre = _bn_act(in_dim)
        self.branch = nn.Sequential(
            nn.Conv2d(in_dim, width, 1, bias=False),
            _bn_act(width),
            nn.Conv2d(width, width, 3, stride, padding=1, bias=False),
            _bn_act(width),
            nn.Conv2d(width, width * self.expansion, 1, bias=False),
        )


class MapAttention(nn.Module):
    """Windowed :class:`Attention` on a channel-first map: ``(B, C, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(rearrange(x, "b c h w -> b h w c"))
        return rearrange(x, "b h w c -> b c h w")


class MSABlock(PreActUnit):
    """``AttentionBlockB``: BN, GELU, 1x1 conv to ``dim / reduction``, BN, windowed MSA.

    The MSA projects back to ``dim`` channels; there is no MLP in the block.

    Args:
        dim: stream channels (in and out).
        heads: attention heads.
        head_dim: channels per head.
        window: attention window side.
        reduction: ``dim`` / attention input width.
        drop_path: stochastic-depth rate.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        head_dim: int = 64,
        window: int = 4,
        reduction: int = 4,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(dim, dim, 1, drop_path)
        width = dim // reduction
        self.pre = _bn_act(dim, nn.GELU)
        attn = Attention(
            width, heads=heads, head_dim=head_dim, out_dim=dim, window=window, rel_pos="shared"
        )
        self.branch = nn.Sequential(
            nn.Conv2d(dim, width, 1, bias=False), nn.BatchNorm2d(width), MapAttention(attn)
        )


class AlterNet(nn.Module):
    """AlterNet: pre-activation ResNet stages that end in MSA blocks.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        block: conv block, ``"basic"`` or ``"bottleneck"``.
        depths: blocks per stage (conv and MSA blocks together).
        msas: MSA blocks per stage, at most half of the stage's blocks.
        widths: conv block width per stage (output channels ``width * expansion``).
        heads: attention heads per stage.
        head_dim: channels per head.
        window: attention window side.
        msa_reduction: stream channels / attention input width in MSA blocks.
        stem: ``"cifar"`` (3x3/1 conv) or ``"imagenet"`` (7x7/2 conv + max-pool).
        stem_width: stem output channels.
        drop_path: stochastic depth of the last block (linear in depth from 0).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        block: str = "bottleneck",
        depths: Sequence[int] = (3, 4, 6, 4),
        msas: Sequence[int] = (0, 1, 1, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        heads: Sequence[int] = (3, 6, 12, 24),
        head_dim: int = 64,
        window: int = 4,
        msa_reduction: int = 4,
        stem: str = "cifar",
        stem_width: int = 64,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        conv = {"basic": PreActBasic, "bottleneck": PreActBottleneck}.get(block)
        if conv is None:
            raise ConfigError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if not len(depths) == len(msas) == len(widths) == len(heads):
            raise ConfigError(
                f"depths, msas, widths and heads need one entry per stage; got {tuple(depths)}, "
                f"{tuple(msas)}, {tuple(widths)}, {tuple(heads)}"
            )
        if any(not 0 <= m <= d // 2 for d, m in zip(depths, msas)):
            raise ConfigError(
                f"msas={tuple(msas)}: each stage holds at most depth // 2 MSAs "
                f"(layout [Conv]*(n1-2*n2) + [Conv, MSA]*n2), depths={tuple(depths)}"
            )
        self.num_classes = num_classes
        self.stem = conv_stem(in_chans, stem_width, stem, pre_act=True)
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        msa = partial(MSABlock, head_dim=head_dim, window=window, reduction=msa_reduction)
        dim, stages = stem_width, []
        for i, (n1, n2, width, h) in enumerate(zip(depths, msas, widths, heads)):
            stage: list[nn.Module] = []
            for j, is_msa in enumerate([False] * (n1 - 2 * n2) + [False, True] * n2):
                if is_msa:  # never first in a stage, so never strided
                    stage.append(msa(dim, heads=h, drop_path=next(rates)))
                else:
                    stride = 2 if i > 0 and j == 0 else 1
                    stage.append(conv(dim, width, stride=stride, drop_path=next(rates)))
                    dim = width * conv.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = GapHead(dim, num_classes, pre_act=True)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))  # (B, num_classes)

    def vitscope_blocks(self) -> list[Block]:
        """Stem, conv and msa blocks (the first of stages 2+ downsamples), head."""
        units = [(self.stem, "stem", 0, False)]
        for i, stage in enumerate(self.stages, start=1):
            units += [
                (b, "msa" if isinstance(b, MSABlock) else "conv", i, i > 1 and j == 0)
                for j, b in enumerate(stage)
            ]
        units.append((self.head, "head", len(self.stages) + 1, False))
        return make_blocks(self, units)


def _alternet(defaults: dict, **overrides) -> nn.Module:
    return build(AlterNet, defaults, overrides)


@register_model
def alternet50(**kw) -> nn.Module:
    """Alter-ResNet-50 for CIFAR (Fig 3/11): 4 MSAs, window 4, 33.0M parameters at 100 classes."""
    return _alternet(dict(depths=(3, 4, 6, 4), msas=(0, 1, 1, 2), window=4), **kw)


@register_model
def alternet50_imagenet(**kw) -> nn.Module:
    """Alter-ResNet-50 for ImageNet: 6 MSAs, window 7, 7x7/2 stem + max-pool."""
    return _alternet(dict(depths=(3, 4, 6, 4), msas=(0, 1, 3, 2), window=7, stem="imagenet"), **kw)


@register_model
def alternet_tiny(**kw) -> nn.Module:
    """``resnet_tiny``'s layout, pre-activation, the last block of stages 2-4 an MSA."""
    return _alternet(
        dict(
            block="basic",
            depths=(2, 2, 2, 2),
            msas=(0, 1, 1, 1),
            widths=(16, 32, 48, 64),
            stem_width=16,
            heads=(1, 2, 4, 8),
            head_dim=16,
            window=4,
            msa_reduction=2,
        ),
        **kw,
    )
