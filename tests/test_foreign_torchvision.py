"""Curated rules for torchvision classifiers: every unit's map is the residual stream computed
by hand from the submodules, and a lesion removes exactly the unit's residual branch.

Tiny models with random weights (nothing is downloaded), 32 px inputs, eval mode.
"""

from __future__ import annotations

import pytest
import torch
from conftest import require
from einops import rearrange

pytestmark = [pytest.mark.tv, pytest.mark.usefixtures("one_thread")]

torchvision = require("torchvision")

from torchvision.models.convnext import CNBlockConfig, ConvNeXt  # noqa: E402
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402
from torchvision.models.swin_transformer import (  # noqa: E402
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

from vitscope.analyses import EvalData, get_analysis  # noqa: E402
from vitscope.analyses.lesion import Config as LesionConfig  # noqa: E402
from vitscope.foreign import ForeignModel  # noqa: E402
from vitscope.foreign.generic import generic_units  # noqa: E402
from vitscope.models import feature_maps, replace_unit  # noqa: E402

SIZE = 32


# ---- tiny models --------------------------------------------------------------------------


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vit":
        m = torchvision.models.VisionTransformer(
            image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
            mlp_dim=64, num_classes=5,
        )  # fmt: skip
        torch.nn.init.normal_(m.heads.head.weight)  # torchvision starts it at zero
    elif name == "resnet_basic":  # layer2 holds two blocks: a removable unit in stage 2
        m = ResNet(BasicBlock, [1, 2, 1, 1], num_classes=5)
    elif name == "resnet_bottleneck":  # layer1.0 changes channels (64 -> 256) at stride 1
        m = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, width_per_group=16)
    elif name in ("swin", "swin_v2"):  # stage 1: a plain and a shifted-window block
        v2 = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}
        m = SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[1, 2], window_size=[4, 4],
            num_classes=5, **(v2 if name == "swin_v2" else {}),
        )  # fmt: skip
    elif name == "convnext":
        cfgs = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
        m = ConvNeXt(cfgs, layer_scale=1.0, num_classes=5)  # 1e-6 would hide the branches
    else:
        raise ValueError(name)
    with torch.no_grad():  # norms away from their identity init, so that e.g. norm1(0) != 0
        for mod in m.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


LAYOUTS = {
    "vit": (
        "ViT",
        "stem msa mlp msa mlp head",
        ["conv_proj"]
        + [
            f"encoder.layers.encoder_layer_{i}.{p}"
            for i in (0, 1)
            for p in ("self_attention", "mlp")
        ]
        + ["heads"],
    ),
    "resnet_basic": (
        "ResNet",
        "stem conv conv conv conv conv head",
        ["conv1", "layer1.0", "layer2.0", "layer2.1", "layer3.0", "layer4.0", "fc"],
    ),
    "resnet_bottleneck": (
        "ResNet",
        "stem conv conv conv conv head",
        ["conv1", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc"],
    ),
    "swin": (
        "Swin",
        "stem msa mlp msa mlp pool msa mlp head",
        [
            "features.0",
            "features.1.0.attn",
            "features.1.0.mlp",
            "features.1.1.attn",
            "features.1.1.mlp",
            "features.2",
            "features.3.0.attn",
            "features.3.0.mlp",
            "head",
        ],
    ),
    "convnext": (
        "ConvNeXt",
        "stem conv pool conv head",
        ["features.0", "features.1.0", "features.2", "features.3.0", "classifier"],
    ),
}
LAYOUTS["swin_v2"] = LAYOUTS["swin"]
NAMES = list(LAYOUTS)


@pytest.fixture(scope="module")
def wrapped():
    return {name: ForeignModel(make(name), img_size=SIZE) for name in NAMES}


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---- the residual stream by hand ----------------------------------------------------------
# Each returns (maps after every unit but the head, as (B, C, H, W), logits). ``drop`` is the
# index (among the maps) of a unit whose residual branch is removed.


def _tokens_map(t: torch.Tensor) -> torch.Tensor:
    n = t.shape[1] - 1  # the class token
    return rearrange(t[:, 1:], "b (h w) c -> b c h w", h=int(n**0.5))


def vit_by_hand(net, x, drop=None):
    s = net._process_input(x)
    s = torch.cat([net.class_token.expand(len(x), -1, -1), s], dim=1)
    s = s + net.encoder.pos_embedding
    maps = [_tokens_map(s)]
    for blk in net.encoder.layers:
        h = blk.ln_1(s)
        a, _ = blk.self_attention(h, h, h, need_weights=False)
        s = s + (0 if len(maps) == drop else a)
        maps.append(_tokens_map(s))
        m = blk.mlp(blk.ln_2(s))
        s = s + (0 if len(maps) == drop else m)
        maps.append(_tokens_map(s))
    return maps, net.heads(net.encoder.ln(s)[:, 0])


def swin_by_hand(net, x, drop=None):
    stem, *rest = net.features
    s = stem(x)
    maps = [s.permute(0, 3, 1, 2)]
    for part in rest:
        if isinstance(part, torch.nn.Sequential):
            for blk in part:
                v2 = isinstance(blk, SwinTransformerBlockV2)
                a = blk.norm1(blk.attn(s)) if v2 else blk.attn(blk.norm1(s))
                s = s + (0 if len(maps) == drop else a)
                maps.append(s.permute(0, 3, 1, 2))
                m = blk.norm2(blk.mlp(s)) if v2 else blk.mlp(blk.norm2(s))
                s = s + (0 if len(maps) == drop else m)
                maps.append(s.permute(0, 3, 1, 2))
        else:
            s = part(s)
            maps.append(s.permute(0, 3, 1, 2))
    return maps, net.head(net.flatten(net.avgpool(net.permute(net.norm(s)))))


def _resnet_branch(blk, s):
    out = blk.relu(blk.bn1(blk.conv1(s)))
    out = blk.bn2(blk.conv2(out))
    if isinstance(blk, Bottleneck):
        out = blk.bn3(blk.conv3(blk.relu(out)))
    return out


def resnet_by_hand(net, x, drop=None):
    s = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    maps = [s]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for blk in layer:
            skip = blk.downsample(s) if blk.downsample is not None else s
            s = skip if len(maps) == drop else blk.relu(_resnet_branch(blk, s) + skip)
            maps.append(s)
    return maps, net.fc(torch.flatten(net.avgpool(s), 1))


def convnext_by_hand(net, x, drop=None):
    stem, *rest = net.features
    s = stem(x)
    maps = [s]
    for part in rest:
        if isinstance(part[-1], torch.nn.Conv2d):
            s = part(s)
            maps.append(s)
            continue
        for blk in part:
            s = s + (0 if len(maps) == drop else blk.layer_scale * blk.block(s))
            maps.append(s)
    return maps, net.classifier(net.avgpool(s))


BY_HAND = {
    "vit": vit_by_hand,
    "resnet_basic": resnet_by_hand,
    "resnet_bottleneck": resnet_by_hand,
    "swin": swin_by_hand,
    "swin_v2": swin_by_hand,
    "convnext": convnext_by_hand,
}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_rule_layout(wrapped, name):
    fm = wrapped[name]
    family, kinds, names = LAYOUTS[name]
    units = fm.vitscope_blocks()
    assert fm.rule == f"torchvision.{type(fm.net).__name__}"
    assert fm.family == family
    assert " ".join(b.kind for b in units) == kinds
    assert [b.name for b in units] == names


def test_stages_and_downsample(wrapped):
    def table(name):
        return [(b.kind, b.stage, b.downsample) for b in wrapped[name].vitscope_blocks()]

    first = [("stem", 0, False), ("conv", 1, False)]
    later = [("conv", 3, True), ("conv", 4, True), ("head", 5, False)]
    assert table("resnet_basic") == [*first, ("conv", 2, True), ("conv", 2, False), *later]
    assert table("resnet_bottleneck") == [*first, ("conv", 2, True), *later]
    assert table("swin")[4:7] == [("mlp", 1, False), ("pool", 2, True), ("msa", 2, False)]
    assert table("convnext") == [
        ("stem", 0, False), ("conv", 1, False), ("pool", 2, True), ("conv", 2, False),
        ("head", 3, False),
    ]  # fmt: skip
    vit = table("vit")
    assert {s for _, s, _ in vit[1:-1]} == {1} and not any(d for _, _, d in vit)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_maps_are_the_residual_stream(wrapped, x, name):
    fm = wrapped[name]
    maps = feature_maps(fm, x)
    expected, logits = BY_HAND[name](fm.net, x)
    assert len(maps) == len(expected)
    for i, (got, want) in enumerate(zip(maps, expected)):
        assert got.shape == want.shape, i
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"unit {i}")
    torch.testing.assert_close(fm(x), logits, atol=1e-5, rtol=1e-5)
    assert _hooks(fm) == 0


@pytest.mark.parametrize(
    "name, kind",
    [
        ("vit", "msa"),
        ("vit", "mlp"),
        ("swin", "msa"),
        ("swin_v2", "msa"),
        ("swin_v2", "mlp"),
        ("convnext", "conv"),
        ("resnet_bottleneck", "conv"),  # layer1.0: replaced by its projection skip
    ],
)
@torch.no_grad()
def test_replace_unit_removes_the_branch(wrapped, x, name, kind):
    fm = wrapped[name]
    units = [b for b in fm.vitscope_blocks() if b.kind != "head"]
    before = fm(x)
    tree = [(n, id(m)) for n, m in fm.named_modules()]
    hooks = _hooks(fm)
    for k, block in enumerate(units):
        if block.kind != kind or block.downsample:
            continue
        _, want = BY_HAND[name](fm.net, x, drop=k)
        assert not torch.allclose(want, before, atol=1e-4), f"{block.name} changes nothing"
        with replace_unit(fm, block):
            torch.testing.assert_close(fm(x), want, atol=1e-5, rtol=1e-5, msg=block.name)
        assert [(n, id(m)) for n, m in fm.named_modules()] == tree
        assert _hooks(fm) == hooks
        torch.testing.assert_close(fm(x), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck"])
def test_lesion_on_a_staged_resnet(wrapped, name):
    fm = wrapped[name]
    units = [b for b in fm.vitscope_blocks() if b.kind != "head"]
    removable = [k for k, b in enumerate(units) if b.kind == "conv" and not b.downsample]
    assert [units[k].name for k in removable] == (
        ["layer1.0", "layer2.1"] if name == "resnet_basic" else ["layer1.0"]
    )
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    data = EvalData(images, torch.zeros(8, dtype=torch.long), (0.5,) * 3, (0.5,) * 3)
    xb, _ = next(data.batches(8))
    k = removable[0]  # layer1.0 (its projection skip for the bottleneck)
    with torch.no_grad():
        _, lesioned = resnet_by_hand(fm.net, xb, drop=k)
        intact = fm(xb)
    # labels that the lesioned model gets all right: its accuracy is 100 %
    data.labels = lesioned.argmax(1)
    base = 100.0 * (intact.argmax(1) == data.labels).float().mean().item()
    cfg = LesionConfig(num_images=8, batch_size=8)
    result = get_analysis("lesion").execute(fm, data, cfg)
    deltas = result.values["delta_acc"]
    assert [k for k, d in enumerate(deltas) if d is not None] == removable
    assert result.values["base_acc"] == pytest.approx(base)
    assert deltas[k] == pytest.approx(100.0 - base)
    assert [u["downsample"] for u in result.values["units"]] == [b.downsample for b in units]


def test_generic_units_on_resnet(wrapped, x):
    net = wrapped["resnet_basic"].net
    units = generic_units(net, x)
    assert [(b.name, b.kind) for b in units] == [
        ("maxpool", "stem"),  # the stream after conv1, bn1, relu, maxpool
        ("layer1.0", "conv"), ("layer2.0", "conv"), ("layer2.1", "conv"), ("layer3.0", "conv"),
        ("layer4.0", "conv"), ("fc", "head"),
    ]  # fmt: skip
    assert _hooks(net) == 0
