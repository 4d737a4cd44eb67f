"""Which training options pay on this CPU once their start-up cost is counted.

    python benchmarks/cpu_train_options.py [--models resnet_tiny,vit_tiny,alternet_tiny,pit_tiny]
        [--options fp32,cl,sdpa,bf16,bf16+cl,compile,...] [--images 2048] [--rounds 2]
        [--json rows.json]

Per model (28x28x1 Fashion-MNIST-sized uint8 images in memory, batch 128, AdamW, crop + flip)
through vitscope's own ``train_one_epoch``, each option in a fresh model:

* ``fp32``: the default (float32, NCHW, explicit-softmax attention, eager), the reference;
* ``cl``: ``train.channels_last`` (models with convolutions only);
* ``sdpa``: ``train.fused_attention`` (``scaled_dot_product_attention`` while training);
* ``bf16``: ``train.amp=bf16`` (autocast; the CPU's bf16 instructions where it has them);
* ``compile``: ``train.compile`` (``torch.compile``, inductor);
* ``compile+sdpa``, ``bf16+cl``, ...: several at once.

``first s`` is the first epoch over ``--images`` images (compilation included) minus the
steady time of the same images: the option's start-up cost. ``img/s`` is the median steady
rate of ``--rounds`` further epochs. ``cpu-mini s`` projects ``make demo``'s training of
this model with the option: start-up once per run (the compile cache is per process) plus
its image-epochs at the steady rate, against the same for ``fp32``; the ratio is the speed-up
(> 1: the option pays).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from vitscope.config import TrainConfig
from vitscope.data import BatchAugment
from vitscope.models import create_model
from vitscope.models.layers import use_fused_attention
from vitscope.train.loop import train_one_epoch

from _table import row, write

MEAN, STD = (0.286,), (0.353,)
OPTIONS = ("fp32", "cl", "sdpa", "bf16", "bf16+cl", "bf16+sdpa", "bf16+cl+sdpa", "compile",
           "compile+sdpa")  # fmt: skip
# make demo (configs/cpu-mini.yaml): per model, (runs, image-epochs over all its runs).
# 12% = 7200 images x 6 epochs; 6% = 3600 x 4; vit_tiny also trains the GAP ablation at 6%.
CPU_MINI = {
    "resnet_tiny": (2, 7200 * 6 + 3600 * 4),
    "vit_tiny": (3, 7200 * 6 + 2 * 3600 * 4),
    "alternet_tiny": (1, 7200 * 6),
    "pit_tiny": (2, 7200 * 6 + 3600 * 4),
}


def has_convs(model: torch.nn.Module) -> bool:
    convs = (m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return any(m.kernel_size != m.stride for m in convs)  # a patch embedding is not one


def measure(name: str, option: str, n_images: int, rounds: int) -> dict | None:
    parts = set(option.split("+"))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, img_size=28)
    attention = any("Attention" in type(m).__name__ for m in model.modules())
    if ("cl" in parts and not has_convs(model)) or ("sdpa" in parts and not attention):
        return None
    cfg = TrainConfig(batch_size=128, epochs=4, warmup_epochs=0, lr=1e-3,
                      amp="bf16" if "bf16" in parts else "none",
                      channels_last="cl" in parts, progress=False)  # fmt: skip
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    augment = BatchAugment(mean=MEAN, std=STD, num_classes=10, crop_padding=2, hflip=True)
    forward = torch.compile(model) if "compile" in parts else model
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n_images,), generator=g)
    fused = use_fused_attention() if "sdpa" in parts else nullcontext()

    def epoch(e: int) -> float:
        t0 = time.perf_counter()
        train_one_epoch(model, images, labels, augment=augment, optimizer=optimizer, cfg=cfg,
                        epoch=e, generator=g, forward=forward)  # fmt: skip
        return time.perf_counter() - t0

    with fused:
        first = epoch(0)
        steady = statistics.median(epoch(1 + r) for r in range(rounds))
    return {"ips": n_images / steady, "startup": max(first - steady, 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=",".join(CPU_MINI))
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    args = ap.parse_args()
    options = args.options.split(",")
    if options[0] != "fp32":
        options.insert(0, "fp32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 28x28x1, batch 128")
    head = f"{'model':<15}{'option':<14}{'img/s':>8}{'first s':>9}{'cpu-mini s':>12}"
    print(head + f"{'speed-up':>10}")
    rows = []
    for name in args.models.split(","):
        runs, image_epochs = CPU_MINI.get(name, (1, 7200 * 6))
        ref = None
        for option in options:
            r = measure(name, option, args.images, args.rounds)
            if r is None:
                continue
            projected = runs * r["startup"] + image_epochs / r["ips"]
            ref = ref or projected
            print(f"{name:<15}{option:<14}{r['ips']:>8.0f}{r['startup']:>9.1f}{projected:>12.0f}"
                  f"{ref / projected:>9.2f}x", flush=True)  # fmt: skip
            if option != "fp32":
                rows.append(row("CPU training option / fp32 (make demo training time)",
                                f"{name} {option}", ref / projected,
                                detail=f"{r['ips']:.0f} img/s, start-up {r['startup']:.0f} s, "
                                f"{projected:.0f} s vs {ref:.0f} s"))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
