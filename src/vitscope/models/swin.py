"""Swin Transformer (Liu et al., 2021), as timm's for CIFAR (``docs/methods/training.md#models``).

The stream is a channel-last map ``(B, H, W, C)``. Each block is two units (windowed
attention, MLP); every other block shifts its windows by half a window; patch merging joins
the stages. Window attention pads maps that the window does not divide (``layers.Attention``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import ConfigError
from . import build, register_model
from .blocks import Block, staged_token_units
from .layers import PatchEmbed, TokenHead, TransformerBlock, drop_path_rates, init_weights

FAMILY = "Swin"  # the family the report groups these variants under


class SwinStem(nn.Module):
    """Patch embedding + LayerNorm: ``(B, C_in, H, W) -> (B, H/p, W/p, dim)``."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, dim, patch)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(rearrange(self.patch_embed(x), "b c h w -> b h w c"))


class PatchMerging(nn.Module):
    """Concatenate 2x2 neighbours, LayerNorm, linear: ``(B, H, W, C) -> (B, H/2, W/2, 2C)``.

    Odd sides are zero-padded first, so 7x7 becomes 4x4.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=1e-6)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = rearrange(x, "b (h p) (w q) c -> b h w (q p c)", p=2, q=2)  # timm's neighbour order
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """Swin: patch embedding, stages of (shifted-)window blocks, LN + token mean + linear head.

    Works at any input size: windows are clamped to small maps and pad larger ones.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        patch_size: patch side length.
        dim: width of the first stage (doubles at every merging).
        depths: blocks per stage.
        heads: attention heads per stage.
        window: attention window side.
        mlp_ratio: MLP hidden width / stage width.
        qkv_bias: bias on the query/key/value projection.
        drop_path: stochastic depth of the last block (linear in depth from 0).
    """

    channels_last_features = True  # the stream is (B, H, W, C)

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        patch_size: int = 1,
        dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ConfigError(f"need one head count per stage, got depths={depths}, heads={heads}")
        self.num_classes = num_classes
        self.stem = SwinStem(in_chans, dim, patch_size)
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        block = partial(
            TransformerBlock,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            window=window,
            rel_pos="per_head",
        )
        stages = []
        for i, (depth, h) in enumerate(zip(depths, heads)):
            stage: list[nn.Module] = []
            if i > 0:
                stage.append(PatchMerging(dim))
                dim *= 2
            for j in range(depth):  # odd blocks shift their windows by half a window
                stage.append(
                    block(dim, heads=h, shift=(j % 2) * (window // 2), drop_path=next(rates))
                )
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = TokenHead(dim, num_classes, pool="gap")
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))  # (B, num_classes)

    def vitscope_blocks(self) -> list[Block]:
        """Stem, then per stage a merging ``pool`` (stages 2+) and ``msa``/``mlp`` units, head."""
        return staged_token_units(self, PatchMerging)


def _swin(defaults: dict, **overrides) -> nn.Module:
    return build(SwinTransformer, defaults, overrides)


@register_model
def swin_ti(**kw) -> nn.Module:
    """Swin-Ti for CIFAR: 1x1 patches, window 4, maps 32 -> 16 -> 8 -> 4."""
    return _swin(
        dict(patch_size=1, dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=4), **kw
    )


@register_model
def swin_tiny(**kw) -> nn.Module:
    """A 3-stage Swin for CPU runs: 2x2 patches, window 4, maps 14 -> 7 -> 4 at 28x28 input."""
    return _swin(
        dict(patch_size=2, dim=32, depths=(2, 2, 2), heads=(1, 2, 4), window=4, mlp_ratio=2), **kw
    )
