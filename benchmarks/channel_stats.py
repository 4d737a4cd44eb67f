"""Memory and time of the dataset channel statistics: streaming integer sums against the whole-split
float64 copy they replace.

    .venv/bin/python benchmarks/channel_stats.py [--images 2000] [--size 224]

Each method runs in its own process on the same random uint8 split ``(N, 3, size, size)``; the
table prints the extra peak RSS above the split itself and the seconds, the streaming method as
a ratio to the reference (the former ``.double()`` of the whole split) measured in the same run.
Run with nothing else busy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
n, size, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if method == "float64":
    y = x.transpose(0, 1).reshape(3, -1).double() / 255
    mean = [round(v, 6) for v in y.mean(1).tolist()]
else:
    from vitscope.data.datasets import _channel_stats
    mean = list(_channel_stats(x)[0])
seconds = time.perf_counter() - t
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"mib": x.numel() / 2**20, "extra_mib": extra, "s": seconds, "mean": mean}))
"""


def measure(n: int, size: int, method: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(size), method],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    ref = measure(a.images, a.size, "float64")
    new = measure(a.images, a.size, "streaming")
    assert new["mean"] == ref["mean"], (new["mean"], ref["mean"])
    print(f"split: {a.images} x 3 x {a.size} x {a.size} uint8 = {ref['mib']:.0f} MiB")
    print(
        f"{'method':<22}{'extra peak MiB':>16}{'seconds':>10}{'memory ratio':>14}{'time ratio':>12}"
    )
    for name, r in (("float64 (reference)", ref), ("streaming histogram", new)):
        print(
            f"{name:<22}{r['extra_mib']:>16.0f}{r['s']:>10.2f}"
            f"{r['extra_mib'] / ref['extra_mib']:>14.3f}{r['s'] / ref['s']:>12.3f}"
        )


if __name__ == "__main__":
    main()
