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

    Returns:
        Result ``lesion``: ``values.units``, ``values.delta_acc`` (``None`` for units that
        cannot be removed), ``values.base_acc`` (%).
    """
    units = [b for b in blocks(model, spec) if b.kind != "head"]
    was_training = model.training
    model.eval()

    def acc() -> float:
        return 100.0 * accuracy(
            model, data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images)
        )

    try:
        base = acc()
        deltas: list[float | None] = []
        for b in units:
            if not removable(b):
                deltas.append(None)
                continue
            with _removed(model, b, cfg.mode):
                deltas.append(acc() - base)
    finally:
        model.train(was_training)
    if all(d is None for d in deltas):
        raise ConfigError("lesion: the model has no removable residual units")
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
