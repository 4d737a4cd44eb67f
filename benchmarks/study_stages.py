"""Where a whole study's time goes: ``vitscope reproduce`` from scratch, stage by stage.

    python benchmarks/study_stages.py [--preset smoke] [--out DIR] [--json rows.json]
    python benchmarks/study_stages.py --preset cpu-mini --beside-hog   # idle, then loaded

Runs ``vitscope reproduce --preset PRESET --out DIR`` in a child process (the CLI, so the
thread settings are the ones a user gets) into an empty folder, then reads the
``timings.json`` it writes and prints each stage's seconds and share of the wall time:
training (all runs), loading the checkpoints, each analysis (all runs), build-up, report.
``--preset cpu-mini`` is ``make demo``'s study (goal: <= 600 s on an idle 2-core machine);
``smoke`` (the default) is the CPU-sized check of the same pipeline.

``--beside-hog`` times the study twice in the same run, first on the idle machine, then with
one CPU-bound process (``python -c 'while 1: pass'``) started before it and killed after it,
and prints the ratio of the two wall times (issue K's goal for ``make demo``: <= 2.2x).
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
HOG_GOAL = 2.2  # issue K: make demo beside one CPU-bound process <= 2.2x its idle time
HOG = "while 1: pass"


def stages(timings: dict) -> dict[str, float]:
    """Seconds per stage, summed over runs."""
    out: dict[str, float] = defaultdict(float)
    for steps in timings["steps"].values():
        for step, seconds in steps.items():
            out[step] += seconds
    return dict(out)


def timed_study(preset: str, out: Path, hogs: int = 0) -> tuple[float, dict]:
    """``(wall seconds, timings.json)`` of ``vitscope reproduce --preset preset`` into
    ``out``, with ``hogs`` CPU-bound processes running beside it from before it starts."""
    if out.exists():
        sys.exit(f"{out} exists; this benchmark times a study from scratch")
    hogging = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
    try:
        time.sleep(1.0 if hogs else 0.0)  # the hogs are running when vitscope starts
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "vitscope", "reproduce", "--preset", preset,
               "--out", str(out)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
    finally:
        for p in hogging:
            p.kill()
            p.wait()
    threads = (out / ".vitscope.threads").read_text().strip()
    return wall, {**json.loads((out / "timings.json").read_text()), "threads": threads}


def show(preset: str, wall: float, timings: dict, what: str) -> list[dict]:
    total = timings["seconds"]
    print(f"vitscope reproduce --preset {preset}{what}: {total:.1f} s in the study, {wall:.1f} "
          f"s with start-up, {timings['threads']} thread(s)")  # fmt: skip
    print(f"{'stage':<14}{'seconds':>9}{'share':>8}")
    rows = []
    for stage, seconds in sorted(stages(timings).items(), key=lambda kv: -kv[1]):
        print(f"{stage:<14}{seconds:>9.1f}{seconds / total:>8.2f}")
        rows.append(row(f"{preset} study{what}: stage / wall time", stage, seconds / total,
                        detail=f"{seconds:.1f} of {total:.1f} s"))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--out", help="study folder (default: a temp folder, removed after)")
    ap.add_argument("--json", help="also write the table's rows here (benchmarks/bench_all.py)")
    ap.add_argument("--beside-hog", action="store_true",
                    help="time it idle, then beside one CPU-bound process")  # fmt: skip
    args = ap.parse_args()
    tmp = None if args.out else tempfile.mkdtemp(prefix="vitscope-stages-")
    base = Path(args.out or tmp)
    rows = []
    try:
        wall, timings = timed_study(args.preset, base / args.preset)
        rows += show(args.preset, wall, timings, "")
        if args.preset == "cpu-mini":
            rows.append(row("make demo wall time / 10 min", "cpu-mini", wall / DEMO_GOAL_S, 1.0,
                            "lower", f"{wall:.0f} s"))  # fmt: skip
        if args.beside_hog:
            loaded, lt = timed_study(args.preset, base / f"{args.preset}-hog", hogs=1)
            rows += show(args.preset, loaded, lt, " beside a CPU hog")
            print(f"beside one CPU-bound process: {loaded:.0f} s = {loaded / wall:.2f}x idle")
            rows.append(row(f"{args.preset} study beside a CPU hog / idle", args.preset,
                            loaded / wall, HOG_GOAL, "lower",
                            f"{loaded:.0f} vs {wall:.0f} s; threads {lt['threads']} vs "
                            f"{timings['threads']}"))  # fmt: skip
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    write(args.json, rows)


if __name__ == "__main__":
    main()
