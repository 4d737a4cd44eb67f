"""Vision Transformer (Dosovitskiy et al., 2021), pre-norm, as timm's for CIFAR
(``docs/methods/training.md``).

With ``kernel=k`` every MSA is local: a 2-D convolutional self-attention over the centred
``k x k`` neighbourhood of each token (Yang et al., 2019, "Convolutional Self-Attention
Networks"), the paper's locality ablation (``docs/methods/alternet.md``, Fig 7).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from . import build, register_model
from .blocks import Block, make_blocks
from .layers import TokenHead, TokenStem, TransformerBlock, drop_path_rates, init_weights

FAMILY = "ViT"  # the family the report groups these variants under


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
        kernel: side of the local attention neighbourhood on the token grid, or None (or 0)
            for global attention. Needs ``head="gap"``. Odd ``k``: query ``(i, j)`` attends the
            keys with ``|di|, |dj| <= k // 2`` inside the grid (out-of-grid positions are left
            out of the softmax, not zero keys). Even ``k`` has no centred neighbourhood and is
            accepted only when ``k >= grid``, meaning global (the paper's 8x8 on an 8x8 map).
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
        kernel: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_prefix_tokens = int(head == "cls")
        self.stem = TokenStem(
            in_chans, dim, patch=patch_size, img_size=img_size, cls_token=head == "cls"
        )
        self.kernel = _attention_kernel(kernel, grid=self.stem.grid, head=head)
        block = partial(
            TransformerBlock,
            dim,
            heads=heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            kernel=self.kernel,
        )
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


def _attention_kernel(kernel: int | None, *, grid: int, head: str) -> int | None:
    """The odd neighbourhood side each MSA uses, or None for global attention."""
    if kernel is None or kernel == 0:
        return None
    if kernel < 0:
        raise ConfigError(f"kernel must be a positive odd int, or None/0 for global; got {kernel}")
    if head != "gap":
        raise ConfigError(
            f"kernel={kernel} (local attention) needs a token grid without a CLS token; "
            f"use head='gap', got head={head!r}"
        )
    if kernel % 2 == 0:
        if kernel < grid:
            raise ConfigError(
                f"kernel must be odd (a centred neighbourhood) unless it covers the "
                f"{grid}x{grid} token grid (kernel >= {grid}: global); got {kernel}"
            )
        return None
    return kernel


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


@register_model
def vit_local_ti(**kw) -> nn.Module:
    """ViT-Ti with 3x3 local MSA (``docs/methods/alternet.md``): 16x16 tokens of 2x2 patches, GAP
    head, no CLS."""
    return _vit(
        dict(patch_size=2, dim=192, depth=12, heads=3, mlp_ratio=4, head="gap", kernel=3), **kw
    )


@register_model
def vit_local_tiny(**kw) -> nn.Module:
    """``vit_tiny`` with 3x3 local MSA and a GAP head: 7x7 tokens at 28x28 input."""
    return _vit(
        dict(patch_size=4, dim=64, depth=6, heads=2, mlp_ratio=4, head="gap", kernel=3), **kw
    )
