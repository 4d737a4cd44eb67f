"""Feature-map variance (Park & Kim 2022, Fig 9, D.1; ``docs/methods/variance.md``).

For a feature map ``x`` of shape ``(b, c, h, w)``: the unbiased variance over the ``h*w``
spatial positions (tokens) of each channel of each sample, averaged over channels and
samples, with no normalisation by feature scale. MSAs reduce it (they aggregate, i.e.
ensemble, feature maps) and Convs/MLPs raise it, the paper finds.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    return _variance_sum(x) / (x.shape[0] * x.shape[1])


def _variance_sum(x: torch.Tensor) -> float:
    if x.ndim != 4:
        raise ValueError(f"expected a (b, c, h, w) map, got shape {tuple(x.shape)}")
    if x.shape[-1] * x.shape[-2] < 2:
        return float("nan")  # one position: no spatial variance
    return x.detach().double().flatten(2).var(dim=2, unbiased=True).sum().item()


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Variance of every unit's feature map, averaged over ``cfg.num_images`` test images.

    Under torchrun the batches are sharded over the ranks and the sums added up.

    Returns:
        Result ``variance``: ``values.units`` and ``values.variance`` (one float per unit).
    """
    units = feature_units(model, ctx.spec)
    sums: list[float] = []
    counts: list[int] = []
    with eval_mode(model):
        for x, _ in data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images, sharded=True):
            for i, m in enumerate(feature_maps(model, x, ctx.spec)):
                if i == len(sums):
                    sums.append(0.0)
                    counts.append(0)
                sums[i] += _variance_sum(m)
                counts[i] += m.shape[0] * m.shape[1]
    sums, counts = sum_over_ranks(sums), sum_over_ranks(counts)
    return Result(
        "variance",
        values={
            Keys.UNITS: unit_table(units),
            Keys.VARIANCE: [s / n for s, n in zip(sums, counts)],
        },
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
