"""Where a whole study's time goes: ``vitscope reproduce`` from scratch, stage by stage.

    python benchmarks/study_stages.py [--preset smoke] [--out DIR] [--json rows.json]

Runs ``vitscope reproduce --preset PRESET --out DIR`` in a child process (the CLI, so the
thread settings are the ones a user gets) into an empty folder, then reads the
``timings.json`` it writes and prints each stage's seconds and share of the wall time:
training (all runs), loading the checkpoints, each analysis (all runs), build-up, report.
``--preset cpu-mini`` is ``make demo``'s study (goal: <= 600 s on an idle 2-core machine);
``smoke`` (the default) is the CPU-sized check of the same pipeline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _table import row, write

DEMO_GOAL_S = 600.0  # issue K: make demo <= 10 minutes on an idle 2-core machine


def stages(timings: dict) -> dict[str, float]:
    """Seconds per stage, summed over runs."""
    out: dict[str, float] = defaultdict(float)
    for steps in timings["steps"].values():
        for step, seconds in steps.items():
            out[step] += seconds
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--out", help="study folder (default: a temp folder, removed after)")
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    args = ap.parse_args()
    tmp = None if args.out else tempfile.mkdtemp(prefix="vitscope-stages-")
    out = Path(args.out or tmp) / args.preset
    if out.exists():
        sys.exit(f"{out} exists; this benchmark times a study from scratch")
    try:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "vitscope", "reproduce", "--preset", args.preset,
               "--out", str(out)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        timings = json.loads((out / "timings.json").read_text())
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    total = timings["seconds"]
    by_stage = stages(timings)
    print(f"vitscope reproduce --preset {args.preset}: {total:.1f} s in the study, {wall:.1f} s "
          f"with start-up")  # fmt: skip
    print(f"{'stage':<14}{'seconds':>9}{'share':>8}")
    rows = []
    for stage, seconds in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<14}{seconds:>9.1f}{seconds / total:>8.2f}")
        rows.append(row(f"{args.preset} study: stage / wall time", stage, seconds / total,
                        detail=f"{seconds:.1f} of {total:.1f} s"))  # fmt: skip
    if args.preset == "cpu-mini":
        rows.append(row("make demo wall time / 10 min", "cpu-mini", wall / DEMO_GOAL_S, 1.0,
                        "lower", f"{wall:.0f} s"))  # fmt: skip
    write(args.json, rows)


if __name__ == "__main__":
    main()
