"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019, "ImageNet-C") as seeded
batch ops in torch, on any image size and any device (``docs/methods/corruption.md``).

:func:`corrupt` takes float images in ``[0, 1]`` of shape ``(B, C, H, W)`` (``C`` = 1 or 3),
a corruption name, a severity 1-5 and a ``torch.Generator`` (CPU; every random number is drawn
from it, so a seed fixes the corrupted batch on any device) and returns the corrupted batch in
``[0, 1]``, same shape and dtype.

Parameters come from the authors' two tables: CIFAR-10-C (``make_cifar_c.py``, 32 px) and
ImageNet-C (``corruptions.py`` of the ``imagenet_c`` package, 224 px). The rule for a side
``s``:

- ``s <= 32``: the CIFAR table; ``s >= 224``: the ImageNet table;
- in between, every parameter is interpolated linearly in ``t = ln(s/32) / ln(224/32)``;
- a length (a blur radius, a displacement, a kernel sigma) is first made relative to its
  table's side and then multiplied by ``s``, so a 28 px Fashion-MNIST image gets the CIFAR
  blur radii times 28/32. The elastic transform's ``alpha`` multiplies a field smoothed with
  a length ``sigma``, whose amplitude falls as 1/sigma, so it scales with ``s^2``.

What differs from the released code, and why:

- motion blur (and the snow layer's streaks) is ImageMagick's ``-motion-blur`` kernel
  rebuilt: ``2 ceil(radius) + 1`` taps along the angle, Gaussian weights ``exp(-i^2/2s^2)``,
  each at the nearest pixel, edge pixels repeated (``MagickMotionBlurImage``);
- **frost**: the released code blends crops of six photographs of frost; vitscope ships no
  images, so the frost layer is synthesised: ridged plasma fractals (``1 - |2p - 1|``, raised
  to a power, which draws thin bright veins like ice crystals), two octaves, tinted light blue
  for RGB. Same blend weights as the tables; not the same pixels as released ImageNet-C;
- the elastic transform's smoothing of its random field is a Gaussian applied in the Fourier
  domain (periodic boundary; the released code uses scipy's ``reflect``), because the
  ImageNet sigmas exceed the image side;
- the snow layer is not quantised to 8 bits between its steps (the released code passes it
  through a PNG);
- glass blur's local pixel shuffle keeps the released order (a sequential sweep of swaps from
  the bottom right), vectorised over the batch: it is the slowest op (~0.1 s per batch of
  256 at 28 px, seconds at 224 px).

JPEG compression uses Pillow's encoder (the released code does too), image by image on the
CPU. Everything else is tensor ops (kornia's ``gaussian_blur2d`` and ``filter2d``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: the 15 corruptions, in ImageNet-C's order, by group
GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS: tuple[str, ...] = tuple(c for g in GROUPS.values() for c in g)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CIFAR_SIDE, IMAGENET_SIDE = 32, 224


@dataclass(frozen=True)
class Table:
    """One corruption's parameters: five severities per table, and how each one scales.

    ``scale[k]`` is the power of the image side a parameter grows with: 0 (a level: a noise
    std, a blend weight), 1 (a length in pixels), 2 (the elastic ``alpha``).
    """

    cifar: tuple[tuple[float, ...], ...]
    imagenet: tuple[tuple[float, ...], ...]
    scale: tuple[int, ...]


def _t(*rows) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in (r if isinstance(r, tuple) else (r,))) for r in rows)


_E = 244 / 224  # the ImageNet elastic table is written in multiples of 244 on 224 px images

TABLES: dict[str, Table] = {
    "gaussian_noise": Table(
        _t(0.04, 0.06, 0.08, 0.09, 0.10), _t(0.08, 0.12, 0.18, 0.26, 0.38), (0,)
    ),
    "shot_noise": Table(_t(500, 250, 100, 75, 50), _t(60, 25, 12, 5, 3), (0,)),
    "impulse_noise": Table(
        _t(0.01, 0.02, 0.03, 0.05, 0.07), _t(0.03, 0.06, 0.09, 0.17, 0.27), (0,)
    ),
    # (disk radius px, anti-alias sigma)
    "defocus_blur": Table(
        _t((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        _t((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        (1, 0),
    ),
    # (sigma px, max shift px, iterations)
    "glass_blur": Table(
        _t((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        _t((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        (1, 1, 0),
    ),
    # (radius px, sigma px)
    "motion_blur": Table(
        _t((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        _t((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        (1, 1),
    ),
    # (largest zoom, zoom step): the zooms 1, 1 + step, ... up to the largest
    "zoom_blur": Table(
        _t((1.05, 0.01), (1.10, 0.01), (1.15, 0.01), (1.20, 0.01), (1.25, 0.01)),
        _t((1.10, 0.01), (1.15, 0.01), (1.20, 0.02), (1.24, 0.02), (1.30, 0.03)),
        (0, 0),
    ),
    # (mean, std, zoom, threshold, blur radius px, blur sigma px, image weight)
    "snow": Table(
        _t(
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        _t(
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        (0, 0, 0, 0, 1, 1, 0),
    ),
    # (image weight, frost weight)
    "frost": Table(
        _t((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        _t((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        (0, 0),
    ),
    # (fog amplitude, fractal wibble decay)
    "fog": Table(
        _t((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        _t((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        (0, 0),
    ),
    "brightness": Table(_t(0.05, 0.1, 0.15, 0.2, 0.3), _t(0.1, 0.2, 0.3, 0.4, 0.5), (0,)),
    "contrast": Table(_t(0.75, 0.5, 0.4, 0.3, 0.15), _t(0.4, 0.3, 0.2, 0.1, 0.05), (0,)),
    # (alpha, sigma px, affine shift px)
    "elastic_transform": Table(
        _t(
            (32 * 0, 32 * 0, 32 * 0.08),
            (32 * 0.05, 32 * 0.2, 32 * 0.07),
            (32 * 0.08, 32 * 0.06, 32 * 0.06),
            (32 * 0.1, 32 * 0.04, 32 * 0.05),
            (32 * 0.1, 32 * 0.03, 32 * 0.03),
        ),
        _t(
            (224 * _E * 2, 224 * _E * 0.7, 224 * _E * 0.1),
            (224 * _E * 2, 224 * _E * 0.08, 224 * _E * 0.2),
            (224 * _E * 0.05, 224 * _E * 0.01, 224 * _E * 0.02),
            (224 * _E * 0.07, 224 * _E * 0.01, 224 * _E * 0.02),
            (224 * _E * 0.12, 224 * _E * 0.01, 224 * _E * 0.02),
        ),
        (2, 1, 1),
    ),
    "pixelate": Table(_t(0.95, 0.9, 0.85, 0.75, 0.65), _t(0.6, 0.5, 0.4, 0.3, 0.25), (0,)),
    "jpeg_compression": Table(_t(80, 65, 58, 50, 40), _t(25, 18, 15, 10, 7), (0,)),
}


def check(name: str, severity: int | None = None) -> None:
    """Raise a one-line :class:`ConfigError` for an unknown corruption or severity."""
    if name not in TABLES:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity is not None and severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1-5, got {severity!r}")


def params(name: str, severity: int, side: int) -> tuple[float, ...]:
    """The parameters of ``name`` at ``severity`` for images of side ``side`` (module doc)."""
    check(name, severity)
    table = TABLES[name]
    a, b = table.cifar[severity - 1], table.imagenet[severity - 1]
    t = min(max(math.log(side / CIFAR_SIDE) / math.log(IMAGENET_SIDE / CIFAR_SIDE), 0.0), 1.0)
    out = []
    for pa, pb, k in zip(a, b, table.scale):
        ra, rb = pa / CIFAR_SIDE**k, pb / IMAGENET_SIDE**k  # relative to each table's side
        out.append(((1 - t) * ra + t * rb) * side**k)
    return tuple(out)


# ---- helpers -----------------------------------------------------------------------------------


def _uniform(shape, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``(B, 1, H, W)`` (cv2's RGB2GRAY); a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(1, keepdim=True)


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """skimage ``gaussian(sigma, mode='nearest', truncate=4)`` per channel."""
    if sigma <= 0:
        return x
    from kornia.filters import gaussian_blur2d

    k = 2 * math.ceil(4 * sigma) + 1
    k = min(k, 2 * (min(x.shape[-2:]) - 1) + 1)  # a replicate pad must be < the side
    return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")


def _filter(x: torch.Tensor, kernel: torch.Tensor, border: str) -> torch.Tensor:
    from kornia.filters import filter2d

    return filter2d(x, kernel.to(x.device, x.dtype), border_type=border)


def _zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre ``1/factor`` of ``x`` enlarged back to full size, bilinear (clipped zoom)."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _motion_kernels(radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's one-sided motion-blur kernel per angle (degrees): ``(B, 2W+1, 2W+1)``."""
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    w = torch.exp(-(i**2) / (2 * sigma**2))
    w = w / w.sum()
    rad = angles.double() * math.pi / 180
    # ImageMagick: offset i = (round(i cos a), round(i sin a)); the sample is x[p + offset]
    dx = torch.round(i[None] * torch.cos(rad)[:, None]).long()
    dy = torch.round(i[None] * torch.sin(rad)[:, None]).long()
    half = width - 1
    k = torch.zeros(len(angles), 2 * half + 1, 2 * half + 1, dtype=torch.float64)
    rows = torch.arange(len(angles))[:, None].expand_as(dx)
    k.index_put_((rows, half + dy, half + dx), w[None].expand_as(dx), accumulate=True)
    return k


def _motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor):
    kernels = _motion_kernels(max(radius, 0.0), max(sigma, 1e-3), angles)
    half = kernels.shape[-1] // 2
    if half >= min(x.shape[-2:]):  # the replicate pad must stay below the side
        keep = min(x.shape[-2:]) - 1
        kernels = kernels[:, half - keep : half + keep + 1, half - keep : half + keep + 1]
        kernels = kernels / kernels.sum((1, 2), keepdim=True)
    # kornia's filter2d correlates, with a batch of kernels one per image
    return _filter(x, kernels, "replicate")


def plasma_fractal(b: int, side: int, decay: float, g: torch.Generator) -> torch.Tensor:
    """Diamond-square height maps in ``[0, 1]``, ``(b, n, n)`` with ``n`` the power of two
    ``>= side`` (the released ``plasma_fractal``, batched)."""
    n = 1 << max(math.ceil(math.log2(max(side, 2))), 1)
    m = torch.zeros(b, n, n, dtype=torch.float64)
    step, wibble = n, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * _uniform(a.shape, g, -wibble, wibble)

    while step >= 2:
        h = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, h::step, h::step] = wibbled(square)
        dr, ul = m[:, h::step, h::step], m[:, 0::step, 0::step]
        m[:, 0::step, h::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, h::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)


def frost_layer(b: int, c: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """A synthetic frost texture ``(b, c, h, w)`` in ``[0, 1]`` (module doc: ridged plasma)."""
    side = max(h, w)
    layers = []
    for decay, power in ((1.6, 6.0), (2.2, 3.0)):
        p = plasma_fractal(b, side, decay, g)[:, :h, :w]
        layers.append((1 - (2 * p - 1).abs()) ** power)
    frost = 0.65 * layers[0] + 0.35 * layers[1]
    frost = frost - frost.amin((1, 2), keepdim=True)
    frost = frost / frost.amax((1, 2), keepdim=True).clamp_min(1e-12)
    frost = frost[:, None]
    if c == 3:  # frost photographs are light blue: less red than blue
        frost = frost * torch.tensor([0.80, 0.90, 1.0], dtype=frost.dtype)[None, :, None, None]
    return frost.expand(b, c, h, w)


def _smooth_field(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian of std ``sigma`` px over the last two dims, in the Fourier domain."""
    if sigma <= 0:
        return field
    h, w = field.shape[-2:]
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, dtype=torch.float64)
    gain = torch.exp(-2 * math.pi**2 * sigma**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(field) * gain).real


def _affine_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 3)`` affine maps with ``M @ [x, y, 1] = dst`` for three point pairs (cv2's
    ``getAffineTransform``), points ``(B, 3, 2)`` as ``(x, y)``."""
    ones = torch.ones(*src.shape[:-1], 1, dtype=src.dtype)
    a = torch.cat([src, ones], -1)  # (B, 3, 3)
    return torch.linalg.solve(a, dst).transpose(1, 2)


# ---- the corruptions ---------------------------------------------------------------------------


def gaussian_noise(x, p, g):
    return x + p[0] * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)


def shot_noise(x, p, g):
    rate = (x.double().cpu() * p[0]).clamp_min(0)
    return (torch.poisson(rate, generator=g) / p[0]).to(x)


def impulse_noise(x, p, g):
    """skimage's ``s&p``: a share ``amount`` of the values (pixels and channels) become 0 or
    1, half each."""
    hit = _uniform(x.shape, g) < p[0]
    salt = _uniform(x.shape, g) < 0.5
    return torch.where(hit.to(x.device), salt.to(x), x)


def disk_kernel(radius: float, alias: float) -> torch.Tensor:
    """The defocus kernel: a disk of ``radius`` px on a 17 x 17 grid (wider past radius 8),
    each pixel weighted by the share of it inside the circle (8 x 8 subsamples), then the
    released code's anti-alias blur (``cv2.GaussianBlur``, ksize 3, or 5 past radius 8)."""
    half = 8 if radius <= 8 else math.ceil(radius)
    sub = (torch.arange(8, dtype=torch.float64) + 0.5) / 8 - 0.5
    r = torch.arange(-half, half + 1, dtype=torch.float64)
    pos = (r[:, None] + sub[None, :]).reshape(-1)  # subsample centres along one axis
    inside = (pos[:, None] ** 2 + pos[None, :] ** 2) <= radius**2
    n = len(r)
    disk = inside.double().reshape(n, 8, n, 8).mean((1, 3))
    if disk.sum() == 0:  # a radius below a subsample: the centre alone
        disk[half, half] = 1.0
    disk = disk / disk.sum()
    if alias > 0:
        from kornia.filters import gaussian_blur2d

        k = 3 if radius <= 8 else 5
        disk = gaussian_blur2d(disk[None, None], (k, k), (alias, alias), border_type="reflect")
        disk = disk[0, 0]
    return disk / disk.sum()


def defocus_blur(x, p, g):
    disk = disk_kernel(*p)
    half = disk.shape[-1] // 2
    keep = min(half, min(x.shape[-2:]) - 1)  # reflect padding must stay below the side
    disk = disk[half - keep : half + keep + 1, half - keep : half + keep + 1]
    return _filter(x, (disk / disk.sum())[None], "reflect")


def glass_blur(x, p, g):
    sigma, shift, iterations = p[0], max(int(round(p[1])), 1), max(int(round(p[2])), 1)
    b, c, h, w = x.shape
    y = torch.floor(_gaussian(x, sigma).clamp(0, 1) * 255) / 255  # the released code's uint8
    steps = [(i, j) for i in range(h - shift, shift, -1) for j in range(w - shift, shift, -1)]
    if steps:
        moves = torch.randint(-shift, shift, (iterations, len(steps), 2, b), generator=g).numpy()
        flat = y.permute(0, 2, 3, 1).reshape(b, h * w, c).cpu().numpy().copy()
        rows = np.arange(b)
        for it in range(iterations):  # the released sequential sweep; numpy indexing is fast
            for k, (i, j) in enumerate(steps):
                here = i * w + j
                there = (i + moves[it, k, 1]) * w + (j + moves[it, k, 0])
                a = flat[rows, here].copy()
                flat[rows, here] = flat[rows, there]
                flat[rows, there] = a
        y = torch.from_numpy(flat).reshape(b, h, w, c).permute(0, 3, 1, 2).to(x)
    return _gaussian(y, sigma)


def motion_blur(x, p, g):
    angles = _uniform((x.shape[0],), g, -45, 45)
    return _motion_blur(x, p[0], p[1], angles)


def zoom_blur(x, p, g):
    largest, step = p
    count = int(math.floor((largest - 1) / step + 1e-6)) + 1
    out = x.clone()
    for k in range(count):
        out = out + _zoom(x, 1 + k * step)
    return out / (count + 1)


def snow(x, p, g):
    mean, std, zoom, threshold, radius, sigma, weight = p
    b, _, h, w = x.shape
    layer = (torch.randn((b, 1, h, w), generator=g, dtype=torch.float64) * std + mean).to(x)
    layer = _zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    layer = _motion_blur(layer, radius, sigma, _uniform((b,), g, -135, -45))
    x = weight * x + (1 - weight) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def frost(x, p, g):
    b, c, h, w = x.shape
    return p[0] * x + p[1] * frost_layer(b, c, h, w, g).to(x)


def fog(x, p, g):
    b, _, h, w = x.shape
    amp = p[0]
    top = x.amax((1, 2, 3), keepdim=True)
    haze = plasma_fractal(b, max(h, w), p[1], g)[:, None, :h, :w].to(x)
    return (x + amp * haze) * top / (top + amp)


def brightness(x, p, g):
    """``V += c`` in HSV (hue and saturation kept): every channel scales by ``V'/V``; a black
    pixel (no hue) becomes grey ``V'``."""
    v = x.amax(1, keepdim=True)
    v2 = (v + p[0]).clamp(0, 1)
    return torch.where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x))


def contrast(x, p, g):
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * p[0] + mean


def elastic_fields(
    b: int, h: int, w: int, p: tuple[float, ...], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The elastic transform's random parts: the affine maps ``(b, 2, 3)`` (three points
    moved by up to ``shift`` px, cv2's ``getAffineTransform``) and the displacement fields
    ``dx, dy`` ``(b, h, w)`` (uniform noise smoothed with ``sigma`` px, times ``alpha``)."""
    alpha, sigma, shift = p
    centre = torch.tensor([w // 2, h // 2], dtype=torch.float64)
    size = min(h, w) // 3
    corner = torch.stack([centre[0] + size, centre[1] - size])
    src = torch.stack([centre + size, corner, centre - size])[None].repeat(b, 1, 1)
    dst = src + _uniform(src.shape, g, -shift, shift)
    m = _affine_from_points(src, dst)  # image point (x, y) -> warped point
    dx = _smooth_field(_uniform((b, h, w), g, -1, 1), sigma) * alpha
    dy = _smooth_field(_uniform((b, h, w), g, -1, 1), sigma) * alpha
    return m, dx, dy


def elastic_transform(x, p, g):
    """A random affine warp, then a smooth random displacement, in one bilinear resampling
    (the released code resamples twice), reflecting at the borders."""
    b, _, h, w = x.shape
    m, dx, dy = elastic_fields(b, h, w, p, g)
    # out(y, x) = warped(y + dy, x + dx) = image(M^-1 (x + dx, y + dy))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    px, py = xs[None] + dx, ys[None] + dy
    full = torch.cat([m, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2, :, None, None]
    sx = inv[:, 0, 0] * px + inv[:, 0, 1] * py + inv[:, 0, 2]
    sy = inv[:, 1, 0] * px + inv[:, 1, 1] * py + inv[:, 1, 2]
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1)
    return F.grid_sample(
        x, grid.to(x), mode="bilinear", padding_mode="reflection", align_corners=True
    )


def box_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of Pillow's ``Image.BOX`` resampling along one axis
    (``precompute_coeffs`` of Pillow's Resample.c: a box of ``max(n_in / n_out, 1)`` input
    pixels centred on each output pixel, inputs counted by their centres, normalised)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for i in range(lo, hi):
            if -0.5 <= (i - centre + 0.5) / fscale < 0.5:
                m[o, i] = 1.0
        m[o] /= m[o].sum().clamp_min(1e-12)
    return m


def _box_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    rows = box_resize_matrix(x.shape[-2], h).to(x)
    cols = box_resize_matrix(x.shape[-1], w).to(x)
    return rows @ x @ cols.T


def pixelate(x, p, g):
    """Pillow's BOX resize down to ``int(side * c)`` and back (as the released code), as two
    separable matrix products (Pillow also rounds to 8 bits between its passes)."""
    h, w = x.shape[-2:]
    small = _box_resize(x, max(int(h * p[0]), 1), max(int(w * p[0]), 1))
    return _box_resize(small, h, w)


def jpeg_compression(x, p, g):
    """Pillow's JPEG encoder at quality ``c``, image by image (as the released code)."""
    from PIL import Image

    quality = int(round(p[0]))
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1)
    return torch.from_numpy(out).to(x.device, x.dtype) / 255


OPS: dict[str, Callable[[torch.Tensor, tuple[float, ...], torch.Generator], torch.Tensor]] = {
    name: globals()[name] for name in CORRUPTIONS
}


def corrupt(
    x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` (float in ``[0, 1]``, ``(B, C, H, W)``, C = 1 or 3) corrupted by ``name`` at
    ``severity`` (1-5), clipped to ``[0, 1]``; random numbers from ``generator`` (CPU)."""
    check(name, severity)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"corrupt expects (B, 1 or 3, H, W) images, got {tuple(x.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    p = params(name, severity, max(x.shape[-2:]))
    return OPS[name](x, p, g).clamp(0, 1).to(x.dtype)


def corrupt_uint8(
    images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """:func:`corrupt` on uint8 images, rounded back to uint8 (the released datasets' type)."""
    x = images.to(torch.float32) / 255
    return (corrupt(x, name, severity, generator) * 255).round().to(torch.uint8)


def seed_for(seed: int, name: str, severity: int) -> int:
    """The generator seed of one (corruption, severity): independent of the others, so a
    pair's images do not depend on which other pairs run or on the rank computing it."""
    return (seed * 1_000_003 + CORRUPTIONS.index(name) * 101 + severity) % 2**63


__all__ = [
    "CORRUPTIONS",
    "GROUPS",
    "SEVERITIES",
    "TABLES",
    "corrupt",
    "corrupt_uint8",
    "params",
    "plasma_fractal",
    "seed_for",
]
