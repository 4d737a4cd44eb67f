"""What the analyses share: their inputs (test images, augmented training batches), the
eval-mode context, the feature units of a model, accuracy and the unit table of a result.

The contract itself (``ANALYSIS = Analysis(...)``, ``run(model, data, cfg, ctx)``) is in
:mod:`.spec`; results are :class:`vitscope.results.Result`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import distributed as dist_utils
from ..data.augment import normalize
from ..data.stream import Crop, FolderImages, is_streamed, read_images, sample_seed
from ..errors import VitscopeError
from ..models import Block, blocks
from ..results import Result, config_dict

# ---------------------------------------------------------------------------------------------
# helpers shared by the analyses


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside; every submodule's train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def feature_units(model: torch.nn.Module, spec: Mapping | None = None) -> list[Block]:
    """The residual units whose outputs are feature maps: every block but the head."""
    return [b for b in blocks(model, spec) if b.kind != "head"]


@dataclass
class EvalData:
    """Test images an analysis streams over: uint8 ``(N, C, H, W)`` (a tensor, or a lazy
    ``FolderImages`` of a streamed folder, decoded batch by batch), labels, normalisation,
    and for an image folder the files the images come from (``FolderImages``, row for row;
    the corruption analysis lines ImageNet-C up with them) and the class names (index =
    label; empty when unknown), which the cue-conflict analysis maps its categories onto."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    files: FolderImages | None = None
    classes: tuple[str, ...] = ()

    @classmethod
    def from_image_data(cls, data: Any, limit: int | None = None) -> EvalData:
        """From a :class:`vitscope.data.ImageData`, keeping the first ``limit`` images."""
        n = len(data.labels) if limit is None else min(limit, len(data.labels))
        return cls(
            data.images[:n],
            data.labels[:n],
            tuple(data.info.mean),
            tuple(data.info.std),
            data.info.name,
            None if getattr(data, "files", None) is None else data.files[:n],
            tuple(getattr(data.info, "classes", ()) or ()),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        limit: int | None = None,
        *,
        sharded: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches ``(x, y)`` on ``device``, in order (deterministic).

        With ``sharded`` only this rank's share under torchrun: batch ``k`` goes to rank
        ``k % world_size`` (all of them in a single process).
        """
        for _, x, y in self.indexed_batches(batch_size, device, limit, sharded=sharded):
            yield x, y

    def indexed_batches(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        limit: int | None = None,
        *,
        sharded: bool = False,
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """:meth:`batches` with the index of each batch's first image: ``(start, x, y)``."""
        n = self.count(limit)
        starts = range(0, n, batch_size)
        for s in dist_utils.shard(starts) if sharded else starts:
            e = min(s + batch_size, n)
            batch = read_images(self.images[s:e])  # a streamed split decodes here
            x = normalize(batch.to(device, non_blocking=True), self.mean, self.std)
            yield s, x, self.labels[s:e].to(device, non_blocking=True)

    def count(self, limit: int | None = None) -> int:
        """How many images a pass with ``limit`` reads."""
        return len(self) if limit is None else min(limit, len(self))


def unit_table(units: Sequence[Any]) -> list[dict]:
    """JSON rows for a list of Blocks: name, kind, stage, downsample and normalised depth.

    Depth is ``i / (N - 1)`` over the units that have feature maps (the head excluded), as in
    the paper's Fig 8/9 (``docs/methods/fourier.md``, ``docs/methods/variance.md``).
    """
    n = len(units)
    return [
        {
            "index": i,
            "name": b.name,
            "kind": b.kind,
            "stage": b.stage,
            "downsample": bool(b.downsample),
            "depth": i / (n - 1) if n > 1 else 0.0,
        }
        for i, b in enumerate(units)
    ]


@torch.no_grad()
def correct(
    model: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], transform=None
) -> np.ndarray:
    """Whether ``model`` classifies each image of ``batches`` right (bool, in batch order);
    ``transform(x)`` perturbs inputs first. Its mean is the top-1 accuracy; kept per image,
    it lets the report resample test images (``docs/methods/statistics.md``)."""
    hits = []
    for x, y in batches:
        if transform is not None:
            x = transform(x)
        hits.append((model(x).argmax(1) == y).cpu().numpy())
    if not hits or not sum(len(h) for h in hits):
        raise VitscopeError("no test images to evaluate")
    return np.concatenate(hits)


def chance_accuracy(data: EvalData, limit: int | None = None) -> float:
    """The accuracy (%) of the best constant guess on the first ``limit`` test images: the
    share of the commonest label (100 / K for K balanced classes). Accuracies under a
    perturbation are read against it (how much of the gap above chance is kept)."""
    labels = data.labels[: data.count(limit)]
    if not len(labels):
        raise VitscopeError("no test images to evaluate")
    return 100.0 * float(torch.bincount(labels.long()).max()) / len(labels)


def accuracy_axes(ax) -> None:
    """The y axis, grid and legend of a figure of test accuracy (%) against a perturbation."""
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")


def accuracy(
    model: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], transform=None
) -> float:
    """Top-1 accuracy of ``model`` over ``batches``; ``transform(x)`` perturbs inputs first."""
    return float(correct(model, batches, transform).mean())


@dataclass
class TrainData:
    """Augmented training batches for curvature analyses, reproducible batch by batch.

    Batch ``i`` of seed ``s`` draws its images and its augmentation (crop, flip, RandAugment,
    Mixup/CutMix with label smoothing: the run's training transform) from generators seeded
    by ``(s, i)`` inside a forked RNG, so the same batch comes back on every call, on a
    resumed run and on any rank, and the global RNG is left untouched.

    Attributes:
        images: uint8 ``(N, C, H, W)`` training images (the run's subset).
        labels: int64 ``(N,)``.
        augment: ``BatchAugment``-like callable ``(uint8, labels) -> (x, soft targets)``.
        num_classes: number of classes.
        weight_decay: the run's weight decay (the L2 coefficient of NLL + L2).
        transform: a JSON description of the transform, stored with results.
        crop: for a streamed folder (``images`` lazy), the worker side of the training
            transform (:class:`~vitscope.data.stream.Crop`), drawn per image from ``(s, i)``;
            ``augment`` then holds the rest, as in training.
    """

    images: Any
    labels: torch.Tensor
    augment: Any
    num_classes: int
    weight_decay: float = 0.0
    transform: dict = field(default_factory=dict)
    crop: Any = None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self, index: int, batch_size: int, *, seed: int = 0, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented batch ``index``: normalised inputs and soft targets, on ``device``."""
        key = (seed * 1_000_003 + index) % 2**63
        g = torch.Generator().manual_seed(key)
        idx = torch.randperm(len(self), generator=g)[: min(batch_size, len(self))]
        if is_streamed(self.images):
            seeds = [sample_seed(key, 0, i) for i in idx.tolist()]
            images = self.images[idx].read_train(seeds, self.crop or Crop(rrc=False, hflip=False))
        else:
            images = self.images[idx]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            x, t = self.augment(images, self.labels[idx])
        return x.to(device), t.to(device)


__all__ = [
    "EvalData",
    "Result",
    "TrainData",
    "accuracy",
    "config_dict",
    "correct",
    "eval_mode",
    "feature_units",
    "unit_table",
]
