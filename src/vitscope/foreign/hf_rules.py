"""Block rules for Hugging Face transformers models: ViT, DeiT, Swin, ConvNeXt (V1, V2), ResNet.

The transformer layers (``ViTLayer``, ``DeiTLayer``, ``SwinLayer``) add their residuals
functionally::

    x = x + dropout(attention(layernorm_before(x))[0])
    x = x + dropout(mlp(layernorm_after(x)))

so the stream after the MSA is the input of ``layernorm_after`` (read with a forward
pre-hook) and the stream after the MLP is the layer's output (its first item for Swin, which
returns ``(hidden_states, attn_weights)``). A lesion zeroes ``attention`` (its output tuple's
first tensor) or ``mlp``, which leaves ``x + 0``; ``dropout`` cannot be the branch, one module
serves both residuals. The streams are ``(B, N, C)`` tokens: ViT puts CLS in front of the
patches (prefix 1), DeiT CLS and the distillation token (prefix 2), Swin nothing. The stream
after the stem is the output of ``embeddings`` (patches, prefix tokens and position
embedding; Swin's returns ``(embeddings, grid)``).

HF Swin merges patches at the *end* of a stage (``SwinStage.downsample``), so its ``pool``
unit follows the stage's blocks. ConvNeXt's stage opens with ``downsampling_layer``, a
``ModuleList`` (norm, strided conv) that is iterated, never called: the ``pool`` unit is read
at its last module; each ``ConvNextLayer`` (``residual + drop_path(...)``) is one ``conv``
unit read at its output. ResNet's stem is ``embedder`` (conv, norm, ReLU, max-pool) and each
``ResNetBasicLayer``/``ResNetBottleNeckLayer`` one ``conv`` unit, with its ``shortcut`` as the
skip path where it projects.

The head is the classifier; the bare backbones (``ViTModel``, ``SwinModel``, ...) end with
their pooler, else their final layernorm. Names follow transformers 5.x (``model.layers`` of
``ViTModel``, ``layernorm_before``/``layernorm_after``).
"""

from __future__ import annotations

from torch import nn

from .rules import Units, rule


def _backbone(model: nn.Module, attr: str) -> nn.Module:
    """The bare model inside a ``*ForImageClassification`` (``model.vit``, ...), or the model."""
    return getattr(model, attr, model)


def _head(model: nn.Module, backbone: nn.Module, *names: str) -> nn.Module:
    """The classifier (the first of ``names`` the model has), else the backbone's pooler, else
    its final layernorm."""
    for name in names:
        head = getattr(model, name, None)
        if head is not None:
            return head
    pooler = getattr(backbone, "pooler", None)
    return pooler if pooler is not None else backbone.layernorm


def transformer_layer(u: Units, layer: nn.Module, *, prefix: int) -> None:
    """The MSA and MLP units of one ``ViTLayer``/``DeiTLayer``/``SwinLayer``."""
    u.add(layer.attention, "msa", tap=layer.layernorm_after, where="input",
          branch=layer.attention, layout="tokens", prefix=prefix)  # fmt: skip
    u.add(layer.mlp, "mlp", tap=layer, branch=layer.mlp, layout="tokens", prefix=prefix)


def _vit_like(model: nn.Module, backbone: nn.Module, head: nn.Module, prefix: int):
    u = Units(model)
    u.add(backbone.embeddings, "stem", layout="tokens", prefix=prefix)
    for layer in backbone.layers:
        transformer_layer(u, layer, prefix=prefix)
    return u.add(head, "head").done()


@rule("transformers.ViT", "ViT", "transformers", "ViTForImageClassification", "ViTModel")
def vit(model: nn.Module):
    backbone = _backbone(model, "vit")
    return _vit_like(model, backbone, _head(model, backbone, "classifier"), prefix=1)


@rule("transformers.DeiT", "ViT", "transformers", "DeiTForImageClassification",
      "DeiTForImageClassificationWithTeacher", "DeiTModel")  # fmt: skip
def deit(model: nn.Module):
    # CLS and distillation token; the teacher variant averages two heads, the CLS one stands
    # for both
    backbone = _backbone(model, "deit")
    head = _head(model, backbone, "classifier", "cls_classifier")
    return _vit_like(model, backbone, head, prefix=2)


@rule("transformers.Swin", "Swin", "transformers", "SwinForImageClassification", "SwinModel")
def swin(model: nn.Module):
    backbone = _backbone(model, "swin")
    u = Units(model)
    u.add(backbone.embeddings, "stem", layout="tokens", prefix=0)
    for stage in backbone.encoder.layers:
        for layer in stage.blocks:
            transformer_layer(u, layer, prefix=0)
        if stage.downsample is not None:  # patch merging ends the stage
            u.add(stage.downsample, "pool", layout="tokens", prefix=0)
    return u.add(_head(model, backbone, "classifier"), "head").done()


def _has_downsampling(layer: nn.Module | None) -> bool:
    if layer is None or isinstance(layer, nn.Identity):
        return False
    return not isinstance(layer, (nn.ModuleList, nn.Sequential)) or len(layer) > 0


@rule("transformers.ConvNeXt", "ConvNeXt", "transformers", "ConvNextForImageClassification",
      "ConvNextModel", "ConvNextV2ForImageClassification", "ConvNextV2Model")  # fmt: skip
def convnext(model: nn.Module):
    backbone = _backbone(model, "convnext")
    backbone = _backbone(backbone, "convnextv2")
    u = Units(model)
    u.add(backbone.embeddings, "stem", layout="nchw")
    for stage in backbone.encoder.stages:
        down = stage.downsampling_layer
        if _has_downsampling(down):
            # a ModuleList is iterated, not called: its last module's output is the stream
            tap = down[-1] if isinstance(down, (nn.ModuleList, nn.Sequential)) else down
            u.add(down, "pool", tap=tap, layout="nchw")
        for layer in stage.layers:  # one residual unit: dwconv, norm, MLP (GRN), layer scale
            u.add(layer, "conv", layout="nchw")
    return u.add(_head(model, backbone, "classifier"), "head").done()


@rule("transformers.ResNet", "ResNet", "transformers", "ResNetForImageClassification",
      "ResNetModel")  # fmt: skip
def resnet(model: nn.Module):
    backbone = _backbone(model, "resnet")
    u = Units(model)
    u.add(backbone.embedder, "stem", layout="nchw")  # conv, norm, ReLU, max-pool
    for stage in backbone.encoder.stages:
        for layer in stage.layers:  # act(layer(x) + shortcut(x))
            shortcut = getattr(layer, "shortcut", None)
            skip = None if shortcut is None or isinstance(shortcut, nn.Identity) else shortcut
            u.add(layer, "conv", skip=skip, layout="nchw")
    return u.add(_head(model, backbone, "classifier"), "head").done()
