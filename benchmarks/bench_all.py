"""Every CPU benchmark in CPU-sized mode, one after another, and one table of their ratios.

    python benchmarks/bench_all.py [--only train,hvp,...] [--json table.json]   # make bench

Each benchmark runs in its own child process (thread settings are read at start-up), never
two at once, and measures its reference in the same run (a bare PyTorch loop, torch's
default threads, PyHessian, a cold start, a gradient, a bare forward). Each writes its rows
(``benchmarks/_table.py``); the table prints them with the goal each ratio is held to.
The GPU benchmark (``gpu_speed.py``), the streaming one (minutes of JPEG writing) and the
foreign-model one (needs timm/torchvision) are run on their own. Full-size options of each
are in its docstring. About 15 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _table import format_table, row

HERE = Path(__file__).resolve().parent

# name: (script, CPU-sized arguments)
BENCHMARKS = {
    "train": ("train_throughput.py", ["--models", "resnet_tiny,vit_tiny,alternet_tiny",
                                      "--images", "1024", "--rounds", "3"]),
    "options": ("cpu_train_options.py", ["--images", "1024", "--options",
                                          "fp32,cl,sdpa,bf16,bf16+cl"]),
    "threads": ("threads_under_load.py", ["--configs", "torch defaults,vitscope",
                                          "--passes", "1", "--images", "1024", "--rounds", "1"]),
    "pyhessian": ("hessian_vs_pyhessian.py", ["--models", "resnet_tiny,vit_tiny"]),
    "warm": ("lanczos_warm_start.py", ["--batches", "4"]),
    "hvp": ("hvp_cost.py", ["--rounds", "5"]),
    "landscape": ("landscape_cost.py", ["--rounds", "5"]),
    "stages": ("study_stages.py", ["--preset", "smoke"]),
}  # fmt: skip


def missing(name: str) -> str | None:
    """Why a benchmark cannot run here, or None."""
    if name == "pyhessian" and importlib.util.find_spec("pyhessian") is None:
        return "PyHessian missing: pip install --no-deps pyhessian==0.1 (make bench does)"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    ap.add_argument("--json", help="also write every row here")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"--only: unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
        return 2
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="vitscope-bench-") as tmp:
        for name in names:
            script, argv = BENCHMARKS[name]
            why = missing(name)
            if why:
                print(f"[{name}] skipped: {why}")
                failed.append(name)
                continue
            out = Path(tmp) / f"{name}.json"
            print(f"[{name}] python benchmarks/{script} {' '.join(argv)}", flush=True)
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, str(HERE / script), *argv, "--json", str(out)])
            seconds = time.perf_counter() - t0
            if done.returncode != 0 or not out.is_file():
                print(f"[{name}] failed (exit {done.returncode})")
                failed.append(name)
                continue
            got = json.loads(out.read_text())
            rows += got
            rows.append(row("benchmark wall time (s)", name, seconds, detail=script))
    bench = [r for r in rows if r["benchmark"] != "benchmark wall time (s)"]
    print()
    print(format_table(bench))
    walls = ", ".join(f"{r['case']} {r['ratio']:.0f}" for r in rows if r not in bench)
    print(f"\nseconds per benchmark: {walls}")
    if failed:
        print(f"not measured: {', '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
