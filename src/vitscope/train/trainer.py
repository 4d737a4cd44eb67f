"""A training run: resolve data and model, train with checkpoints, write the run directory.

``train(cfg, out)`` is what ``vitscope train`` calls. A run directory that already holds the
same resolved config resumes from ``checkpoints/last.pt``; so does ``train(None, out,
resume=True)``, which reads the config back from the directory.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import distributed, preempt
from ..config import RunConfig, TrainConfig, dump_yaml, from_dict, load_yaml, to_dict
from ..data import BatchAugment, ImageData, balanced_subset, load_dataset
from ..data.stream import Crop, is_streamed, train_batches
from ..errors import VitscopeError
from ..io import (
    RunDir,
    append_jsonl,
    atomic_write_json,
    atomic_write_npz,
    atomic_write_text,
    provenance,
    read_jsonl,
    write_jsonl,
    writes_folder,
)
from ..models import create_model, model_family
from ..models.layers import use_fused_attention
from ..progress import bar_disable
from .checkpoint import gather_rng_states, load_checkpoint, restore_rng_states, save_checkpoint
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
    """One split of the configured dataset (the full split, before any subsetting); an image
    folder too large for memory (``data.loader``) comes back lazy (``FolderImages``)."""
    d = cfg.data
    return load_dataset(
        d.name,
        train=train,
        root=d.root,
        download=d.download,
        img_size=d.img_size,
        loader=d.loader,
        memory_limit_gb=d.memory_limit_gb,
        decoder=d.decoder,
        stats=d.stats(),
        crop_pct=d.crop_pct,
    )


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


def build_augment(cfg: RunConfig, info, *, streamed: bool = False) -> BatchAugment:
    """The run's batch augmentation. For a ``streamed`` split the crop and the flip happen in
    the DataLoader workers (:func:`cpu_crop`), so the batch side leaves them out."""
    a = cfg.augment
    return BatchAugment(
        mean=info.mean,
        std=info.std,
        num_classes=info.num_classes,
        crop_padding=a.crop_padding,
        rrc=a.rrc and not streamed,
        rrc_scale=a.rrc_scale,
        rrc_ratio=a.rrc_ratio,
        interpolation=a.interpolation,
        hflip=a.hflip and not streamed,
        randaugment=a.randaugment,
        ra_n=a.ra_n,
        ra_m=a.ra_m,
        ra_mstd=a.ra_mstd,
        mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha,
        mix_prob=a.mix_prob,
        switch_prob=a.switch_prob,
        label_smoothing=a.label_smoothing,
        reprob=a.reprob,
        remode=a.remode,
        recount=a.recount,
    )


def cpu_crop(cfg: RunConfig) -> Crop:
    """The worker side of a streamed split's training transform (RandomResizedCrop + flip)."""
    a = cfg.augment
    return Crop(a.rrc, tuple(a.rrc_scale), tuple(a.rrc_ratio), a.interpolation, a.hflip)


def read_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run directory."""
    rd = RunDir.existing(run_dir)
    return from_dict(RunConfig, load_yaml(rd.config))


def _identity(cfg: RunConfig) -> dict:
    """The parts of a config that define a run (not how it is displayed)."""
    d = to_dict(cfg)
    d["train"].pop("progress")
    d["data"].pop("workers")  # the crops are seeded per image: any number of workers
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


def _device(t: TrainConfig) -> torch.device:
    """This rank's device (``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun), checked."""
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise VitscopeError(
            "train.device is cuda but no CUDA device is available; use --device cpu"
        )
    device = distributed.init(t.device)
    world = distributed.world_size()
    if t.batch_size % world:
        raise VitscopeError(
            f"train.batch_size={t.batch_size} is the global batch and must be divisible by "
            f"the {world} processes; use a multiple of {world}"
        )
    if t.sync_bn and world > 1 and device.type != "cuda":
        raise VitscopeError(
            "train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); "
            "use --device cuda or drop train.sync_bn"
        )
    return device


def _rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """Seed of one rank's augmentation / drop-path stream from ``epoch`` on."""
    return seed + 104_729 * rank + 1_299_709 * epoch


def _parallel(model: nn.Module, t: TrainConfig, device: torch.device) -> nn.Module:
    """The module that trains: DDP under torchrun, then ``torch.compile`` if asked.

    Compiling the DDP wrapper (not its inner module) lets TorchDynamo's DDPOptimizer split
    the graph at gradient-bucket boundaries, so communication overlaps the backward pass.
    """
    if distributed.world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if t.compile else model


def _last_checkpoint(rd: RunDir) -> dict | None:
    """The newest readable end-of-epoch checkpoint: ``last.pt``, else (missing: killed while
    it was replaced; torn or damaged) ``last.prev.pt``, the epoch before, with a warning;
    None for a run that finished no epoch. Neither readable: a one-line error with the fix."""
    last, prev = rd.checkpoint("last"), rd.checkpoint("last.prev")
    problem = f"{last} is missing"
    if last.is_file():
        try:
            return load_checkpoint(last)
        except VitscopeError as e:
            problem = str(e).split(";")[0]  # (its advice does not fit here)
    if not prev.is_file():
        if not last.is_file():
            return None
        raise VitscopeError(
            f"cannot resume: {problem}, and there is no {prev.name} to fall back to; "
            f"delete {last} to train the run again from the start"
        )
    try:
        ckpt = load_checkpoint(prev)
    except VitscopeError as e:
        raise VitscopeError(
            f"cannot resume: {problem}, and {str(e).split(';')[0]}; delete both to train the "
            "run again from the start"
        ) from None
    if distributed.is_main():
        warnings.warn(
            f"{problem}; resuming from {prev.name} (epoch {ckpt['epoch']}): the epoch after "
            "it is trained again",
            stacklevel=4,
        )
    return ckpt


def _resume(rd: RunDir, ckpt: dict, model: nn.Module, optimizer, cfg: RunConfig) -> dict:
    """Load an end-of-epoch checkpoint into ``model`` and ``optimizer`` and restore this
    rank's RNG states."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if not restore_rng_states(ckpt):
        # the data order and the global batches do not depend on the world size; only the
        # augmentation draws do, so the run goes on with fresh (still seeded) per-rank streams
        seed_everything(_rank_seed(cfg.train.seed, distributed.rank(), ckpt["epoch"]))
        if distributed.is_main():
            saved = len(ckpt.get("rng_ranks") or [ckpt["rng"]])
            warnings.warn(
                f"{rd.root} was saved by {saved} process(es) and resumes on "
                f"{distributed.world_size()}: augmentation continues from fresh per-rank RNG "
                "streams, so the run will not repeat an uninterrupted one exactly",
                stacklevel=3,
            )
    return ckpt


def _write_new_run(rd: RunDir, cfg: RunConfig, indices, model: nn.Module) -> None:
    atomic_write_text(rd.config, dump_yaml(cfg))
    family = model_family(cfg.model.name)
    atomic_write_json(rd.provenance, provenance(seed=cfg.train.seed, model_family=family))
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


@writes_folder("out")
def train(cfg: RunConfig | None, out: str | Path, *, resume: bool = False) -> TrainResult:
    """Train a model and write its run directory; resumes an existing run of the same config.

    Launched by ``torchrun --nproc-per-node W`` (the same command), every rank calls this and
    training is DistributedDataParallel with the one-process semantics: ``train.batch_size``
    is the global batch (``B / W`` per rank, contiguous slices of the same seeded permutation)
    at the configured ``train.lr`` (no scaling by ``W``). BatchNorm statistics are per rank
    unless ``train.sync_bn`` (CUDA). Augmentation draws are per rank (rank 0's stream is the
    one-process stream); ``last.pt`` keeps every rank's RNG state, so a resume with the same
    ``W`` repeats an uninterrupted run, and one with another ``W`` warns and reseeds. Test
    metrics are computed on rank-shards and gathered. Rank 0 alone writes files and shows
    progress; every rank returns the same metrics once rank 0's files are written.

    One process writes a run directory at a time: a second ``train`` of the same ``out``
    raises :class:`~vitscope.io.FolderBusyError` at once (:func:`vitscope.io.writer_lock`).

    Args:
        cfg: the resolved run config; ``None`` with ``resume=True`` reads it from ``out``.
        out: the run directory (created if missing).
        resume: require an existing run in ``out`` and continue it.

    Returns:
        The run directory with the last and best test metrics.
    """
    cfg, rd, resuming = _prepare_dir(cfg, out, resume)
    t = cfg.train
    device = _device(t)
    main = distributed.is_main()
    train_set, test_set, indices, model, optimizer, augment = _build(cfg, device)
    start_epoch, best, elapsed, rows = _start(rd, cfg, model, optimizer, indices, resuming)
    partial = _resume_partial(rd, model, optimizer, start_epoch) if resuming else None
    forward = _parallel(model, t, device)
    data = _on_device(train_set, test_set, device)
    n_params = sum(p.numel() for p in model.parameters())
    last = dict(rows[-1]) if rows else {}
    for epoch in range(start_epoch, t.total_epochs):
        stats, test, pred = _epoch(
            cfg, model, forward, optimizer, augment, data, train_set.info, epoch,
            resume=partial if epoch == start_epoch else None,
        )  # fmt: skip
        if "stopped_at" in stats:  # a stop signal: save the epoch so far, then stop
            _save_partial(rd, model, optimizer, epoch, stats)
        elapsed += stats["seconds"]
        last = _metrics_row(epoch, t, optimizer, stats, test, elapsed, n_params)
        improved = test is not None and test["acc"] > best["acc"]
        if improved:
            best = {**test, "epoch": epoch + 1}
        rng_ranks = gather_rng_states()  # a collective: before the rank-0-only block
        if main:
            if improved:  # before best.pt: a kill leaves the previous best's pair or this one's
                save_predictions(rd, pred, test_set.labels, epoch + 1)
            _save_epoch(rd, t, model, optimizer, last, best, improved, elapsed, rng_ranks)
    distributed.barrier()  # rank 0's files are complete before any rank returns
    return TrainResult(run_dir=rd.root, last=last, best=best, epochs=t.total_epochs)


def _build(cfg: RunConfig, device: torch.device) -> tuple:
    """Data, model, optimizer and augmentation, seeded in a fixed order (same on resume)."""
    t = cfg.train
    seed_everything(t.seed)  # the same on every rank: the same initial weights
    train_set, test_set, indices = load_data(cfg)
    model = build_model(cfg, train_set.info).to(device)
    if t.sync_bn and distributed.world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if t.channels_last:  # only 4-D tensors change layout: a ViT's patch embedding, say
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    augment = build_augment(cfg, train_set.info, streamed=is_streamed(train_set.images))
    if distributed.rank() > 0:  # every rank its own augmentation; rank 0 as one process
        seed_everything(_rank_seed(t.seed, distributed.rank()))
    return train_set, test_set, indices, model, optimizer, augment


def _start(rd: RunDir, cfg: RunConfig, model, optimizer, indices, resuming: bool) -> tuple:
    """``(start epoch, best, elapsed, metric rows)``: from ``last.pt`` or a new run directory."""
    start_epoch, best, elapsed, rows = 0, {"acc": -1.0}, 0.0, []
    ckpt = _last_checkpoint(rd) if resuming else None  # on the CPU, like the RNG states
    if ckpt is not None:
        ckpt = _resume(rd, ckpt, model, optimizer, cfg)
        start_epoch, best, elapsed = ckpt["epoch"], ckpt["best"], ckpt["elapsed"]
        # metrics written after this checkpoint belong to an epoch that will be redone
        rows = [r for r in _metric_rows(rd) if r["epoch"] <= start_epoch]
    distributed.barrier()  # every rank has read the directory before rank 0 writes to it
    if distributed.is_main():
        rd.make()
        if start_epoch:
            write_jsonl(rd.metrics, rows)
        else:  # new, or killed before its first epoch ended
            _write_new_run(rd, cfg, indices, model)
    return start_epoch, best, elapsed, rows


def _metric_rows(rd: RunDir) -> list[dict]:
    """The run's metrics lines (a torn last one dropped), each checked to name its epoch."""
    rows = read_jsonl(rd.metrics)
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool):
            raise VitscopeError(
                f"{rd.metrics}: row {i} has no integer 'epoch' (the file was damaged or "
                "edited); repair or delete that line, then resume"
            )
    return rows


def _save_partial(rd: RunDir, model, optimizer, epoch: int, stats) -> None:
    """Save an epoch stopped by a signal (``checkpoints/preempt.pt``; the best metrics and
    the elapsed time stay those of ``last.pt``), then raise
    :class:`~vitscope.preempt.Preempted`; collective under torchrun."""
    rng_ranks = gather_rng_states()
    sums = distributed.gather_objects(stats["sums"])  # each rank resumes its own sums
    path = rd.checkpoint("preempt")
    if distributed.is_main():
        partial = {"stopped_at": stats["stopped_at"], "sums": sums, "seconds": stats["seconds"]}
        save_checkpoint(path, model=model, optimizer=optimizer, epoch=epoch,
                        rng_ranks=rng_ranks, partial=partial)  # fmt: skip
    distributed.barrier()
    preempt.stop(f"step {stats['stopped_at']} of epoch {epoch + 1}, saved in {path}")


def _resume_partial(rd: RunDir, model, optimizer, start_epoch: int) -> dict | None:
    """Continue an epoch a signal stopped: load ``preempt.pt`` when it continues the epoch
    that starts now (and was saved by as many ranks); returns ``train_one_epoch``'s
    ``resume``, or None (no such epoch; a stale file is ignored, an unreadable one with a
    warning: the epoch is then trained again from its start)."""
    path = rd.checkpoint("preempt")
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except VitscopeError as e:
        if distributed.is_main():
            warnings.warn(f"{str(e).split(';')[0]}; the stopped epoch is trained again from "
                          "its start", stacklevel=3)  # fmt: skip
        return None
    if ckpt["epoch"] != start_epoch or len(ckpt["rng_ranks"]) != distributed.world_size():
        return None  # older than last.pt, or another world size: the epoch is redone
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng_states(ckpt)
    partial = ckpt["partial"]
    return {**partial, "sums": partial["sums"][distributed.rank()]}


def _on_device(train_set, test_set, device: torch.device) -> dict:
    """The splits on the training device; a streamed split stays lazy (read batch by batch)."""

    def move(x):
        return x if is_streamed(x) else x.to(device, non_blocking=True)

    return {
        "images": move(train_set.images),
        "labels": train_set.labels.to(device, non_blocking=True),
        "test_images": move(test_set.images),
        "test_labels": test_set.labels.to(device, non_blocking=True),
    }


def _loader(cfg: RunConfig, data: dict, epoch: int, device: torch.device):
    """The epoch's batches from DataLoader workers for a streamed split, else None."""
    if not is_streamed(data["images"]):
        return None

    def batches(global_batches):
        return train_batches(
            data["images"],
            data["labels"],
            global_batches,
            crop=cpu_crop(cfg),
            seed=cfg.train.seed,
            epoch=epoch,
            world=distributed.world_size(),
            rank=distributed.rank(),
            device=device,
            workers=cfg.data.workers,
        )

    return batches


def _epoch(
    cfg: RunConfig, model, forward, optimizer, augment, data: dict, info, epoch: int, resume=None
):
    """One training epoch, then (every ``train.eval_every`` epochs and after the last) the test
    pass: ``(train stats, test metrics, predicted classes)``, the last two None without one
    (or when a stop signal ended the epoch early: ``stats`` then has ``stopped_at``).
    ``resume``: the state of an epoch a signal stopped (:func:`train_one_epoch`)."""
    t = cfg.train
    generator = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
    bar = tqdm(
        total=len(data["labels"]),
        unit="img",
        disable=bar_disable(t.progress and distributed.is_main()),
        leave=False,
        desc=f"{cfg.model.name} epoch {epoch + 1}/{t.total_epochs}",
    )
    with use_fused_attention(t.fused_attention):
        device = data["labels"].device
        stats = train_one_epoch(
            model,
            None if is_streamed(data["images"]) else data["images"],
            data["labels"],
            augment=augment,
            optimizer=optimizer,
            cfg=t,
            epoch=epoch,
            generator=generator,
            forward=forward,
            progress=_progress(bar),
            loader=_loader(cfg, data, epoch, device),
            resume=resume,
        )
        bar.close()
        if "stopped_at" in stats:
            return stats, None, None
        # per-rank BatchNorm running stats differ: evaluate (and save) rank 0's everywhere
        distributed.broadcast_tensors(list(model.buffers()))
        if (epoch + 1) % t.eval_every and epoch + 1 < t.total_epochs:
            return stats, None, None  # no test pass this epoch (train.eval_every)
        test = evaluate(
            model,
            data["test_images"],
            data["test_labels"],
            mean=info.mean,
            std=info.std,
            batch_size=t.eval_batch_size,
            amp=t.amp,
            n_bins=t.ece_bins,
            channels_last=t.channels_last,
            sharded=True,
            predictions=True,
        )
    return stats, *test


def save_predictions(rd: RunDir, pred: np.ndarray, labels: torch.Tensor, epoch: int) -> None:
    """The best epoch's test predictions, per image (``RunDir.predictions``)."""
    atomic_write_npz(
        rd.predictions,
        {
            "pred": np.asarray(pred, dtype=np.int32),
            "label": labels.cpu().numpy().astype(np.int32),
            "epoch": np.asarray(epoch),
        },
    )


def _metrics_row(epoch, t, optimizer, stats: dict, test: dict, elapsed: float, n_params) -> dict:
    """The ``metrics.jsonl`` line of an epoch."""
    return {
        "epoch": epoch + 1,
        "phase": "warmup" if epoch < t.warmup_epochs else "main",
        "lr_end": optimizer.param_groups[0]["lr"],
        "train_loss": stats["train_loss"],
        "train_nll": stats["train_nll"],
        "train_acc": stats["train_acc"],
        **{f"test_{k}": v for k, v in (test or {}).items()},
        "images_per_s": stats["images"] / stats["seconds"],
        "amp": stats["amp"],  # the arithmetic of this epoch (train.amp=auto resolved)
        "train_seconds": elapsed,
        "params": n_params,
    }


def _save_epoch(rd, t, model, optimizer, row, best, improved, elapsed, rng_ranks) -> None:
    """Rank 0's end of an epoch: the metrics line, checkpoints and the console line."""
    epoch = row["epoch"]
    append_jsonl(rd.metrics, row)
    if improved:
        save_checkpoint(rd.checkpoint("best"), model=model, epoch=epoch, metrics=best)
    if epoch == t.warmup_epochs:
        save_checkpoint(rd.checkpoint("warmup"), model=model, epoch=epoch)
    if t.snapshot_every and epoch % t.snapshot_every == 0:
        save_checkpoint(rd.checkpoint(f"epoch{epoch}"), model=model, epoch=epoch)
    # last.pt is written last: it marks the epoch as complete; the one before it stays as
    # last.prev.pt, where a resume goes if last.pt is found damaged
    last = rd.checkpoint("last")
    if last.is_file():
        os.replace(last, rd.checkpoint("last.prev"))
    save_checkpoint(
        rd.checkpoint("last"),
        model=model,
        optimizer=optimizer,
        epoch=epoch,
        best=best,
        elapsed=elapsed,
        rng_ranks=rng_ranks,
    )
    rd.checkpoint("preempt").unlink(missing_ok=True)  # the stopped epoch is now complete
    if t.progress:
        test = (
            f"test acc {row['test_acc']:.4f}  nll {row['test_nll']:.4f}  "
            if "test_acc" in row
            else ""
        )
        tqdm.write(
            f"epoch {epoch}/{t.total_epochs}  loss {row['train_loss']:.4f}  {test}"
            f"{row['images_per_s']:.0f} img/s" + ("  bf16" if row.get("amp") == "bf16" else "")
        )


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


@writes_folder("run_dir")
def evaluate_run(run_dir: str | Path, checkpoint: str = "best", *, device: str = "cpu") -> dict:
    """Test metrics of a run's checkpoint, also saved to ``results/evaluate_<ckpt>.json``.

    Under torchrun every rank calls it: each predicts a shard of the test set, and rank 0
    writes the file.
    """
    device = distributed.init(device)
    model, cfg = load_model(run_dir, checkpoint, device=device)
    test_set = load_split(cfg, train=False)
    images = test_set.images  # a streamed split is read batch by batch
    metrics, pred = evaluate(
        model,
        images if is_streamed(images) else images.to(device, non_blocking=True),
        test_set.labels,
        mean=test_set.info.mean,
        std=test_set.info.std,
        batch_size=cfg.train.eval_batch_size,
        n_bins=cfg.train.ece_bins,
        sharded=True,
        predictions=True,
    )
    if distributed.is_main():
        out = {"checkpoint": checkpoint, "metrics": metrics, "provenance": provenance()}
        rd = RunDir(Path(run_dir))
        atomic_write_json(rd.results / f"evaluate_{Path(checkpoint).stem}.json", out)
        if checkpoint == "best":  # (re)writes what the report resamples, e.g. for older runs
            epoch = int(load_checkpoint(rd.checkpoint("best"), map_location="cpu")["epoch"])
            save_predictions(rd, pred, test_set.labels, epoch)
    distributed.barrier()
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
