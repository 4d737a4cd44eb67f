"""Robustness to band-limited random noise (Park & Kim 2022, Fig 2b; ``docs/methods/noise.md``).

Noise for a batch of normalised images ``x`` of shape ``(b, c, h, w)``:

1. random sign noise ``delta = eps * sign(N(0, I))``, per pixel and channel;
2. keep only the frequencies in a square annulus of the centred spectrum: L∞ frequency
   index ``rho = max(|k_y|, |k_x|)`` with ``int((f - s) h / 2π) <= rho < int((f + s) h / 2π)``
   (bin ``k`` is the frequency ``2πk/h``, so ``f = π`` reaches the edge), phase kept;
3. ``x_adv = x + Re(ifft2(mask * fft2(delta)))``, no clipping.

The paper's code builds the annulus from ones-squares of even side ``2 int(.)`` centred at
``h//2``, which covers one more bin on the negative side than on the positive one; here the
annulus is symmetric about DC (the same ``int(.)`` radii), so the masked spectrum stays
conjugate-symmetric, the noise is exactly real and its energy lies only inside the band.

ΔAccuracy = accuracy(noisy) - accuracy(clean), in percent, per band centre ``f``. Convs are
hurt most by high-frequency noise and ViTs by low-frequency noise, the paper finds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..results import Result, config_dict
from .base import EvalData, correct, eval_mode
from .keys import NoiseKeys as Keys
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec


@dataclass(frozen=True)
class Config:
    """Noise-robustness settings; frequencies are in units of π."""

    # band centres f/π
    frequencies: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    half_width: float = 0.05  # s/π: the paper's window w = 0.1π
    eps: float = 0.7  # sign-noise amplitude, normalised units (issue #44; repo default 0.007)
    num_images: int = 2000  # test images per frequency
    batch_size: int = 256  # images per forward pass
    seed: int = 0  # noise seed (the same noise for every model)
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if not self.frequencies or any(not 0 <= f <= 1 for f in self.frequencies):
            raise ConfigError(
                f"noise.frequencies must be in [0, 1] (units of π), got {list(self.frequencies)}"
            )
        if not 0 < self.half_width <= 1:
            raise ConfigError(f"noise.half_width must be in (0, 1], got {self.half_width}")
        if self.eps < 0 or self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("noise.eps must be >= 0 and noise.num_images, noise.batch_size >= 1")


def band_mask(h: int, w: int, f: float, s: float) -> torch.Tensor:
    """0/1 mask ``(h, w)``: the square annulus ``[f - s, f + s)`` (radians), centred spectrum."""
    inner_y, outer_y = (max(int(r * h / (2 * math.pi)), 0) for r in (f - s, f + s))
    inner_x, outer_x = (max(int(r * w / (2 * math.pi)), 0) for r in (f - s, f + s))
    ky = (torch.arange(h) - h // 2).abs()
    kx = (torch.arange(w) - w // 2).abs()
    # L∞ rings: inside the outer square and outside the inner one
    inside_outer = (ky[:, None] < outer_y) & (kx[None, :] < outer_x)
    inside_inner = (ky[:, None] < inner_y) & (kx[None, :] < inner_x)
    return (inside_outer & ~inside_inner).double()


def band_limited(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the frequencies of ``delta`` (``(..., h, w)``) where the centred ``mask`` is 1."""
    h, w = delta.shape[-2:]
    unshifted = torch.roll(mask.to(delta.device), shifts=(-(h // 2), -(w // 2)), dims=(0, 1))
    spectrum = torch.fft.fft2(delta.double()) * unshifted
    return torch.fft.ifft2(spectrum).real.to(delta.dtype)


def band_limited_noise(
    shape: tuple[int, ...],
    f: float,
    s: float,
    eps: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sign noise of amplitude ``eps`` restricted to the band ``[f - s, f + s)`` (radians)."""
    delta = eps * torch.randn(shape, generator=generator).sign()
    return band_limited(delta, band_mask(shape[-2], shape[-1], f, s))


@torch.no_grad()
def noisy_correct(
    model: torch.nn.Module, data: EvalData, cfg: Config, f: float | None
) -> np.ndarray:
    """Per test image, whether it is classified right with noise in the band centred on
    ``f`` (units of π); ``None``: clean.

    The noise of every band is drawn from its own generator seeded with ``cfg.seed``, so a
    band's result does not depend on the other bands (nor on the rank computing it).
    """
    batches = data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images)
    if f is None:
        return correct(model, batches)
    g = torch.Generator().manual_seed(cfg.seed)

    def perturb(x: torch.Tensor) -> torch.Tensor:
        noise = band_limited_noise(
            tuple(x.shape), f * math.pi, cfg.half_width * math.pi, cfg.eps, generator=g
        )
        return x + noise.to(x.device, x.dtype)

    return correct(model, batches, perturb)


def noisy_accuracy(model: torch.nn.Module, data: EvalData, cfg: Config, f: float | None) -> float:
    """Accuracy with noise in the band centred on ``f`` (units of π); ``None``: clean."""
    return float(noisy_correct(model, data, cfg, f).mean())


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """ΔAccuracy (percentage points) under band-limited noise for each band centre.

    Under torchrun the bands (and the clean pass) are sharded over the ranks; every rank
    returns the whole result.

    Returns:
        Result ``noise``: ``values.frequencies`` (units of π), ``values.delta_acc`` (%),
        ``values.clean_acc`` (%), ``values.band_bins`` (frequency bins kept per band); array
        ``correct`` (uint8, 1 + bands rows by test images: row 0 clean, row k band k), which
        the report resamples.
    """
    h, w = data.images.shape[-2:]
    bins = [
        int(band_mask(h, w, f * math.pi, cfg.half_width * math.pi).sum().item())
        for f in cfg.frequencies
    ]
    bands: list[float | None] = [None, *cfg.frequencies]  # item 0: the clean pass
    with eval_mode(model):
        hits = map_items(range(len(bands)), lambda k: noisy_correct(model, data, cfg, bands[k]))
    table = np.stack([hits[k] for k in range(len(bands))])
    acc = table.mean(axis=1)
    clean = float(acc[0])
    deltas = [100.0 * (float(acc[k]) - clean) for k in range(1, len(bands))]
    return Result(
        "noise",
        values={
            Keys.FREQUENCIES: list(cfg.frequencies),
            Keys.DELTA_ACC: deltas,
            Keys.CLEAN_ACC: 100.0 * clean,
            Keys.BAND_BINS: bins,
            Keys.NUM_IMAGES: data.count(cfg.num_images),
        },
        arrays={
            Keys.FREQUENCIES: np.asarray(cfg.frequencies),
            Keys.DELTA_ACC: np.asarray(deltas),
            Keys.CORRECT: table.astype(np.uint8),
        },
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """Clean accuracy and the worst accuracy change over the bands."""
    deltas = result.values[Keys.DELTA_ACC]
    return {"clean accuracy (%)": result.values[Keys.CLEAN_ACC], "worst ΔAcc (%)": min(deltas)}


ANALYSIS = Analysis(
    name="noise",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("noise", "vitscope.report.figures:noise"),),
    summary=summary,
    compare="vitscope.report.compare:noise",
    keys=Keys,
    description="Robustness to band-limited random noise (Fig 2b)",
    order=30,
)
