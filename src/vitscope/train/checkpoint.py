"""Checkpoints that resume exactly: model, optimizer, epoch, best accuracy and RNG states.

The learning rate is a pure function of (epoch, step) (see :func:`~vitscope.train.loop.lr_at`)
and the data order is seeded per epoch, so these states are all a resume needs to reproduce
an uninterrupted run bit for bit (on the same device and thread count).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import VitscopeError
from ..io import atomic_torch_save


def rng_state() -> dict:
    """The global RNG states that augmentation, dropout and drop-path draw from."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int,
    **extra: Any,
) -> Path:
    """Atomically save a checkpoint; ``epoch`` counts the epochs completed."""
    obj = {"model": model.state_dict(), "epoch": epoch, "rng": rng_state(), **extra}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    return atomic_torch_save(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with a one-line error for a missing or corrupt file."""
    p = Path(path)
    if not p.is_file():
        raise VitscopeError(f"checkpoint {p} does not exist")
    try:
        return torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise VitscopeError(
            f"checkpoint {p} is unreadable ({type(e).__name__}); delete it and resume from another"
        ) from None
