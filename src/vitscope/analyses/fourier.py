"""Fourier analysis of feature maps (Park & Kim 2022, Fig 2a, Fig 8; ``docs/methods/fourier.md``).

For a feature map ``x`` of shape ``(b, c, h, w)``::

    L = log(|fft2(x)| + 1e-6)              # per sample and channel
    A = mean_{b,c} roll(L, (h//2, w//2))    # DC moved to (h//2, w//2); log first, then mean
    d = diag(A)[h//2:]                      # frequency (k, k), k = 0 .. ceil(h/2) - 1
    delta(k) = d[k] - d[0]                  # "ΔLog amplitude", relative to DC

The curve's last element, drawn at "1.0π", is the high-frequency value of the unit. MSAs
lower it (low-pass filters) and Convs raise it (high-pass filters), the paper finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..models import feature_maps
from ..results import Result, config_dict
from .base import EvalData, eval_mode, feature_units, unit_table
from .keys import FourierKeys as Keys
from .sharding import sum_over_ranks
from .spec import Analysis, Context, FigureSpec

EPS = 1e-6


@dataclass(frozen=True)
class Config:
    """Fourier analysis settings."""

    num_images: int = 256  # test images averaged over (the paper's notebook uses 1)
    batch_size: int = 64  # images per forward pass
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("fourier.num_images and fourier.batch_size must be >= 1")


def centred_log_amplitude(x: torch.Tensor) -> torch.Tensor:
    """``roll(log(|fft2(x)| + eps))`` of a ``(b, c, h, w)`` map, per sample and channel,
    float64, DC at ``(h//2, w//2)``."""
    if x.ndim != 4:
        raise ValueError(f"expected a (b, c, h, w) map, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    amp = torch.fft.fft2(x.detach().double()).abs()
    return torch.roll(torch.log(amp + EPS), shifts=(h // 2, w // 2), dims=(-2, -1))


def log_amplitude(x: torch.Tensor) -> torch.Tensor:
    """Centred log-amplitude spectrum, summed over batch and channels: ``(h, w)``, float64.

    Divide by ``b * c`` for the mean; a sum lets batches accumulate exactly.
    """
    return centred_log_amplitude(x).sum(dim=(0, 1))


def high_freq_per_image(logamp: torch.Tensor) -> torch.Tensor:
    """Each sample's ΔLog amplitude at 1.0π, ``(b,)``: the channel mean of the centred log
    amplitude at the highest diagonal frequency minus that at DC. Their mean over samples is
    the unit's ``high_freq`` exactly (both are means of the same terms)."""
    h, w = logamp.shape[-2:]
    k = min(h - h // 2, w - w // 2) - 1
    return (logamp[..., h // 2 + k, w // 2 + k] - logamp[..., h // 2, w // 2]).mean(dim=1)


def half_diagonal(a: torch.Tensor) -> torch.Tensor:
    """``diag(A)[h//2:]``: from DC (index 0) towards the highest frequency (k, k)."""
    h, w = a.shape
    n = min(h - h // 2, w - w // 2)
    i = torch.arange(n)
    return a[h // 2 + i, w // 2 + i]


def delta_log_amplitude(x: torch.Tensor) -> torch.Tensor:
    """ΔLog amplitude of a ``(b, c, h, w)`` feature map: 1-D, ``delta[0] = 0`` (DC).

    Element ``k`` is the mean log amplitude at frequency ``(k, k)`` minus that at DC, with
    frequencies on the normalised axis ``linspace(0, π, len)`` (``docs/methods/fourier.md``).
    """
    a = log_amplitude(x) / (x.shape[0] * x.shape[1])
    d = half_diagonal(a)
    return (d - d[0]).float()


def frequency_axis(n: int) -> np.ndarray:
    """Normalised frequencies of an ``n``-point curve, in units of π: ``linspace(0, 1, n)``."""
    return np.linspace(0.0, 1.0, n)


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """ΔLog-amplitude curves and 2-D log-amplitude maps of every unit of ``model``.

    Args:
        model: a vitscope model or any ``nn.Module`` (with ``ctx.spec``, see
            :func:`vitscope.blocks`).
        data: test images (``EvalData``).
        cfg: settings.
        ctx: ``ctx.spec``: block patterns for models that do not list their blocks.

    Under torchrun the batches are sharded over the ranks and the per-unit sums added up, so
    every rank returns the single-process result (up to summation order).

    Returns:
        Result ``fourier``: ``values.units`` (name, kind, depth, ...), ``values.high_freq``
        (Δ at 1.0π per unit), ``values.curves``; arrays ``map_<i>`` (mean log amplitude,
        centred), ``curve_<i>`` and ``high_freq_images`` (units x images: each image's Δ at
        1.0π, whose mean is ``high_freq``; the report resamples it).
    """
    units = feature_units(model, ctx.spec)
    n_images = data.count(cfg.num_images)
    sums: list[torch.Tensor] = []
    means: list[int] = []  # samples x channels behind each sum
    per_image: list[np.ndarray] = []  # unit -> (n_images,), this rank's images filled in
    with eval_mode(model):
        batches = data.indexed_batches(
            cfg.batch_size, cfg.device, limit=cfg.num_images, sharded=True
        )
        for start, x, _ in batches:
            for i, m in enumerate(feature_maps(model, x, ctx.spec)):
                logamp = centred_log_amplitude(m)
                s = logamp.sum(dim=(0, 1)).cpu()
                if i == len(sums):
                    sums.append(s)
                    means.append(m.shape[0] * m.shape[1])
                    per_image.append(np.zeros(n_images))
                else:
                    sums[i] += s
                    means[i] += m.shape[0] * m.shape[1]
                per_image[i][start : start + len(m)] = high_freq_per_image(logamp).cpu().numpy()
    sums, means = sum_over_ranks(sums), sum_over_ranks(means)
    per_image = sum_over_ranks(per_image)  # each image is filled on one rank, zero elsewhere
    arrays, curves, high = {}, [], []
    for i, (s, n) in enumerate(zip(sums, means)):
        a = s / n
        d = half_diagonal(a)
        curve = (d - d[0]).float().numpy()
        arrays[Keys.MAP.format(i)] = a.float().numpy()
        arrays[Keys.CURVE.format(i)] = curve
        curves.append(curve.tolist())
        high.append(float(curve[-1]))
    arrays[Keys.HIGH_FREQ_IMAGES] = np.stack(per_image).astype(np.float32)
    return Result(
        "fourier",
        values={
            Keys.UNITS: unit_table(units),
            Keys.HIGH_FREQ: high,
            Keys.CURVES: curves,
            Keys.NUM_IMAGES: n_images,
        },
        arrays=arrays,
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """Mean ΔLog amplitude at 1.0π over the MSA units and over the other units."""
    units, high = result.values[Keys.UNITS], result.values[Keys.HIGH_FREQ]
    msa = [h for u, h in zip(units, high) if u["kind"] == "msa"]
    other = [h for u, h in zip(units, high) if u["kind"] != "msa" and u["index"] > 0]
    return {
        "ΔLog amp. 1.0π, MSA units (mean)": float(np.mean(msa)) if msa else None,
        "ΔLog amp. 1.0π, other units (mean)": float(np.mean(other)) if other else None,
    }


ANALYSIS = Analysis(
    name="fourier",
    config=Config,
    run=run,
    uses_labels=False,
    split="test",
    figures=(
        FigureSpec("fourier_curves", "vitscope.report.figures:fourier_curves", (3.6, 4)),
        FigureSpec("fourier_high_freq", "vitscope.report.figures:high_freq"),
        FigureSpec("fourier_maps", "vitscope.report.figures:fourier_maps", (9, 3.5)),
    ),
    summary=summary,
    compare="vitscope.report.compare:fourier",
    keys=Keys,
    description="Fourier analysis of feature maps: ΔLog amplitude per unit (Fig 2a, 8)",
    order=10,
)
