import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vitscope import run_analyses as study
from vitscope.analyses import (
    EvalData,
    Result,
    fourier,
    get_analysis,
    lesion,
    list_analyses,
    noise,
    variance,
)
from vitscope.cli import main
from vitscope.models import blocks, create_model, replace_unit

TINY = ["resnet_tiny", "vit_tiny", "pit_tiny", "swin_tiny", "alternet_tiny"]


def _data(n=16, chans=1, size=28, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return EvalData(images, labels, (0.5,) * chans, (0.25,) * chans, "synthetic")


def _zero_last_layer(module: nn.Module) -> None:
    """Zero the last Linear/Conv of a unit's branch: the unit becomes the identity."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


@pytest.mark.parametrize("name", TINY)
def test_every_analysis_runs_on_every_tiny_model(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, img_size=28).eval()
    units = [b for b in blocks(model) if b.kind != "head"]
    data = _data()
    configs = {
        "fourier": fourier.Config(num_images=8, batch_size=4),
        "variance": variance.Config(num_images=8, batch_size=4),
        "noise": noise.Config(frequencies=(0.2, 0.8), num_images=8),
        "lesion": lesion.Config(num_images=8),
    }
    for key, cfg in configs.items():
        result = get_analysis(key).execute(model, data, cfg)
        result.save(tmp_path)
        back = Result.load(tmp_path, key)
        assert back.values == json.loads(json.dumps(result.values))
        assert back.config == json.loads(json.dumps(result.config))
        for k, a in result.arrays.items():
            np.testing.assert_array_equal(back.arrays[k], a)
        if "units" in result.values:
            assert [u["kind"] for u in result.values["units"]] == [b.kind for b in units]
            assert result.values["units"][-1]["depth"] == 1.0
    f = Result.load(tmp_path, "fourier").values
    assert len(f["high_freq"]) == len(units) and all(math.isfinite(v) for v in f["high_freq"])
    assert all(c[0] == 0 for c in f["curves"])
    v = Result.load(tmp_path, "variance").values["variance"]
    assert all(x >= 0 for x in v)


def test_fourier_and_variance_aggregate_exactly_over_batches():
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, in_chans=1, img_size=28).eval()
    data = _data(n=12)
    one = fourier.run(model, data, fourier.Config(num_images=12, batch_size=12))
    many = fourier.run(model, data, fourier.Config(num_images=12, batch_size=5))
    np.testing.assert_allclose(one.values["high_freq"], many.values["high_freq"], rtol=1e-5)
    a = variance.run(model, data, variance.Config(num_images=12, batch_size=12)).values["variance"]
    b = variance.run(model, data, variance.Config(num_images=12, batch_size=5)).values["variance"]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # and equal to the pure function on one full-batch feature map
    from vitscope.analyses.variance import featuremap_variance
    from vitscope.models import feature_maps

    x, _ = next(data.batches(12))
    with torch.no_grad():
        maps = feature_maps(model, x)
    assert a == pytest.approx([featuremap_variance(m) for m in maps], rel=1e-6)


def test_per_image_values_are_what_the_unit_means_are_means_of():
    """The arrays the report resamples: each image's value, computed alone, and their mean
    is the stored per-unit number (Fourier, variance), their accuracy the stored one (noise,
    lesion)."""
    torch.manual_seed(0)
    model = create_model("alternet_tiny", num_classes=10, in_chans=1, img_size=28).eval()
    data = _data(n=10)
    f = fourier.run(model, data, fourier.Config(num_images=10, batch_size=4))
    v = variance.run(model, data, variance.Config(num_images=10, batch_size=4))
    hf, var = f.arrays["high_freq_images"], v.arrays["variance_images"]
    assert hf.shape == var.shape == (len(f.values["units"]), 10)
    np.testing.assert_allclose(hf.mean(axis=1), f.values["high_freq"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.mean(axis=1), v.values["variance"], rtol=1e-5)
    from vitscope.analyses.variance import featuremap_variance
    from vitscope.models import feature_maps

    x, _ = next(data.batches(10))
    k = 7  # image 7 alone, through the pure functions
    with torch.no_grad():
        maps = feature_maps(model, x[k : k + 1])
    alone = [fourier.delta_log_amplitude(m)[-1].item() for m in maps]
    np.testing.assert_allclose(hf[:, k], alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var[:, k], [featuremap_variance(m) for m in maps], rtol=1e-5)

    n = noise.run(model, data, noise.Config(frequencies=(0.3, 0.9), num_images=10))
    table = n.arrays["correct"]
    assert table.shape == (3, 10) and set(np.unique(table)) <= {0, 1}
    assert 100 * table[0].mean() == pytest.approx(n.values["clean_acc"])
    np.testing.assert_allclose(100 * (table[1:].mean(1) - table[0].mean()), n.values["delta_acc"])
    x, y = next(data.batches(10))
    with torch.no_grad():
        assert np.array_equal(table[0], (model(x).argmax(1) == y).numpy())

    les = lesion.run(model, data, lesion.Config(num_images=10))
    table, removed = les.arrays["correct"], les.values["removed"]
    assert table.shape == (1 + len(removed), 10)
    assert 100 * table[0].mean() == pytest.approx(les.values["base_acc"])
    for j, unit in enumerate(removed, 1):
        delta = 100 * (table[j].mean() - table[0].mean())
        assert les.values["delta_acc"][unit] == pytest.approx(delta)


@pytest.mark.parametrize(
    "name, kind",
    [("resnet_tiny", "conv"), ("vit_tiny", "msa"), ("vit_tiny", "mlp"), ("alternet_tiny", "msa")],
)
def test_lesion_of_a_zero_branch_changes_nothing(name, kind):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, img_size=28).eval()
    target = [b for b in blocks(model) if b.kind == kind and lesion.removable(b)][1]
    other = [b for b in blocks(model) if b.kind == kind and lesion.removable(b)][0]
    _zero_last_layer(target.module)
    x, _ = next(_data(n=8).batches(8))
    with torch.no_grad():
        ref = model(x)
        with replace_unit(model, target):
            same = model(x)
        with replace_unit(model, other):
            changed = model(x)
    torch.testing.assert_close(same, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(changed, ref, atol=1e-4)
    result = lesion.run(model, _data(n=64), lesion.Config(num_images=64))
    units = [b.name for b in blocks(model) if b.kind != "head"]
    assert result.values["delta_acc"][units.index(target.name)] == 0.0
    assert result.values["delta_acc"][0] is None  # the stem is never removed


class ToyViT(nn.Module):
    """A user's model vitscope knows nothing about: CLS token + pre-norm residual blocks."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(1, 16, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {"attn": nn.MultiheadAttention(16, 2, batch_first=True), "mlp": nn.Linear(16, 16)}
            )
            for _ in range(2)
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for blk in self.blocks:
            t = t + blk["attn"](t, t, t, need_weights=False)[0]
            t = t + blk["mlp"](t)
        return self.head(t[:, 0])


def test_lesion_zero_mode_removes_a_user_branch():
    torch.manual_seed(0)
    model = ToyViT().eval()
    spec = {"mlp": "blocks.*.mlp"}
    _zero_last_layer(model.blocks[1]["mlp"])
    cfg = lesion.Config(num_images=32, mode="zero")
    result = lesion.ANALYSIS.execute(model, _data(n=32), cfg, blocks=spec)
    assert result.values["delta_acc"][1] == 0.0


def test_analyze_a_trained_run_from_the_cli(folder_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "folder",
                "--data-root",
                str(folder_data),
                "--epochs",
                "1",
                "--model",
                "vit_tiny",
                "--set",
                "train.batch_size=16",
                "--no-progress",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    args = [
        "analyze",
        str(run),
        "--only",
        "fourier,variance,lesion",
        "--set",
        "lesion.num_images=30",
    ]
    assert main(args) == 0
    for name in ("fourier", "variance", "lesion"):
        body = json.loads((run / "results" / f"{name}.json").read_text())
        assert (
            body["meta"]["model"] == "vit_tiny" and body["meta"]["provenance"]["vitscope_version"]
        )
        assert all({"name", "kind", "depth"} <= set(u) for u in body["values"]["units"])
    for fig in ("fourier_curves", "fourier_high_freq", "fourier_maps", "variance", "lesion"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(args) == 0
    assert "exists, skipped" in capsys.readouterr().out
    before = (run / "results" / "variance.json").stat().st_mtime_ns
    assert main(["analyze", str(run), "--only", "variance", "--force"]) == 0
    assert (run / "results" / "variance.json").stat().st_mtime_ns != before


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--only", "fourier,nope"], "unknown analysis 'nope'"),
        (["--set", "fourier.num_images=0"], "fourier.num_images"),
        (["--set", "fourier.bogus=1"], "unknown config key fourier.bogus"),
        (["--set", "noise.frequencies=[1.5]"], "noise.frequencies"),
    ],
)
def test_analyze_bad_input(extra, words, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}\n")
    assert main(["analyze", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_analyze_a_user_model_file(folder_data, tmp_path, capsys):
    src = tmp_path / "my_model.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.stem = nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.stages = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)])\n"
        "        self.head = nn.Linear(8, 3)\n"
        "    def forward(self, x):\n"
        "        x = self.stem(x)\n"
        "        for conv in self.stages:\n"
        "            x = x + torch.relu(conv(x))\n"
        "        return self.head(x.mean((2, 3)))\n\n"
        "def build():\n    return Net()\n"
    )
    torch.save({"model": study.load_user_model(f"{src}:build").state_dict()}, tmp_path / "ckpt.pt")
    out = tmp_path / "out"
    args = [
        "analyze",
        "--model-file",
        f"{src}:build",
        "--checkpoint",
        str(tmp_path / "ckpt.pt"),
        "--blocks",
        '{"stem": "stem", "conv": "stages.*"}',
        "--data",
        "folder",
        "--data-root",
        str(folder_data),
        "--out",
        str(out),
        "--only",
        "fourier,variance,noise",
        "--set",
        "noise.frequencies=[0.3]",
    ]
    assert main(args) == 0
    units = json.loads((out / "results" / "variance.json").read_text())["values"]["units"]
    assert [u["name"] for u in units] == ["stem", "stages.0", "stages.1", "stages.2"]
    assert main([*args[:-4], "--blocks", '{"msa": "nothing.*"}', "--force"]) == 2
    assert "match no module" in capsys.readouterr().err


def _train_data(n=64, seed=0):
    from vitscope.analyses import TrainData
    from vitscope.data import BatchAugment

    d = _data(n=n, seed=seed)
    aug = BatchAugment(mean=d.mean, std=d.std, num_classes=10, mixup_alpha=1.0, label_smoothing=0.1)
    return TrainData(d.images, d.labels, aug, 10, 0.05, {"mixup_alpha": 1.0})


def test_train_batches_are_reproducible_and_leave_the_global_rng_alone():
    data = _train_data()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    x1, t1 = data.batch(3, 16, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    x2, t2 = data.batch(3, 16, seed=7)
    x3, _ = data.batch(4, 16, seed=7)
    assert torch.equal(x1, x2) and torch.equal(t1, t2) and not torch.equal(x1, x3)
    assert torch.allclose(t1.sum(1), torch.ones(16))


def test_overfitting_measures_augmented_training_nll():
    from vitscope.analyses import overfitting
    from vitscope.data.augment import soft_cross_entropy

    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1, img_size=28).eval()
    data = _train_data()
    r = overfitting.run(model, data, overfitting.Config(batches=2, batch_size=16))
    with torch.no_grad():
        ref = (
            sum(
                soft_cross_entropy(model(x), t).item()
                for x, t in (data.batch(i, 16) for i in range(2))
            )
            / 2
        )
    assert r.values["train_nll"] == pytest.approx(ref, rel=1e-5)
    assert r.values["images"] == 32


def test_compare_overlays_several_runs(tmp_path):
    from vitscope.report.compare import compare_runs

    torch.manual_seed(0)
    runs = []
    for name in ("resnet_tiny", "vit_tiny"):
        model = create_model(name, num_classes=10, in_chans=1, img_size=28).eval()
        run = tmp_path / name
        for key, cfg in {
            "fourier": fourier.Config(num_images=4),
            "variance": variance.Config(num_images=4),
            "noise": noise.Config(frequencies=(0.5,), num_images=8),
        }.items():
            r = get_analysis(key).execute(model, _data(n=8), cfg)
            r.meta["label"] = name
            r.save(run / "results")
        runs.append(run)
    for key in ("fourier", "variance", "noise"):
        out = compare_runs(key, runs, tmp_path / f"{key}.png")
        assert out.stat().st_size > 1000
    declared = {n for n in list_analyses() if get_analysis(n).compare is not None}
    assert {"fourier", "variance", "noise", "lesion", "hessian", "landscape"} <= declared
    assert main(["compare", "fourier", *map(str, runs), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["compare", "hessian", *map(str, runs), "--out", str(tmp_path / "h.png")]) == 2


# every registered analysis x every tiny model: small settings, the full contract
SMALL = {
    "corruption": {"num_images": 8, "batch_size": 8, "severities": [1, 5]},
    "fourier": {"num_images": 8, "batch_size": 4},
    "variance": {"num_images": 8, "batch_size": 4},
    "noise": {"frequencies": (0.2, 0.8), "num_images": 8},
    "lesion": {"num_images": 8},
    "filtered": {"cutoffs": (0.2, 1.0), "num_images": 8},
    "shuffle": {"grids": (1, 2, 8), "num_images": 8},
    "overfitting": {"batches": 1, "batch_size": 8},
    "landscape": {"dims": 1, "num_points": 3, "batches": 1, "batch_size": 8},
    "hessian": {
        "batches": 1,
        "batch_size": 8,
        "top_k": 2,
        "max_iter": 12,
        "density_batches": 0,
        "trace_batches": 0,
    },
}
ALL_TINY = [n for n in __import__("vitscope").list_models() if n.endswith("_tiny")]


def _cue_folder(root):
    from PIL import Image

    g = np.random.default_rng(0)
    for shape, texture, k in (("a", "b", 1), ("b", "a", 1), ("a", "a", 2)):
        (root / shape).mkdir(parents=True, exist_ok=True)
        pixels = g.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / shape / f"{shape}{k}-{texture}{k}.png")
    return root


@pytest.mark.parametrize("model_name", ALL_TINY)
@pytest.mark.parametrize("name", list_analyses())
def test_every_registered_analysis_on_every_tiny_model(name, model_name, tmp_path):
    from dataclasses import fields

    from vitscope.config import from_dict

    spec = get_analysis(name)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=1, img_size=28).eval()
    settings = SMALL.get(name, {})
    if name == "cueconflict":  # it needs a folder: three images, two classes of the ten
        settings = {"source": str(_cue_folder(tmp_path / "cue")), "classes": {"a": [0], "b": [3]}}
    cfg = from_dict(spec.config, settings, name)
    assert any(f.name == "device" for f in fields(cfg)) or name not in SMALL
    data = _train_data(n=16) if spec.split == "train" else _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = spec.execute(model, data, cfg, workdir=tmp_path)
    assert result.name == name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    result.summary = spec.summarize(result)
    assert result.summary and all(v is None or math.isfinite(v) for v in result.summary.values())
    result.save(tmp_path)
    back = Result.load(tmp_path, name)
    assert back.values == json.loads(json.dumps(result.values))
    assert back.summary == result.summary
    assert spec.keys is not None and spec.missing(back) == [], name
    # the rule sees a key that is gone (what `vitscope analyze` recomputes on)
    optional = getattr(spec.keys, "OPTIONAL", ())
    named = [v for k, v in vars(spec.keys).items() if k.isupper() and isinstance(v, str)]
    first = next(k for k in back.values if k in named and k not in optional)
    del back.values[first]
    back.arrays.pop(first, None)  # (some are in both)
    assert spec.missing(back) == [first]
    required = spec.keys.REQUIRED
    assert required and set(required) <= set(named) - set(optional)
    back.values.pop(required[0], None)
    back.arrays.pop(required[0], None)
    assert spec.missing(back, required_only=True) == [required[0]]
