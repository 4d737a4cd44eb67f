"""CPU threads that share a busy machine gracefully (torch-free; the CLI calls it first).

PyTorch's CPU kernels run on OpenMP threads (GNU libgomp in the Linux wheels). Two habits of
that runtime hurt on a shared machine, a laptop or a login node:

* it starts one thread per CPU it may run on, even when a cgroup quota (a container's
  ``--cpus``, a SLURM job's ``cpus-per-task`` enforced by cgroups) allows fewer;
* a thread that reaches the end of a parallel region before the others *spins* there for a
  while (libgomp's default spin count, 300000), so when another process holds one of the
  cores the spinning thread takes CPU time from the very thread it waits for, and every
  region runs at the pace of the time slices.

:func:`configure` therefore, before torch is imported and only where the user has not said
otherwise: sets ``GOMP_SPINCOUNT=3000`` (a waiting thread spins a few microseconds, then
sleeps), and picks the number of threads from the cores this process may really use
(:func:`available_cores`: ``sched_getaffinity`` and the cgroup CPU quota) that other
processes leave free when the command starts (:func:`free_cores`: ``/proc/stat`` watched for
a quarter of a second; niced processes count as free). Measured on 2
cores (resnet_tiny training, ``benchmarks/threads_under_load.py``, img/s relative to torch's
defaults on an idle machine): torch's defaults 1.00 idle / 0.33 beside one CPU-bound
process; spin count 3000: 0.89 / 0.58; ``OMP_WAIT_POLICY=PASSIVE``: 0.77 / 0.71; spin
count 10000: 0.97 / 0.43. 3000 keeps most of the idle speed and well above the fair
share's 0.4 goal under load; set ``OMP_WAIT_POLICY=PASSIVE`` yourself on a machine that is
always busy. ``--threads N`` (or ``VITSCOPE_THREADS``)
sets it explicitly. A user's own ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT``/``OMP_NUM_THREADS``
always win. The thread count is fixed for a process: some CPU reductions depend on it, and a
run resumed after a kill must be bit-identical to one that was not. So vitscope never adapts
it mid-run to the load, and the first writer of a folder records its count there
(:data:`RECORD`): a resumed run, analysis or study uses it again, whatever the load then.
Measured in ``benchmarks/threads_under_load.py``; ``docs/performance.md``.
"""

from __future__ import annotations

import math
import os
import sys

ENV_THREADS = "VITSCOPE_THREADS"
RECORD = ".vitscope.threads"  # the thread count a folder's first writer used
SAMPLE_S = 0.25  # how long /proc/stat is watched to see which cores others keep busy
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
SPINCOUNT = "3000"  # libgomp's spin iterations before a waiting thread sleeps (default 300000)


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs the cgroup quota allows (``cpu.max`` in v2, ``cfs_quota_us/cfs_period_us`` in v1),
    or None without a quota."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = float(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = float(f.read())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Cores this process may run on: the affinity mask (``taskset``, SLURM's binding),
    capped by the cgroup CPU quota rounded up; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def _cpu_times(stat_path: str, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """``cpu -> (busy, total)`` jiffies of each CPU in ``cpus`` from ``/proc/stat``. Busy is
    user + system + irq + softirq + steal: *nice* time is left out, since a niced process
    yields its core to us, and idle and iowait are idle."""
    out = {}
    with open(stat_path) as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
            user, nice, system, idle, iowait, irq, softirq, steal = v
            out[int(name[3:])] = (user + system + irq + softirq + steal, sum(v))
    return out


def free_from(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """The cores left free between two :func:`_cpu_times` samples: the sum over CPUs of the
    share of the interval another process did not keep busy."""
    free = 0.0
    for cpu, (busy1, total1) in after.items():
        busy0, total0 = before.get(cpu, (busy1, total1))
        span = total1 - total0
        free += 1.0 if span <= 0 else 1.0 - min(1.0, max(0.0, (busy1 - busy0) / span))
    return free


def free_cores(sample_s: float = SAMPLE_S, stat_path: str = "/proc/stat") -> int | None:
    """Cores of :func:`available_cores` that other processes leave free now, watched for
    ``sample_s`` seconds (rounded half up, at least 1); None where ``/proc/stat`` cannot be
    read. A core another process keeps busy would make every OpenMP region wait for the
    thread that shares it (a 2-core machine beside one busy process trains at 0.3x its idle
    speed with 2 threads, 0.84x with 1: ``benchmarks/threads_under_load.py``)."""
    import time

    try:
        cpus = set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    try:
        before = _cpu_times(stat_path, cpus)
        time.sleep(sample_s)
        after = _cpu_times(stat_path, cpus)
    except (OSError, ValueError):
        return None
    if not after:
        return None
    return max(1, min(available_cores(), math.floor(free_from(before, after) + 0.5)))


def recorded(folder: str | os.PathLike | None) -> int | None:
    """The thread count recorded in ``folder`` by its first writer (None: none, unreadable)."""
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, RECORD)) as f:
            n = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return n if n >= 1 else None


def record(folder: str | os.PathLike) -> None:
    """Record this process's thread count in ``folder`` unless one is there (best effort: a
    full or read-only disk is reported by the writes that matter, not here)."""
    path = os.path.join(folder, RECORD)
    if os.path.exists(path):
        return
    if "torch" in sys.modules:
        n = sys.modules["torch"].get_num_threads()
    else:
        n = parse_threads(os.environ.get("OMP_NUM_THREADS")) or available_cores()
    try:
        with open(path, "x") as f:
            f.write(f"{n}\n")
    except OSError:
        pass


def parse_threads(value: str | int | None, where: str = "--threads") -> int | None:
    """A thread count from the command line or the environment (None: choose)."""
    from .errors import ConfigError

    if value is None or value == "" or value == "auto":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"{where} must be a positive integer or auto, got {value!r}")
    return n


def configure(
    threads: int | None = None,
    environ: dict | None = None,
    *,
    folder: str | os.PathLike | None = None,
    measure: bool = False,
) -> dict[str, str]:
    """Set the threading environment for this process and its children; returns what it set.

    Must run before ``import torch`` to reach OpenMP (the CLI calls it first). In a process
    that has already imported torch (a notebook, a test calling the CLI in-process) the
    environment is left alone and only an explicit ``threads`` is applied
    (``torch.set_num_threads``). The count, the first that applies:

    1. ``threads`` (``--threads``), then ``$VITSCOPE_THREADS``;
    2. ``$OMP_NUM_THREADS`` if the user set it (left to torch);
    3. the count recorded in ``folder`` (:data:`RECORD`, written by the folder's first
       writer): a resumed run or study uses the threads it started with, so it ends bit for
       bit as if it had never stopped (CPU reductions depend on the count);
    4. with ``measure``, the cores other processes leave free now (:func:`free_cores`);
    5. :func:`available_cores`.
    """
    env = os.environ if environ is None else environ
    if threads is None:
        threads = parse_threads(env.get(ENV_THREADS), ENV_THREADS)
    if environ is None and "torch" in sys.modules:  # too late for OpenMP's start-up
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        return {}
    done: dict[str, str] = {}
    if not any(v in env for v in WAIT_VARS):
        env["GOMP_SPINCOUNT"] = done["GOMP_SPINCOUNT"] = SPINCOUNT
    if threads is None and "OMP_NUM_THREADS" in env:
        return done  # the user's choice: torch reads it itself
    n = threads or recorded(folder) or (free_cores() if measure else None) or available_cores()
    env["OMP_NUM_THREADS"] = done["OMP_NUM_THREADS"] = str(n)
    return done
