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
(:func:`available_cores`: ``sched_getaffinity`` and the cgroup CPU quota). Measured on 2
cores (resnet_tiny training, ``benchmarks/threads_under_load.py``, img/s relative to torch's
defaults on an idle machine): torch's defaults 1.00 idle / 0.33 beside one CPU-bound
process; spin count 3000: 0.89 / 0.58; ``OMP_WAIT_POLICY=PASSIVE``: 0.77 / 0.71; spin
count 10000: 0.97 / 0.43. 3000 keeps most of the idle speed and well above the fair
share's 0.4 goal under load; set ``OMP_WAIT_POLICY=PASSIVE`` yourself on a machine that is
always busy. ``--threads N`` (or ``VITSCOPE_THREADS``)
sets it explicitly. A user's own ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT``/``OMP_NUM_THREADS``
always win. The thread count is fixed for a process: some CPU reductions depend on it, and a
run resumed after a kill must be bit-identical to one that was not (so vitscope never adapts
it mid-run to the load). Measured in ``benchmarks/threads_under_load.py``; ``docs/performance.md``.
"""

from __future__ import annotations

import math
import os
import sys

ENV_THREADS = "VITSCOPE_THREADS"
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


def configure(threads: int | None = None, environ: dict | None = None) -> dict[str, str]:
    """Set the threading environment for this process and its children; returns what it set.

    Must run before ``import torch`` to reach OpenMP (the CLI calls it first). In a process
    that has already imported torch (a notebook, a test calling the CLI in-process) the
    environment is left alone and only an explicit ``threads`` is applied
    (``torch.set_num_threads``). ``threads``: an explicit count (``--threads``), else
    ``$VITSCOPE_THREADS``, else ``$OMP_NUM_THREADS`` if the user set it, else
    :func:`available_cores`.
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
    n = threads if threads is not None else available_cores()
    env["OMP_NUM_THREADS"] = done["OMP_NUM_THREADS"] = str(n)
    return done
