"""Training images/s of vitscope's loop against a bare PyTorch loop, same model and batch.

    python benchmarks/train_throughput.py [--models resnet_tiny,vit_tiny] [--images 2048]

For each model both loops train on the same uint8 images held in memory, batch 128, AdamW:

* ``bare``: normalise -> forward -> cross-entropy -> backward -> step; nothing else.
* ``vitscope``: :func:`vitscope.train.train_one_epoch` with augmentation switched off
  (so the two do the same arithmetic; the difference is vitscope's own overhead: the
  per-step learning-rate function, soft targets, the NaN check, running statistics).
* ``vitscope+aug``: the same with the default CPU augmentation (crop + flip), for scale.

The rounds alternate between the loops and the median of each is reported, with the ratio
vitscope / bare (goal >= 0.9). ``GFLOP/s`` is vitscope's training rate in arithmetic
(forward + backward FLOPs of one batch, counted by ``torch.utils.flop_counter``) and
``of peak`` its share of the machine's float32 matmul rate measured in the same run
(a 1024^3 ``torch.mm``, same threads): how far the loop is from the machine's limit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vitscope.config import TrainConfig
from vitscope.data import BatchAugment, normalize
from vitscope.models import create_model
from vitscope.train import train_one_epoch

from _table import row, write

MEAN, STD = (0.286,), (0.353,)


def bare_epoch(model, opt, images, labels, batch_size, generator):
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(labels), batch_size):
        idx = order[start : start + batch_size]
        x = normalize(images[idx], MEAN, STD)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(n: int = 1024, rounds: int = 5) -> float:
    """float32 FLOP/s of an ``n x n`` matmul on this machine, median of ``rounds``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = [timed(lambda: torch.mm(a, b)) for _ in range(rounds)]
    return 2 * n**3 / statistics.median(times)


def step_flops(model, batch_size: int) -> int:
    """Forward + backward FLOPs of one training batch."""
    x = torch.randn(batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch_size, dtype=torch.long)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_model(name: str, n_images: int, batch_size: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n_images,), generator=g)
    cfg = TrainConfig(batch_size=batch_size, epochs=1, lr=1e-3, progress=False)
    plain = BatchAugment(mean=MEAN, std=STD, num_classes=10, crop_padding=0, hflip=False)
    aug = BatchAugment(mean=MEAN, std=STD, num_classes=10, crop_padding=2, hflip=True)

    def fresh():
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_chans=1, img_size=28)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    runs = {
        "bare": lambda m, o: bare_epoch(m, o, images, labels, batch_size, g),
        "vitscope": lambda m, o: train_one_epoch(
            m, images, labels, augment=plain, optimizer=o, cfg=cfg, epoch=0, generator=g
        ),
        "vitscope+aug": lambda m, o: train_one_epoch(
            m, images, labels, augment=aug, optimizer=o, cfg=cfg, epoch=0, generator=g
        ),
    }
    models = {k: fresh() for k in runs}
    for k, fn in runs.items():  # warm-up round, not timed
        fn(*models[k])
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].append(timed(lambda: fn(*models[k])))  # noqa: B023
    ips = {k: n_images / statistics.median(v) for k, v in times.items()}
    flops = step_flops(models["bare"][0], batch_size) / batch_size  # per image
    params = sum(p.numel() for p in models["bare"][0].parameters())
    return {"model": name, "params": params, "flops": flops, **ips}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="resnet_tiny,vit_tiny,pit_tiny,swin_tiny,alternet_tiny")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {threads} threads, 28x28x1, batch {args.batch_size}; "
          f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s")  # fmt: skip
    head = ("model", "params", "bare img/s", "vitscope", "ratio", "+aug img/s", "GFLOP/s",
            "of peak")  # fmt: skip
    print("{:15s} {:>8s} {:>11s} {:>9s} {:>6s} {:>11s} {:>8s} {:>8s}".format(*head))
    rows = []
    for name in args.models.split(","):
        r = bench_model(name, args.images, args.batch_size, args.rounds)
        rate = r["flops"] * r["vitscope"]
        print(
            f"{r['model']:15s} {r['params']:8d} {r['bare']:11.0f} {r['vitscope']:9.0f} "
            f"{r['vitscope'] / r['bare']:6.3f} {r['vitscope+aug']:11.0f} {rate / 1e9:8.1f} "
            f"{rate / peak:8.2f}"
        )
        rows.append(row("training img/s vs bare loop", r["model"], r["vitscope"] / r["bare"], 0.9,
                        detail=f"{r['vitscope']:.0f} vs {r['bare']:.0f} img/s"))  # fmt: skip
        rows.append(row("training FLOP/s vs matmul peak", r["model"], rate / peak, None,
                        detail=f"{rate / 1e9:.1f} of {peak / 1e9:.1f} GFLOP/s"))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
