"""Lesion study: remove one residual unit at a time (Park & Kim 2022, §4.2; spec §7.1).

Each removable unit (not the stem, the head or a unit that changes the spatial size) is
replaced by its skip path and the test accuracy is measured again. ΔAccuracy against depth
shows which units matter: in multi-stage models the MSAs at the end of a stage matter most.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models import blocks, replace_unit
from .base import EvalData, Result, accuracy, config_dict, unit_table
from .sharding import map_items


@dataclass(frozen=True)
class Config:
    """Lesion-study settings."""

    num_images: int = 2000  # test images per lesion
    batch_size: int = 256  # images per forward pass
    # identity: the unit is replaced by its skip path (units whose output is the stream);
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
    handle = block.module.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    try:
        yield model
    finally:
        handle.remove()


@torch.no_grad()
def run(model: torch.nn.Module, data: EvalData, cfg: Config = Config(), *, spec=None) -> Result:
    """Accuracy change (percentage points) when each removable unit is taken out.

    Under torchrun the lesions (and the intact pass) are sharded over the ranks; every rank
    returns the whole result.

    Returns:
        Result ``lesion``: ``values.units``, ``values.delta_acc`` (``None`` for units that
        cannot be removed), ``values.base_acc`` (%).
    """
    units = [b for b in blocks(model, spec) if b.kind != "head"]
    lesions = [k for k, b in enumerate(units) if removable(b)]
    if not lesions:
        raise ConfigError("lesion: the model has no removable residual units")

    def acc(k: int | None) -> float:
        """Accuracy (%) without unit ``k``; ``None``: the intact model."""
        batches = data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images)
        if k is None:
            return 100.0 * accuracy(model, batches)
        with _removed(model, units[k], cfg.mode):
            return 100.0 * accuracy(model, batches)

    was_training = model.training
    model.eval()
    try:
        accs = map_items([None, *lesions], acc)
    finally:
        model.train(was_training)
    base = accs[None]
    deltas = [accs[k] - base if k in accs else None for k in range(len(units))]
    return Result(
        "lesion",
        values={
            "units": unit_table(units),
            "delta_acc": deltas,
            "base_acc": base,
            "num_images": min(cfg.num_images, len(data)),
        },
        config=config_dict(cfg),
    )
