"""The analysis contract: ``run(model, data, cfg) -> Result``; a Result saves and loads itself.

A :class:`Result` is plain data: small values (``values``, JSON) and arrays (``arrays``,
``.npz``), with the analysis config and provenance. ``save`` writes the ``.npz`` first and
the ``.json`` last, each atomically, so the JSON's presence marks a finished result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import normalize
from ..errors import VitscopeError
from ..io import atomic_write, atomic_write_json, provenance
from ..train import distributed as dist_utils


@dataclass
class Result:
    """What an analysis produced.

    Attributes:
        name: the analysis (``fourier``, ``variance``, ...), also the file stem.
        values: JSON-able values: the unit list, per-unit numbers, summaries.
        arrays: named numpy arrays (saved in ``<name>.npz``).
        config: the analysis config as a dict.
        meta: provenance and context (model, checkpoint, dataset, ...).
    """

    name: str
    values: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, results_dir: str | Path) -> Path:
        """Write ``<name>.npz`` then ``<name>.json`` atomically; returns the JSON path."""
        d = Path(results_dir)
        d.mkdir(parents=True, exist_ok=True)
        if self.arrays:
            atomic_write(d / f"{self.name}.npz", lambda p: _save_npz(p, self.arrays))
        body = {
            "name": self.name,
            "values": self.values,
            "config": self.config,
            "meta": {"provenance": provenance(), **self.meta},
            "arrays": sorted(self.arrays),
        }
        return atomic_write_json(d / f"{self.name}.json", body)

    @classmethod
    def load(cls, results_dir: str | Path, name: str) -> Result:
        """Read a saved result back; one-line errors for missing or corrupt files."""
        d = Path(results_dir)
        path = d / f"{name}.json"
        if not path.is_file():
            raise VitscopeError(
                f"no {name} result in {d} (missing {path.name}); run `vitscope analyze`"
            )
        try:
            body = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise VitscopeError(f"{path} is corrupt; delete it and re-run the analysis") from None
        arrays: dict[str, np.ndarray] = {}
        if body.get("arrays"):
            try:
                with np.load(d / f"{name}.npz") as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except (OSError, ValueError) as e:
                raise VitscopeError(
                    f"{d / (name + '.npz')} is unreadable ({e}); re-run the analysis"
                ) from None
        return cls(
            body["name"], body["values"], arrays, body.get("config", {}), body.get("meta", {})
        )

    def label(self, default: str = "") -> str:
        """How figures name this result: ``meta.label``, else ``meta.model``, else ``default``."""
        return str(self.meta.get("label") or self.meta.get("model") or default)

    @staticmethod
    def exists(results_dir: str | Path, name: str) -> bool:
        return (Path(results_dir) / f"{name}.json").is_file()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
        np.savez(f, **arrays)


def config_dict(cfg: Any) -> dict:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


# ---------------------------------------------------------------------------------------------
# helpers shared by the analyses


@dataclass
class EvalData:
    """Test images an analysis streams over: uint8 ``(N, C, H, W)``, labels, normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""

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
        n = len(self) if limit is None else min(limit, len(self))
        starts = range(0, n, batch_size)
        for s in dist_utils.shard(starts) if sharded else starts:
            e = min(s + batch_size, n)
            x = normalize(self.images[s:e].to(device, non_blocking=True), self.mean, self.std)
            yield x, self.labels[s:e].to(device, non_blocking=True)


def unit_table(units: Sequence[Any]) -> list[dict]:
    """JSON rows for a list of Blocks: name, kind, stage, downsample and normalised depth.

    Depth is ``i / (N - 1)`` over the units that have feature maps (the head excluded), as in
    the paper's Fig 8/9 (spec §1, §3).
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
def accuracy(
    model: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], transform=None
) -> float:
    """Top-1 accuracy of ``model`` over ``batches``; ``transform(x)`` perturbs inputs first."""
    correct = total = 0
    for x, y in batches:
        if transform is not None:
            x = transform(x)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    if total == 0:
        raise VitscopeError("no test images to evaluate")
    return correct / total


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
    """

    images: torch.Tensor
    labels: torch.Tensor
    augment: Any
    num_classes: int
    weight_decay: float = 0.0
    transform: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self, index: int, batch_size: int, *, seed: int = 0, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented batch ``index``: normalised inputs and soft targets, on ``device``."""
        key = (seed * 1_000_003 + index) % 2**63
        g = torch.Generator().manual_seed(key)
        idx = torch.randperm(len(self), generator=g)[: min(batch_size, len(self))]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            x, t = self.augment(self.images[idx], self.labels[idx])
        return x.to(device), t.to(device)
