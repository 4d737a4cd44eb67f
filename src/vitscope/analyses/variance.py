"""Feature-map variance (Park & Kim 2022, Fig 9, D.1; ``docs/methods/variance.md``).

For a feature map ``x`` of shape ``(b, c, h, w)``: the unbiased variance over the ``h*w``
spatial positions (tokens) of each channel of each sample, averaged over channels and
samples, with no normalisation by feature scale. MSAs reduce it (they aggregate, i.e.
ensemble, feature maps) and Convs/MLPs raise it, the paper finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..models import feature_maps
from ..results import Result, config_dict
from .base import EvalData, eval_mode, feature_units, unit_table
from .keys import VarianceKeys as Keys
from .sharding import sum_over_ranks
from .spec import Analysis, Context, FigureSpec


@dataclass(frozen=True)
class Config:
    """Feature-map variance settings."""

    num_images: int = 256  # test images (the paper: one batch of 256)
    batch_size: int = 64  # images per forward pass
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("variance.num_images and variance.batch_size must be >= 1")


def featuremap_variance(x: torch.Tensor) -> float:
    """``mean_{b,c} Var_{h,w}(x[b, c])`` with the unbiased (``hw - 1``) estimator."""
    return float(variance_per_image(x).mean())


def variance_per_image(x: torch.Tensor) -> np.ndarray:
    """Each sample's channel mean of the unbiased spatial variance, ``(b,)`` float64 (NaN
    with a single position); their mean is :func:`featuremap_variance`."""
    if x.ndim != 4:
        raise ValueError(f"expected a (b, c, h, w) map, got shape {tuple(x.shape)}")
    if x.shape[-1] * x.shape[-2] < 2:
        return np.full(x.shape[0], np.nan)  # one position: no spatial variance
    return x.detach().double().flatten(2).var(dim=2, unbiased=True).mean(dim=1).cpu().numpy()


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Variance of every unit's feature map, averaged over ``cfg.num_images`` test images.

    Under torchrun the batches are sharded over the ranks and the per-image values gathered.

    Returns:
        Result ``variance``: ``values.units`` and ``values.variance`` (one float per unit:
        the mean over images, channels weighted alike); array ``variance_images`` (units x
        images, whose row means are ``variance``; the report resamples it).
    """
    units = feature_units(model, ctx.spec)
    n_images = data.count(cfg.num_images)
    per_image: list[np.ndarray] = []  # unit -> (n_images,), this rank's images filled in
    with eval_mode(model):
        batches = data.indexed_batches(
            cfg.batch_size, cfg.device, limit=cfg.num_images, sharded=True
        )
        for start, x, _ in batches:
            for i, m in enumerate(feature_maps(model, x, ctx.spec)):
                if i == len(per_image):
                    per_image.append(np.zeros(n_images))
                per_image[i][start : start + len(m)] = variance_per_image(m)
    per_image = sum_over_ranks(per_image)  # each image is filled on one rank, zero elsewhere
    table = np.stack(per_image)
    return Result(
        "variance",
        values={
            Keys.UNITS: unit_table(units),
            Keys.VARIANCE: [float(v) for v in table.mean(axis=1)],
            Keys.NUM_IMAGES: n_images,
        },
        arrays={Keys.VARIANCE_IMAGES: table.astype(np.float32)},
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """The variance of the last feature map and its largest value over depth."""
    v = [x for x in result.values[Keys.VARIANCE] if x == x]
    return {"variance, last unit": v[-1] if v else None, "variance, max": max(v) if v else None}


ANALYSIS = Analysis(
    name="variance",
    config=Config,
    run=run,
    uses_labels=False,
    split="test",
    figures=(FigureSpec("variance", "vitscope.report.figures:variance"),),
    summary=summary,
    compare="vitscope.report.compare:variance",
    keys=Keys,
    description="Feature-map variance per unit (Fig 9)",
    order=20,
)
