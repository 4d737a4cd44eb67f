"""Checkpoints that resume exactly: model, optimizer, epoch, best accuracy and RNG states.

The learning rate is a pure function of (epoch, step) (see :func:`~vitscope.train.loop.lr_at`)
and the data order is seeded per epoch, so these states are all a resume needs to reproduce
an uninterrupted run bit for bit (on the same device and thread count).

Under torchrun every rank draws its own augmentation, so ``last.pt`` also holds every rank's
RNG state (``rng_ranks``, gathered by :func:`gather_rng_states`; rank 0 writes) and each
rank restores its own (:func:`restore_rng_states`). ``rng`` alone is rank 0's.

Every file is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, so a checkpoint that would run code when unpickled is refused with one line
and nothing of it runs. vitscope writes nothing else (the numpy RNG state is saved as a
tensor); the numpy array globals are allowed so that checkpoints written before that still
load. ``.safetensors`` files (model weights) are read with the ``safetensors`` package.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import distributed
from ..errors import VitscopeError
from ..io import atomic_torch_save, atomic_write


def rng_state() -> dict:
    """The global RNG states that augmentation, dropout and drop-path draw from.

    Only types a weights-only load accepts: numpy's key array is stored as a tensor.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: this rank's
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (its tensors may have been loaded onto a device)."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
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


# data-only globals of numpy arrays, in checkpoints written before the RNG state was a tensor
_NUMPY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
_RECONSTRUCT = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
_NUMPY_GLOBALS.append(_RECONSTRUCT._reconstruct)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely: tensors and plain data only, never code.

    A ``.safetensors`` file gives its tensors as a state dict. Anything else is read with
    ``torch.load(weights_only=True)``; a file whose pickle names other globals (a class, a
    function: what a malicious file uses to run code) is refused with one line naming them.
    """
    p = Path(path)
    if not p.is_file():
        raise VitscopeError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        return load_safetensors(p, map_location)
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise VitscopeError(_refusal(p)) from None
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise VitscopeError(
            f"checkpoint {p} is unreadable ({type(e).__name__}); delete it and resume from another"
        ) from None


def _refusal(p: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception:  # noqa: BLE001 - the listing itself may fail on a torn file
        names = []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _NUMPY_GLOBALS}
    names = [n for n in names if n not in allowed] or ["unknown"]
    return (
        f"checkpoint {p} is refused: its pickle names Python objects ({', '.join(names[:3])}), "
        "which could run code; vitscope loads tensors only (save a state_dict or .safetensors)"
    )


def load_safetensors(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The tensors of a ``.safetensors`` file (needs ``pip install 'vitscope[safetensors]'``)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise VitscopeError(
            f"{path} is a .safetensors file: install the extra, pip install 'vitscope[safetensors]'"
        ) from None
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise VitscopeError(f"{path} is not a readable .safetensors file ({e})") from None


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict as ``.safetensors``, atomically (contiguous copies of shared tensors)."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise VitscopeError(
            "writing .safetensors needs pip install 'vitscope[safetensors]'"
        ) from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
