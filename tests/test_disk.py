"""A full disk: one-line errors, no partial files, and the same command resumes once there is
space. A size-limited tmpfs is mounted where the tests run as root (CI does); elsewhere the
tests that need one are skipped with the reason."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import assert_same_training, train_command

from vitscope.io import DiskError, atomic_torch_save, atomic_write_json, disk_error


def _mount(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``folder``; the reason it cannot be done, or None."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a tmpfs needs root and mount(8)"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    return None if done.returncode == 0 else f"mount failed: {done.stderr.strip()}"


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    why = _mount(mnt, "256k")
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _no_temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".partial." in p.name]


def test_errors_that_are_not_the_disks_pass_through():
    assert disk_error("x", ValueError("no")) is None
    assert disk_error("x", OSError(errno.ENOENT, "missing")) is None
    assert disk_error("x", RuntimeError("some other failure")) is None
    e = disk_error("/data/r.json", OSError(errno.EDQUOT, "quota"))
    assert isinstance(e, DiskError) and "Disk quota exceeded" in str(e) and "quota" in str(e)
    e = disk_error("/ro/r.json", OSError(errno.EROFS, "ro"))
    assert "read-only" in str(e) and "another folder" in str(e)


def test_a_full_disk_gives_one_line_and_keeps_the_old_file(small_fs):
    target = small_fs / "r.json"
    atomic_write_json(target, {"old": 1})
    with pytest.raises(DiskError) as e:
        atomic_write_json(target, {"big": "x" * 400_000})
    msg = str(e.value)
    assert f"cannot write {target}: No space left on device" in msg and "\n" not in msg
    assert "run the same command again" in msg
    assert target.read_text().strip().startswith("{") and '"old": 1' in target.read_text()
    assert os.listdir(small_fs) == ["r.json"]  # the temp file is gone


def test_torch_save_on_a_full_disk_is_a_disk_error_too(small_fs):
    with pytest.raises(DiskError, match="No space left on device"):
        atomic_torch_save({"w": torch.zeros(200_000)}, small_fs / "last.pt")
    assert os.listdir(small_fs) == []


def test_training_that_fills_the_disk_stops_with_one_line_and_resumes_once_freed(
    folder_data, tmp_path
):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    assert subprocess.run(train_command(folder_data, ref, epochs=3), env=env).returncode == 0
    need = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())

    mnt = tmp_path / "disk"
    why = _mount(mnt, str(int(need * 0.6)))  # room for the first epochs, not for all
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    try:
        out = mnt / "run"
        cmd = train_command(folder_data, out, epochs=3)
        full = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert full.returncode == 2, full.stderr
        (line,) = full.stderr.strip().splitlines()
        assert line.startswith("error: cannot write ") and "No space left on device" in line
        assert "Traceback" not in full.stderr and not _no_temp_files(mnt)
        # space comes back: the same command continues and ends as the uninterrupted run
        grow = ["mount", "-o", f"remount,size={need * 3}", str(mnt)]
        assert subprocess.run(grow).returncode == 0
        again = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert_same_training(ref, out, epochs=4)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
