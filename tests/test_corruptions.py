"""The 15 corruptions (vitscope.data.corruptions) and the corruption analysis."""

from __future__ import annotations

import colorsys
import io
import math
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitscope.analyses import EvalData, get_analysis
from vitscope.analyses import corruption as A
from vitscope.data import corruptions as C
from vitscope.errors import ConfigError, VitscopeError

pytestmark = pytest.mark.usefixtures("one_thread")

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
          "snow", "frost", "fog", "elastic_transform"}  # fmt: skip


def smooth_images(b: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    """Natural-looking test images: a smooth random background, some texture at a quarter
    of the side and a soft bright object."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(b, c, 4, 4, generator=g), size=(side, side), mode="bicubic")
    mid = torch.rand(b, c, side // 4, side // 4, generator=g)
    mid = F.interpolate(mid, size=(side, side), mode="bilinear")
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    r = ((yy - side / 2) / (side / 4)) ** 2 + ((xx - side / 2) / (side / 5)) ** 2
    obj = torch.exp(-(r**2))
    return (0.25 * low + 0.2 * mid + 0.5 * obj).clamp(0, 1).float()


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- parameters --------------------------------------------------------------------------------


def test_parameters_are_the_released_tables_at_32_and_224_and_scale_between():
    for name, table in C.TABLES.items():
        for s in C.SEVERITIES:
            assert C.params(name, s, 32) == pytest.approx(table.cifar[s - 1])
            assert C.params(name, s, 224) == pytest.approx(table.imagenet[s - 1])
    # below 32: the CIFAR table, lengths scaled by the side, levels kept, alpha by its square
    assert C.params("gaussian_noise", 3, 28) == pytest.approx((0.08,))
    assert C.params("motion_blur", 4, 28) == pytest.approx((8 * 28 / 32, 2 * 28 / 32))
    alpha, sigma, shift = C.params("elastic_transform", 2, 28)
    assert (alpha, sigma, shift) == pytest.approx(
        (32 * 0.05 * (28 / 32) ** 2, 32 * 0.2 * 28 / 32, 32 * 0.07 * 28 / 32)
    )
    # in between: linear in t = ln(s/32) / ln(7), lengths relative to each table's side
    t = math.log(2) / math.log(7)
    assert C.params("gaussian_noise", 5, 64) == pytest.approx(((1 - t) * 0.10 + t * 0.38,))
    radius = ((1 - t) * 1.5 / 32 + t * 10 / 224) * 64
    assert C.params("defocus_blur", 5, 64)[0] == pytest.approx(radius)


def test_unknown_names_and_severities_are_refused_in_one_line():
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ConfigError, match="unknown corruption 'rain'; known: gaussian_noise"):
        C.corrupt(x, "rain", 1)
    with pytest.raises(ConfigError, match="severity must be one of 1-5, got 6"):
        C.corrupt(x, "fog", 6)
    with pytest.raises(ConfigError, match=r"expects \(B, 1 or 3, H, W\)"):
        C.corrupt(torch.rand(2, 2, 28, 28), "fog", 1)
    with pytest.raises(ConfigError, match="unknown corruption"):
        A.Config(corruptions=("fog", "haze"))
    with pytest.raises(ConfigError, match="severities must be in 1-5"):
        A.Config(severities=(0,))


# ---- properties of every corruption ------------------------------------------------------------


@pytest.mark.parametrize("name", C.CORRUPTIONS)
@pytest.mark.parametrize("c, side", [(1, 28), (3, 32)])
def test_every_corruption_is_seeded_and_keeps_shape_type_and_range(name, c, side):
    x = smooth_images(4, c, side)
    a = C.corrupt(x, name, 3, gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, C.corrupt(x, name, 3, gen(1)))  # the same seed, the same images
    b = C.corrupt(x, name, 3, gen(2))
    assert (not torch.equal(a, b)) == (name in RANDOM), "only the random ones depend on it"
    assert not torch.equal(a, x), "the image changed"
    u8 = C.corrupt_uint8((x * 255).round().to(torch.uint8), name, 3, gen(1))
    assert u8.dtype == torch.uint8 and u8.shape == x.shape


@pytest.mark.parametrize("name", [n for n in C.CORRUPTIONS if n != "elastic_transform"])
@pytest.mark.parametrize("c, side", [(1, 28), (3, 32), (3, 64), (3, 224)])
def test_severity_5_moves_further_from_the_clean_image_than_severity_1(name, c, side):
    x = smooth_images(4 if side < 100 else 2, c, side)
    d = [(C.corrupt(x, name, s, gen(1)) - x).pow(2).mean().sqrt().item() for s in (1, 5)]
    assert d[0] < d[1], d


def test_elastic_local_displacement_grows_with_severity_and_none_is_the_identity():
    # its pixel distance need not grow: the released CIFAR table warps most at severity 1
    # (an affine shift of 0.08 x 32 px, no local field) and least at 5 (0.03 x 32)
    rms = []
    for s in (1, 5):
        _, dx, dy = C.elastic_fields(8, 32, 32, C.params("elastic_transform", s, 32), gen(1))
        rms.append(float((dx**2 + dy**2).mean().sqrt()))
    assert rms[0] == 0 and rms[1] > 0.1
    x = smooth_images(2, 3, 32)
    assert torch.allclose(C.elastic_transform(x, (0.0, 1.0, 0.0), gen(1)), x, atol=1e-5)


# ---- against references ------------------------------------------------------------------------


def test_gaussian_shot_and_impulse_noise_have_their_stated_statistics():
    x = torch.full((64, 3, 32, 32), 0.5)
    d = C.corrupt(x, "gaussian_noise", 5, gen()) - x  # std 0.10 (CIFAR), no clipping at 0.5
    assert d.mean().abs() < 2e-3 and d.std().item() == pytest.approx(0.10, rel=0.01)
    y = C.corrupt(x, "shot_noise", 5, gen())  # Poisson(0.5 c) / c, c = 50
    assert y.mean().item() == pytest.approx(0.5, abs=2e-3)
    assert y.var().item() == pytest.approx(0.5 / 50, rel=0.03)
    z = C.corrupt(x, "impulse_noise", 5, gen())  # 7% of the values become 0 or 1
    hit = (z != 0.5).double()
    assert hit.mean().item() == pytest.approx(0.07, abs=0.004)
    assert (z[z != 0.5] == 1).double().mean().item() == pytest.approx(0.5, abs=0.03)


def test_brightness_adds_to_v_in_hsv_and_contrast_scales_around_the_mean():
    x = torch.rand(2, 3, 8, 8, generator=gen(3))
    y = C.corrupt(x, "brightness", 4, gen())  # CIFAR severity 4: V + 0.2
    for px, py in zip(x.permute(0, 2, 3, 1).reshape(-1, 3), y.permute(0, 2, 3, 1).reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(*px.tolist())
        want = colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0))
        assert py.tolist() == pytest.approx(want, abs=1e-5)
    m = x.mean((2, 3), keepdim=True)
    want = ((x - m) * 0.3 + m).clamp(0, 1)
    assert torch.allclose(C.corrupt(x, "contrast", 4, gen()), want, atol=1e-6)


def _pil(x: torch.Tensor, op) -> torch.Tensor:
    out = []
    for img in (x * 255).round().to(torch.uint8).numpy():
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        a = np.asarray(op(pil))
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float()


@pytest.mark.parametrize("c", [1, 3])
def test_jpeg_is_pillows_encoder_and_pixelate_pillows_box_resize(c):
    x = (smooth_images(4, c, 32) * 255).round() / 255

    def jpeg(pil):
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=40)  # CIFAR severity 5
        return Image.open(io.BytesIO(buf.getvalue()))

    got = (C.corrupt(x, "jpeg_compression", 5, gen()) * 255).round()
    assert torch.equal(got, _pil(x, jpeg))

    def pixelate(pil):  # CIFAR severity 4: 0.75
        return pil.resize((24, 24), Image.BOX).resize((32, 32), Image.BOX)

    got = (C.corrupt(x, "pixelate", 4, gen()) * 255).round()
    assert (got - _pil(x, pixelate)).abs().max() <= 1  # Pillow rounds between its passes


def test_blurs_keep_a_constant_image_and_their_kernels_are_what_they_say():
    x = torch.full((2, 3, 32, 32), 0.4)
    for name in ("defocus_blur", "zoom_blur", "motion_blur", "glass_blur"):
        assert torch.allclose(C.corrupt(x, name, 5, gen()), x, atol=2 / 255), name
    disk = C.disk_kernel(3.0, 0.0)  # pixels weighted by their share inside the circle
    half = disk.shape[-1] // 2
    assert disk.sum().item() == pytest.approx(1.0)
    assert disk[half, half].item() * math.pi * 9 == pytest.approx(1.0, rel=0.03)  # 1 / area
    assert disk[half, half + 4] == 0 and disk[half, half + 3] > 0
    k = C._motion_kernels(4, 2.0, torch.tensor([0.0]))[0]  # angle 0: a line to the right
    half = k.shape[-1] // 2
    assert k.sum().item() == pytest.approx(1.0)
    assert torch.equal(k[half, half:] > 0, torch.ones(half + 1, dtype=torch.bool))
    assert k[half, half] == k.max() and k.sum() == k[half].sum()


def test_plasma_fractal_and_frost_layer_span_zero_to_one():
    p = C.plasma_fractal(3, 28, 2.0, gen())
    assert p.shape == (3, 32, 32)
    assert torch.allclose(p.amin((1, 2)), torch.zeros(3, dtype=p.dtype))
    assert torch.allclose(p.amax((1, 2)), torch.ones(3, dtype=p.dtype))
    f = C.frost_layer(2, 3, 28, 28, gen())
    assert f.shape == (2, 3, 28, 28) and f.min() >= 0 and f.max() <= 1
    assert (f[:, 0] <= f[:, 2]).all(), "tinted blue"


# ---- the analysis ------------------------------------------------------------------------------


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes a small model learns in seconds: a bright bar, horizontal or vertical,
    in the top or bottom half, on a smooth background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = smooth_images(n, 1, 28, seed) * 0.5
    for i, y in enumerate(labels.tolist()):
        off = int(torch.randint(2, 8, (1,), generator=g))
        rows = slice(off, off + 4) if y < 2 else slice(16 + off // 2, 20 + off // 2)
        if y % 2 == 0:
            x[i, 0, rows, 4:24] += 0.5
        else:
            x[i, 0, 4:24, rows] += 0.5
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def trained():
    from vitscope.data.augment import normalize
    from vitscope.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=4, in_chans=1, img_size=28)
    images, labels = _task(1024, 0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        idx = torch.randint(0, len(labels), (64,))
        loss = F.cross_entropy(model(normalize(images[idx], (0.3,), (0.3,))), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_images, test_labels = _task(300, 1)
    return model.eval(), EvalData(test_images, test_labels, (0.3,), (0.3,), "bars")


def test_a_trained_model_loses_accuracy_as_severity_grows(trained):
    model, data = trained
    result = get_analysis("corruption").execute(model, data, A.Config(num_images=300))
    v = result.values
    assert v["clean_acc"] > 90, "the model learned the task"
    grid = np.asarray(v["accuracy"])
    assert grid.shape == (15, 5)
    by_severity = grid.mean(0)
    assert by_severity[0] <= v["clean_acc"] + 1
    assert all(b <= a + 1 for a, b in zip(by_severity, by_severity[1:])), by_severity
    assert by_severity[-1] < by_severity[0] - 5
    assert v["mean_acc"] == pytest.approx(grid.mean())
    table = result.arrays["correct"]
    assert table.shape == (76, 300) and table.dtype == np.uint8
    cfg = A.Config()
    assert 100 * table[A.row(cfg, "fog", 4)].mean() == pytest.approx(grid[9, 3])
    summary = get_analysis("corruption").summarize(result)
    assert summary["robustness (%)"] == pytest.approx(v["mean_acc"])


def test_the_released_cifar_c_arrays_are_read_and_checked(trained, tmp_path):
    model, _ = trained
    images, labels = _task(40, 2)
    rgb = images.expand(-1, 3, -1, -1).contiguous()
    data = EvalData(rgb, labels, (0.3,) * 3, (0.3,) * 3, "bars")
    model3 = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1, bias=False), model)
    with torch.no_grad():
        model3[0].weight.fill_(1 / 3)
    cfg = A.Config(corruptions=("fog", "pixelate"), severities=(1, 5), num_images=40)
    made = A.run(model3, data, cfg)
    # the release's layout: 5 x N images per corruption (N x H x W x C), labels for each block
    for name in cfg.corruptions:
        blocks = []
        for s in C.SEVERITIES:
            g = torch.Generator().manual_seed(C.seed_for(cfg.seed, name, s))
            blocks.append(C.corrupt_uint8(rgb, name, s, g).permute(0, 2, 3, 1).numpy())
        np.save(tmp_path / f"{name}.npy", np.concatenate(blocks))
    np.save(tmp_path / "labels.npy", np.tile(labels.numpy().astype(np.uint8), 5))
    read = A.run(model3, data, replace(cfg, source=str(tmp_path)))
    np.testing.assert_array_equal(read.arrays["correct"], made.arrays["correct"])
    assert read.values["source"] == str(tmp_path) and made.values["source"] == "generated"
    # wrong labels, a missing file, a pickled array: one-line errors, nothing unpickled
    np.save(tmp_path / "labels.npy", np.tile((labels.numpy() + 1).astype(np.uint8), 5))
    with pytest.raises(VitscopeError, match="labels are not the test set's"):
        A.run(model3, data, replace(cfg, source=str(tmp_path)))
    np.save(tmp_path / "labels.npy", np.tile(labels.numpy().astype(np.uint8), 5))
    (tmp_path / "fog.npy").unlink()
    with pytest.raises(VitscopeError, match=r"missing .*fog\.npy"):
        A.run(model3, data, replace(cfg, source=str(tmp_path)))
    np.save(tmp_path / "fog.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VitscopeError, match="not a plain .npy array"):
        A.run(model3, data, replace(cfg, source=str(tmp_path)))
    with pytest.raises(VitscopeError, match="no folder"):
        A.run(model3, data, replace(cfg, source=str(tmp_path / "nope")))


def _result(model: str, clean: float, acc: list, baseline: str = "resnet_tiny", fraction=1.0):
    from vitscope.results import Result

    values = {"corruptions": ["fog", "contrast"], "severities": [1, 5], "clean_acc": clean,
              "accuracy": acc, "mean_acc": float(np.mean(acc))}  # fmt: skip
    meta = {"model": model, "dataset": "d", "fraction": fraction, "run": f"runs/{model}"}
    return Result("corruption", values, config={"baseline": baseline}, meta=meta)


def test_mce_is_hendrycks_ratio_of_summed_errors_to_the_baselines():
    base = _result("resnet_tiny", 90.0, [[80, 60], [90, 70]])  # errors fog 20+40, contrast 10+30
    model = _result("vit_tiny", 95.0, [[90, 80], [90, 70]])  # fog 10+20, contrast 10+30
    # CE: fog 30/60, contrast 40/40 -> mCE 75%; relative (clean errors 5 and 10 subtracted):
    # fog (5+15)/(10+30), contrast (5+25)/(0+20) -> 100%
    assert A.corruption_errors(model, [base]) == pytest.approx((75.0, 100.0))
    assert A.corruption_errors(base, [base]) == pytest.approx((100.0, 100.0))
    other = _result("resnet_tiny", 90.0, [[80, 60], [90, 70]], fraction=0.5)
    headers, rows = A.baseline_table([base, model, other])
    assert headers[2] == "mCE vs resnet_tiny (%)"
    assert [r[2:] for r in rows] == [["100.0", "100.0"], ["75.0", "100.0"], ["100.0", "100.0"]]
    assert A.baseline_table([_result("vit_tiny", 90.0, [[1, 2], [3, 4]], baseline="")]) is None
    assert A.corruption_errors(model, []) is None


def _imagenet_c(root, test, cfg, ext=".JPEG", grouped=("defocus_blur",)):
    """An ImageNet-C-layout release of ``test``'s files under ``root``: each image inverted
    (and, severity by severity, darkened), saved under its class folder and stem with
    ``ext``; corruptions in ``grouped`` one group folder down, as the release's tars unpack."""
    from vitscope.data.corruptions import GROUPS

    group_of = {c: g for g, members in GROUPS.items() for c in members}
    for name in cfg.corruptions:
        top = root / group_of[name] / name if name in grouped else root / name
        for s in cfg.severities:
            for f in test.files.names:
                rel = os.fsdecode(f)
                img = 255 - np.asarray(Image.open(test.files.root + "/" + rel).convert("RGB"))
                out = top / str(s) / (os.path.splitext(rel)[0] + ext)
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((img * (1 - 0.15 * s)).astype(np.uint8)).save(out)
    (root / "fog" / "1" / "class0" / "not_in_the_test_set.JPEG").write_bytes(b"ignored")


def _reference_correct(model, root, test, cfg, name, severity):
    """Whether ``model`` is right on each release file, decoded by Pillow alone (the files
    are at the test size already) and normalised by hand."""
    from vitscope.data.corruptions import GROUPS

    group_of = {c: g for g, members in GROUPS.items() for c in members}
    top = root / name if (root / name).is_dir() else root / group_of[name] / name
    imgs = []
    for f in test.files.names:
        stem = os.path.splitext(os.fsdecode(f))[0]
        imgs.append(np.asarray(Image.open(top / str(severity) / (stem + ".JPEG")).convert("RGB")))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(test.mean).view(1, 3, 1, 1), torch.tensor(test.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return (model((x - mean) / std).argmax(1) == test.labels).numpy().astype(np.uint8)


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_an_imagenet_c_folder_is_matched_to_the_test_files_by_name(loader, tmp_path):
    from conftest import write_folder_dataset

    from vitscope.data import load_dataset

    root = write_folder_dataset(tmp_path / "data", n_train=4, n_val=3, size=16)
    split = load_dataset("folder", train=False, root=str(root), img_size=16, loader=loader)
    test = EvalData.from_image_data(split)
    # the test split interleaves the classes, so any first n images cover them evenly
    assert test.labels.tolist() == [0, 1, 2] * 3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()  # fmt: skip
    cfg = A.Config(
        corruptions=("fog", "defocus_blur"), severities=(1, 5), source=str(tmp_path / "c")
    )
    _imagenet_c(tmp_path / "c", test, cfg)
    result = A.run(model, test, cfg)
    table = result.arrays["correct"]
    assert table.shape == (5, 9)
    for name in cfg.corruptions:
        for s in cfg.severities:
            want = _reference_correct(model, tmp_path / "c", test, cfg, name, s)
            np.testing.assert_array_equal(table[A.row(cfg, name, s)], want)
    assert result.values["source"] == cfg.source
    # the first n images only, and their copies only
    few = A.run(model, test, replace(cfg, num_images=4))
    np.testing.assert_array_equal(few.arrays["correct"], table[:, :4])


def test_an_imagenet_c_folder_that_does_not_fit_is_refused_in_one_line(folder_data, tmp_path):
    from vitscope.data import load_dataset

    split = load_dataset("folder", train=False, root=str(folder_data), loader="memory")
    test = EvalData.from_image_data(split, limit=6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    cfg = A.Config(corruptions=("fog", "defocus_blur"), severities=(1, 5), source=str(tmp_path))
    _imagenet_c(tmp_path, test, cfg)
    missing = tmp_path / "blur" / "defocus_blur" / "5" / "class1" / "0.JPEG"
    missing.unlink()
    with pytest.raises(
        VitscopeError, match=r"defocus_blur/5 lacks 1 of the 6 test images, e\.g\. class1/0\.png"
    ):
        A.run(model, test, cfg)
    shutil.rmtree(missing.parent.parent)
    with pytest.raises(VitscopeError, match=r"no folder .*defocus_blur/5 \(severity 5\)"):
        A.run(model, test, cfg)
    shutil.rmtree(tmp_path / "blur")
    with pytest.raises(
        VitscopeError, match=r"no folder .*defocus_blur \(nor .*blur/defocus_blur\)"
    ):
        A.run(model, test, cfg)
    # tensors without files (CIFAR, Fashion-MNIST) cannot be matched by name
    bare = EvalData(test.images, test.labels, test.mean, test.std, "cifar10")
    with pytest.raises(VitscopeError, match="needs a folder dataset .* not cifar10"):
        A.run(model, bare, replace(cfg, corruptions=("fog",)))
    shutil.rmtree(tmp_path / "fog")
    with pytest.raises(VitscopeError, match="holds neither labels.npy"):
        A.run(model, test, cfg)
