"""One epoch of training and one pass of evaluation: short functions, no file I/O.

Data is held as one uint8 tensor on the training device (cifar10-airbench style); batches
are index slices of it, augmented on the device as whole batches. A streamed split (an image
folder too large for memory) comes from DataLoader workers instead, in the same global
batches (:mod:`vitscope.data.stream`).

Under torchrun every rank holds the whole data set and draws the same epoch permutation;
rank ``r`` trains on the ``r``-th contiguous slice of each global batch and DDP averages the
gradients, so each step is one process's step on the global batch (up to float rounding,
and BatchNorm statistics, which are per rank unless ``train.sync_bn``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed, preempt
from ..config import TrainConfig
from ..data.augment import normalize, soft_cross_entropy
from ..data.stream import read_images
from ..errors import VitscopeError
from .metrics import classification_metrics


class NonFiniteLossError(VitscopeError):
    """The training loss became NaN or infinite."""


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate of step ``step`` in epoch ``epoch`` (both 0-based),
    ``docs/methods/training.md``.

    Warm-up epochs come first and are extra: ``lr * t / (warmup_epochs * steps)`` per
    iteration, starting from 0. The main schedule is then stepped per epoch: cosine
    ``min + (lr - min) (1 + cos(pi e / E)) / 2``, multistep ``lr * gamma^#{m <= e}``, or constant.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch * steps_per_epoch + step) / (cfg.warmup_epochs * steps_per_epoch)
    e = epoch - cfg.warmup_epochs
    if cfg.schedule == "cosine":
        return (
            cfg.min_lr
            + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * e / max(cfg.epochs, 1))) / 2
        )
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(e >= m for m in cfg.milestones)
    return cfg.lr


def batch_indices(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    min_size: int = 2,
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``; a final batch under ``min_size`` is dropped (BatchNorm
    needs two images; under DDP, two per rank)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if shuffle and len(idx) < min_size <= n:
            break
        yield idx


#: x86 CPU flags of native bf16 arithmetic (/proc/cpuinfo): oneDNN's bf16 kernels run at
#: about twice the float32 rate there and are emulated (slower than float32) elsewhere
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no bf16
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (not by emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(_cpu_flags() & CPU_BF16_FLAGS)
    return False


def amp_of(device: torch.device | str, amp: str) -> str:
    """The autocast mode ``train.amp`` means on ``device``: ``auto`` resolves to ``bf16`` where
    :func:`native_bf16`, else ``none``; ``none`` and ``bf16`` are kept."""
    if amp == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "none"
    return amp


def autocast(device: torch.device, amp: str):
    """bf16 autocast on request (``auto``: :func:`amp_of`); a no-op context otherwise."""
    if amp_of(device, amp) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def memory_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batches: Iterator[torch.Tensor],
    *,
    world: int = 1,
    rank: int = 0,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(global batch size, uint8 images, labels)`` of this rank's slice of each global batch,
    sliced from the split held on the device."""
    for batch in batches:
        idx = batch.tensor_split(world)[rank].to(images.device, non_blocking=True)
        yield len(batch), images[idx], labels[idx]


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    epoch: int,
    generator: torch.Generator,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, float], None] | None = None,
    loader: Callable[[list[torch.Tensor]], Iterator] | None = None,
    resume: dict | None = None,
) -> dict:
    """Train ``model`` for one epoch over ``images`` (uint8, on the device).

    ``cfg.batch_size`` is the global batch; under torchrun this rank trains on its slice of
    it (``forward`` is then the DDP-wrapped model) and every returned number is global.
    ``loader(global batches)``, when given, yields this rank's ``(global size, uint8 images,
    labels)`` for each of the epoch's global index batches in place of slicing ``images``
    (a streamed split: :func:`vitscope.data.stream.train_batches`).

    Returns ``train_loss`` (the objective: soft-target CE with mixing and smoothing),
    ``train_nll`` (CE against the un-mixed labels on the same augmented batch),
    ``train_acc``, ``images``, ``seconds`` and ``amp`` (the autocast mode used: ``none`` or
    ``bf16``, ``train.amp=auto`` resolved by :func:`amp_of`). Raises
    :class:`NonFiniteLossError` on NaN/inf (on every rank at once: the check is on the
    all-reduced loss).

    Preemption (:mod:`vitscope.preempt`): when a stop signal has arrived on any rank, every
    rank stops after the same step (the flag rides on the loss's all-reduce) and the epoch
    returns early with ``stopped_at`` (steps done), ``sums`` (this rank's running
    statistics) and ``seconds``. ``resume`` (that dict, with the global RNG states restored
    as they were then) continues such an epoch at its next step, so the epoch ends as an
    uninterrupted one would.
    """
    forward = model if forward is None else forward  # (a compiled module has no bool())
    model.train()
    world, rank = distributed.world_size(), distributed.rank()
    n = len(labels)
    steps = math.ceil(n / cfg.batch_size)
    device = labels.device  # on the training device, like the in-memory images
    amp = amp_of(device, cfg.amp)  # train.amp=auto resolved once, not per step
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, nll, correct, images
    first, before = 0, 0.0
    if resume is not None:
        first, before = resume["stopped_at"], resume["seconds"]
        sums += torch.tensor(resume["sums"], dtype=torch.float64, device=device)
    batches = list(batch_indices(n, cfg.batch_size, generator=generator, min_size=2 * world))
    batches = batches[first:]  # the whole permutation is drawn, so the order is the same
    if loader is not None:
        steps_in = loader(batches)
    else:
        steps_in = memory_batches(images, labels, iter(batches), world=world, rank=rank)
    t0 = time.perf_counter()
    for step, (global_size, x_u8, y) in enumerate(steps_in, start=first):
        lr = lr_at(cfg, epoch, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, target = augment(x_u8, y)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = forward(x)
        logits = logits.float()
        loss = soft_cross_entropy(logits, target)  # mean over this rank's images
        b = len(y)
        # the global batch's mean loss (NaN on one rank makes it NaN on all) and whether any
        # rank was asked to stop, in one all-reduce
        flag = loss.new_tensor(float(preempt.requested()), dtype=torch.float64)
        reduced = distributed.all_reduce_sum(torch.stack([loss.detach().double() * b, flag]))
        batch_loss, stop = reduced.tolist()
        global_loss = batch_loss / global_size
        if not math.isfinite(global_loss):
            raise NonFiniteLossError(
                f"training loss became {global_loss} at epoch {epoch + 1} step {step + 1} "
                f"(lr={lr:.3g}); lower train.lr or set train.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; a ragged last batch gives ranks unequal shares,
        # so weight each rank's mean by its share to get the global batch's mean gradient
        weight = b * world / global_size
        (loss * weight if weight != 1 else loss).backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            nll = F.cross_entropy(logits, y, reduction="sum")
            correct = (logits.argmax(1) == y).sum()
            sums += torch.stack([loss.detach() * b, nll, correct.float(), nll.new_tensor(b)])
        if progress is not None:
            progress(global_size, global_loss)
        if stop and step + 1 < steps:  # (after the last step the epoch simply ends)
            return {
                "stopped_at": step + 1,
                "sums": sums.tolist(),  # this rank's own: each rank resumes its own
                "seconds": before + time.perf_counter() - t0,
            }
    loss_sum, nll_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
    seconds = before + time.perf_counter() - t0
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_nll": nll_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "images": int(seen),
        "seconds": seconds,
        "amp": amp,
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 512,
    amp: str = "none",
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits ``(N, K)`` (float32, on CPU) of ``model`` in eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else images.device
    out = []
    try:
        for start in range(0, len(images), batch_size):
            batch = read_images(images[start : start + batch_size])
            x = normalize(batch.to(device, non_blocking=True), mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 512,
    amp: str = "none",
    n_bins: int = 15,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    sharded: bool = False,
    predictions: bool = False,
) -> dict | tuple[dict, np.ndarray]:
    """Test metrics (``acc``, ``nll``, ``ece``, ``brier``) of ``model`` on ``images``.

    With ``sharded`` (a collective: every rank calls it with the same data), rank ``r``
    predicts the ``r``-th contiguous shard and the logits are gathered, so every rank returns
    the metrics of the whole set. Each rank's ``model`` must hold the same weights and buffers.
    With ``predictions`` it returns ``(metrics, predicted class per image)``.
    """
    part = slice(None)
    if sharded:
        n, world, rank = len(images), distributed.world_size(), distributed.rank()
        part = slice(n * rank // world, n * (rank + 1) // world)
    logits = predict(
        model,
        images[part],
        mean=mean,
        std=std,
        batch_size=batch_size,
        amp=amp,
        device=device,
        channels_last=channels_last,
    )
    if sharded:
        logits = torch.cat([t for t in distributed.gather_objects(logits) if len(t)])
    metrics = classification_metrics(logits, labels.cpu(), n_bins=n_bins)
    if predictions:
        return metrics, logits.argmax(1).cpu().numpy().astype(np.int32)
    return metrics
