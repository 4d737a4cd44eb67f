"""Seconds per loss-landscape grid point against one bare forward pass over the same batches.

    python benchmarks/landscape_cost.py [--models resnet_tiny,vit_tiny] [--batches 4]
        [--batch-size 128] [--rounds 7] [--threads 1]

For each model (eval mode, no_grad, the same augmented 28x28 batches held in memory):

* ``forward``: ``model(x)`` over the batches; nothing else.
* ``point``: :func:`vitscope.analyses.landscape.evaluate_point` at (a, b) = (0.3, -0.2):
  write θ0 + a·d1 + b·d2 into the parameters, the same forwards, soft-target NLL, accuracy,
  the L2 term.
* ``run/pt``: a whole 3x3 :func:`landscape.run` with a workdir (directions, batches, the
  partial grid written after every point), wall time over 9 points, for scale.

The rounds alternate between ``forward`` and ``point``; the medians and the ratio
point / forward (goal <= 1.2) are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from vitscope.analyses import landscape
from vitscope.analyses.base import TrainData
from vitscope.data import BatchAugment
from vitscope.models import create_model

from _table import row, write


def make_data(n: int) -> TrainData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    aug = BatchAugment(mean=(0.286,), std=(0.353,), num_classes=10, crop_padding=2, mixup_alpha=0.8)
    return TrainData(images, labels, aug, 10, 0.05, {"mixup_alpha": 0.8})


@torch.no_grad()
def forward(model, batches) -> None:
    for x, _ in batches:
        model(x)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(name: str, data: TrainData, cfg: landscape.Config, rounds: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, img_size=28).eval()
    batches = landscape.make_batches(data, cfg, torch.float32)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1, d2 = landscape.draw_directions(model, 2, cfg.norm, cfg.seed)
    resolved = replace(cfg, weight_decay=data.weight_decay)
    runs = {
        "forward": lambda: forward(model, batches),
        "point": lambda: landscape.evaluate_point(
            model, batches, theta0, d1, d2, 0.3, -0.2, resolved
        ),
    }
    for fn in runs.values():  # warm-up, not timed
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].append(timed(fn))
    landscape.restore(model, theta0)
    grid = replace(cfg, num_points=3)  # no store: nothing is saved or resumed
    wall = timed(lambda: landscape.run(model, data, grid))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**med, "run/pt": wall / 9, "ratio": med["point"] / med["forward"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet_tiny,vit_tiny")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = landscape.Config(batches=args.batches, batch_size=args.batch_size)
    data = make_data(max(512, args.batch_size))
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.batches} batches x "
        f"{args.batch_size} images (1x28x28), median of {args.rounds} rounds"
    )
    print(f"{'model':<14}{'forward s':>11}{'point s':>10}{'ratio':>8}{'run/pt s':>10}")
    rows = []
    for name in args.models.split(","):
        r = bench_model(name.strip(), data, cfg, args.rounds)
        print(
            f"{name:<14}{r['forward']:>11.4f}{r['point']:>10.4f}{r['ratio']:>7.3f}x"
            f"{r['run/pt']:>10.4f}"
        )
        rows.append(row("landscape point / bare forward", name, r["ratio"], 1.2, "lower",
                        f"{r['point']:.3f} vs {r['forward']:.3f} s; whole 3x3 grid "
                        f"{r['run/pt']:.3f} s/pt"))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
