"""Lesion study: remove one residual unit at a time (Park & Kim 2022, §4.2;
``docs/methods/lesion.md``).

Each removable unit (not the stem, the head or a unit that changes the spatial size) is
replaced by its skip path and the test accuracy is measured again. ΔAccuracy against depth
shows which units matter: in multi-stage models the MSAs at the end of a stage matter most.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..models import replace_unit
from ..models.blocks import zero_output
from ..results import Result, config_dict
from .base import EvalData, correct, eval_mode, feature_units, unit_table
from .keys import LesionKeys as Keys
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec


@dataclass(frozen=True)
class Config:
    """Lesion-study settings."""

    num_images: int = 2000  # test images per lesion
    batch_size: int = 256  # images per forward pass
    # identity: the unit is taken out of the stream (its residual branch zeroed, or the unit
    # replaced by its skip path);
    # zero: the unit's output is zeroed (user specs that name residual *branches*, e.g. attn)
    mode: str = "identity"
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("lesion.num_images and lesion.batch_size must be >= 1")
        if self.mode not in ("identity", "zero"):
            raise ConfigError(f"lesion.mode must be identity or zero, got {self.mode!r}")


def removable(block) -> bool:
    """Units the study may remove: residual units that keep the spatial size."""
    return block.kind not in ("stem", "head") and not block.downsample


@contextmanager
def _removed(model: torch.nn.Module, block, mode: str):
    """The model with ``block`` taken out: skip path in its place, or its output zeroed."""
    if mode == "identity":
        with replace_unit(model, block):
            yield model
        return
    with zero_output(block.module):
        yield model


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Accuracy change (percentage points) when each removable unit is taken out.

    Under torchrun the lesions (and the intact pass) are sharded over the ranks; every rank
    returns the whole result.

    Returns:
        Result ``lesion``: ``values.units``, ``values.delta_acc`` (``None`` for units that
        cannot be removed), ``values.base_acc`` (%), ``values.removed`` (the unit of each
        lesion); array ``correct`` (uint8, per test image: row 0 intact, row j without unit
        ``removed[j - 1]``), which the report resamples.
    """
    units = feature_units(model, ctx.spec)
    lesions = [k for k, b in enumerate(units) if removable(b)]
    if not lesions:
        raise ConfigError("lesion: the model has no removable residual units")

    def hits(k: int | None) -> np.ndarray:
        """Per test image, whether it is right without unit ``k``; ``None``: intact."""
        batches = data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images)
        if k is None:
            return correct(model, batches)
        with _removed(model, units[k], cfg.mode):
            return correct(model, batches)

    with eval_mode(model):
        got = map_items([None, *lesions], hits)
    table = np.stack([got[None], *(got[k] for k in lesions)])
    accs = 100.0 * table.mean(axis=1)
    base = float(accs[0])
    row = {k: j + 1 for j, k in enumerate(lesions)}
    deltas = [float(accs[row[k]]) - base if k in row else None for k in range(len(units))]
    return Result(
        "lesion",
        values={
            Keys.UNITS: unit_table(units),
            Keys.DELTA_ACC: deltas,
            Keys.BASE_ACC: base,
            Keys.NUM_IMAGES: data.count(cfg.num_images),
            Keys.REMOVED: lesions,
        },
        arrays={Keys.CORRECT: table.astype(np.uint8)},
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """Intact accuracy and the largest accuracy drop of one lesion."""
    deltas = [d for d in result.values[Keys.DELTA_ACC] if d is not None]
    return {
        "intact accuracy (%)": result.values[Keys.BASE_ACC],
        "largest drop (points)": min(deltas),
    }


ANALYSIS = Analysis(
    name="lesion",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("lesion", "vitscope.report.figures:lesion"),),
    summary=summary,
    compare="vitscope.report.compare:lesion",
    keys=Keys,
    description="Lesion study: accuracy without each residual unit (§4.2)",
    order=40,
)
