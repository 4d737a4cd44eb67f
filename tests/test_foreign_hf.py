"""Curated block rules for Hugging Face image classifiers (``vitscope.foreign.hf_rules``).

Tiny models from configs with random weights (nothing is downloaded). Each unit's captured
stream is checked against the residual stream computed by hand from the model's submodules
(and against HF's ``output_hidden_states`` where it has the same point), and each lesion
against the logits of the model with that branch left out by hand.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import require

transformers = require("transformers")

from transformers.models.swin.modeling_swin import window_partition, window_reverse  # noqa: E402

from vitscope.analyses import EvalData, get_analysis  # noqa: E402
from vitscope.analyses.lesion import Config as LesionConfig  # noqa: E402
from vitscope.errors import VitscopeError  # noqa: E402
from vitscope.foreign import ForeignModel, find_rule  # noqa: E402
from vitscope.models import feature_maps, replace_unit  # noqa: E402
from vitscope.models.blocks import tapped, to_map  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"atol": 1e-5, "rtol": 1e-5}
LETTER = {"stem": "s", "conv": "c", "msa": "a", "mlp": "m", "pool": "p", "head": "h"}

VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 64, "image_size": 16, "patch_size": 4, "num_labels": 5}  # fmt: skip
SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2],
        "num_heads": [2, 4], "window_size": 4, "num_labels": 5}  # fmt: skip
CONVNEXT = {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 2], "num_labels": 5}
RESNET = {"embedding_size": 4, "hidden_sizes": [8, 16, 32], "depths": [1, 2, 2],
          "layer_type": "basic", "num_labels": 5}  # fmt: skip


def layout(units) -> str:
    return "".join(LETTER[b.kind] for b in units)


def tokens_to_map(t: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, prefix + H*W, C) -> (B, C, H, W), rows first."""
    side = math.isqrt(t.shape[1] - prefix)
    return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)


def scrambled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights large enough that every branch moves the stream (HF initialises ConvNeXt's
    layer scale at 1e-6, Swin's position bias and DeiT's tokens at 0), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise * 0.2 if p.ndim > 1 else p + 0.1 * noise)
    return model.eval()


def inputs(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# --- the residual streams, by hand ------------------------------------------------------


def vit_streams(backbone, x, drop=None):
    """Streams after each unit of a ViT/DeiT and the final normed tokens; ``drop = (layer,
    "msa"|"mlp")`` leaves that branch out."""
    e = backbone.embeddings
    patches = e.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
    tokens = [e.cls_token] + ([e.distillation_token] if hasattr(e, "distillation_token") else [])
    h = torch.cat([t.expand(len(x), -1, -1) for t in tokens] + [patches], 1)
    h = h + e.position_embeddings
    streams = [h]
    for i, layer in enumerate(backbone.layers):
        if drop != (i, "msa"):
            h = h + layer.attention(layer.layernorm_before(h))[0]
        streams.append(h)
        if drop != (i, "mlp"):
            h = h + layer.mlp(layer.layernorm_after(h))
        streams.append(h)
    return streams, backbone.layernorm(h)


def vit_logits(model, final):
    if hasattr(model, "cls_classifier"):  # DeiT with teacher: the mean of both heads
        return (model.cls_classifier(final[:, 0]) + model.distillation_classifier(final[:, 1])) / 2
    return model.classifier(final[:, 0])


def swin_attention(layer, h, dims):
    """The (shifted-)window MSA branch of one SwinLayer (no padding: sizes divide)."""
    layer.set_shift_and_window_size(dims)
    (height, width), ws, shift = dims, layer.window_size, layer.shift_size
    b, _, c = h.shape
    s = layer.layernorm_before(h).view(b, height, width, c)
    if shift:
        s = torch.roll(s, (-shift, -shift), (1, 2))
    mask = layer.get_attn_mask(height, width, dtype=h.dtype, device=h.device)
    a = layer.attention(window_partition(s, ws).view(-1, ws * ws, c), mask)[0]
    a = window_reverse(a.view(-1, ws, ws, c), ws, height, width)
    if shift:
        a = torch.roll(a, (shift, shift), (1, 2))
    return a.reshape(b, height * width, c)


def swin_streams(backbone, x, drop=None):
    """Streams after each unit of a Swin (patch merging ends a stage) and the pooled tokens;
    ``drop = (layer, "msa"|"mlp")`` counts layers over all stages."""
    e = backbone.embeddings
    p = e.patch_embeddings.projection(x)
    dims = tuple(p.shape[-2:])
    h = e.norm(p.flatten(2).transpose(1, 2))
    streams, k = [h], 0
    for stage in backbone.encoder.layers:
        for layer in stage.blocks:
            if drop != (k, "msa"):
                h = h + swin_attention(layer, h, dims)
            streams.append(h)
            if drop != (k, "mlp"):
                h = h + layer.mlp(layer.layernorm_after(h))
            streams.append(h)
            k += 1
        if stage.downsample is not None:
            b, _, c = h.shape
            v = h.view(b, *dims, c)
            v = torch.cat(
                [v[:, 0::2, 0::2], v[:, 1::2, 0::2], v[:, 0::2, 1::2], v[:, 1::2, 1::2]], -1
            )
            h = stage.downsample.reduction(stage.downsample.norm(v.view(b, -1, 4 * c)))
            dims = (dims[0] // 2, dims[1] // 2)
            streams.append(h)
    return streams, backbone.layernorm(h).mean(1)


def convnext_branch(layer, h):
    r = layer.layernorm(layer.dwconv(h).permute(0, 2, 3, 1))
    r = layer.act(layer.pwconv1(r))
    if hasattr(layer, "grn"):  # ConvNeXt V2
        r = layer.grn(r)
    r = layer.pwconv2(r)
    if getattr(layer, "layer_scale_parameter", None) is not None:
        r = layer.layer_scale_parameter * r
    return r.permute(0, 3, 1, 2)


def convnext_streams(backbone, x, drop=None):
    """Streams after each unit of a ConvNeXt and the pooled features; ``drop``: the index of
    a ConvNextLayer (over all stages) left out."""
    e = backbone.embeddings
    h = e.layernorm(e.patch_embeddings(x))
    streams, k = [h], 0
    for stage in backbone.encoder.stages:
        for m in stage.downsampling_layer:
            h = m(h)
        if len(stage.downsampling_layer):
            streams.append(h)
        for layer in stage.layers:
            if k != drop:
                h = h + convnext_branch(layer, h)
            streams.append(h)
            k += 1
    return streams, backbone.layernorm(h.mean((-2, -1)))


def resnet_streams(backbone, x, drop=None):
    """Streams after each unit of a ResNet and the pooled features; ``drop``: the index of a
    layer (over all stages) replaced by its shortcut."""
    stem = backbone.embedder
    c = stem.embedder
    h = stem.pooler(c.activation(c.normalization(c.convolution(x))))
    streams, k = [h], 0
    for stage in backbone.encoder.stages:
        for layer in stage.layers:
            if k == drop:
                h = layer.shortcut(h)
            else:
                h = layer.activation(layer.layer(h) + layer.shortcut(h))
            streams.append(h)
            k += 1
    return streams, backbone.pooler(h)


# --- the models --------------------------------------------------------------------------

T = transformers
# name: (class, config, kwargs, image size, backbone attribute, hand streams, prefix, layout)
CASES = {
    "vit": (T.ViTForImageClassification, T.ViTConfig, VIT, 16, "vit", vit_streams, 1,
            "s" + "am" * 2 + "h"),
    "deit": (T.DeiTForImageClassification, T.DeiTConfig, VIT, 16, "deit", vit_streams, 2,
             "s" + "am" * 2 + "h"),
    "deit_teacher": (T.DeiTForImageClassificationWithTeacher, T.DeiTConfig, VIT, 16, "deit",
                     vit_streams, 2, "s" + "am" * 2 + "h"),
    "swin": (T.SwinForImageClassification, T.SwinConfig, SWIN, 32, "swin", swin_streams, 0,
             "s" + "am" * 2 + "p" + "am" * 2 + "h"),
    "convnext": (T.ConvNextForImageClassification, T.ConvNextConfig, CONVNEXT, 32, "convnext",
                 convnext_streams, None, "scpcch"),
    "convnextv2": (T.ConvNextV2ForImageClassification, T.ConvNextV2Config, CONVNEXT, 32,
                   "convnextv2", convnext_streams, None, "scpcch"),
    "resnet": (T.ResNetForImageClassification, T.ResNetConfig, RESNET, 32, "resnet",
               resnet_streams, None, "s" + "c" * 5 + "h"),
}  # fmt: skip
FAMILY = {"vit": "ViT", "deit": "ViT", "deit_teacher": "ViT", "swin": "Swin",
          "convnext": "ConvNeXt", "convnextv2": "ConvNeXt", "resnet": "ResNet"}  # fmt: skip


@functools.cache
def build(name: str):
    cls, config, kwargs, size, _, _, _, _ = CASES[name]
    torch.manual_seed(0)
    model = scrambled(cls(config(**kwargs)))
    return model, ForeignModel(model, img_size=size)


def logits_by_hand(name: str, model, final):
    if name in ("vit", "deit", "deit_teacher"):
        return vit_logits(model, final)
    return model.classifier(final)


def hand(name: str, x, drop=None):
    model, _ = build(name)
    _, _, _, _, attr, streams_of, _, _ = CASES[name]
    streams, final = streams_of(getattr(model, attr), x, drop)
    return streams, logits_by_hand(name, model, final)


def as_maps(name: str, streams):
    prefix = CASES[name][6]
    return [tokens_to_map(s, prefix) if s.ndim == 3 else s for s in streams]


@pytest.mark.parametrize("name", list(CASES))
def test_units_and_rule(name):
    model, fm = build(name)
    units = fm.vitscope_blocks()
    assert layout(units) == CASES[name][7]
    assert fm.family == FAMILY[name]
    assert fm.rule == find_rule(model).name and fm.rule.startswith("transformers.")
    head = {"deit_teacher": "cls_classifier"}.get(name, "classifier")
    assert units[-1].name == head
    prefix = CASES[name][6]
    if prefix is not None:
        assert {b.prefix for b in units[:-1]} == {prefix}
        assert {b.layout for b in units[:-1]} == {"tokens"}


@pytest.mark.parametrize("name", list(CASES))
def test_streams_match_the_hand_computed_residual_stream(name):
    model, fm = build(name)
    size = CASES[name][3]
    x = inputs(size)
    with torch.no_grad():
        maps = feature_maps(fm, x)
        streams, logits = hand(name, x)
        out = fm(x)
        hf = model(x, output_hidden_states=True)
    expected = as_maps(name, streams)
    assert len(maps) == len(expected)
    for got, want in zip(maps, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **TOL)
    # the plain logits, unwrapped from the ModelOutput, equal the hand-computed ones
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, hf.logits, **TOL)
    torch.testing.assert_close(out, logits, **TOL)
    # HF's hidden states: the stream after the stem and after each layer (ViT), after each
    # stage (Swin, ConvNeXt, ResNet)
    units = fm.vitscope_blocks()[:-1]
    if name in ("vit", "deit", "deit_teacher"):
        points = [0] + [i for i, b in enumerate(units) if b.kind == "mlp"]
    elif name == "swin":  # HF's stage ends with its patch merging
        points = [0] + [i for i, b in enumerate(units) if b.kind == "pool"] + [len(units) - 1]
    else:
        last = {b.stage: i for i, b in enumerate(units)}
        points = [0] + [last[s] for s in sorted(last) if s > 0]
    assert len(points) == len(hf.hidden_states)
    for i, hs in zip(points, hf.hidden_states):
        torch.testing.assert_close(streams[i], hs, **TOL)
    if name == "swin":  # HF's own (B, C, H, W) maps: same orientation as ours
        for i, hs in zip(points, hf.reshaped_hidden_states):
            torch.testing.assert_close(maps[i], hs, **TOL)


def _lesions(name):
    """(unit index, hand ``drop``) of each removable unit."""
    units = build(name)[1].vitscope_blocks()
    out, layer, conv = [], -1, -1
    for i, b in enumerate(units):
        if b.kind == "msa":
            layer += 1
            out.append((i, (layer, "msa")))
        elif b.kind == "mlp":
            out.append((i, (layer, "mlp")))
        elif b.kind == "conv":
            conv += 1
            if not b.downsample:
                out.append((i, conv))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_replace_unit_removes_exactly_the_branch(name):
    model, fm = build(name)
    x = inputs(CASES[name][3])
    units = fm.vitscope_blocks()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        intact = fm(x)  # (HF installs its own output-capturing hooks once, on a first call)
        hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
        for i, drop in _lesions(name):
            with replace_unit(fm, units[i]) as lesioned:
                got = lesioned(x)
            torch.testing.assert_close(got, hand(name, x, drop)[1], **TOL)
            assert (got - intact).abs().max() > 1e-3, units[i].name
        torch.testing.assert_close(fm(x), intact, atol=0, rtol=0)
    # the model is as it was: same modules, no hooks left, same weights
    assert fm.vitscope_blocks() == units
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_every_removable_unit_is_lesioned():
    for name in CASES:
        units = build(name)[1].vitscope_blocks()
        removable = [i for i, b in enumerate(units)
                     if b.kind in ("conv", "msa", "mlp") and not b.downsample]  # fmt: skip
        assert [i for i, _ in _lesions(name)] == removable, name


def test_resnet_stages_skips_and_lesion_study():
    model, fm = build("resnet")
    units = fm.vitscope_blocks()
    assert [b.stage for b in units] == [0, 1, 2, 2, 3, 3, 4]
    assert [b.downsample for b in units] == [False, False, True, False, True, False, False]
    layers = [m for s in model.resnet.encoder.stages for m in s.layers]
    # projections: 4 -> 8 channels (stage 1) and the strided first layers of stages 2 and 3
    assert [b.skip for b in units[1:-1]] == [
        layers[0].shortcut,
        layers[1].shortcut,
        None,
        layers[3].shortcut,
        None,
    ]
    with pytest.raises(VitscopeError, match="downsampling"):
        with replace_unit(fm, units[2]):
            pass
    g = torch.Generator().manual_seed(2)
    data = EvalData(
        torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 5, (8,), generator=g),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    result = get_analysis("lesion").execute(fm, data, LesionConfig(num_images=8, batch_size=8))
    deltas = result.values["delta_acc"]
    assert len(deltas) == len(units) - 1
    assert [d is None for d in deltas] == [True, False, True, False, True, False]
    assert 0.0 <= result.values["base_acc"] <= 100.0


def test_resnet_bottleneck_units():
    kwargs = {**RESNET, "layer_type": "bottleneck", "hidden_sizes": [16, 32], "depths": [1, 1]}
    model = scrambled(T.ResNetForImageClassification(T.ResNetConfig(**kwargs)))
    fm = ForeignModel(model, img_size=32)
    units = fm.vitscope_blocks()
    assert layout(units) == "scch"
    assert [b.downsample for b in units] == [False, False, True, False]
    assert all(b.skip is not None for b in units[1:-1])  # 4 -> 16 channels, then strided
    x = inputs(32)
    with torch.no_grad():
        maps = feature_maps(fm, x)
        streams, _ = resnet_streams(model.resnet, x)
        with replace_unit(fm, units[1]) as lesioned:
            got = lesioned(x)
        torch.testing.assert_close(got, model.classifier(resnet_streams(model.resnet, x, 0)[1]))
    for got_map, want in zip(maps, streams):
        torch.testing.assert_close(got_map, want, **TOL)


# --- bare backbones (*Model: no classifier) ----------------------------------------------

BACKBONES = {
    "vit": (T.ViTModel, "pooler"),
    "deit": (T.DeiTModel, "pooler"),
    "swin": (T.SwinModel, "pooler"),
    "convnext": (T.ConvNextModel, "layernorm"),
    "convnextv2": (T.ConvNextV2Model, "layernorm"),
    "resnet": (T.ResNetModel, "pooler"),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_rules(name):
    cls, head = BACKBONES[name]
    _, config, kwargs, size, _, streams_of, _, want = CASES[name]
    torch.manual_seed(0)
    model = scrambled(cls(config(**kwargs)))
    found = find_rule(model)
    assert found is not None and found.family == FAMILY[name]
    units = found.units(model)
    assert layout(units) == want
    assert units[-1].name == head
    x = inputs(size)
    feats = units[:-1]
    with torch.no_grad(), tapped(feats) as outs:
        model(x)
        streams, _ = streams_of(model, x)
    assert sorted(outs) == list(range(len(feats)))
    for i, (b, want_map) in enumerate(zip(feats, as_maps(name, streams))):
        torch.testing.assert_close(to_map(outs[i], b, model), want_map, **TOL)


def test_backbone_can_be_wrapped():
    """A backbone without a classifier is described (feature analyses need no logits); asking
    it for logits is a one-line error."""
    fm = ForeignModel(T.ViTModel(T.ViTConfig(**VIT)), img_size=16)
    assert [b.kind for b in fm.vitscope_blocks()][:3] == ["stem", "msa", "mlp"]
    with pytest.raises(VitscopeError, match="not logits"):
        fm(torch.randn(1, 3, 16, 16))


# ------------------------------------------------------------------- the CLI, by folder


def test_cli_hf_folder_every_analysis_and_blocks(folder_data, tmp_path, capsys):
    """``vitscope analyze --hf DIR``: a folder saved by ``save_pretrained`` (config.json and
    model.safetensors) with a preprocessor_config.json that sets mean/std and input size;
    every analysis (the Hessian through HF's sdpa attention), one run directory."""
    import json

    from conftest import SMALL

    from vitscope.cli import main
    from vitscope.run_analyses import parse_only

    torch.manual_seed(0)
    model = scrambled(transformers.ViTForImageClassification(transformers.ViTConfig(
        **{**VIT, "num_labels": 3})))  # fmt: skip
    folder = tmp_path / "hf-vit"
    model.save_pretrained(folder)
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
           "size": {"height": 16, "width": 16}}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    assert main(["blocks", "--hf", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "transformers.ViT" in table and "input of vit.layers.0.layernorm_after" in table
    out = tmp_path / "runs" / "vit"
    argv = ["analyze", "--hf", str(folder), "--data", "folder", "--data-root", str(folder_data),
            "--out", str(out)] + [a for s in SMALL for a in ("--set", s)]  # fmt: skip
    assert main(argv) == 0
    names = {p.stem for p in (out / "results").glob("*.json")}
    assert names == set(parse_only(None))  # every analysis that runs by default
    res = json.loads((out / "results" / "hessian.json").read_text())
    assert res["meta"]["family"] == "ViT" and res["meta"]["img_size"] == 16
    assert res["meta"]["mean"] == [0.5, 0.5, 0.5]
    assert all(len(e) == 2 for e in res["values"]["eigenvalues"])
    # the weights in the folder were loaded: logits equal the saved model's
    from vitscope.foreign import load_foreign

    fm = load_foreign("hf", str(folder))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fm(x), model.eval()(x).logits)


def test_hf_missing_folder_and_bad_weights_are_one_line(tmp_path, capsys):
    from vitscope.cli import main

    assert main(["blocks", "--hf", str(tmp_path / "nope")]) == 2
    assert "no such folder or config file" in capsys.readouterr().err
    folder = tmp_path / "hf"
    transformers.ViTForImageClassification(transformers.ViTConfig(**VIT)).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["blocks", "--hf", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and len(err.strip().splitlines()) == 1


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_hf_folder_with_a_malicious_bin_is_refused_before_transformers_reads_it(tmp_path, capsys):
    import pickle

    from vitscope.cli import main

    folder = tmp_path / "hf"
    folder.mkdir()
    transformers.ViTConfig(**VIT).save_pretrained(folder)
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    assert main(["blocks", "--hf", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "pytorch_model.bin" in err
    assert not marker.exists()
