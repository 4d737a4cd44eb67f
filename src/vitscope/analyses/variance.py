"""Feature-map variance (Park & Kim 2022, Fig 9, D.1; spec §3).

For a feature map ``x`` of shape ``(b, c, h, w)``: the unbiased variance over the ``h*w``
spatial positions (tokens) of each channel of each sample, averaged over channels and
samples, with no normalisation by feature scale. MSAs reduce it (they aggregate, i.e.
ensemble, feature maps) and Convs/MLPs raise it, the paper finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models import blocks, feature_maps
from .base import EvalData, Result, config_dict, unit_table
from .sharding import sum_over_ranks


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
    return _variance_sum(x) / (x.shape[0] * x.shape[1])


def _variance_sum(x: torch.Tensor) -> float:
    if x.ndim != 4:
        raise ValueError(f"expected a (b, c, h, w) map, got shape {tuple(x.shape)}")
    if x.shape[-1] * x.shape[-2] < 2:
        return float("nan")  # one position: no spatial variance
    return x.detach().double().flatten(2).var(dim=2, unbiased=True).sum().item()


@torch.no_grad()
def run(model: torch.nn.Module, data: EvalData, cfg: Config = Config(), *, spec=None) -> Result:
    """Variance of every unit's feature map, averaged over ``cfg.num_images`` test images.

    Under torchrun the batches are sharded over the ranks and the sums added up.

    Returns:
        Result ``variance``: ``values.units`` and ``values.variance`` (one float per unit).
    """
    units = [b for b in blocks(model, spec) if b.kind != "head"]
    sums: list[float] = []
    counts: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for x, _ in data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images, sharded=True):
            for i, m in enumerate(feature_maps(model, x, spec)):
                if i == len(sums):
                    sums.append(0.0)
                    counts.append(0)
                sums[i] += _variance_sum(m)
                counts[i] += m.shape[0] * m.shape[1]
    finally:
        model.train(was_training)
    sums, counts = sum_over_ranks(sums), sum_over_ranks(counts)
    return Result(
        "variance",
        values={"units": unit_table(units), "variance": [s / n for s, n in zip(sums, counts)]},
        config=config_dict(cfg),
    )
