"""Block rules for torchvision classifiers: ResNet, VisionTransformer, SwinTransformer (V1 and
V2) and ConvNeXt.

torchvision's transformer blocks add their residuals functionally, so the stream after an MSA
is read as the first input of the next module that takes it (a forward pre-hook), and a lesion
zeroes the residual branch, which leaves ``x + 0``:

- ViT ``EncoderBlock``: ``x = dropout(self_attention(ln_1(input))[0]) + input;
  return x + mlp(ln_2(x))``: the MSA's stream is the input of ``ln_2``, its branch
  ``self_attention`` (an ``nn.MultiheadAttention``, whose ``(out, weights)`` tuple the lesion
  zeroes in its first item). The stream after the stem is the input of ``encoder.layers[0]``:
  the class token and the position embedding are added outside ``conv_proj`` (in
  ``VisionTransformer.forward`` and ``Encoder.forward``); one prefix token (CLS).
- Swin ``SwinTransformerBlock`` (pre-norm): ``x = x + sd(attn(norm1(x)));
  x = x + sd(mlp(norm2(x)))``: the MSA's stream is the input of ``norm2``, branches ``attn``
  and ``mlp``. ``SwinTransformerBlockV2`` (post-norm): ``x = x + sd(norm1(attn(x)));
  x = x + sd(norm2(mlp(x)))``: the MSA's stream is the input of ``mlp`` and the branches end
  in ``norm1``/``norm2``. The stream is channel-last ``(B, H, W, C)`` throughout ``features``
  (``[stem, stage, PatchMerging, stage, ...]``).
- ResNet blocks (``BasicBlock``, ``Bottleneck``) and ConvNeXt's ``CNBlock`` output the stream
  themselves; a lesion replaces the whole block by its skip path (``downsample``, the
  projection shortcut, where a ResNet block has one). The stream after the ResNet stem
  (``conv1``, ``bn1``, ``relu``, ``maxpool``) is the input of ``layer1``.

Names follow torchvision 0.2x.
"""

from __future__ import annotations

from torch import nn

from .rules import Units, rule


@rule("torchvision.ResNet", "ResNet", "torchvision", "ResNet")
def resnet(model: nn.Module):
    u = Units(model)
    u.add(model.conv1, "stem", tap=model.layer1, where="input", layout="nchw")
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in layer:  # relu(branch(x) + skip(x)): the block's output is the stream
            u.add(blk, "conv", skip=getattr(blk, "downsample", None), layout="nchw")
    return u.add(model.fc, "head").done()


@rule("torchvision.VisionTransformer", "ViT", "torchvision", "VisionTransformer")
def vision_transformer(model: nn.Module):
    u = Units(model)
    layers = list(model.encoder.layers)
    # patches + CLS (prepended in forward) + position embedding (added in Encoder.forward)
    u.add(model.conv_proj, "stem", tap=layers[0], where="input", layout="tokens", prefix=1)
    for blk in layers:
        if type(blk).__name__ == "EncoderBlock":
            u.add(blk.self_attention, "msa", tap=blk.ln_2, where="input",
                  branch=blk.self_attention, layout="tokens", prefix=1)  # fmt: skip
            u.add(blk.mlp, "mlp", tap=blk, branch=blk.mlp, layout="tokens", prefix=1)
        else:  # an unknown block class: one unit, read at its output
            u.add(blk, "msa", layout="tokens", prefix=1)
    return u.add(model.heads, "head").done()


def _swin_block(u: Units, blk: nn.Module) -> None:
    name = type(blk).__name__
    if name == "SwinTransformerBlock":  # x + sd(attn(norm1(x))); x + sd(mlp(norm2(x)))
        u.add(blk.attn, "msa", tap=blk.norm2, where="input", branch=blk.attn, layout="nhwc")
        u.add(blk.mlp, "mlp", tap=blk, branch=blk.mlp, layout="nhwc")
    elif name == "SwinTransformerBlockV2":  # x + sd(norm1(attn(x))); x + sd(norm2(mlp(x)))
        u.add(blk.attn, "msa", tap=blk.mlp, where="input", branch=blk.norm1, layout="nhwc")
        u.add(blk.mlp, "mlp", tap=blk, branch=blk.norm2, layout="nhwc")
    else:  # an unknown block class: one unit, read at its output
        u.add(blk, "msa", layout="nhwc")


@rule("torchvision.SwinTransformer", "Swin", "torchvision", "SwinTransformer")
def swin(model: nn.Module):
    u = Units(model)
    stem, *rest = model.features
    u.add(stem, "stem", layout="nhwc")  # conv, permute to NHWC, norm
    for part in rest:
        if isinstance(part, nn.Sequential):  # a stage: its blocks
            for blk in part:
                _swin_block(u, blk)
        else:  # PatchMerging / PatchMergingV2 between stages
            u.add(part, "pool", layout="nhwc")
    return u.add(model.head, "head").done()


@rule("torchvision.ConvNeXt", "ConvNeXt", "torchvision", "ConvNeXt")
def convnext(model: nn.Module):
    u = Units(model)
    stem, *rest = model.features
    u.add(stem, "stem", layout="nchw")
    for part in rest:
        if isinstance(part[-1], nn.Conv2d):  # between stages: LayerNorm2d, 2x2 stride-2 conv
            u.add(part, "pool", layout="nchw")
        else:  # a stage of CNBlocks: input + sd(layer_scale * block(input)), one unit each
            for blk in part:
                u.add(blk, "conv", layout="nchw")
    return u.add(model.classifier, "head").done()
