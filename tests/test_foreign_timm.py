"""timm models under the block contract: the residual stream by hand, Hessians against a dense
float64 reference, lesions across stages, and the CLI by name with local weights.

Runs in the second venv (``make test``: ``.venv-tv``, marked ``tv``), where timm imports.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import SMALL, require
from einops import rearrange

from vitscope.analyses import EvalData, get_analysis, hessian
from vitscope.analyses.lesion import Config as LesionConfig
from vitscope.cli import main
from vitscope.foreign import ForeignModel, load_foreign
from vitscope.models import blocks, feature_maps, replace_unit
from vitscope.run_analyses import parse_only

timm = require("timm")
pytestmark = [pytest.mark.tv, pytest.mark.usefixtures("one_thread")]

LETTERS = {"stem": "s", "conv": "c", "msa": "a", "mlp": "m", "pool": "p", "head": "h"}
VIT = dict(img_size=16, patch_size=4, embed_dim=16, num_heads=2, depth=2, num_classes=3)


def layout(model) -> str:
    return "".join(LETTERS[b.kind] for b in blocks(model))


def tokens_to_map(t: torch.Tensor, prefix: int) -> torch.Tensor:
    side = int((t.shape[1] - prefix) ** 0.5)
    return rearrange(t[:, prefix:], "b (h w) c -> b c h w", h=side)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random non-trivial weights everywhere (layer scales, norms), in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def assert_streams(fm: ForeignModel, x: torch.Tensor, want: list[torch.Tensor]) -> None:
    with torch.no_grad():
        got = feature_maps(fm, x)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"unit {i}")


def test_vit_streams_are_the_residual_stream_by_hand():
    """DeiT (CLS + distillation token) with layer scale: every map is the stream after its
    unit, computed from the submodules; the patch embedding has no prefix tokens to drop."""
    m = perturbed(timm.create_model("deit_tiny_distilled_patch16_224", init_values=0.5, **VIT))
    fm = ForeignModel(m, img_size=16)
    assert layout(fm) == "s" + "am" * 2 + "h"
    assert fm.family == "ViT" and fm.rule == "timm.VisionTransformer"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = h0 = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        want = [tokens_to_map(h, 2)]
        for blk in m.blocks:
            h = h + blk.ls1(blk.attn(blk.norm1(h)))
            want.append(tokens_to_map(h, 2))
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
            want.append(tokens_to_map(h, 2))
        # the branch (what module outputs give) is not the stream
        branch = m.blocks[0].attn(m.blocks[0].norm1(h0))
        assert not torch.allclose(tokens_to_map(branch, 2), want[1], atol=1e-3)
    assert_streams(fm, x, want)
    assert [b.prefix for b in blocks(fm)][:2] == [2, 2]


def test_vit_lesion_zeroes_the_branch_and_restores():
    m = perturbed(timm.create_model("vit_tiny_patch16_224", init_values=0.5, **VIT))
    fm = ForeignModel(m, img_size=16)
    x = torch.randn(2, 3, 16, 16)
    msa = blocks(fm)[3]  # blocks.1.attn
    assert msa.name == "blocks.1.attn"
    with torch.no_grad():
        before = fm(x)
        h = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for i, blk in enumerate(m.blocks):
            if i != 1:
                h = h + blk.ls1(blk.attn(blk.norm1(h)))
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
        by_hand = m.forward_head(m.norm(h))
        with replace_unit(fm, msa):
            torch.testing.assert_close(fm(x), by_hand)
        torch.testing.assert_close(fm(x), before)


def test_swin_streams_by_hand():
    kw = dict(
        img_size=32,
        patch_size=4,
        window_size=4,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=3,
    )
    m = perturbed(timm.create_model("swin_tiny_patch4_window7_224", **kw))
    fm = ForeignModel(m, img_size=32)
    assert layout(fm) == "s" + "am" + "pam" + "h"
    assert [b.stage for b in blocks(fm)] == [0, 1, 1, 2, 2, 2, 3]
    x = torch.randn(2, 3, 32, 32)
    nhwc = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        h = m.patch_embed(x)
        want = [nhwc(h)]
        for stage in m.layers:
            h = stage.downsample(h)
            if not isinstance(stage.downsample, torch.nn.Identity):
                want.append(nhwc(h))
            for blk in stage.blocks:
                b, hh, ww, c = h.shape
                h = h + blk._attn(blk.norm1(h))
                want.append(tokens_to_map(h.reshape(b, -1, c), 0))
                h = h.reshape(b, -1, c)
                h = (h + blk.mlp(blk.norm2(h))).reshape(b, hh, ww, c)
                want.append(nhwc(h))
    assert_streams(fm, x, want)


@pytest.mark.parametrize("name", ["convnext_atto", "resnet18", "resnet26"])
def test_convnets_streams_stages_and_lesion(name):
    """ConvNeXt and ResNet (basic and bottleneck blocks): the stream after each block by hand,
    stages and downsampling from the shapes, and the lesion study across stage changes."""
    m = perturbed(timm.create_model(name, num_classes=3))
    fm = ForeignModel(m, img_size=32)
    units = blocks(fm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if name.startswith("convnext"):
            h, want = m.stem(x), []
            want.append(h)
            for stage in m.stages:
                h = stage.downsample(h)
                if not isinstance(stage.downsample, torch.nn.Identity):
                    want.append(h)
                for blk in stage.blocks:
                    h = blk(h)
                    want.append(h)
        else:
            h = m.maxpool(m.act1(m.bn1(m.conv1(x))))
            want = [h]
            for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
                for blk in layer:
                    h = blk(h)
                    want.append(h)
    assert_streams(fm, x, want)
    stages = [b.stage for b in units if b.kind not in ("stem", "head")]
    assert stages == sorted(stages) and stages[0] == 1 and stages[-1] == 4
    down = [b for b in units if b.downsample]
    assert len(down) == 3  # one per stage change
    first = {b.stage: b for b in reversed(units)}
    assert all(first[s].downsample for s in (2, 3, 4))
    g = torch.Generator().manual_seed(0)
    data = EvalData(
        torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 3, (8,), generator=g),
        (0.5,) * 3,
        (0.5,) * 3,
    )
    fm.bind(data.mean, data.std)
    result = get_analysis("lesion").execute(fm, data, LesionConfig(num_images=8, batch_size=8))
    deltas = result.values["delta_acc"]
    kinds = [u["kind"] for u in result.values["units"]]
    removed = [d for d, u in zip(deltas, result.values["units"]) if not u["downsample"]]
    assert len(deltas) == len(units) - 1  # the head has no feature map
    assert all(d is None for d, u in zip(deltas, result.values["units"]) if u["downsample"])
    assert sum(d is not None for d in removed) == kinds.count("conv") - (
        0 if name.startswith("convnext") else 3
    )


def test_hessian_of_a_timm_vit_matches_dense_float64():
    """Top eigenvalues of the Hessian of a tiny timm ViT (fused attention on, as timm sets
    it) agree with torch.func.hessian in float64; the switch is restored afterwards."""
    from test_hessian import assert_matches_dense, exact_config, train_data

    m = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=8,
        patch_size=4,
        embed_dim=8,
        num_heads=2,
        depth=1,
        num_classes=3,
    )
    m = perturbed(m).double()
    assert all(mod.fused_attn for mod in m.modules() if hasattr(mod, "fused_attn"))
    fm = ForeignModel(m, img_size=8)
    data = train_data(chans=3, size=8)
    cfg = exact_config(fm, batches=1, top_k=4, params="net.blocks.0.attn.*,net.head.bias")
    result = hessian.run(fm, data, cfg)
    assert_matches_dense(result, fm, data, cfg)
    assert all(mod.fused_attn for mod in m.modules() if hasattr(mod, "fused_attn"))


def sets() -> list[str]:
    return [a for s in SMALL for a in ("--set", s)]


def analyze_argv(folder_data, out, *model: str) -> list[str]:
    """``vitscope analyze <model flags> --data folder ... --out OUT`` with small settings."""
    data = ["--data", "folder", "--data-root", str(folder_data), "--out", str(out)]
    return ["analyze", *model, *data, *sets()]


def test_cli_timm_by_name_with_safetensors_weights_every_analysis(folder_data, tmp_path, capsys):
    """The README's timm command: weights from a local .safetensors file, every analysis,
    a run directory the report reads; the same command again skips everything."""
    from vitscope.train import save_safetensors

    kwargs = {"depth": 2, "embed_dim": 16, "num_heads": 2, "num_classes": 3}
    torch.manual_seed(3)
    ref = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, **kwargs)
    weights = save_safetensors(ref.state_dict(), tmp_path / "deit.safetensors")
    out = tmp_path / "study" / "runs" / "deit"
    model_kwargs = json.dumps({**kwargs, "patch_size": 8})
    argv = analyze_argv(
        folder_data, out, "--timm", "deit_tiny_patch16_224", "--img-size", "32",
        "--weights", str(weights), "--model-kwargs", model_kwargs,
    )  # fmt: skip
    assert main(argv) == 0
    names = {p.stem for p in (out / "results").glob("*.json")}
    assert names == set(parse_only(None))  # every analysis that runs by default
    res = json.loads((out / "results" / "fourier.json").read_text())
    assert res["meta"]["family"] == "ViT" and res["meta"]["rule"] == "timm.VisionTransformer"
    assert res["meta"]["checkpoint"] == str(weights)
    assert len(res["values"]["units"]) == 5  # stem + 2 x (msa, mlp)
    hess = json.loads((out / "results" / "hessian.json").read_text())
    assert "crop_padding" in hess["values"]["operator"]["transform"]  # the augmentation, stated
    # the loaded weights are the saved ones: same logits as the reference model
    fm = load_foreign(
        "timm",
        "deit_tiny_patch16_224",
        weights=weights,
        img_size=32,
        model_kwargs={**kwargs, "patch_size": 8},
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fm(x), ref.eval()(x))
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("exists, skipped") == len(parse_only(None))
    assert main(["analyze", str(out), "--only", "fourier", "--force", *sets()]) == 0  # reloads
    assert main(["report", str(tmp_path / "study")]) == 0
    html = (tmp_path / "study" / "report.html").read_text()
    assert "timm:deit_tiny_patch16_224" in html


def test_cli_torchvision_resnet_and_blocks_command(folder_data, tmp_path, capsys):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=3).state_dict(), weights)
    assert (
        main(["blocks", "--torchvision", "resnet18", "--model-kwargs", '{"num_classes": 3}']) == 0
    )
    table = capsys.readouterr().out
    assert "torchvision" in table and "layer2.0" in table and "yes" in table
    out = tmp_path / "runs" / "r18"
    argv = analyze_argv(
        folder_data, out, "--torchvision", "resnet18", "--img-size", "32", "--weights",
        str(weights), "--model-kwargs", '{"num_classes": 3}', "--only", "fourier,lesion,hessian",
    )  # fmt: skip
    assert main(argv) == 0
    lesion = json.loads((out / "results" / "lesion.json").read_text())
    assert lesion["meta"]["family"] == "ResNet"
    assert [u["downsample"] for u in lesion["values"]["units"]].count(True) == 3


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_weights_are_refused_and_nothing_runs(folder_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"state_dict": _Payload(str(marker))}))
    argv = [
        "analyze",
        "--timm",
        "resnet18",
        "--weights",
        str(bad),
        "--data",
        "folder",
        "--data-root",
        str(folder_data),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refused" in err and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--timm", "no_such_net"], "timm has no model"),
        (["--torchvision", "no_such_net"], "torchvision has no model"),
        (["--timm", "resnet18", "--model-kwargs", "{bad"], "--model-kwargs is not valid JSON"),
        (["--timm", "resnet18"], "1000 outputs but folder has 3 classes"),
    ],
)
def test_cli_bad_foreign_input_is_one_line(argv, words, folder_data, tmp_path, capsys):
    full = [
        "analyze",
        *argv,
        "--data",
        "folder",
        "--data-root",
        str(folder_data),
        "--out",
        str(tmp_path / "o"),
        "--only",
        "noise",
    ]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    from vitscope.errors import VitscopeError

    torch.save({"fc.weight": torch.zeros(3, 512)}, tmp_path / "w.pth")
    with pytest.raises(
        VitscopeError, match="do not fit timm resnet18: size mismatch for fc.weight"
    ):
        load_foreign("timm", "resnet18", weights=tmp_path / "w.pth")


def test_report_puts_foreign_runs_beside_vitscope_runs(folder_data, tmp_path, capsys):
    """A study folder with a trained vitscope run and two foreign runs (timm ConvNeXt,
    torchvision ResNet-18): one report compares them, families from the recorded metadata."""
    study = tmp_path / "study"
    own = study / "runs" / "resnet_tiny"
    train = ["train", "--data", "folder", "--data-root", str(folder_data), "--epochs", "1",
             "--set", "train.batch_size=16", "--set", "train.warmup_epochs=0", "--no-progress",
             "--out", str(own)]  # fmt: skip
    assert main(train) == 0
    assert main(["analyze", str(own), "--only", "fourier,variance", *sets()]) == 0
    for flag, name in (("--timm", "convnext_atto"), ("--torchvision", "resnet18")):
        out = study / "runs" / name
        argv = analyze_argv(folder_data, out, flag, name, "--model-kwargs", '{"num_classes": 3}',
                            "--img-size", "32", "--only", "fourier,variance")  # fmt: skip
        assert main(argv) == 0
    assert main(["report", str(study)]) == 0
    html = (study / "report.html").read_text()
    for label in ("resnet_tiny", "timm:convnext_atto", "torchvision:resnet18"):
        assert label in html
    from vitscope.report.load import load_runs

    _, runs = load_runs([study])
    assert {r.model: r.family for r in runs} == {
        "resnet_tiny": "ResNet",
        "timm:convnext_atto": "ConvNeXt",
        "torchvision:resnet18": "ResNet",
    }
    assert main(["compare", "fourier", *(str(r.path) for r in runs), "--out",
                 str(tmp_path / "f.png")]) == 0  # fmt: skip
    assert (tmp_path / "f.png").stat().st_size > 0
