"""Block rules for timm models: VisionTransformer (ViT, DeiT), Swin, ConvNeXt, ResNet, PiT.

timm's transformer blocks add their residuals functionally,
``x = x + drop_path1(ls1(attn(norm1(x)))); x = x + drop_path2(ls2(mlp(norm2(x))))``, so the
stream after the MSA is the input of ``norm2`` (read with a forward pre-hook) and the stream
after the MLP is the block's output; a lesion zeroes the branch (``attn``, ``mlp``), which
leaves ``x + 0``. Names follow timm 1.x.
"""

from __future__ import annotations

from torch import nn

from .rules import Units, rule


def transformer_block(u: Units, blk: nn.Module, *, prefix: int | None, layout: str = "tokens"):
    """The MSA and MLP units of one timm transformer block (``Block``, ``ResPostBlock``);
    any other block class (parallel blocks) is one ``msa`` unit read at its output."""
    name = type(blk).__name__
    if name in ("Block", "SwinTransformerBlock"):
        u.add(blk.attn, "msa", tap=blk.norm2, where="input", branch=blk.attn,
              layout="tokens", prefix=prefix)  # fmt: skip
        u.add(blk.mlp, "mlp", tap=blk, branch=blk.mlp, layout=layout, prefix=prefix)
    elif name in ("ResPostBlock", "SwinTransformerV2Block"):  # x + norm1(attn(x)): norm ends it
        u.add(blk.attn, "msa", tap=blk.mlp, where="input", branch=blk.norm1,
              layout="tokens", prefix=prefix)  # fmt: skip
        u.add(blk.mlp, "mlp", tap=blk, branch=blk.norm2, layout=layout, prefix=prefix)
    else:
        u.add(blk, "msa", layout=layout, prefix=prefix)


@rule("timm.VisionTransformer", "ViT", "timm", "VisionTransformer", "VisionTransformerDistilled")
def vision_transformer(model: nn.Module):
    u = Units(model)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    # the stream after the stem: patches + position embedding + CLS (+ dist, registers)
    u.add(model.patch_embed, "stem", tap=model.blocks[0], where="input", layout="tokens",
          prefix=prefix)  # fmt: skip
    for blk in model.blocks:
        transformer_block(u, blk, prefix=prefix)
    return u.add(model.head, "head").done()


@rule("timm.SwinTransformer", "Swin", "timm", "SwinTransformer", "SwinTransformerV2")
def swin(model: nn.Module):
    u = Units(model)
    u.add(model.patch_embed, "stem", layout="nhwc")
    for stage in model.layers:
        if not isinstance(stage.downsample, nn.Identity):
            u.add(stage.downsample, "pool", layout="nhwc")
        for blk in stage.blocks:
            # the MSA's stream is flattened to (B, H*W, C) before norm2; the block returns NHWC
            transformer_block(u, blk, prefix=0, layout="nhwc")
    return u.add(model.head, "head").done()


@rule("timm.ConvNeXt", "ConvNeXt", "timm", "ConvNeXt")
def convnext(model: nn.Module):
    u = Units(model)
    u.add(model.stem, "stem", layout="nchw")
    for stage in model.stages:
        if not isinstance(stage.downsample, nn.Identity):
            u.add(stage.downsample, "pool", layout="nchw")
        for blk in stage.blocks:  # one residual unit: dwconv, norm, MLP, layer scale
            shortcut = getattr(blk, "shortcut", None)
            skip = None if shortcut is None or isinstance(shortcut, nn.Identity) else shortcut
            u.add(blk, "conv", skip=skip, layout="nchw")
    return u.add(model.head, "head").done()


@rule("timm.ResNet", "ResNet", "timm", "ResNet")
def resnet(model: nn.Module):
    u = Units(model)
    u.add(model.conv1, "stem", tap=model.layer1, where="input", layout="nchw")
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in layer:
            u.add(blk, "conv", skip=getattr(blk, "downsample", None), layout="nchw")
    return u.add(model.fc, "head").done()


@rule("timm.PoolingVisionTransformer", "PiT", "timm", "PoolingVisionTransformer")
def pit(model: nn.Module):
    u = Units(model)
    prefix = int(model.cls_token.shape[1])  # 1, or 2 for the distilled variants
    u.add(model.patch_embed, "stem", tap=model.pos_drop, layout="nchw")
    for stage in model.transformers:
        if getattr(stage, "pool", None) is not None:
            u.add(stage.pool, "pool", layout="nchw")  # (map, cls) -> the map
        for blk in stage.blocks:
            transformer_block(u, blk, prefix=prefix)
    return u.add(model.head, "head").done()
