"""BatchAugment: shapes, soft targets, Mixup/CutMix structure, determinism, and RandAugment
ops checked against PIL (the reference timm's RandAugment runs on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.data import BatchAugment, normalize, rand_augment, soft_cross_entropy
from vitscope.data.augment import RAND_OPS, _affine, random_crop, random_hflip, smooth_one_hot
from vitscope.errors import ConfigError, VitscopeError

FM = dict(mean=(0.2860,), std=(0.3530,), num_classes=10)
C10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), num_classes=10)
PAPER = dict(randaugment=True, mixup_alpha=1.0, cutmix_alpha=0.8, label_smoothing=0.1)


def _batch(b=16, c=1, h=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, h), dtype=torch.uint8, generator=g)
    return x, torch.arange(b) % 10


def test_normalize_values():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(x, (0.2, 0.2, 0.5), (0.5, 0.1, 0.25))
    expected = torch.tensor([(0 - 0.2) / 0.5, (0.2 - 0.2) / 0.1, (1 - 0.5) / 0.25])
    assert out.dtype == torch.float32 and torch.allclose(out.flatten(), expected, atol=1e-6)
    with pytest.raises(ConfigError):
        normalize(x, (0.1, 0.2), (0.3, 0.4))


@pytest.mark.parametrize("kw", [FM, C10])
@pytest.mark.parametrize("extra", [{}, PAPER], ids=["crop-flip", "paper"])
def test_shapes_dtype_and_targets_sum_to_one(kw, extra):
    x, y = _batch(c=len(kw["mean"]), h=28 if len(kw["mean"]) == 1 else 32)
    out, t = BatchAugment(**kw, **extra)(x, y)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert t.shape == (len(y), 10) and t.dtype == torch.float32
    assert torch.allclose(t.sum(1), torch.ones(len(y)))


def test_no_augmentation_is_normalisation():
    x, y = _batch(c=3, h=32)
    aug = BatchAugment(**C10, crop_padding=0, hflip=False)
    out, t = aug(x, y)
    assert torch.equal(out, normalize(x, C10["mean"], C10["std"]))
    assert torch.equal(t, F.one_hot(y, 10).float())


def test_label_smoothing_values_are_exact():
    x, y = _batch()
    _, t = BatchAugment(**FM, label_smoothing=0.1)(x, y)
    on, off = 1 - 0.1 + 0.1 / 10, 0.1 / 10  # 0.91, 0.01 as timm
    expected = torch.full_like(t, off).scatter_(1, y[:, None], on)
    assert torch.equal(t, expected)


def test_mixup_targets_are_one_convex_combination():
    x, y = _batch(b=8)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    torch.manual_seed(3)
    out, t = BatchAugment(**FM, crop_padding=0, hflip=False, mixup_alpha=1.0)(x, y)
    Y = F.one_hot(y, 10).float()
    lam = t[0, 0].item()  # row 0 mixes class 0 (weight lam) with class 7 (1 - lam)
    assert 0 < lam < 1 and t[0, 7].item() == pytest.approx(1 - lam, abs=1e-6)
    assert torch.allclose(t, lam * Y + (1 - lam) * Y.flip(0), atol=1e-6)
    xn = normalize(x, FM["mean"], FM["std"])
    assert torch.allclose(out, lam * xn + (1 - lam) * xn.flip(0), atol=1e-5)


def test_cutmix_box_and_corrected_lambda():
    x, y = _batch(b=8, h=32)
    y = torch.arange(8)
    torch.manual_seed(5)
    out, t = BatchAugment(**FM, crop_padding=0, hflip=False, cutmix_alpha=1.0)(x, y)
    xn = normalize(x, FM["mean"], FM["std"])
    from_other = ~torch.isclose(out, xn)  # pixels pasted from the flipped batch
    assert torch.equal(out[from_other], xn.flip(0)[from_other])
    pasted = from_other[0, 0].float().mean().item()  # equal images at a pixel don't count
    lam = t[0, 0].item()
    assert torch.allclose(t, lam * F.one_hot(y, 10) + (1 - lam) * F.one_hot(y.flip(0), 10))
    assert pasted == pytest.approx(1 - lam, abs=0.02)


def test_mix_prob_zero_and_switch():
    x, y = _batch()
    _, t = BatchAugment(**FM, mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.0)(x, y)
    assert torch.equal(t, F.one_hot(y, 10).float())


def test_random_crop_is_a_shifted_window_and_keeps_size():
    x, _ = _batch(b=6, c=3, h=10)
    torch.manual_seed(0)
    out = random_crop(x, 4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    xp = F.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [xp[i, :, dy : dy + 10, dx : dx + 10] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_random_hflip():
    x, _ = _batch(b=64)
    out = random_hflip(x)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and flipped.any() and same.any()


def test_same_seed_same_batch():
    x, y = _batch(c=3, h=32)
    aug = BatchAugment(**C10, **PAPER)
    torch.manual_seed(0)
    a = aug(x, y)
    torch.manual_seed(0)
    b = aug(x, y)
    torch.manual_seed(1)
    c = aug(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", list(RAND_OPS))
def test_every_randaugment_op_runs_on_1_and_3_channels(op, channels):
    x, _ = _batch(b=4, c=channels, h=12)
    out = rand_augment(x.float(), n=1, m=9, prob=1.0, ops=[op], fill=(128,) * channels)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())


def test_randaugment_1_channel_in_batch_augment():
    x, y = _batch(b=32)
    out, _ = BatchAugment(**FM, randaugment=True, ra_n=3)(x, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ConfigError):
        rand_augment(x.float(), ops=["Cutout"])


# --- RandAugment ops against PIL ------------------------------------------------------

LEVEL = 9.0


def _pil_reference(name, img):
    from PIL import Image, ImageEnhance, ImageOps

    f = LEVEL / 10 * 1.8 + 0.1
    add = int(LEVEL / 10 * 110)
    grey = 128 if img.mode == "L" else (128, 128, 128)
    return {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Equalize": lambda: ImageOps.equalize(img),
        "Invert": lambda: ImageOps.invert(img),
        "Posterize": lambda: ImageOps.posterize(img, int(LEVEL / 10 * 4)),
        "Solarize": lambda: ImageOps.solarize(img, int(LEVEL / 10 * 256)),
        "SolarizeAdd": lambda: img.point(
            [min(255, i + add) if i < 128 else i for i in range(256)] * len(img.getbands())
        ),
        "Color": lambda: ImageEnhance.Color(img).enhance(f),
        "Contrast": lambda: ImageEnhance.Contrast(img).enhance(f),
        "Brightness": lambda: ImageEnhance.Brightness(img).enhance(f),
        "Sharpness": lambda: ImageEnhance.Sharpness(img).enhance(f),
        "Rotate": lambda: img.rotate(LEVEL / 10 * 30, resample=Image.BILINEAR, fillcolor=grey),
        "ShearX": lambda: img.transform(
            img.size,
            Image.AFFINE,
            (1, LEVEL / 10 * 0.3, 0, 0, 1, 0),
            Image.BILINEAR,
            fillcolor=grey,
        ),
        "ShearY": lambda: img.transform(
            img.size,
            Image.AFFINE,
            (1, 0, 0, LEVEL / 10 * 0.3, 1, 0),
            Image.BILINEAR,
            fillcolor=grey,
        ),
        "TranslateXRel": lambda: img.transform(
            img.size,
            Image.AFFINE,
            (1, 0, 0.45 * 0.9 * img.size[0], 0, 1, 0),
            Image.BILINEAR,
            fillcolor=grey,
        ),
        "TranslateYRel": lambda: img.transform(
            img.size,
            Image.AFFINE,
            (1, 0, 0, 0, 1, 0.45 * 0.9 * img.size[1]),
            Image.BILINEAR,
            fillcolor=grey,
        ),
    }[name]()


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("op", list(RAND_OPS))
def test_randaugment_ops_match_pil(op, mode):
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)  # smooth it so bilinear is tame
    img = Image.fromarray(small).resize((30, 24), Image.BILINEAR).convert(mode)
    arr = np.asarray(img).astype(np.float32).reshape(24, 30, -1)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    ref = np.asarray(_pil_reference(op, img)).astype(np.float32).reshape(24, 30, -1)
    level, sign = torch.tensor([LEVEL]), torch.tensor([1.0])
    if op in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        out = _affine(x, RAND_OPS[op](level, sign, 24, 30), torch.full((x.shape[1],), 128.0))
    else:
        out = RAND_OPS[op](x, level)
    diff = np.abs(out[0].permute(1, 2, 0).numpy() - ref)
    if op in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        # Same geometry; PIL and grid_sample differ only in edge handling and rounding.
        assert diff.mean() < 1.5, diff.mean()
    else:
        assert diff.max() <= 1, diff.max()


# --- loss and validation ----------------------------------------------------------------


def test_soft_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    assert torch.allclose(
        soft_cross_entropy(logits, F.one_hot(y, 5).float()), F.cross_entropy(logits, y)
    )
    smoothed = soft_cross_entropy(logits, smooth_one_hot(y, 5, 0.1))
    assert torch.allclose(smoothed, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_bad_arguments():
    with pytest.raises(ConfigError):
        BatchAugment(mean=(0.5,), std=(0.5, 0.5), num_classes=10)
    with pytest.raises(ConfigError):
        BatchAugment(**FM, mix_prob=1.5)
    with pytest.raises(ConfigError):
        BatchAugment(**FM, mixup_alpha=-1)
    with pytest.raises(VitscopeError):
        BatchAugment(**FM)(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


# ---- RandomResizedCrop -------------------------------------------------------------------------


def test_rrc_boxes_fit_and_follow_scale_and_ratio():
    from vitscope.data.augment import rrc_boxes

    torch.manual_seed(0)
    b = rrc_boxes(4000, 48, 64, (0.08, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = b.T.double()
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + h <= 48).all() and (left + w <= 64).all()
    )
    share, aspect = h * w / (48 * 64), w / h
    # rounding to whole pixels moves share and ratio a little past their ranges
    assert share.min() > 0.06 and share.max() <= 1
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert 0.3 < share.mean() < 0.7 and share.std() > 0.2  # spread over the range
    assert len({tuple(r) for r in b.tolist()}) > 3000  # offsets and sizes vary
    torch.manual_seed(0)
    assert torch.equal(rrc_boxes(4000, 48, 64, (0.08, 1.0), (3 / 4, 4 / 3)), b)  # global RNG
    # nothing fits a 2:1 crop of the whole area on a square image: torchvision's central crop
    fb = rrc_boxes(5, 32, 32, (1.0, 1.0), (2.0, 2.0))
    assert fb.tolist() == [[8, 0, 16, 32]] * 5


def test_resized_crops_are_exact_for_the_whole_image_and_for_an_unscaled_box():
    from vitscope.data.augment import resized_crops

    x = torch.rand(2, 3, 20, 24)
    whole = torch.tensor([[0, 0, 20, 24]] * 2)
    for mode in ("bilinear", "bicubic"):
        torch.testing.assert_close(resized_crops(x, whole, (20, 24), mode), x)
    box = torch.tensor([[2, 3, 8, 10], [5, 0, 8, 10]])
    out = resized_crops(x, box, (8, 10))
    torch.testing.assert_close(out[0], x[0, :, 2:10, 3:13])
    torch.testing.assert_close(out[1], x[1, :, 5:13, 0:10])
    # a box of half the side upsampled 2x: bilinear between the box's pixels
    up = resized_crops(x, torch.tensor([[0, 0, 10, 12]] * 2), (20, 24))
    ref = F.interpolate(x[:, :, :10, :12], size=(20, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random"])
def test_batch_augment_with_rrc(interpolation):
    x, y = _batch(8, 3, 32)
    aug = BatchAugment(**C10, crop_padding=0, rrc=True, interpolation=interpolation)
    torch.manual_seed(1)
    a, t = aug(x, y)
    assert a.shape == (8, 3, 32, 32) and t.shape == (8, 10)
    torch.manual_seed(1)
    assert torch.equal(aug(x, y)[0], a)
    assert "rrc=True" in repr(aug)
    assert "rrc" not in repr(BatchAugment(**C10))  # older transforms read the same


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"rrc": True}, "augment.rrc replaces the padded random crop"),
        ({"rrc": True, "crop_padding": 0, "rrc_scale": (0.5, 1.5)}, "augment.rrc_scale"),
        ({"rrc": True, "crop_padding": 0, "rrc_ratio": (2.0, 1.0)}, "augment.rrc_ratio"),
        ({"interpolation": "lanczos"}, "augment.interpolation must be one of"),
    ],
)
def test_bad_rrc_settings_are_one_line_errors(kw, words):
    from vitscope import config as C

    with pytest.raises(ConfigError, match=words) as e:
        BatchAugment(**C10, **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=words):
        C.AugmentConfig(**kw)


def test_random_erasing_cuts_one_box_of_the_stated_size_and_odds():
    from vitscope.data.augment import random_erasing

    torch.manual_seed(0)
    B, H, W = 400, 24, 40
    x = torch.rand(B, 3, H, W) + 1.0  # never 0: the erased box is where x became 0
    out = random_erasing(x.clone(), 1.0, "const")
    for img in out:
        mask = (img == 0).all(0)
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert h < H and w < W and mask.sum() == h * w  # one rectangle, strictly inside
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        # area share in [0.02, 1/3] and ratio in [0.3, 1/0.3], up to the rounding of h and w
        assert 0.02 * H * W - (h + w) <= h * w <= H * W / 3 + (h + w)
        assert 0.3 * (w - 1) / (h + 1) <= 1 and (h - 1) / (w + 1) <= 1 / 0.3
    torch.manual_seed(1)
    quarter = random_erasing(x.clone(), 0.25, "const")
    erased = int(((quarter == 0).flatten(1).any(1)).sum())
    assert abs(erased - 100) < 3 * (B * 0.25 * 0.75) ** 0.5  # binomial(400, 0.25)
    torch.manual_seed(2)
    a = random_erasing(x.clone(), 1.0, "pixel")
    torch.manual_seed(2)
    b = random_erasing(x.clone(), 1.0, "pixel")
    assert torch.equal(a, b)  # seeded
    noise = a[a != x]
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    torch.manual_seed(3)
    per_channel = random_erasing(x.clone(), 1.0, "rand")
    box = (per_channel[0] != x[0]).all(0)[None].expand_as(x[0])
    vals = per_channel[0][box].view(3, -1)
    assert torch.equal(vals, vals[:, :1].expand_as(vals))  # one value per channel
    assert torch.equal(random_erasing(x.clone(), 0.0), x)


def test_random_erasing_is_in_the_batch_pipeline_and_validated():
    from vitscope.config import resolve
    from vitscope.errors import ConfigError

    aug = BatchAugment(mean=(0.5,), std=(0.25,), num_classes=3, crop_padding=0, hflip=False,
                       reprob=1.0)  # fmt: skip
    x = torch.full((8, 1, 16, 16), 200, dtype=torch.uint8)
    out, _ = aug(x, torch.zeros(8, dtype=torch.long))
    assert ((out == 0).flatten(1).any(1)).all() and "reprob=1.0" in repr(aug)
    with pytest.raises(ConfigError, match="augment.reprob must be in"):
        resolve(preset="cpu", overrides={"augment": {"reprob": 1.5}})
    with pytest.raises(ConfigError, match="augment.remode must be one of"):
        resolve(preset="cpu", overrides={"augment": {"remode": "noise"}})
