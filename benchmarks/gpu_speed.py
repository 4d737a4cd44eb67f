"""Training images/s, Hessian-vector-product and landscape-point cost on one device.

    python benchmarks/gpu_speed.py [--device cuda] [--models resnet50,vit_ti,swin_ti,alternet50]
        [--batch-size 128] [--steps 40] [--deadline 420] [--json out.json]
    python benchmarks/gpu_speed.py --smoke          # tiny models on CPU: checks the script runs

Training (CIFAR size: 32x32x3 uint8 images held on the device, 100 classes, AdamW, crop+flip
augmentation on the device) goes through vitscope's own ``train_one_epoch``: one untimed
epoch (warm-up; compilation), then one timed epoch of ``--steps`` steps. Options, each row
adding to the one before:

* ``fp32``: the reference (explicit-softmax attention, float32, NCHW);
* ``bf16``: ``train.amp=bf16`` (autocast);
* ``bf16+cl``: and ``train.channels_last`` (model and batches channels-last);
* ``bf16+cl+sdpa``: and fused attention (``use_fused_attention``: first-order work only);
* ``bf16+cl+sdpa+compile``: and ``torch.compile``.

Curvature and landscape costs, in float32 on one batch of 64 (HVP) or 4 batches of 256
(landscape point), each as a ratio to the plain pass it is built on:

* ``hvp/grad``: one Hessian-vector product of :class:`vitscope.curvature.HessianOperator`
  against one forward + backward of the same loss;
* ``point/fwd``: one :func:`vitscope.analyses.landscape.evaluate_point` against one bare
  forward over the same batches.

Each measurement that would start after ``--deadline`` seconds is skipped (so a device lease
always returns results); every number is printed as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext

import torch

from vitscope.analyses import landscape
from vitscope.analyses.base import TrainData
from vitscope.config import TrainConfig
from vitscope.curvature import HessianOperator
from vitscope.data import BatchAugment
from vitscope.models import create_model
from vitscope.models.layers import use_fused_attention
from vitscope.train.loop import train_one_epoch

from _timing import median_time, sync

MEAN, STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)
OPTIONS = ("fp32", "bf16", "bf16+cl", "bf16+cl+sdpa", "bf16+cl+sdpa+compile")


def make_images(n: int, size: int, classes: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return images.to(device), labels.to(device)


def train_speed(name: str, option: str, args, device: torch.device) -> float:
    """Images/s of one timed epoch of ``args.steps`` steps through ``train_one_epoch``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.classes, in_chans=3, img_size=args.size)
    model = model.to(device)
    cfg = TrainConfig(
        batch_size=args.batch_size,
        epochs=1,
        amp="bf16" if "bf16" in option else "none",
        channels_last="+cl" in option,
        device=str(device),
        progress=False,
    )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    augment = BatchAugment(mean=MEAN, std=STD, num_classes=args.classes, crop_padding=4, hflip=True)
    forward = torch.compile(model) if "compile" in option else model
    fused = use_fused_attention() if "sdpa" in option else nullcontext()
    warm_images, warm_labels = make_images(args.batch_size * args.warmup, args.size, args.classes,
                                           device)  # fmt: skip
    images, labels = make_images(args.batch_size * args.steps, args.size, args.classes, device)
    kw = dict(augment=augment, optimizer=optimizer, cfg=cfg, forward=forward)
    with fused:
        train_one_epoch(model, warm_images, warm_labels, epoch=1,
                        generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
        sync(device)
        stats = train_one_epoch(model, images, labels, epoch=1,
                                generator=torch.Generator().manual_seed(2), **kw)  # fmt: skip
        sync(device)
    return stats["images"] / stats["seconds"]


def hvp_cost(name: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.classes, in_chans=3, img_size=args.size)
    model = model.to(device).eval()
    images, labels = make_images(64, args.size, args.classes, device)
    x = (images.float() / 255 - torch.tensor(MEAN, device=device)[:, None, None]) / torch.tensor(
        STD, device=device
    )[:, None, None]
    params = [p for p in model.parameters() if p.requires_grad]

    def grad() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        torch.autograd.grad(loss, params)

    grad()
    t_grad = median_time(grad, device, args.repeats)
    with HessianOperator(lambda: torch.nn.functional.cross_entropy(model(x), labels), params) as op:
        v = torch.randn(op.dim, device=device)
        op @ v
        t_hvp = median_time(lambda: op @ v, device, args.repeats)
    return {"grad_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp, "hvp/grad": t_hvp / t_grad}


def landscape_cost(name: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.classes, in_chans=3, img_size=args.size)
    model = model.to(device).eval()
    images, labels = make_images(4 * 256, args.size, args.classes, device)
    aug = BatchAugment(mean=MEAN, std=STD, num_classes=args.classes, crop_padding=4, hflip=True)
    data = TrainData(images, labels, aug, args.classes, 0.05, {})
    cfg = landscape.Config(batches=4, batch_size=256, weight_decay=0.05, device=str(device))
    batches = landscape.make_batches(data, cfg, torch.float32)
    batches = [(x.to(device), t.to(device)) for x, t in batches]
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1, d2 = landscape.draw_directions(model, 2, cfg.norm, seed=0)

    @torch.no_grad()
    def forward() -> None:
        for x, _ in batches:
            model(x)

    def point() -> None:
        landscape.evaluate_point(model, batches, theta0, d1, d2, 0.3, -0.2, cfg)

    forward()
    point()
    t_fwd = median_time(forward, device, args.repeats)
    t_point = median_time(point, device, args.repeats)
    return {"fwd_ms": 1e3 * t_fwd, "point_ms": 1e3 * t_point, "point/fwd": t_point / t_fwd}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="resnet50,vit_ti,swin_ti,alternet50")
    p.add_argument("--options", default=",".join(OPTIONS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed training steps")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps before")
    p.add_argument("--repeats", type=int, default=5, help="timings per HVP/landscape median")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; skip what starts later")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny models, few steps, on the CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.models, args.steps, args.warmup = "cpu", "resnet_tiny,vit_tiny", 2, 1
        args.batch_size, args.repeats, args.options = 16, 1, "fp32,bf16+cl+sdpa"
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the reference row
    t_start = time.perf_counter()
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else "cpu", "torch": torch.__version__, "batch_size": args.batch_size,
                     "train": {}, "hvp": {}, "landscape": {}}  # fmt: skip
    print(f"device {results['device']}, torch {torch.__version__}, batch {args.batch_size}")

    def late(what: str) -> bool:
        if time.perf_counter() - t_start > args.deadline:
            print(f"{what}: skipped (past the {args.deadline:.0f} s deadline)", flush=True)
            return True
        return False

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    def train_rows(options: list[str]) -> None:
        for option in options:
            for name in models:
                if late(f"{name} {option}"):
                    continue
                try:
                    ips = train_speed(name, option, args, device)
                except Exception as e:  # one failing option must not lose the others
                    print(f"{name:12s} {option:22s} failed: {type(e).__name__}: {e}", flush=True)
                    results["train"].setdefault(name, {})[option] = None
                    continue
                base = results["train"].get(name, {}).get("fp32")
                rel = f"  x{ips / base:.2f} vs fp32" if base else ""
                print(f"{name:12s} {option:22s} {ips:9.0f} img/s{rel}", flush=True)
                results["train"].setdefault(name, {})[option] = ips
                save()

    models = args.models.split(",")
    options = args.options.split(",")
    # compiled rows last: they take the longest, and the deadline should cut them first
    train_rows([o for o in options if "compile" not in o])
    for name in models:
        if not late(f"{name} hvp"):
            results["hvp"][name] = r = hvp_cost(name, args, device)
            print(f"{name:12s} grad {r['grad_ms']:.1f} ms  HVP {r['hvp_ms']:.1f} ms  "
                  f"ratio {r['hvp/grad']:.2f}", flush=True)  # fmt: skip
            save()
        if not late(f"{name} landscape"):
            results["landscape"][name] = r = landscape_cost(name, args, device)
            print(f"{name:12s} forward {r['fwd_ms']:.1f} ms  point {r['point_ms']:.1f} ms  "
                  f"ratio {r['point/fwd']:.2f}", flush=True)  # fmt: skip
            save()
    train_rows([o for o in options if "compile" in o])
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
