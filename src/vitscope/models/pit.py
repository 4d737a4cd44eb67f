"""Pooling-based Vision Transformer (PiT, Heo et al., 2021), as timm's for CIFAR
(``docs/methods/training.md``).

Stages of pre-norm transformer blocks; between stages a ``pool`` unit halves the token grid
with a strided depthwise conv and widens the tokens (the CLS token goes through a linear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from einops import rearrange
from torch import nn

from ..errors import ConfigError
from . import build, register_model
from .blocks import Block, staged_token_units
from .layers import TokenHead, TokenStem, TransformerBlock, drop_path_rates, init_weights

FAMILY = "PiT"  # the family the report groups these variants under


class TokenPool(nn.Module):
    """``(B, P + h*w, C) -> (B, P + ceil(h/2)*ceil(w/2), C_out)``: 3x3/2 depthwise conv on the grid.

    Args:
        dim: input width.
        out_dim: output width, a multiple of ``dim``.
        num_prefix_tokens: leading (CLS) tokens, mapped by a linear layer.
    """

    def __init__(self, dim: int, out_dim: int, *, num_prefix_tokens: int) -> None:
        super().__init__()
        if out_dim % dim:
            raise ConfigError(
                f"PiT stage widths must grow by whole factors, got {dim} -> {out_dim}"
            )
        self.num_prefix_tokens = num_prefix_tokens
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, groups=dim)
        self.fc = nn.Linear(dim, out_dim) if num_prefix_tokens else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        side = math.isqrt(tokens.shape[1])
        grid = self.conv(rearrange(tokens, "b (h w) c -> b c h w", h=side))  # (B, C_out, h', w')
        tokens = rearrange(grid, "b c h w -> b (h w) c")
        if self.fc is None:
            return tokens
        return torch.cat([self.fc(prefix), tokens], dim=1)


class PiT(nn.Module):
    """PiT: conv patch embedding (overlapping if ``stride < patch_size``), stages joined by pools.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: input side length (fixes the position embedding).
        patch_size: patch-embedding kernel.
        stride: patch-embedding stride.
        base_dim: channels per head; stage width = ``base_dim * heads[i]``.
        depths: blocks per stage.
        heads: attention heads per stage.
        mlp_ratio: MLP hidden width / stage width.
        qkv_bias: bias on the query/key/value projection.
        head: ``"cls"`` (CLS token) or ``"gap"`` (mean of the patch tokens, no CLS token).
        drop_path: stochastic depth of the last block (linear in depth from 0).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        img_size: int = 32,
        patch_size: int = 2,
        stride: int = 1,
        base_dim: int = 32,
        depths: Sequence[int] = (2, 6, 4),
        heads: Sequence[int] = (2, 4, 8),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        head: str = "cls",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ConfigError(f"need one head count per stage, got depths={depths}, heads={heads}")
        dims = [base_dim * h for h in heads]
        self.num_classes = num_classes
        self.num_prefix_tokens = int(head == "cls")
        self.stem = TokenStem(
            in_chans,
            dims[0],
            patch=patch_size,
            stride=stride,
            img_size=img_size,
            cls_token=head == "cls",
        )
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        block = partial(TransformerBlock, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        stages = []
        for i, (depth, h) in enumerate(zip(depths, heads)):
            stage: list[nn.Module] = []
            if i > 0:
                stage.append(
                    TokenPool(dims[i - 1], dims[i], num_prefix_tokens=self.num_prefix_tokens)
                )
            stage += [block(dims[i], heads=h, drop_path=next(rates)) for _ in range(depth)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = TokenHead(
            dims[-1], num_classes, pool=head, num_prefix_tokens=self.num_prefix_tokens
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))  # (B, num_classes)

    def vitscope_blocks(self) -> list[Block]:
        """Stem, then per stage a ``pool`` (stages 2+) and ``msa``/``mlp`` units, then head."""
        return staged_token_units(self, TokenPool)


def _pit(defaults: dict, **overrides) -> nn.Module:
    return build(PiT, defaults, overrides)


@register_model
def pit_ti(**kw) -> nn.Module:
    """PiT-Ti for CIFAR: 2x2 patches at stride 1, grids 31 -> 16 -> 8, widths 64/128/256."""
    return _pit(
        dict(patch_size=2, stride=1, base_dim=32, depths=(2, 6, 4), heads=(2, 4, 8), mlp_ratio=4),
        **kw,
    )


@register_model
def pit_tiny(**kw) -> nn.Module:
    """A 3-stage PiT for CPU runs: 2x2 patches, grids 14 -> 7 -> 4 at 28x28 input."""
    return _pit(
        dict(patch_size=2, stride=2, base_dim=32, depths=(1, 2, 1), heads=(1, 2, 4), mlp_ratio=2),
        **kw,
    )
