"""Training images/s on an idle machine and beside one competing CPU-bound process.

    python benchmarks/threads_under_load.py [--model resnet_tiny] [--images 1536] [--rounds 3]
        [--amp none|bf16|auto] [--configs "torch defaults,vitscope,passive,..."]

Each configuration trains in a fresh child process (OpenMP reads its environment once, at
start-up), idle and then beside ``python -c 'while 1: pass'`` (one core taken):

* ``torch defaults``: nothing set (libgomp spins at barriers, one thread per CPU);
* ``vitscope``: what the CLI sets (:func:`vitscope.threads.configure`: ``GOMP_SPINCOUNT=
  3000``, threads from the available cores);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once);
* ``spin 1e4``, ``spin 300``: ``GOMP_SPINCOUNT=10000``, ``300``;
* ``1 thread``: for scale, what a single thread gets.

Printed: img/s idle and loaded, and loaded / idle of the same configuration (the fair share
with one of two cores taken is 0.5; goal >= 0.4), plus each against torch-defaults-idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _table import row, write

CHILD = r"""
import json, statistics, sys, time
args = json.loads(sys.argv[1])
if args["configure"]:
    from vitscope.threads import configure
    configure(args["threads"])
import torch
from vitscope.config import TrainConfig
from vitscope.data import BatchAugment
from vitscope.models import create_model
from vitscope.train import train_one_epoch
g = torch.Generator().manual_seed(0)
n = args["images"]
images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
labels = torch.randint(0, 10, (n,), generator=g)
torch.manual_seed(0)
model = create_model(args["model"], num_classes=10, in_chans=1, img_size=28)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
cfg = TrainConfig(batch_size=128, epochs=1, lr=1e-3, amp=args["amp"], progress=False)
aug = BatchAugment(mean=(0.286,), std=(0.353,), num_classes=10, crop_padding=2, hflip=True)
def epoch():
    t0 = time.perf_counter()
    train_one_epoch(model, images, labels, augment=aug, optimizer=opt, cfg=cfg, epoch=0,
                    generator=g)
    return time.perf_counter() - t0
epoch()  # warm-up
times = [epoch() for _ in range(args["rounds"])]
print(json.dumps({"ips": n / statistics.median(times), "threads": torch.get_num_threads()}))
"""

CONFIGS = {
    "torch defaults": {"configure": False, "threads": None},
    "passive": {"configure": False, "threads": None, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "spin 1e4": {"configure": False, "threads": None, "env": {"GOMP_SPINCOUNT": "10000"}},
    "spin 300": {"configure": False, "threads": None, "env": {"GOMP_SPINCOUNT": "300"}},
    "vitscope": {"configure": True, "threads": None},
    "1 thread": {"configure": True, "threads": 1},
}


def child(cfg: dict, args) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                        "VITSCOPE_THREADS")}  # fmt: skip
    env.update(cfg.get("env", {}))
    payload = json.dumps({**cfg, "model": args.model, "images": args.images,
                          "rounds": args.rounds, "amp": args.amp})  # fmt: skip
    out = subprocess.run([sys.executable, "-c", CHILD, payload], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet_tiny")
    ap.add_argument("--images", type=int, default=1536)
    ap.add_argument("--rounds", type=int, default=2, help="timed epochs per child")
    ap.add_argument("--passes", type=int, default=3, help="children per configuration")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--amp", default="none", help="train.amp of the children (none/bf16/auto)")
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    args = ap.parse_args()
    names = args.configs.split(",")
    print(f"{args.model}, {args.images} images/epoch, 28x28x1, batch 128, {os.cpu_count()} CPUs; "
          f"median of {args.passes} interleaved children x {args.rounds} epochs")  # fmt: skip
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.passes):  # interleaved, so drifts of the machine hit every config
        for name in names:
            runs.setdefault((name, "idle"), []).append(child(CONFIGS[name], args))
        hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        try:
            time.sleep(0.5)
            for name in names:
                runs.setdefault((name, "loaded"), []).append(child(CONFIGS[name], args))
        finally:
            hog.kill()
            hog.wait()
    ips = {k: statistics.median(r["ips"] for r in v) for k, v in runs.items()}
    base = ips[(names[0], "idle")]
    print(f"{'config':16s} {'threads':>7s} {'idle img/s':>10s} {'loaded':>8s} "
          f"{'loaded/idle':>11s} {'idle/ref':>8s} {'loaded/ref':>10s}")  # fmt: skip
    for name in names:
        idle, loaded = ips[(name, "idle")], ips[(name, "loaded")]
        threads = runs[(name, "idle")][0]["threads"]
        print(f"{name:16s} {threads:7d} {idle:10.0f} {loaded:8.0f} {loaded / idle:11.2f} "
              f"{idle / base:8.2f} {loaded / base:10.2f}")  # fmt: skip
    print(f"ref = {names[0]}, idle; goal: vitscope loaded >= 0.4 x ref (fair share 0.5)")
    rows = []
    for name in names:
        idle, loaded = ips[(name, "idle")], ips[(name, "loaded")]
        detail = f"{loaded:.0f} / {base:.0f} img/s; idle {idle / base:.2f}x"
        goal = 0.4 if name == "vitscope" else None
        rows.append(row("training beside a CPU hog / idle torch defaults",
                        f"{args.model}, {name}", loaded / base, goal, detail=detail))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
