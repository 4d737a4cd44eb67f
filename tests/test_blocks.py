"""The block contract: units, feature maps and lesions, for our models and for a user's model."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from vitscope.errors import VitscopeError
from vitscope.models import Block, blocks, create_model, feature_maps, list_models, replace_unit

TINY = [n for n in list_models() if n.endswith("_tiny")]

# One letter per unit: s=stem c=conv a=msa m=mlp p=pool h=head.
LETTERS = {"stem": "s", "conv": "c", "msa": "a", "mlp": "m", "pool": "p", "head": "h"}
TINY_LAYOUTS = {
    "resnet_tiny": "scccccccch",
    "alternet_tiny": "scccacacah",
    "vit_tiny": "s" + "am" * 6 + "h",
    "vit_local_tiny": "s" + "am" * 6 + "h",
    "pit_tiny": "sampamampamh",
    "swin_tiny": "s" + "amam" + "pamam" + "pamamh",
}


def layout(model: nn.Module) -> str:
    return "".join(LETTERS[b.kind] for b in blocks(model))


def tiny(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10, in_chans=1, img_size=28, **kw)


@pytest.mark.parametrize("name", TINY)
def test_tiny_layouts(name):
    model = tiny(name)
    assert layout(model) == TINY_LAYOUTS[name]
    modules = dict(model.named_modules())
    for b in blocks(model):
        assert modules[b.name] is b.module
    assert [b.stage for b in blocks(model)] == sorted(b.stage for b in blocks(model))


def test_alternet_msas_override_follows_the_stage_layout():
    # [Conv]*(n1 - 2*n2) + [Conv, MSA]*n2 per stage
    model = create_model("alternet_tiny", num_classes=10, depths=(2, 2, 5, 2), msas=(1, 0, 2, 0))
    assert layout(model) == "s" + "ca" + "cc" + "ccaca" + "cc" + "h"
    assert "a" not in layout(create_model("alternet_tiny", num_classes=10, msas=(0, 0, 0, 0)))


def test_vit_ti_gives_25_maps_with_msa_at_odd_indices():
    model = create_model("vit_ti", num_classes=100).eval()
    units = [b for b in blocks(model) if b.kind != "head"]
    assert [i for i, b in enumerate(units) if b.kind == "msa"] == list(range(1, 25, 2))
    with torch.no_grad():
        maps = feature_maps(model, torch.randn(1, 3, 32, 32))
    assert len(maps) == 25 and all(m.shape == (1, 192, 16, 16) for m in maps)


def test_resnet50_gives_17_maps_downsampling_at_4_8_14():
    model = create_model("resnet50", num_classes=100).eval()
    units = [b for b in blocks(model) if b.kind != "head"]
    assert len(units) == 17
    assert [i for i, b in enumerate(units) if b.downsample] == [4, 8, 14]
    with torch.no_grad():
        maps = feature_maps(model, torch.randn(1, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [32] * 4 + [16] * 4 + [8] * 6 + [4] * 3


@pytest.mark.parametrize("name", TINY)
def test_feature_maps_are_the_residual_stream(name):
    model = tiny(name).eval()
    x = torch.randn(2, 1, 28, 28)
    *units, head = blocks(model)
    raw = {}
    handle = units[-1].module.register_forward_hook(lambda m, i, o: raw.setdefault("out", o))
    with torch.no_grad():
        logits = model(x)
        maps = feature_maps(model, x)
        torch.testing.assert_close(head.module(raw["out"]), logits)
    handle.remove()
    assert len(maps) == len(units)
    assert all(m.ndim == 4 and m.shape[0] == 2 and m.shape[2] == m.shape[3] >= 4 for m in maps)
    assert maps[0].shape[-1] >= 7  # early maps stay spatially meaningful
    assert not model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_feature_maps_drop_cls_and_permute_channel_last():
    x = torch.randn(2, 1, 28, 28)
    vit = tiny("vit_tiny").eval()
    assert feature_maps(vit, x)[0].shape == (2, 64, 7, 7)  # 1 + 49 tokens -> 7x7
    swin = tiny("swin_tiny").eval()
    maps = feature_maps(swin, x)
    assert maps[0].shape == (2, 32, 14, 14)  # (B, H, W, C) stream -> (B, C, H, W)
    assert maps[-1].shape == (2, 128, 4, 4)


class UserViT(nn.Module):
    """A hand-written ViT-like model that knows nothing of vitscope."""

    class Layer(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            x = x + self.attn(x, x, x, need_weights=False)[0]
            return x + self.mlp(x)

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([self.Layer(dim) for _ in range(2)])
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        x = rearrange(self.embed(x), "b c h w -> b (h w) c")
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        for layer in self.blocks:
            x = layer(x)
        return self.fc(x[:, 0])


def test_user_spec_on_a_foreign_model():
    model, spec = UserViT(), {"msa": "blocks.*.attn", "mlp": "blocks.*.mlp"}
    units = blocks(model, spec)
    assert [(b.name, b.kind, b.stage) for b in units] == [
        ("blocks.0.attn", "msa", 0),
        ("blocks.0.mlp", "mlp", 0),
        ("blocks.1.attn", "msa", 0),
        ("blocks.1.mlp", "mlp", 0),
    ]
    maps = feature_maps(model, torch.randn(2, 3, 16, 16), spec)  # 1 + 16 tokens -> 4x4
    assert [m.shape for m in maps] == [(2, 16, 4, 4)] * 4
    # without a spec: the generic decomposition, one unit per repeated block
    generic = blocks(model)
    assert [(b.name, b.kind) for b in generic] == [
        ("embed", "stem"),
        ("blocks.0", "msa"),
        ("blocks.1", "msa"),
        ("fc", "head"),
    ]
    with pytest.raises(VitscopeError, match=r"\['layers\.\*'\] match no module"):
        blocks(model, {"msa": "layers.*"})
    with pytest.raises(VitscopeError, match="unknown block kind"):
        blocks(model, {"ffn": "blocks.*.mlp"})


def _by_hand(model: UserViT, x: torch.Tensor, drop_attn: int | None = None):
    """The residual stream after every unit of UserViT, and its logits, computed by hand."""
    h = rearrange(model.embed(x), "b c h w -> b (h w) c")
    h = torch.cat([model.cls.expand(len(h), -1, -1), h], dim=1)
    streams = []
    for i, layer in enumerate(model.blocks):
        a = layer.attn(h, h, h, need_weights=False)[0]
        h = h + (torch.zeros_like(a) if i == drop_attn else a)
        streams.append(h)
        h = h + layer.mlp(h)
        streams.append(h)
    return streams, model.fc(h[:, 0])


def test_functional_residuals_read_from_the_stream_not_the_branch():
    """A branch spec with a tap: each map is the residual stream computed by hand (the MSA's
    stream is the MLP's input), and the lesion zeroes the branch, not the stream."""
    from vitscope.foreign import ForeignModel

    torch.manual_seed(0)
    model = UserViT().eval()
    spec = {"msa": "blocks.*.attn -> blocks.*.mlp:input", "mlp": "blocks.*.mlp -> blocks.*"}
    fm = ForeignModel(model, img_size=16, spec=spec)
    units = blocks(fm)
    assert [(b.name, b.kind, b.stage, b.downsample) for b in units] == [
        ("blocks.0.attn", "msa", 1, False),
        ("blocks.0.mlp", "mlp", 1, False),
        ("blocks.1.attn", "msa", 1, False),
        ("blocks.1.mlp", "mlp", 1, False),
    ]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        maps = feature_maps(fm, x)
        streams, logits = _by_hand(model, x)
        for got, want in zip(maps, streams):
            want = rearrange(want[:, 1:], "b (h w) c -> b c h w", h=4)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # the old reading, the branch output, is not the stream
        branch = blocks(model, {"msa": "blocks.*.attn"})
        assert not torch.allclose(feature_maps(model, x, {"msa": "blocks.*.attn"})[0], maps[0])
        assert len(branch) == 2
        torch.testing.assert_close(fm(x), logits)
        with replace_unit(fm, units[2]):
            _, without = _by_hand(model, x, drop_attn=1)
            torch.testing.assert_close(fm(x), without)
        torch.testing.assert_close(fm(x), logits)  # restored


def test_generic_decomposition_reads_the_stream_after_each_block():
    """No spec, no rule: one unit per repeated block, each map the stream after it by hand."""
    from vitscope.foreign import ForeignModel

    torch.manual_seed(0)
    model = UserViT().eval()
    fm = ForeignModel(model, img_size=16)
    assert fm.rule == "generic" and fm.family == "other"
    assert [(b.kind, b.stage) for b in blocks(fm)] == [
        ("stem", 0), ("msa", 1), ("msa", 1), ("head", 2)
    ]  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        streams, _ = _by_hand(model, x)
        maps = feature_maps(fm, x)
    torch.testing.assert_close(maps[0], model.embed(x))
    for got, want in zip(maps[1:], streams[1::2]):  # the stream after each whole block
        torch.testing.assert_close(got, rearrange(want[:, 1:], "b (h w) c -> b c h w", h=4))


def test_spec_taps_that_do_not_resolve_are_refused():
    from vitscope.foreign import ForeignModel

    with pytest.raises(VitscopeError, match="no module of the model"):
        ForeignModel(UserViT(), img_size=16, spec={"msa": "blocks.*.attn -> blocks.*.nope:input"})
    with pytest.raises(VitscopeError, match=":input or :output"):
        ForeignModel(UserViT(), img_size=16, spec={"msa": "blocks.*.attn -> blocks.*.mlp:in"})


def test_replace_unit_with_zero_branch_keeps_logits():
    model = tiny("vit_tiny").eval()
    x = torch.randn(2, 1, 28, 28)
    unit = next(b for b in blocks(model) if b.name == "blocks.2.attn")
    nn.init.zeros_(unit.module.fn.proj.weight)
    nn.init.zeros_(unit.module.fn.proj.bias)
    other = next(b for b in blocks(model) if b.name == "blocks.3.mlp")
    with torch.no_grad():
        before = model(x)
        with replace_unit(model, unit):
            assert isinstance(model.blocks[2].attn, nn.Identity)
            torch.testing.assert_close(model(x), before)
        with replace_unit(model, other):
            assert not torch.allclose(model(x), before)
    assert model.blocks[2].attn is unit.module and model.blocks[3].mlp is other.module


def test_replace_unit_refuses_stem_head_and_downsampling_and_restores_on_error():
    model = tiny("resnet_tiny")
    units = blocks(model)
    for b in (units[0], units[-1], next(b for b in units if b.downsample)):
        with pytest.raises(VitscopeError, match="cannot remove"):
            with replace_unit(model, b):
                pass
    with pytest.raises(RuntimeError, match="boom"):
        with replace_unit(model, units[1]):
            raise RuntimeError("boom")
    assert model.stages[0][0] is units[1].module


def test_replace_projection_unit_keeps_its_skip_path():
    # the first block projects 16 -> 8 channels without downsampling: it becomes its shortcut
    for name in ("resnet_tiny", "alternet_tiny"):
        model = tiny(name, widths=(8, 16, 24, 32)).eval()
        unit = blocks(model)[1]
        assert isinstance(unit, Block) and not unit.downsample
        with torch.no_grad(), replace_unit(model, unit):
            assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_blocks_command_probes_a_zoo_model_at_its_own_size(capsys):
    from vitscope.cli import main

    assert main(["blocks", "--model", "vit_tiny", "--img-size", "64"]) == 0
    assert "64x16x16" in capsys.readouterr().out  # patch 4 at 64 px, not a 32 px probe


def test_mean_without_std_is_refused():
    from vitscope.foreign import ForeignModel

    with pytest.raises(VitscopeError, match="mean and std together"):
        ForeignModel(UserViT(), img_size=16, mean=(0.5, 0.5, 0.5))
