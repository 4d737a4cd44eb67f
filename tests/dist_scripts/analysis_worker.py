"""Analyses under torchrun (or in one process), for tests/test_distributed_analyses.py.

    torchrun --nproc-per-node 2 --master-port P analysis_worker.py OUT --analyses a,b
        [--workdir DIR] [--die-rank R --die-after K] [--study DIR] [--foreign]
        [--directions ROOT]

Every rank saves the Result its ``run`` returned under ``OUT/rank<r>/`` (so the test can check
that all ranks agree) and appends each landscape point / Hessian batch it computed to
``OUT/items.rank<r>.txt``. With ``--die-rank R --die-after K``, rank R exits hard
(``os._exit``, no cleanup) as it starts its (K+1)-th item, as a killed process would, leaving
``OUT/died.rank<R>``. With ``--study DIR`` the analyses also run through
:func:`vitscope.run_analyses.analyze_model` into DIR; its progress lines go to
``OUT/log.rank<r>.txt``. With ``--foreign`` the model is :class:`PlainNet` (no
``vitscope_blocks``) wrapped as a ``ForeignModel``. With ``--directions ROOT`` the landscape
also runs along each of :data:`DIRECTIONS` (PCA, eigen, interpolate) on the run folders
:func:`write_directions_runs` prepared under ROOT, saved under ``OUT/rank<r>/<kind>/``.

The tests import this file for the same model, data and configs in their own process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from vitscope import create_model
from vitscope import distributed as dist_utils
from vitscope.analyses import (
    EvalData,
    TrainData,
    fourier,
    get_analysis,
    hessian,
    landscape,
    lesion,
    noise,
    overfitting,
    variance,
)
from vitscope.data import BatchAugment

SIZE = 16
CONFIGS = {
    "landscape": landscape.Config(num_points=5, batches=1, batch_size=8),
    "hessian": hessian.Config(
        batches=5,
        batch_size=8,
        top_k=2,
        max_iter=12,
        density_batches=2,
        slq_probes=1,
        slq_steps=4,
        trace_batches=1,
        trace_samples=2,
    ),
    "noise": noise.Config(frequencies=(0.2, 0.5, 0.8), num_images=12, batch_size=5),
    "lesion": lesion.Config(num_images=12, batch_size=5),
    "fourier": fourier.Config(num_images=12, batch_size=5),
    "variance": variance.Config(num_images=12, batch_size=5),
    "overfitting": overfitting.Config(batches=3, batch_size=6),
}
# the same settings as `--set` items, for the study path
SETS = [
    f"{name}.{field}={json.dumps(value)}"
    for name, cfg in CONFIGS.items()
    for field, value in vars(cfg).items()
    if field != "device"
]


DIRECTIONS = ("pca", "eigen", "interpolate")


def directions_config(kind: str, root: Path) -> landscape.Config:
    """The landscape along ``kind``'s directions (its run folder: ``root / kind``)."""
    small = {"num_points": 3, "batches": 1, "batch_size": 8}
    if kind == "eigen":
        return landscape.Config(directions="eigen", eigen_max_iter=8, **small)
    if kind == "interpolate":
        end = str(root / kind / "checkpoints" / "init.pt")
        return landscape.Config(directions="interpolate", endpoint=end, **small)
    return landscape.Config(directions=kind, **small)


def write_directions_runs(root: Path) -> None:
    """Run folders whose checkpoints (init, epoch1, epoch2) are the model moved along seeded
    random steps: a trajectory for PCA and a far end for the interpolation."""
    from vitscope.train.checkpoint import save_checkpoint

    g = torch.Generator().manual_seed(3)
    for kind in DIRECTIONS:
        for k, name in enumerate(("init", "epoch1", "epoch2")):
            other = make_model()
            with torch.no_grad():
                for p in other.parameters():
                    p.add_(torch.randn(p.shape, generator=g), alpha=0.1 * (3 - k))
            save_checkpoint(root / kind / "checkpoints" / f"{name}.pt", model=other, epoch=k)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1, img_size=SIZE)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        model(torch.randn(16, 1, SIZE, SIZE) * 2 + 0.5)
    return model.eval()


class PlainNet(torch.nn.Module):
    """A model that knows nothing of vitscope: two residual conv blocks, a downsampling conv,
    a self-attention block (functional residuals), global pooling, a linear head."""

    class Res(torch.nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(c)

        def forward(self, x):
            return x + torch.relu(self.bn(self.conv(x)))

    class Attn(torch.nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(c)
            self.attn = torch.nn.MultiheadAttention(c, 2, batch_first=True)

        def forward(self, x):  # (B, C, H, W)
            b, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)
            y = self.norm(t)
            t = t + self.attn(y, y, y, need_weights=False)[0]
            return t.transpose(1, 2).reshape(b, c, h, w)

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(
            self.Res(8), self.Res(8), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            self.Attn(8), self.Attn(8),
        )  # fmt: skip
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def make_foreign() -> torch.nn.Module:
    """PlainNet under the contract: the generic decomposition, input adapted to 16 px."""
    from vitscope.foreign import ForeignModel

    torch.manual_seed(0)
    return ForeignModel(PlainNet(), img_size=SIZE).eval()


def eval_data() -> EvalData:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return EvalData(images, torch.randint(0, 10, (12,), generator=g), (0.5,), (0.25,), "synth")


def train_data() -> TrainData:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (24, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (24,), generator=g)
    aug = BatchAugment(mean=(0.5,), std=(0.25,), num_classes=10, crop_padding=2, mixup_alpha=1.0)
    return TrainData(images, labels, aug, 10, 0.05, {"mixup_alpha": 1.0})


def run(name: str, model: torch.nn.Module, workdir: Path | None = None):
    """Analysis ``name`` on the shared model and data (resumable ones keep files in workdir)."""
    spec = get_analysis(name)
    inputs = train_data() if spec.split == "train" else eval_data()
    return spec.execute(model, inputs, CONFIGS[name], workdir=workdir)


def instrument(out: Path, die_rank: int | None, die_after: int) -> None:
    """Record every computed landscape point / Hessian batch; maybe die before one."""
    rank = dist_utils.rank()
    ledger = out / f"items.rank{rank}.txt"
    calls = [0]

    def wrap(module, attr: str, item) -> None:
        real = getattr(module, attr)

        def wrapper(*args):
            if rank == die_rank and calls[0] == die_after:
                (out / f"died.rank{rank}").touch()
                os._exit(1)  # killed mid-analysis: no cleanup, no exception
            calls[0] += 1
            value = real(*args)
            with open(ledger, "a") as f:
                f.write(f"{module.__name__.rsplit('.', 1)[1]} {item(*args)}\n")
            return value

        setattr(module, attr, wrapper)

    # landscape.evaluate_point(model, batches, theta0, d1, d2, a, b, cfg)
    wrap(landscape, "evaluate_point", lambda *a: f"{a[5]!r} {a[6]!r}")
    # hessian.analyze_batch(model, data, cfg, index)
    wrap(hessian, "analyze_batch", lambda *a: f"{a[3]}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--analyses", default="")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--die-rank", type=int)
    p.add_argument("--die-after", type=int, default=0)
    p.add_argument("--study", type=Path)
    p.add_argument("--foreign", action="store_true", help="PlainNet under ForeignModel")
    p.add_argument("--directions", type=Path, help="root of write_directions_runs' folders")
    args = p.parse_args()

    torch.set_num_threads(1)
    dist_utils.init("cpu")
    rank = dist_utils.rank()
    args.out.mkdir(parents=True, exist_ok=True)
    instrument(args.out, args.die_rank, args.die_after)
    model = make_foreign() if args.foreign else make_model()
    names = [n for n in args.analyses.split(",") if n]
    for name in names:
        run(name, model, args.workdir).save(args.out / f"rank{rank}")
    for kind in DIRECTIONS if args.directions else ():
        cfg, work = directions_config(kind, args.directions), args.directions / kind / "results"
        res = get_analysis("landscape").execute(model, train_data(), cfg, workdir=work)
        res.save(args.out / f"rank{rank}" / kind)
    if args.study:
        from vitscope import run_analyses as study

        with open(args.out / f"log.rank{rank}.txt", "w") as f:
            study.analyze_model(
                model,
                eval_data(),
                args.study,
                train_data=train_data(),
                only=names,
                sets=[s for s in SETS if s.split(".")[0] in names],
                log=lambda line: print(line, file=f, flush=True),
            )
    dist_utils.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
