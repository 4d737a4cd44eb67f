"""Durable atomic writes and the one-writer lock of a folder (vitscope.io)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import train_command

from vitscope import io, threads
from vitscope.io import FolderBusyError, atomic_write_text, writer_lock, writes_folder

HOLD = """
import sys, time
from vitscope.io import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_temp_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    target = tmp_path / "sub" / "r.json"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    (f_sync, f_name), (r, r_name), (d_sync, d_name) = events
    assert (f_sync, r, d_sync) == ("fsync", "replace", "fsync")
    assert Path(f_name).parent == target.parent and f_name.endswith(".tmp")  # the temp file
    assert r_name == str(target) and d_name == str(target.parent)
    assert os.listdir(target.parent) == ["r.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_text(target, "old")

    def boom(p):
        p.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(io.DiskError, match="No space left on device"):  # one line, no OSError
        io.atomic_write(target, boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        t0 = time.perf_counter()
        with pytest.raises(FolderBusyError) as e, writer_lock(tmp_path / "run"):
            pass
        assert time.perf_counter() - t0 < 1.0
        msg = str(e.value)
        assert f"pid {holder.pid} on " in msg and str(tmp_path / "run") in msg and "\n" not in msg
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / io.LOCK_NAME).is_file()  # the file stays, the lock does not
    with writer_lock(tmp_path / "run"):
        assert f"pid {os.getpid()} " in (tmp_path / "run" / io.LOCK_NAME).read_text()


def test_the_lock_is_reentrant_in_one_process_and_nested_folders_are_separate(tmp_path):
    with writer_lock(tmp_path / "study"):
        with writer_lock(tmp_path / "study"), writer_lock(tmp_path / "study" / "runs" / "a"):
            pass
        with writer_lock(tmp_path / "study" / "runs" / "a"):  # released by the block above
            pass


def test_only_rank_0_takes_the_lock_and_an_unused_new_folder_is_removed(tmp_path, monkeypatch):
    @writes_folder("out")
    def write(out, fail=False):
        if fail:
            raise ValueError("bad config")
        (Path(out) / "x").write_text("1")

    with pytest.raises(ValueError):
        write(tmp_path / "new", fail=True)
    assert not (tmp_path / "new").exists()  # nothing left of a call that wrote nothing
    write(tmp_path / "new")
    assert sorted(os.listdir(tmp_path / "new")) == [io.LOCK_NAME, threads.RECORD, "x"]
    holder = _holder(tmp_path / "new")
    try:
        with pytest.raises(FolderBusyError):
            write(tmp_path / "new")
        monkeypatch.setenv("RANK", "1")  # a torchrun rank other than 0 writes nothing
        write(tmp_path / "new")
    finally:
        holder.kill()
        holder.wait()


def test_two_concurrent_trains_of_one_folder_exactly_one_runs(folder_data, tmp_path):
    from vitscope.preempt import EXIT_PREEMPTED

    out = tmp_path / "run"
    args = train_command(folder_data, out, epochs=500)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    lock = out / io.LOCK_NAME
    deadline = time.time() + 60
    while not (lock.is_file() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    waited = time.perf_counter() - t0
    try:
        assert first.poll() is None, "the first run ended before the second started"
        assert second.returncode == 2 and waited < 20  # at once (start-up is most of it)
        (line,) = second.stderr.strip().splitlines()
        assert f"pid {first.pid} on " in line and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # the first one stops, saved, as on a preemption
        assert first.wait(timeout=60) == EXIT_PREEMPTED
    epochs = len(Path(out / "metrics.jsonl").read_text().splitlines())
    assert 0 < epochs < 501  # written by the first alone: one line per epoch, none repeated
    assert [r["epoch"] for r in io.read_jsonl(out / "metrics.jsonl")] == list(range(1, epochs + 1))


HOLD_AND_FORK = """
import os, sys, time
from vitscope.io import writer_lock
with writer_lock(sys.argv[1]):
    child = os.fork()  # what a DataLoader worker is
    if child == 0:  # the fork handlers have run: the worker says it is past them
        print("worker", flush=True)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
"""


def test_a_forked_worker_that_outlives_its_killed_parent_does_not_hold_the_lock(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    # both lines, in either order: a parent killed before its worker was even scheduled would
    # leave the lock with a worker that had not yet run its fork handler (a race of the test)
    lines = {parent.stdout.readline().strip() for _ in range(2)}
    child = int((lines - {"worker"}).pop())
    try:
        with pytest.raises(FolderBusyError):  # the parent holds it
            with writer_lock(tmp_path / "run"):
                pass
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        os.kill(child, 0)  # the worker is still alive ...
        with writer_lock(tmp_path / "run"):  # ... and the folder is free
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_taking_a_lock_removes_the_temp_files_a_killed_writer_left(tmp_path):
    """A SIGKILL between a temp file's creation and its rename leaves `.NAME.xxxxxxxx.tmp`;
    the next writer of that folder removes it, and leaves a subfolder with its own lock (its
    own writer's to sweep) and files that only look alike."""
    study = tmp_path / "study"
    (study / "figures").mkdir(parents=True)
    (study / "runs" / "a" / "results").mkdir(parents=True)
    (study / "runs" / "a" / io.LOCK_NAME).touch()
    stale = [study / ".report.html.0a1b2c3d.tmp", study / "figures" / ".x.png.deadbeef.tmp"]
    kept = [study / "runs" / "a" / "results" / ".fourier.json.0a1b2c3d.tmp",
            study / ".notes.tmp", study / "data.0a1b2c3d.tmp", study / "report.html"]  # fmt: skip
    for p in stale + kept:
        p.write_text("x")
    with writer_lock(study):
        assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    with writer_lock(study / "runs" / "a"):
        assert not kept[0].exists()
