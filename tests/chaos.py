"""Chaos harness: run a vitscope command, SIGKILL its whole process group at a planned moment
of its log, run it again, and compare what the interrupted study leaves with an uninterrupted
one's.

A moment is named by a line of the command's own log (``[1/2] train runs/R``, ``NAME: ...``
when analysis NAME of run R finished or was skipped, ``time (s) of this call`` after the
report, ``report: PATH`` last) and a delay after it. The reference run's log gives each
line's time, so a kill ``delay = u * (interval's length)`` after a line lands inside the
step that follows that line, whatever the steps a restarted process skips before it. Where
a kill actually landed is read back from the killed process's own log (the last line it
printed), not assumed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# values that differ between two uninterrupted runs: wall-clock times, the command line
VOLATILE = frozenset(
    {"provenance", "time", "command", "generated", "elapsed", "seconds", "seconds_total",
     "seconds_per_point", "images_per_s", "train_seconds"}
)  # fmt: skip
# files compared only for being there: figures, pages, the lock, this call's timings
PRESENT_ONLY = (".png", ".html", ".md", ".vitscope.lock", "timings.json")


@dataclass(frozen=True)
class Kill:
    """SIGKILL ``delay`` seconds after the log line whose key is ``marker`` (None: the start)."""

    marker: tuple | None
    delay: float
    stage: str  # what the plan expects to interrupt, for the table


@dataclass
class Outcome:
    rc: int
    killed: bool
    lines: list[tuple[float, str]]  # (seconds since start, text)
    keys: list[tuple[float, tuple]]  # the lines that name a moment, with their times


def line_key(text: str, run: str | None) -> tuple | None:
    """The moment a log line names, or None for lines that name none."""
    if m := re.match(r"\[\d+/\d+\] (train|analyze) runs/(\S+)$", text):
        return (m[1], m[2])
    if text.startswith("time (s) of this call"):
        return ("report-done",)
    if text.startswith("report: "):
        return ("report-path",)
    if run is not None and (m := re.match(r"([a-z_]+): ", text)):
        return ("done", m[1], run)
    return None


def run(cmd: list[str], kill: Kill | None = None, timeout: float = 600) -> Outcome:
    """Run ``cmd`` in its own session; with ``kill``, SIGKILL the session at that moment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()

    def pump():
        for text in proc.stdout:
            lines.put((time.monotonic() - t0, text.rstrip("\n")))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    out = Outcome(rc=0, killed=False, lines=[], keys=[])
    kill_at = None if kill is None or kill.marker is not None else kill.delay
    current_run = None
    while True:
        now = time.monotonic() - t0
        if now > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"{' '.join(cmd)} ran past {timeout} s")
        wait = 1.0 if kill_at is None or out.killed else max(0.0, kill_at - now)
        try:
            item = lines.get(timeout=wait)
        except queue.Empty:
            if kill_at is not None and not out.killed and time.monotonic() - t0 >= kill_at:
                os.killpg(proc.pid, signal.SIGKILL)
                out.killed = True
            continue
        if item is None:
            break
        t, text = item
        out.lines.append(item)
        key = line_key(text, current_run)
        if key is None:
            continue
        if key[0] == "analyze":
            current_run = key[1]
        out.keys.append((t, key))
        if kill is not None and kill_at is None and key == kill.marker:
            kill_at = t + kill.delay
    out.rc = proc.wait()
    # a kill planned after the process had already finished is no kill
    out.killed = out.killed and out.rc == -signal.SIGKILL
    return out


def stages(reference: Outcome) -> list[tuple[tuple, float, str]]:
    """Each interval of the reference log: (the key that opens it, its length, its step)."""
    keys = reference.keys
    found = []
    for (t, key), (t_next, nxt) in zip(keys, keys[1:]):
        if nxt[0] == "done":
            step = nxt[1]
        elif nxt[0] == "report-done":
            step = "report"
        elif nxt[0] == "report-path":
            step = "end"
        elif key[0] == "train":
            step = "train"
        else:
            step = "between"
        found.append((key, t_next - t, step))
    return found


def landed(outcome: Outcome, reference: Outcome) -> str:
    """The step a killed process was in: the one after the last moment it logged."""
    if not outcome.keys:
        return "start"
    last = outcome.keys[-1][1]
    for key, _, step in stages(reference):
        if key == last:
            return step
    return "end"


def plan(reference: Outcome, steps: list[str], per_step: int, rng: np.random.Generator):
    """``per_step`` kills inside each of ``steps`` (a random interval of that step, a random
    point of its first three quarters), in the order they happen. The last quarter is left
    out so that a kill still lands inside its step when that step runs up to a quarter faster
    than it did in the reference (noise on a shared machine, a cache the reference filled)."""
    intervals = stages(reference)
    kills = []
    for step in steps:
        where = [i for i, (_, _, s) in enumerate(intervals) if s == step]
        assert where, f"the reference log has no {step} step"
        for _ in range(per_step):
            i = int(rng.choice(where))
            u = float(rng.uniform(0.05, 0.75))
            kills.append((i, u, Kill(intervals[i][0], u * intervals[i][1], step)))
    return [k for _, _, k in sorted(kills, key=lambda k: (k[0], k[1]))]


# ---------------------------------------------------------------------------------------
# comparing two study folders
# ---------------------------------------------------------------------------------------


def _normal(value, root: str):
    if isinstance(value, dict):
        return {k: _normal(v, root) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_normal(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<FOLDER>")
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        return ("tensor", str(value.dtype), tuple(value.shape), flat.numpy().tobytes())
    return value


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_same_study(ref: Path, got: Path) -> int:
    """Every file of ``ref`` is in ``got`` and no other (no temp or partial left); JSON values,
    metrics lines and checkpoints equal bit for bit, arrays allclose. Returns files compared."""
    names = files(ref)
    assert names == files(got), sorted(set(names) ^ set(files(got)))
    compared = 0
    for name in names:
        a, b = ref / name, got / name
        if name.endswith(PRESENT_ONLY):
            continue
        compared += 1
        if name.endswith(".json"):
            left, right = (
                _normal(json.loads(p.read_text()), str(r)) for p, r in ((a, ref), (b, got))
            )
            assert left == right, name
        elif name.endswith(".jsonl"):
            rows = [[_normal(json.loads(line), str(r)) for line in p.read_text().splitlines()]
                    for p, r in ((a, ref), (b, got))]  # fmt: skip
            assert rows[0] == rows[1], name
        elif name.endswith(".npz"):
            with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
                assert sorted(x.files) == sorted(y.files), name
                for k in x.files:
                    if k not in VOLATILE:
                        np.testing.assert_allclose(x[k], y[k], rtol=1e-6, atol=0, equal_nan=True,
                                                   err_msg=f"{name}[{k}]")  # fmt: skip
        elif name.endswith(".pt"):
            left, right = (_normal(torch.load(p, weights_only=True, map_location="cpu"), str(r))
                           for p, r in ((a, ref), (b, got)))  # fmt: skip
            assert left == right, name
        else:
            assert a.read_text().replace(str(ref), "") == b.read_text().replace(str(got), ""), name
    return compared
