"""Whole-batch training augmentation on the images' device (``docs/methods/training.md``), and the
soft-target loss.

The paper's CIFAR recipe (timm ``transforms_imagenet_train(separate=True)`` + ``Mixup``) is,
per training batch:

1. random crop with 4 px zero padding and a horizontal flip (p = 0.5);
2. RandAugment ``rand-m9-n2-mstd1.0`` (optional);
3. ``ToTensor`` + ``Normalize``;
4. Mixup (alpha 1.0) or CutMix (alpha 0.8), switch prob 0.5, label smoothing 0.1 (optional).

:class:`BatchAugment` does all four on a uint8 batch ``(B, C, H, W)`` and returns normalised
float32 images and soft targets ``(B, K)``, so one loss (:func:`soft_cross_entropy`) covers
every recipe. Every random number is drawn on the CPU from torch's global generator, so a
seed (and the RNG state a checkpoint saves) fixes the batch on any device.

Implementation choices (throughput: batch 128, one CPU thread, on a shared 2-core machine):

- Crop and flip are one ``gather`` over the padded uint8 batch and a ``torch.where``:
  ~250k images/s at 28x28x1 (~0.5 ms per batch), against ~53k for kornia's ``RandomCrop`` +
  ``RandomHorizontalFlip`` on the same batch. Same distribution (offsets uniform in
  ``[0, 2p]``, zero fill, flip p = 0.5), 5x cheaper, and two short obvious functions.
- RandAugment is timm's, batched: every image draws its own ``n`` ops (with replacement),
  each applied with prob 0.5 at magnitude ``N(m, mstd)`` clipped to ``[0, 10]``, with timm's
  magnitude-to-argument maps and PIL's op definitions (tested against PIL: the 10 colour
  ops agree to 1 grey level, the 5 warps to <1 on average). Colour ops use ITU-R 601 luma,
  so a 1-channel image is its own grey level and ``Color`` is the identity, as in PIL.
  ~23k images/s at 28x28x1 (~5.5 ms per batch), ~13k at 32x32x3. kornia's
  ``auto.RandAugment`` was not used: it picks the same ops for the whole batch, scales ``m``
  by 1/30 instead of timm's 1/10, has other magnitude ranges, and its colour ops raise on
  1-channel images. kornia supplies ``equalize`` (PIL-exact, batched over images and
  channels); the warps are ``affine_grid`` + ``grid_sample`` in PIL's pixel convention.
- Mixup / CutMix are a few lines of torch copying timm's ``Mixup`` in "batch" mode (one
  lambda per batch, image i paired with image B-1-i, CutMix lambda corrected by the clipped
  box's area, smoothing applied to both one-hots). kornia's ``RandomMixUpV2`` /
  ``RandomCutMixV2`` pair by random permutation, draw one lambda per sample and return label
  triplets, not timm's soft targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import ERASE_MODES, check_rrc
from ..errors import ConfigError, VitscopeError

# --------------------------------------------------------------------------------------
# Normalisation and loss
# --------------------------------------------------------------------------------------


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images / 255 - mean) / std`` as float32, per channel, on the images' device.

    Args:
        images: uint8 (or 0..255 float) ``(..., C, H, W)``.
        mean: per-channel mean of ``x / 255`` (length ``C`` or 1).
        std: per-channel std of ``x / 255``.
    """
    m, s = _stats(mean, std, images.shape[-3], images.device)
    return images.float().sub_(m).div_(s)


def _stats(mean, std, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``255 * mean`` and ``255 * std`` shaped ``(C, 1, 1)``, so normalising is one sub, one div."""
    if len(mean) not in (1, channels) or len(std) != len(mean):
        raise ConfigError(
            f"mean {tuple(mean)} / std {tuple(std)} do not match images with {channels} channels"
        )
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1) * 255
    return m, s


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets_k * log_softmax(logits)_k`` (timm's
    ``SoftTargetCrossEntropy``); with one-hot targets this is the ordinary cross-entropy."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot float32 targets with timm's smoothing: ``1 - s + s/K`` on, ``s/K`` off."""
    off = smoothing / num_classes
    y = torch.full((len(labels), num_classes), off, dtype=torch.float32, device=labels.device)
    return y.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


# --------------------------------------------------------------------------------------
# Crop and flip
# --------------------------------------------------------------------------------------


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-image random crop of ``x`` (B, C, H, W) zero-padded by ``padding`` back to (H, W).

    Offsets are uniform in ``[0, 2 * padding]`` as in torchvision's ``RandomCrop(padding=p)``.
    One ``gather`` over the flattened padded images: 2-4x faster than advanced indexing.
    """
    if padding <= 0:
        return x
    B, C, H, W = x.shape
    Wp = W + 2 * padding
    xp = F.pad(x, (padding,) * 4).flatten(2)  # (B, C, Hp*Wp); zeros = black, as torchvision
    dy = torch.randint(0, 2 * padding + 1, (B,))
    dx = torch.randint(0, 2 * padding + 1, (B,))
    window = (torch.arange(H)[:, None] * Wp + torch.arange(W)).flatten()  # (H*W,) at offset 0
    idx = ((dy * Wp + dx)[:, None] + window).to(x.device)  # (B, H*W)
    return xp.gather(2, idx[:, None, :].expand(B, C, H * W)).view(B, C, H, W)


def rrc_boxes(
    n: int,
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(n, 4)`` crop boxes ``(top, left, height, width)`` of torchvision's
    ``RandomResizedCrop.get_params``, per image: up to 10 tries of an area share uniform in
    ``scale`` and an aspect ratio log-uniform in ``ratio`` that fit the image; else the
    central crop of the largest box whose ratio is clamped into ``ratio``. Offsets uniform.
    Random numbers from ``generator``, else torch's global generator."""
    g = generator
    u_area = torch.rand(n, 10, dtype=torch.float64, generator=g)
    u_ratio = torch.rand(n, 10, dtype=torch.float64, generator=g)
    u_offset = torch.rand(n, 2, dtype=torch.float64, generator=g)
    return rrc_boxes_from(h, w, scale, ratio, u_area, u_ratio, u_offset)


def rrc_boxes_from(h, w, scale, ratio, u_area, u_ratio, u_offset) -> torch.Tensor:
    """:func:`rrc_boxes` from its uniforms: ``(n, 10)`` area and ratio draws, ``(n, 2)``
    offsets."""
    n = len(u_area)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u_area)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u_ratio)
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.double().argmax(1)  # the first try that fits (0 if none does)
    rows = torch.arange(n)
    ch, cw, ok = ch[rows, first], cw[rows, first], fits[rows, first]
    fh, fw = _rrc_fallback(h, w, ratio)
    ch = torch.where(ok, ch, torch.full_like(ch, fh))
    cw = torch.where(ok, cw, torch.full_like(cw, fw))
    u = u_offset
    top = torch.where(ok, torch.floor(u[:, 0] * (h - ch + 1)), torch.full_like(ch, (h - fh) // 2))
    left = torch.where(ok, torch.floor(u[:, 1] * (w - cw + 1)), torch.full_like(cw, (w - fw) // 2))
    return torch.stack([top, left, ch, cw], 1).long()


def _rrc_fallback(h: int, w: int, ratio) -> tuple[int, int]:
    """torchvision's central crop when no try fits: the image, its ratio clamped into ``ratio``."""
    in_ratio = w / h
    if in_ratio < ratio[0]:
        return round(w / ratio[0]), w
    if in_ratio > ratio[1]:
        return h, round(h * ratio[1])
    return h, w


def rrc_box(h: int, w: int, scale, ratio, u: Sequence[float]) -> tuple[int, int, int, int]:
    """One box of :func:`rrc_boxes_from` in plain Python (for one image in a DataLoader
    worker, where a dozen tiny tensor ops would cost more than the resize): ``u`` holds the
    22 uniforms, 10 area draws, 10 ratio draws and 2 offsets."""
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(10):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u[k])
        aspect = math.exp(lo + (hi - lo) * u[10 + k])
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return math.floor(u[20] * (h - ch + 1)), math.floor(u[21] * (w - cw + 1)), ch, cw
    fh, fw = _rrc_fallback(h, w, ratio)
    return (h - fh) // 2, (w - fw) // 2, fh, fw


def resized_crops(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    mode: str | Sequence[str] = "bilinear",
) -> torch.Tensor:
    """Each box ``(top, left, height, width)`` of ``x`` (B, C, H, W, float) cropped and then
    resized to ``size`` (``mode``: bilinear or bicubic, or one of them per image;
    ``align_corners=False``, antialiased when it shrinks), image by image: torchvision's
    ``resized_crop`` on tensors, whose edges repeat the crop's own border pixels."""
    modes = [mode] * len(x) if isinstance(mode, str) else list(mode)
    out = []
    for img, (t, l, h, w), m in zip(x, boxes.tolist(), modes):
        crop = img[None, :, t : t + h, l : l + w]
        if (h, w) == tuple(size):
            out.append(crop)
        else:
            out.append(F.interpolate(crop, size=size, mode=m, align_corners=False, antialias=True))
    return torch.cat(out)


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop`` back to the batch's own size, per image, on uint8
    ``x`` (B, C, H, W); returns uint8. ``interpolation="random"``: bilinear or bicubic per
    image with equal odds (timm's ``random``)."""
    B, _, H, W = x.shape
    boxes = rrc_boxes(B, H, W, scale, ratio)
    mode: str | list[str] = interpolation
    if interpolation == "random":
        mode = ["bicubic" if b else "bilinear" for b in (torch.rand(B) < 0.5).tolist()]
    out = resized_crops(x.float(), boxes, (H, W), mode)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip each image of ``x`` (B, C, H, W) left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0]) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


# --------------------------------------------------------------------------------------
# RandAugment (timm semantics, batched). Images are float32 holding 0..255 values; every op
# rounds or truncates back to integers as PIL's uint8 pipeline does.
# --------------------------------------------------------------------------------------

_MAX_LEVEL = 10.0  # timm's magnitude scale: 'm9' is 0.9 of each op's largest argument


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL ``convert("L")`` (ITU-R 601-2 luma) as (b, 1, H, W); a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).round_()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance``: ``blend(degenerate, x, f)`` with timm's factor ``f = 0.18 level + 0.1``
    (0.1..1.9, 1.72 at m9; f > 1 extrapolates away from ``degenerate``), truncated like PIL."""
    f = _col((level / _MAX_LEVEL * 1.8 + 0.1).to(x.device))
    return (degenerate + f * (x - degenerate)).clamp_(0, 255).floor_()


def _auto_contrast(x, level):
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    scaled = ((x - lo) * (255 / (hi - lo).clamp_min(1))).floor_().clamp_(0, 255)
    return torch.where(hi > lo, scaled, x)


def _equalize(x, level):
    from kornia.enhance import equalize  # PIL ImageOps.equalize, batched over (B, C)

    return (equalize(x / 255) * 255).round_()


def _invert(x, level):
    return 255 - x


def _posterize(x, level):
    bits = (level / _MAX_LEVEL * 4).floor()  # timm 'Posterize': keep int(0.4 level) bits
    q = _col(torch.pow(2.0, 8 - bits).to(x.device))
    return (x / q).floor_() * q


def _solarize(x, level):
    thresh = _col((level / _MAX_LEVEL * 256).floor().to(x.device))  # 230 at m9
    return torch.where(x >= thresh, 255 - x, x)


def _solarize_add(x, level):
    add = _col((level / _MAX_LEVEL * 110).floor().to(x.device))
    return torch.where(x < 128, (x + add).clamp_(max=255), x)


def _color(x, level):
    return _blend(_luma(x), x, level)  # identity on 1 channel: grey is already grey


def _contrast(x, level):
    return _blend((_luma(x).mean((1, 2, 3), keepdim=True) + 0.5).floor_(), x, level)


def _brightness(x, level):
    return _blend(torch.zeros_like(x), x, level)


def _sharpness(x, level):
    # PIL ImageFilter.SMOOTH: 3x3 kernel of ones with centre 5, divided by 13; border pixels
    # keep their values. 9 * box mean + 4 * centre is that kernel, and ~10x faster than a
    # depthwise conv2d on a few small images.
    degenerate = x.clone()
    smooth = F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[..., 1:-1, 1:-1]
    degenerate[..., 1:-1, 1:-1] = (smooth / 13).round_()
    return _blend(degenerate, x, level)


# Geometric ops give PIL-style inverse maps (b, 3, 3) in pixel units: output pixel (x, y)
# reads the input at m @ (x, y, 1). Signs are random (timm's _randomly_negate).


def _rotate(level, sign, H, W):
    a = -torch.deg2rad(level / _MAX_LEVEL * 30.0 * sign)  # PIL Image.rotate about the centre
    c, s = torch.cos(a), torch.sin(a)
    cx, cy = W / 2, H / 2
    m = torch.eye(3).repeat(len(level), 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = c, s, cx - c * cx - s * cy
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -s, c, cy + s * cx - c * cy
    return m


def _shear(axis: int):
    def mats(level, sign, H, W):
        m = torch.eye(3).repeat(len(level), 1, 1)
        m[:, axis, 1 - axis] = level / _MAX_LEVEL * 0.3 * sign  # ShearX: x_in = x + s y
        return m

    return mats


def _translate(axis: int):
    def mats(level, sign, H, W):
        m = torch.eye(3).repeat(len(level), 1, 1)
        m[:, axis, 2] = level / _MAX_LEVEL * 0.45 * sign * (W, H)[axis]  # up to 45 % of the size
        return m

    return mats


def _affine(x: torch.Tensor, m: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Warp ``x`` by inverse maps ``m`` (b, 3, 3), bilinear, uncovered pixels set to ``fill``.

    Coordinates are continuous with pixel centres at +0.5, the convention of both PIL and
    ``align_corners=False``, so ``m`` converts to ``affine_grid``'s normalised form exactly.
    """
    _, _, H, W = x.shape
    to_norm = torch.tensor([[2 / W, 0, -1], [0, 2 / H, -1], [0, 0, 1]])
    theta = (to_norm @ m @ torch.linalg.inv(to_norm))[:, :2].to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    f = fill.view(1, -1, 1, 1)
    out = F.grid_sample(x - f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + f).clamp_(0, 255).round_()


PixelOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GeometricOp = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]

# timm's _RAND_TRANSFORMS, in its order.
RAND_OPS: dict[str, PixelOp | GeometricOp] = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateXRel": _translate(0),
    "TranslateYRel": _translate(1),
}
_GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})


def rand_augment(
    x: torch.Tensor,
    *,
    n: int = 2,
    m: float = 9.0,
    mstd: float = 1.0,
    prob: float = 0.5,
    fill: Sequence[float] = (128.0,),
    ops: Sequence[str] | None = None,
) -> torch.Tensor:
    """timm's RandAugment ``rand-m{m}-n{n}-mstd{mstd}`` on a batch, each image its own draw.

    For each of ``n`` layers every image picks one op uniformly (with replacement across
    layers), applies it with probability ``prob`` at magnitude ``clip(N(m, mstd), 0, 10)``
    with a random sign for the symmetric ops (Cubuk et al. 2020, "RandAugment", arXiv
    1909.13719; timm ``auto_augment.py``). Within a layer the images that drew a geometric
    op are warped by one ``grid_sample`` call.

    Args:
        x: float32 (B, C, H, W) holding 0..255 values, any device, C = 1 or 3.
        n: operations per image.
        m: magnitude on timm's 0..10 scale.
        mstd: std of the per-op magnitude noise (0 = fixed magnitude).
        prob: probability that a chosen op is applied.
        fill: 0..255 colour (per channel or one value) of pixels uncovered by geometric ops.
        ops: names from :data:`RAND_OPS` to choose from (default: all 15).

    Returns:
        Augmented float32 (B, C, H, W) holding integers in 0..255.
    """
    names = list(RAND_OPS) if ops is None else list(ops)
    unknown = sorted(set(names) - set(RAND_OPS))
    if unknown or not names:
        raise ConfigError(f"unknown RandAugment ops {unknown}; valid: {', '.join(RAND_OPS)}")
    B, C, H, W = x.shape
    fill_t = torch.as_tensor(fill, dtype=x.dtype).expand(C).to(x.device)
    x = x.clone()
    for _ in range(n):
        op_idx = torch.randint(0, len(names), (B,))
        apply = torch.rand(B) < prob
        level = (m + mstd * torch.randn(B)).clamp_(0, _MAX_LEVEL)  # timm clips the noisy level
        sign = torch.where(torch.rand(B) < 0.5, -1.0, 1.0)
        mats, warp = torch.eye(3).repeat(B, 1, 1), torch.zeros(B, dtype=torch.bool)
        for k, name in enumerate(names):
            chosen = apply & (op_idx == k)
            sel = torch.nonzero(chosen).flatten()
            if not len(sel):
                continue
            if name in _GEOMETRIC:
                mats[sel] = RAND_OPS[name](level[sel], sign[sel], H, W)
                warp |= chosen
            else:
                d = sel.to(x.device)
                x[d] = RAND_OPS[name](x[d], level[sel])
        if warp.any():
            sel = torch.nonzero(warp).flatten()
            d = sel.to(x.device)
            x[d] = _affine(x[d], mats[sel], fill_t)
    return x


# --------------------------------------------------------------------------------------
# Mixup / CutMix (timm Mixup, mode "batch")
# --------------------------------------------------------------------------------------


def _beta(alpha: float) -> float:
    a = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(a, a).sample())


def cutmix_box(H: int, W: int, lam: float) -> tuple[int, int, int, int]:
    """timm ``rand_bbox``: a box of area ``(1 - lam) H W`` at a uniform centre, clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * ratio), int(W * ratio)
    cy, cx = int(torch.randint(0, H, ())), int(torch.randint(0, W, ()))
    yl, yh = min(max(cy - cut_h // 2, 0), H), min(max(cy + cut_h // 2, 0), H)
    xl, xh = min(max(cx - cut_w // 2, 0), W), min(max(cx + cut_w // 2, 0), W)
    return yl, yh, xl, xh


def random_erasing(
    x: torch.Tensor,
    p: float,
    mode: str = "const",
    count: int = 1,
    area: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """timm's ``RandomErasing`` on a normalised batch ``(B, C, H, W)``, in place: each image
    with probability ``p`` gets ``count`` boxes, each of an area share uniform in ``area``
    (divided by ``count``) and an aspect ratio log-uniform in ``ratio``, up to 10 tries until
    one fits strictly inside; the box is filled with 0 (``const``: the mean colour), one
    normal value per channel (``rand``) or per pixel (``pixel``). Random numbers from torch's
    global generator."""
    if p <= 0:
        return x
    B, C, H, W = x.shape
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for i in torch.nonzero(torch.rand(B) < p).flatten().tolist():
        for _ in range(count):
            tries = torch.rand(10, 2, dtype=torch.float64).tolist()
            for ua, ur in tries:
                target = (area[0] + (area[1] - area[0]) * ua) * H * W / count
                aspect = math.exp(lo + (hi - lo) * ur)
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if w < W and h < H:
                    top, left = (torch.rand(2, dtype=torch.float64) * torch.tensor(
                        [H - h + 1, W - w + 1])).long().tolist()  # fmt: skip
                    if mode == "const":
                        fill = x.new_zeros(C, h, w)
                    else:
                        shape = (C, 1, 1) if mode == "rand" else (C, h, w)
                        fill = torch.randn(shape).to(x).expand(C, h, w)
                    x[i, :, top : top + h, left : left + w] = fill
                    break
    return x


# --------------------------------------------------------------------------------------
# The batch pipeline
# --------------------------------------------------------------------------------------


class BatchAugment:
    """Crop + flip -> RandAugment -> normalise -> Mixup/CutMix, on a whole uint8 batch.

    Args:
        mean: per-channel mean of ``x / 255`` (the dataset's ``info.mean``).
        std: per-channel std of ``x / 255``.
        num_classes: width of the soft targets.
        crop_padding: zero padding of the random crop; 0 disables the crop.
        rrc: torchvision's RandomResizedCrop (``rrc_scale``, ``rrc_ratio``,
            ``interpolation``) back to the images' size, before the flip.
        hflip: random horizontal flip with probability 0.5.
        randaugment: apply :func:`rand_augment` (timm ``rand-m{ra_m}-n{ra_n}-mstd{ra_mstd}``).
        ra_n: RandAugment operations per image.
        ra_m: RandAugment magnitude, timm scale (10 = strongest; 9 in the paper).
        ra_mstd: RandAugment magnitude noise std (1.0 for CIFAR, 0.5 for ImageNet in the paper).
        mixup_alpha: Mixup ``Beta(alpha, alpha)``; 0 disables.
        cutmix_alpha: CutMix ``Beta(alpha, alpha)``; 0 disables.
        mix_prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than Mixup when both alphas are > 0.
        label_smoothing: ``s``; targets are ``1 - s + s/K`` on the label, ``s/K`` elsewhere.
        reprob, remode, recount: :func:`random_erasing` after normalising, before mixing
            (timm's order: erasing is the per-image transform's last step); 0 disables.

    Calling it with uint8 images (B, C, H, W) and int64 labels (B,) returns normalised float32
    images (B, C, H, W) and float32 soft targets (B, num_classes) whose rows sum to 1.
    """

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        crop_padding: int = 4,
        rrc: bool = False,
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
        hflip: bool = True,
        randaugment: bool = False,
        ra_n: int = 2,
        ra_m: float = 9,
        ra_mstd: float = 1.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
        reprob: float = 0.0,
        remode: str = "const",
        recount: int = 1,
    ) -> None:
        if len(mean) != len(std) or not len(mean) or min(std) <= 0:
            raise ConfigError(
                f"mean {tuple(mean)} and std {tuple(std)} must have equal lengths, std > 0"
            )
        if num_classes < 1 or crop_padding < 0 or ra_n < 0 or ra_m < 0 or ra_mstd < 0:
            raise ConfigError(
                "need num_classes >= 1 and crop_padding, ra_n, ra_m, ra_mstd >= 0; "
                f"got {num_classes}, {crop_padding}, {ra_n}, {ra_m}, {ra_mstd}"
            )
        check_rrc(rrc_scale, rrc_ratio, interpolation, crop_padding if rrc else 0)
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigError(
                f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}"
            )
        for name, v in (
            ("mix_prob", mix_prob),
            ("switch_prob", switch_prob),
            ("label_smoothing", label_smoothing),
        ):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.num_classes = int(num_classes)
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)
        self.rrc, self.interpolation = bool(rrc), str(interpolation)
        self.rrc_scale = (float(rrc_scale[0]), float(rrc_scale[1]))
        self.rrc_ratio = (float(rrc_ratio[0]), float(rrc_ratio[1]))
        self.randaugment = bool(randaugment)
        self.ra_n, self.ra_m, self.ra_mstd = int(ra_n), float(ra_m), float(ra_mstd)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.mix_prob, self.switch_prob = float(mix_prob), float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= reprob <= 1.0 or remode not in ERASE_MODES or recount < 1:
            raise ConfigError(
                f"need reprob in [0, 1], remode one of {', '.join(ERASE_MODES)}, recount >= 1; "
                f"got {reprob}, {remode!r}, {recount}"
            )
        self.reprob, self.remode, self.recount = float(reprob), str(remode), int(recount)
        # timm fills geometric ops with the mean colour: round(255 * mean) per channel.
        self.fill = tuple(float(min(255, round(255 * v))) for v in self.mean)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
            raise VitscopeError(
                "BatchAugment expects uint8 images (B, C, H, W) and labels (B,), "
                f"got {images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        x = random_crop(images, self.crop_padding)  # on uint8: a quarter of the bytes to move
        if self.rrc:
            x = random_resized_crop(x, self.rrc_scale, self.rrc_ratio, self.interpolation)
        if self.hflip:
            x = random_hflip(x)
        x = x.float()
        if self.randaugment and self.ra_n > 0:
            fill = self.fill if len(self.fill) == x.shape[1] else self.fill[:1]
            x = rand_augment(x, n=self.ra_n, m=self.ra_m, mstd=self.ra_mstd, fill=fill)
        m, s = _stats(self.mean, self.std, x.shape[1], x.device)
        x = x.sub_(m).div_(s)
        if self.reprob > 0:
            x = random_erasing(x, self.reprob, self.remode, self.recount)
        return self._mix(x, labels.long())

    def _mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm ``Mixup._mix_batch``: one lambda per batch; image i is mixed with image B-1-i."""
        y = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if (
            not (self.mixup_alpha > 0 or self.cutmix_alpha > 0)
            or float(torch.rand(())) >= self.mix_prob
        ):
            return x, y
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        lam = _beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        if use_cutmix:
            H, W = x.shape[-2:]
            yl, yh, xl, xh = cutmix_box(H, W, lam)
            x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
            lam = 1.0 - (yh - yl) * (xh - xl) / (H * W)  # the box was clipped: use its true area
        else:
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, y * lam + y.flip(0) * (1.0 - lam)

    def __repr__(self) -> str:
        keys = (
            "crop_padding",
            "hflip",
            "randaugment",
            "ra_n",
            "ra_m",
            "mixup_alpha",
            "cutmix_alpha",
            "label_smoothing",
        )
        if self.rrc:  # only then: the transform text of older results stays the same
            keys += ("rrc", "rrc_scale", "rrc_ratio", "interpolation")
        if self.randaugment and self.ra_mstd != 1.0:
            keys += ("ra_mstd",)
        if self.reprob > 0:
            keys += ("reprob", "remode", "recount")
        return f"BatchAugment({', '.join(f'{k}={getattr(self, k)}' for k in keys)})"
