"""Checkpoints that resume exactly: model, optimizer, epoch, best accuracy and RNG states.

The learning rate is a pure function of (epoch, step) (see :func:`~vitscope.train.loop.lr_at`)
and the data order is seeded per epoch, so these states are all a resume needs to reproduce
an uninterrupted run bit for bit (on the same device and thread count).

Under torchrun every rank draws its own augmentation, so ``last.pt`` also holds every rank's
RNG state (``rng_ranks``, gathered by :func:`gather_rng_states`; rank 0 writes) and each
rank restores its own (:func:`restore_rng_states`). ``rng`` alone is rank 0's.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import distributed
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
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: this rank's
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (its tensors may have been loaded onto a device)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints held every device's state
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda][: torch.cuda.device_count()])
        else:
            torch.cuda.set_rng_state(cuda.cpu())


def gather_rng_states() -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order (a collective: every rank calls it)."""
    return distributed.gather_objects(rng_state())


def restore_rng_states(ckpt: dict) -> bool:
    """Restore this rank's RNG states from ``ckpt``; False if it was saved by another world size.

    A checkpoint without ``rng_ranks`` comes from one process.
    """
    states = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(states) != distributed.world_size():
        return False
    set_rng_state(states[distributed.rank()])
    return True


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int,
    **extra: Any,
) -> Path:
    """Atomically save a checkpoint; ``epoch`` counts the epochs completed.

    ``model`` may be wrapped (DDP, ``torch.compile``): the plain module's ``state_dict`` is
    saved, so the file loads into a freshly built model. Call it on rank 0 only.
    """
    obj = {"model": unwrap(model).state_dict(), "epoch": epoch, "rng": rng_state(), **extra}
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
