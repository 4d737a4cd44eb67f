"""A training run: resolve data and model, train with checkpoints, write the run directory.

``train(cfg, out)`` is what ``vitscope train`` calls. A run directory that already holds the
same resolved config resumes from ``checkpoints/last.pt``; so does ``train(None, out,
resume=True)``, which reads the config back from the directory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config import RunConfig, dump_yaml, from_dict, load_yaml, to_dict
from ..data import BatchAugment, ImageData, balanced_subset, load_dataset
from ..errors import VitscopeError
from ..io import (
    RunDir,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    provenance,
    read_jsonl,
    write_jsonl,
)
from ..models import create_model
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .loop import evaluate, train_one_epoch


@dataclass
class TrainResult:
    """What a finished run reports: its directory and its last and best test metrics."""

    run_dir: Path
    last: dict
    best: dict
    epochs: int


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def load_split(cfg: RunConfig, *, train: bool) -> ImageData:
    """One split of the configured dataset (the full split, before any subsetting)."""
    kw = dict(root=cfg.data.root, download=cfg.data.download, img_size=cfg.data.img_size)
    return load_dataset(cfg.data.name, train=train, **kw)


def load_data(cfg: RunConfig) -> tuple[ImageData, ImageData, torch.Tensor | None]:
    """Train split (subset to ``data.fraction``), test split, and the kept indices."""
    train_set = load_split(cfg, train=True)
    test_set = load_split(cfg, train=False)
    indices = None
    if cfg.data.fraction < 1.0:
        indices = balanced_subset(train_set.labels, cfg.data.fraction, seed=cfg.data.subset_seed)
        train_set = train_set.subset(indices)
    return train_set, test_set, indices


def build_model(cfg: RunConfig, info) -> nn.Module:
    """The configured architecture for a dataset's classes, channels and image size."""
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.drop_path:
        kwargs["drop_path"] = cfg.model.drop_path
    return create_model(
        cfg.model.name,
        num_classes=info.num_classes,
        in_chans=info.in_chans,
        img_size=info.img_size,
        **kwargs,
    )


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """One parameter group, as in the paper's code (weight decay applies to every tensor)."""
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=t.lr,
            momentum=t.momentum,
            nesterov=t.nesterov,
            weight_decay=t.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def build_augment(cfg: RunConfig, info) -> BatchAugment:
    a = cfg.augment
    return BatchAugment(
        mean=info.mean,
        std=info.std,
        num_classes=info.num_classes,
        crop_padding=a.crop_padding,
        hflip=a.hflip,
        randaugment=a.randaugment,
        ra_n=a.ra_n,
        ra_m=a.ra_m,
        mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha,
        mix_prob=a.mix_prob,
        switch_prob=a.switch_prob,
        label_smoothing=a.label_smoothing,
    )


def read_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run directory."""
    rd = RunDir.existing(run_dir)
    return from_dict(RunConfig, load_yaml(rd.config))


def _identity(cfg: RunConfig) -> dict:
    """The parts of a config that define a run (not how it is displayed)."""
    d = to_dict(cfg)
    d["train"].pop("progress")
    return d


def _prepare_dir(
    cfg: RunConfig | None, out: str | Path, resume: bool
) -> tuple[RunConfig, RunDir, bool]:
    """Decide between a fresh run and a resume; refuse to mix two configs in one folder."""
    rd = RunDir(Path(out))
    exists = rd.config.is_file()
    if resume and not exists:
        raise VitscopeError(f"cannot resume: {rd.root} holds no run (no config.yaml)")
    if exists:
        saved = read_config(rd.root)
        if cfg is not None and _identity(cfg) != _identity(saved):
            raise VitscopeError(
                f"{rd.root} already holds a run with a different config; "
                "use --resume to continue it or choose another --out"
            )
        return saved, rd, True
    if cfg is None:
        raise VitscopeError("train() needs a config for a new run")
    return cfg, rd, False


def _progress(bar: tqdm):
    def update(images: int, loss: float) -> None:
        bar.update(images)
        bar.set_postfix(loss=f"{loss:.3f}")

    return update


def train(cfg: RunConfig | None, out: str | Path, *, resume: bool = False) -> TrainResult:
    """Train a model and write its run directory; resumes an existing run of the same config.

    Args:
        cfg: the resolved run config; ``None`` with ``resume=True`` reads it from ``out``.
        out: the run directory (created if missing).
        resume: require an existing run in ``out`` and continue it.

    Returns:
        The run directory with the last and best test metrics.
    """
    cfg, rd, resuming = _prepare_dir(cfg, out, resume)
    t = cfg.train
    device = torch.device(t.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VitscopeError(
            "train.device is cuda but no CUDA device is available; use --device cpu"
        )
    seed_everything(t.seed)

    train_set, test_set, indices = load_data(cfg)
    info = train_set.info
    model = build_model(cfg, info).to(device)
    optimizer = build_optimizer(cfg, model)
    augment = build_augment(cfg, info)
    forward = torch.compile(model) if t.compile else model

    rd.make()
    start_epoch, best, elapsed = 0, {"acc": -1.0}, 0.0
    last_ckpt = rd.checkpoint("last")
    if resuming and last_ckpt.is_file():
        ckpt = load_checkpoint(last_ckpt, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, best, elapsed = ckpt["epoch"], ckpt["best"], ckpt["elapsed"]
        set_rng_state(ckpt["rng"])
        # metrics written after this checkpoint belong to an epoch that will be redone
        write_jsonl(rd.metrics, [r for r in read_jsonl(rd.metrics) if r["epoch"] <= start_epoch])
    else:
        atomic_write_text(rd.config, dump_yaml(cfg))
        atomic_write_json(rd.provenance, provenance(seed=t.seed))
        if indices is not None:
            atomic_write_json(
                rd.subset,
                {
                    "fraction": cfg.data.fraction,
                    "seed": cfg.data.subset_seed,
                    "indices": indices.tolist(),
                },
            )
        write_jsonl(rd.metrics, [])
        save_checkpoint(rd.checkpoint("init"), model=model, epoch=0)

    images = train_set.images.to(device)
    labels = train_set.labels.to(device)
    test_images = test_set.images.to(device)
    test_labels = test_set.labels.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    last = dict(read_jsonl(rd.metrics)[-1]) if start_epoch else {}

    for epoch in range(start_epoch, t.total_epochs):
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        bar = tqdm(
            total=len(labels),
            unit="img",
            disable=not t.progress,
            leave=False,
            desc=f"{cfg.model.name} epoch {epoch + 1}/{t.total_epochs}",
        )
        stats = train_one_epoch(
            model,
            images,
            labels,
            augment=augment,
            optimizer=optimizer,
            cfg=t,
            epoch=epoch,
            generator=generator,
            forward=forward,
            progress=_progress(bar),
        )
        bar.close()
        test = evaluate(
            model,
            test_images,
            test_labels,
            mean=info.mean,
            std=info.std,
            batch_size=t.eval_batch_size,
            amp=t.amp,
            n_bins=t.ece_bins,
        )
        elapsed += stats["seconds"]
        last = {
            "epoch": epoch + 1,
            "phase": "warmup" if epoch < t.warmup_epochs else "main",
            "lr_end": optimizer.param_groups[0]["lr"],
            "train_loss": stats["train_loss"],
            "train_nll": stats["train_nll"],
            "train_acc": stats["train_acc"],
            **{f"test_{k}": v for k, v in test.items()},
            "images_per_s": stats["images"] / stats["seconds"],
            "train_seconds": elapsed,
            "params": n_params,
        }
        append_jsonl(rd.metrics, last)
        if test["acc"] > best["acc"]:
            best = {**test, "epoch": epoch + 1}
            save_checkpoint(rd.checkpoint("best"), model=model, epoch=epoch + 1, metrics=best)
        if epoch + 1 == t.warmup_epochs:
            save_checkpoint(rd.checkpoint("warmup"), model=model, epoch=epoch + 1)
        if t.snapshot_every and (epoch + 1) % t.snapshot_every == 0:
            save_checkpoint(rd.checkpoint(f"epoch{epoch + 1}"), model=model, epoch=epoch + 1)
        # last.pt is written last: it marks the epoch as complete
        save_checkpoint(
            last_ckpt, model=model, optimizer=optimizer, epoch=epoch + 1, best=best, elapsed=elapsed
        )
        if t.progress:
            tqdm.write(
                f"epoch {epoch + 1}/{t.total_epochs}  loss {stats['train_loss']:.4f}  "
                f"test acc {test['acc']:.4f}  nll {test['nll']:.4f}  "
                f"{last['images_per_s']:.0f} img/s"
            )
    return TrainResult(run_dir=rd.root, last=last, best=best, epochs=t.total_epochs)


def load_model(
    run_dir: str | Path, checkpoint: str = "best", *, device: str = "cpu"
) -> tuple[nn.Module, RunConfig]:
    """Rebuild a run's model from its config and load a checkpoint into it (eval mode)."""
    rd = RunDir.existing(run_dir)
    cfg = read_config(rd.root)
    model = build_model(cfg, load_split(cfg, train=False).info)
    ckpt = load_checkpoint(rd.checkpoint(checkpoint), map_location=device)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def evaluate_run(run_dir: str | Path, checkpoint: str = "best", *, device: str = "cpu") -> dict:
    """Test metrics of a run's checkpoint, also saved to ``results/evaluate_<ckpt>.json``."""
    model, cfg = load_model(run_dir, checkpoint, device=device)
    test_set = load_split(cfg, train=False)
    metrics = evaluate(
        model,
        test_set.images.to(device),
        test_set.labels,
        mean=test_set.info.mean,
        std=test_set.info.std,
        batch_size=cfg.train.eval_batch_size,
        n_bins=cfg.train.ece_bins,
    )
    out = {"checkpoint": checkpoint, "metrics": metrics, "provenance": provenance()}
    atomic_write_json(RunDir(Path(run_dir)).results / f"evaluate_{Path(checkpoint).stem}.json", out)
    return metrics


__all__ = [
    "TrainResult",
    "build_model",
    "evaluate_run",
    "load_data",
    "load_model",
    "load_split",
    "read_config",
    "train",
]
