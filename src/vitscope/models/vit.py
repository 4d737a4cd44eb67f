"""Vision Transformer (Dosovitskiy et al., 2021), pre-norm, as timm's for CIFAR (spec §9)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from . import build, register_model
from .blocks import Block, make_blocks
from .layers import TokenHead, TokenStem, TransformerBlock, drop_path_rates, init_weights


class VisionTransformer(nn.Module):
    """ViT: patch tokens (+ CLS), ``depth`` pre-norm transformer blocks, LN + linear head.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: input side length (fixes the position embedding).
        patch_size: patch side length.
        dim: token width.
        depth: transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
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
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        head: str = "cls",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_prefix_tokens = int(head == "cls")
        self.stem = TokenStem(
            in_chans, dim, patch=patch_size, img_size=img_size, cls_token=head == "cls"
        )
        block = partial(TransformerBlock, dim, heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        self.blocks = nn.Sequential(
            *(block(drop_path=r) for r in drop_path_rates(drop_path, depth))
        )
        self.head = TokenHead(dim, num_classes, pool=head, num_prefix_tokens=self.num_prefix_tokens)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))  # (B, num_classes)

    def vitscope_blocks(self) -> list[Block]:
        """Patch embedding, then ``attn`` (msa) and ``mlp`` units per block, then head."""
        units = [(self.stem, "stem", 0, False)]
        for b in self.blocks:
            units += [(b.attn, "msa", 1, False), (b.mlp, "mlp", 1, False)]
        units.append((self.head, "head", 2, False))
        return make_blocks(self, units)


def _vit(defaults: dict, **overrides) -> nn.Module:
    return build(VisionTransformer, defaults, overrides)


@register_model
def vit_ti(**kw) -> nn.Module:
    """ViT-Ti for CIFAR: 16x16 patches of 2x2 (+ CLS), 5.4M parameters at 100 classes."""
    return _vit(dict(patch_size=2, dim=192, depth=12, heads=3, mlp_ratio=4), **kw)


@register_model
def vit_tiny(**kw) -> nn.Module:
    """A 6-block ViT for CPU runs: 4x4 patches, 7x7 tokens at 28x28 input."""
    return _vit(dict(patch_size=4, dim=64, depth=6, heads=2, mlp_ratio=4), **kw)
