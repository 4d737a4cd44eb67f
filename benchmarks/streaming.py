"""Streamed image folders: peak memory against the number of images, and decode throughput
against a bare DataLoader loop over the same files.

    .venv/bin/python benchmarks/streaming.py [--small 2000] [--large 20000] [--size 224]
        [--images 2000] [--batch 128] [--folder /tmp/vitscope-bench-stream]

1. A synthetic ImageNet-style folder of ``--large`` JPEGs (256 x 256..320, 10 classes; written
   once, kept in ``--folder``) and a second one holding the first ``--small`` of them.
2. Memory: for each folder, a fresh process (and a fresh ``VITSCOPE_CACHE``) loads the train
   split streamed, runs the channel statistics pass and then one training epoch of
   worker-decoded 224 x 224 RandomResizedCrop + flip batches (2 workers, nothing trained),
   sampling the resident memory of its whole process tree (itself and its workers) every
   20 ms: the peak of the sum.
3. Throughput: images/s of one epoch over ``--images`` files, vitscope's
   :func:`~vitscope.data.stream.train_batches` against a bare ``DataLoader`` whose dataset
   does the same work (Pillow decode, RGB, a crop box resized to 224, flip, to tensor) and
   nothing else, for 1, 2 and all cores' workers, alternated, best of ``--repeats``.

Run with nothing else busy: both sides share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD_MEMORY = r"""
import json, os, sys, threading, time
import torch
torch.set_num_threads(1)
root, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def tree_rss():
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            pass
    return total / 1024

peak = {"now": 0.0}
def sample():
    while True:
        peak["now"] = max(peak["now"], tree_rss())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()

from vitscope.data import load_dataset
from vitscope.data.stream import Crop, train_batches
from vitscope.train.loop import batch_indices
start = tree_rss()
t = time.perf_counter()
data = load_dataset("folder", train=True, root=root, img_size=size, loader="stream", decoder="pil")
stats_s = time.perf_counter() - t
after_stats = peak["now"]
g = torch.Generator().manual_seed(0)
batches = list(batch_indices(len(data), batch, generator=g))
t = time.perf_counter()
n = 0
for _, x, y in train_batches(data.images, data.labels, batches, crop=Crop(), seed=0, epoch=0,
                             workers=2):
    n += len(y)
epoch_s = time.perf_counter() - t
print(json.dumps({"images": len(data), "start_mib": start, "stats_peak_mib": after_stats,
                  "peak_mib": peak["now"], "stats_s": stats_s, "epoch_s": epoch_s, "seen": n}))
"""

CHILD_SPEED = r"""
import json, os, random, sys, time
import numpy as np
import torch
from PIL import Image
torch.set_num_threads(1)
root, size, batch, workers, which, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
from vitscope.data import load_dataset
from vitscope.data.stream import Crop, train_batches
from vitscope.train.loop import batch_indices
data = load_dataset("folder", train=True, root=root, img_size=size, loader="stream", decoder="pil",
                    stats=((0.5,) * 3, (0.25,) * 3))
images, labels = data.images[:limit], data.labels[:limit]
g = torch.Generator().manual_seed(0)
batches = list(batch_indices(len(labels), batch, generator=g))

class Bare(torch.utils.data.Dataset):
    # the same work as a training crop, written the plain way
    def __init__(self, paths):
        self.paths = paths
    def __len__(self):
        return len(self.paths)
    def __getitem__(self, i):
        rnd = random.Random(i)
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
        w, h = im.size
        s = rnd.uniform(0.08, 1.0) * w * h
        cw, ch = min(w, int(s ** 0.5)), min(h, int(s ** 0.5))
        l, t = rnd.randint(0, w - cw), rnd.randint(0, h - ch)
        im = im.resize((size, size), Image.BILINEAR, box=(l, t, l + cw, t + ch))
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        if rnd.random() < 0.5:
            x = x.flip(-1)
        return x, 0

t = time.perf_counter()
n = 0
if which == "bare":
    sampler = [b.tolist() for b in batches]
    loader = torch.utils.data.DataLoader(Bare(images.paths()), batch_sampler=sampler,
                                         num_workers=workers, prefetch_factor=4)
    for x, y in loader:
        n += len(y)
else:
    for _, x, y in train_batches(images, labels, batches, crop=Crop(), seed=0, epoch=0,
                                 workers=workers):
        n += len(y)
print(json.dumps({"img_s": n / (time.perf_counter() - t), "n": n}))
"""


def make_folder(root: Path, n: int, classes: int = 10) -> Path:
    """``n`` JPEGs of smooth random content, 256 x 256..320 (ImageNet-like file sizes)."""
    import numpy as np
    from PIL import Image

    done = root / f".done-{n}"
    if done.is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        w = int(rng.integers(256, 321))
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, 256), Image.BICUBIC)
        noise = rng.normal(0, 12, (256, w, 3))
        arr = (np.asarray(img, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i:06d}.jpg", quality=85)
    (root / "val").mkdir(exist_ok=True)
    for c in range(classes):
        src = root / "train" / f"class{c:02d}"
        (root / "val" / src.name).mkdir(exist_ok=True)
        first = sorted(src.iterdir())[0]
        (root / "val" / src.name / first.name).write_bytes(first.read_bytes())
    done.touch()
    return root


def subset_folder(src: Path, dst: Path, n: int) -> Path:
    """A folder holding the first ``n`` images of ``src`` (hard links: no extra disk)."""
    done = dst / f".done-{n}"
    if done.is_file():
        return dst
    files = sorted((src / "train").glob("*/*.jpg"), key=lambda p: p.name)[:n]
    for f in files:
        t = dst / "train" / f.parent.name / f.name
        t.parent.mkdir(parents=True, exist_ok=True)
        if not t.exists():
            t.hardlink_to(f)
    for f in (src / "val").glob("*/*.jpg"):
        t = dst / "val" / f.parent.name / f.name
        t.parent.mkdir(parents=True, exist_ok=True)
        if not t.exists():
            t.hardlink_to(f)
    done.touch()
    return dst


def child(code: str, *args) -> dict:
    # a fresh statistics cache: the pass is measured, not read back from an earlier run
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "VITSCOPE_CACHE": cache}
        out = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                             capture_output=True, text=True, check=False, env=env)  # fmt: skip
    if out.returncode:
        sys.exit(f"benchmark child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--images", type=int, default=2000, help="files per throughput epoch")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--folder", default="/tmp/vitscope-bench-stream")
    a = p.parse_args()

    from vitscope.data.stream import available_cores

    base = Path(a.folder)
    large = make_folder(base / f"n{a.large}", a.large)
    small = subset_folder(large, base / f"n{a.small}", a.small)

    print(f"memory (peak RSS of the process tree, {a.size}x{a.size} crops, batch {a.batch}, "
          "2 workers)")  # fmt: skip
    print(f"{'images':>8} {'start MiB':>10} {'stats pass':>11} {'epoch peak':>11} "
          f"{'stats s':>8} {'epoch s':>8}")  # fmt: skip
    rows = [child(CHILD_MEMORY, f, a.size, a.batch) for f in (small, large)]
    for r in rows:
        print(f"{r['images']:>8} {r['start_mib']:>10.0f} {r['stats_peak_mib']:>11.0f} "
              f"{r['peak_mib']:>11.0f} {r['stats_s']:>8.1f} {r['epoch_s']:>8.1f}")  # fmt: skip
    ratio = rows[1]["peak_mib"] / rows[0]["peak_mib"]
    print(f"peak ratio {a.large} / {a.small} images: {ratio:.2f}x "
          f"(file count ratio {a.large / a.small:.0f}x)")  # fmt: skip

    print(f"\nthroughput over {a.images} files (img/s, best of {a.repeats})")
    print(f"{'workers':>8} {'bare':>8} {'vitscope':>9} {'ratio':>6}")
    all_cores = available_cores()
    for w in sorted({1, 2, all_cores}):
        best = {"bare": 0.0, "vitscope": 0.0}
        for _ in range(a.repeats):
            for which in ("bare", "vitscope"):
                r = child(CHILD_SPEED, large, a.size, a.batch, w, which, a.images)
                best[which] = max(best[which], r["img_s"])
        label = f"{w}" + (" (all)" if w == all_cores else "")
        print(f"{label:>8} {best['bare']:>8.0f} {best['vitscope']:>9.0f} "
              f"{best['vitscope'] / best['bare']:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
