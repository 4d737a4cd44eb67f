"""torchrun / DDP helpers; a single process when not launched by torchrun.

Every long command calls :func:`init` first (the CLI through :func:`session`). Under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins PyTorch's process group — gloo
for CPU tensors, plus NCCL for CUDA tensors where CUDA is available — and pins the rank to
``cuda:LOCAL_RANK``; without torchrun every helper below degrades to the single-process
answer (rank 0 of 1), so library code calls them unconditionally.

Sharding is round-robin (:func:`shard`): item ``i`` of a list belongs to rank
``i % world_size``. Rank 0 alone writes result files (:func:`is_main`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: how long a collective waits for a missing rank before failing (a rank that died)
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("VITSCOPE_DIST_TIMEOUT_MIN", "30")))


def launched() -> bool:
    """Whether this process was started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def init(device: str | torch.device = "cpu") -> torch.device:
    """Join the torchrun process group once (if launched) and return this rank's device.

    ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun. Where CUDA is available the group
    serves both kinds of tensor (``cpu:gloo,cuda:nccl``), so the device the first caller
    named does not constrain later ones (the CLI joins before the config names a device);
    object collectives and barriers then go through gloo. Calling it again is harmless.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        from .errors import ConfigError

        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and launched() and dev.index is None:
        dev = torch.device("cuda", local_rank())
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available():
        torch.cuda.set_device(dev)
    if launched() and not active():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return dev


def shutdown() -> None:
    """Leave the process group (end of a command)."""
    if active():
        dist.destroy_process_group()


@contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[torch.device]:
    """:func:`init` on entry, :func:`shutdown` on exit (also on error): one CLI command."""
    try:
        yield init(device)
    finally:
        shutdown()


def barrier() -> None:
    if active():
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th one, starting at ``rank``."""
    return list(items)[rank() :: world_size()]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over ranks (a new tensor; the input is unchanged)."""
    out = values.clone()
    if active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (e.g. a model's buffers)."""
    if active():
        for t in tensors:
            dist.broadcast(t, src=src)


__all__ = [
    "TIMEOUT",
    "active",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_tensors",
    "gather_objects",
    "init",
    "is_main",
    "launched",
    "local_rank",
    "rank",
    "session",
    "shard",
    "shutdown",
    "world_size",
]
