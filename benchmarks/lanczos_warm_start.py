"""Warm-started against cold-started Lanczos over the mini-batches of the Hessian analysis.

    python benchmarks/lanczos_warm_start.py [--models resnet_tiny,vit_tiny] [--batches 6]

Each model is trained briefly on Fashion-MNIST (cpu preset, 5% of the training set, 1
warm-up + 1 epoch; cached under ``--out``), then the ``hessian`` analysis runs three times on
the same checkpoint and batches, one thread:

* ``cold``: every batch from its own seeded random vector (``warm_start=false``);
* ``warm``: batch 0 cold (the pilot), batches 1.. from the pilot's top-k Ritz vectors
  (``warm_start=true``);
* ``reference``: cold at ``tol=1e-7``, ``max_iter=200``.

Printed per model: Hessian-vector products per batch over batches 1.. (the pilot is the same
in both), their ratio cold / warm (goal >= 1.5), and each method's largest relative error of
the top-k eigenvalues against the reference (both ordered by magnitude).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vitscope.analyses import hessian
from vitscope.config import resolve
from vitscope.run_analyses import train_data_of
from vitscope.train import load_model, train

from _table import row, write


def trained(model: str, out: Path):
    run = out / model
    cfg = resolve(preset="cpu", overrides={
        "model": {"name": model},
        "data": {"name": "fashion-mnist", "fraction": 0.05},
        "train": {"epochs": 1, "warmup_epochs": 1, "progress": False},
    })  # fmt: skip
    if not (run / "checkpoints" / "last.pt").is_file():
        train(cfg, run)
    net, cfg = load_model(run, "last")
    return net, train_data_of(cfg)


def errors(result, reference) -> float:
    got = np.asarray(result.values["eigenvalues"], float)
    ref = np.asarray(reference.values["eigenvalues"], float)
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="resnet_tiny,vit_tiny")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="/tmp/vitscope-bench-warm")
    ap.add_argument("--noise", type=float, default=hessian.WARM_NOISE,
                    help="weight of the random vector in the warm start")  # fmt: skip
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    args = ap.parse_args()
    hessian.WARM_NOISE = args.noise
    torch.set_num_threads(1)
    cfg = hessian.Config(batches=args.batches, batch_size=args.batch_size, top_k=5,
                         density_batches=0, trace_batches=0)  # fmt: skip
    print(f"top-5 by magnitude, tol {cfg.tol:g}, {args.batches} batches of {args.batch_size}, "
          f"HVPs per batch over batches 1.., warm noise {args.noise:g}")  # fmt: skip
    print(f"{'model':13s} {'cold HVPs':>9s} {'warm HVPs':>9s} {'cold/warm':>9s} "
          f"{'cold err':>9s} {'warm err':>9s}")  # fmt: skip
    rows = []
    for name in args.models.split(","):
        model, data = trained(name, Path(args.out))
        cold = hessian.run(model, data, cfg)
        warm = hessian.run(model, data, replace(cfg, warm_start=True))
        ref = hessian.run(model, data, replace(cfg, tol=1e-7, max_iter=200))
        c = np.mean(cold.values["num_matvecs"][1:])
        w = np.mean(warm.values["num_matvecs"][1:])
        print(f"{name:13s} {c:9.1f} {w:9.1f} {c / w:9.2f} {errors(cold, ref):9.1e} "
              f"{errors(warm, ref):9.1e}")  # fmt: skip
        rows.append(row("Lanczos HVPs/batch, cold / warm", name, c / w, 1.5,
                        detail=f"{c:.1f} vs {w:.1f}; errors {errors(cold, ref):.0e} / "
                        f"{errors(warm, ref):.0e}"))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
