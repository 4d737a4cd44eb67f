"""Atomic file writes, the run-directory layout, and provenance.

Every file vitscope writes goes to a temporary file in the same folder first and is then
renamed over the target, so a killed process never leaves a half-written result behind.
"""

from __future__ import annotations

import errno
import functools
import importlib.metadata
import inspect
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import threads
from .errors import VitscopeError


class DiskError(VitscopeError):
    """A write failed for want of space, quota or permission; what was finished is kept."""


#: errors of the filesystem a write went to, and what to do about each
_DISK_ADVICE = {
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "free space within your quota there",
    errno.EROFS: "the filesystem is read-only: write to another folder",
    errno.EACCES: "no permission to write there: fix the folder's permissions or write elsewhere",
    errno.EPERM: "not permitted to write there: write to another folder",
}


def _free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``folder``'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_error(path: str | Path, e: BaseException) -> DiskError | None:
    """The one-line :class:`DiskError` for a failed write of ``path``, or None when ``e`` is
    not a filesystem's refusal (then it is re-raised as it is).

    ``torch.save`` reports a full disk as an opaque ``RuntimeError`` from its zip writer; one
    that ends with (nearly) no space left on the folder's filesystem counts as ``ENOSPC``.
    """
    path = Path(path)
    code, free = getattr(e, "errno", None), _free_bytes(path.parent)
    if code is None and isinstance(e, RuntimeError) and "inline_container" in str(e):
        code = errno.ENOSPC if free is not None and free < 2**20 else None
    if code not in _DISK_ADVICE:
        return None
    left = "unknown" if free is None else f"{free / 2**20:.1f} MiB"
    return DiskError(
        f"cannot write {path}: {os.strerror(code)} ({left} free there); "
        f"{_DISK_ADVICE[code]}, then run the same command again (finished work is kept)"
    )


def _temp_file(path: Path) -> Path:
    """Create an empty, unique temp file beside ``path``.

    Opened with mode 0o666 so the kernel applies the process umask, as for any ordinary
    file (``tempfile.mkstemp`` would make it 0600, and reading the umask means setting it).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise VitscopeError(f"cannot create a temporary file beside {path}")


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) contents to the disk.

    A folder is flushed so that a rename in it survives a power loss; filesystems that refuse
    to fsync a folder (some network ones) are left as they are.
    """
    folder = Path(path).is_dir()
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


@contextmanager
def _atomic_path(path: str | Path):
    """Yield a temp path next to ``path``; rename it over ``path`` only on success.

    Durable as well as atomic: the temp file is fsync'd before the rename and the folder
    after it, so a power loss or a crashed NFS client leaves the old file or the new one,
    never an empty or torn one under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_file(path)
    except OSError as e:
        raise (disk_error(path, e) or e) from None
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        failed = disk_error(path, e)  # (before the temp file's space is freed)
        Path(tmp).unlink(missing_ok=True)
        if failed is not None:
            raise failed from None
        raise
    fsync_path(path.parent)


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with _atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_npz(path: str | Path, arrays: dict) -> Path:
    """Write numpy ``arrays`` as an uncompressed ``.npz`` at exactly ``path``, atomically."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)

    return atomic_write(path, write)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file of objects. A torn last line (a kill mid-append leaves one
    without its newline) is dropped; any other line that is not a JSON object is refused
    with a one-line :class:`VitscopeError` naming the file and line, since skipping it
    would silently lose the rows after it."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise VitscopeError(f"cannot read {p}: {e.strerror}") from None
    lines = text.split("\n")  # the last element: what follows the final newline ("" if whole)
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number < len(lines):  # a whole line (it has its newline) that is no JSON object
            raise VitscopeError(
                f"{p} line {number} is not a JSON object (the file was damaged or edited); "
                "repair or delete that line"
            )
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
    return atomic_write_text(path, text)


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line and fsync it (metrics survive a kill -9 right after). A torn last
    line a kill left (no newline) is cut off first, so it cannot swallow the new row. A full
    disk raises :class:`DiskError`."""
    try:
        with open(path, "ab+") as f:
            _cut_torn_tail(f)
            f.write((json.dumps(row, default=_json_default) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise (disk_error(path, e) or e) from None


def _cut_torn_tail(f) -> None:
    """Truncate a binary file open for appending after its last newline (if it lacks one)."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    f.seek(0)
    keep = f.read().rfind(b"\n") + 1  # (JSON-lines files here are small: metrics, logs)
    f.truncate(keep)


@dataclass(frozen=True)
class RunDir:
    """The layout of one run directory (docs/architecture.md)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def subset(self) -> Path:
        return self.root / "subset_indices.json"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def predictions(self) -> Path:
        """The best checkpoint's test predictions (``pred``, ``label``, ``epoch``), which the
        report resamples for accuracy intervals."""
        return self.root / "predictions.npz"

    def checkpoint(self, name: str) -> Path:
        """``best``, ``last``, ``init``, ``warmup``, ``epochN`` or a path to a ``.pt`` file."""
        if name.endswith(".pt"):
            return Path(name)
        return self.checkpoints / f"{name}.pt"

    def make(self) -> RunDir:
        for d in (self.root, self.checkpoints, self.results, self.figures):
            d.mkdir(parents=True, exist_ok=True)
        return self

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run directory that must already hold a ``config.yaml``."""
        rd = cls(Path(path))
        if not rd.config.is_file():
            raise VitscopeError(f"{rd.root} is not a vitscope run directory (no config.yaml)")
        return rd


class FolderBusyError(VitscopeError):
    """Another process is writing the folder (it holds the folder's lock)."""


#: the lock file inside a folder that one process writes at a time
LOCK_NAME = ".vitscope.lock"
#: folders whose lock this process holds: resolved path -> the lock file's descriptor
_HELD: dict[Path, int] = {}


def _forget_locks_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the lock descriptors: the
    parent keeps the lock, and a worker outliving a killed parent does not hold it on."""
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


@contextmanager
def writer_lock(folder: str | Path, *, enabled: bool = True):
    """Hold ``folder``'s one-writer lock (created if missing) while the block runs.

    An ``fcntl.flock`` on ``folder/.vitscope.lock``: the kernel drops it when the holder
    exits, however it dies (``kill -9`` leaves no stale lock), and network filesystems that
    support locking (NFSv4, Lustre with ``flock``) honour it across hosts. A second writer
    raises :class:`FolderBusyError` at once, naming the holder's PID, host and start time.
    Re-entrant within a process (a study holds its folder while its runs take their own).
    Where the filesystem has no locks at all, a warning is printed and the block runs
    unlocked. ``enabled=False`` (the other ranks under torchrun) holds nothing. A folder the
    call created and left empty (it failed before writing anything) is removed again.
    """
    import fcntl
    import socket

    root = Path(folder).resolve()
    if not enabled or root in _HELD:  # nested blocks end before the one that holds it
        yield
        return
    created = not root.exists()
    path = root / LOCK_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise (disk_error(path, e) or e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
        os.close(fd)
        raise FolderBusyError(
            f"{root} is being written by another vitscope process ({holder}); wait for it "
            "to end, or write to another folder"
        ) from None
    except OSError as e:  # ENOLCK: a filesystem without locks
        print(f"warning: cannot lock {path} ({e.strerror}); two writers would not be refused")
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        me = f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n"
        try:  # who holds it, for the message of a refused writer (on a full disk: unsaid)
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        except OSError:
            pass
        _remove_stale_temps(root)
        threads.record(root)  # a resumed run uses the threads it started with
    _HELD[root] = fd
    try:
        yield
    finally:
        del _HELD[root]
        if created and set(os.listdir(root)) <= {LOCK_NAME, threads.RECORD}:  # wrote nothing
            (root / threads.RECORD).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            root.rmdir()
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiter)


_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # the names _temp_file gives


def _remove_stale_temps(root: Path) -> None:
    """Remove the temporary files a killed writer left in ``root`` (this process now holds its
    lock, so no live writer owns them); a subfolder with its own lock is its writer's to sweep."""
    for here, dirs, names in os.walk(root):
        if here != str(root) and LOCK_NAME in names:
            dirs.clear()
            continue
        for name in names:
            if _TEMP.match(name):
                try:
                    os.unlink(os.path.join(here, name))
                except OSError:
                    pass


def writes_folder(param: str):
    """Decorator: each call holds the :func:`writer_lock` of the folder passed as ``param``.

    Under torchrun only rank 0 (``RANK`` in the environment, read before the process group
    exists) takes it: the other ranks write nothing.
    """

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            folder = sig.bind(*args, **kwargs).arguments[param]
            with writer_lock(folder, enabled=int(os.environ.get("RANK", "0")) == 0):
                return fn(*args, **kwargs)

        return locked

    return wrap


def git_hash() -> str | None:
    """The git commit of the vitscope source tree, if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _torch_version() -> str | None:
    """torch's version without importing it (the results layer stays torch-free)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(**extra: Any) -> dict:
    """Who made a result: package and torch versions, git hash, command line, time."""
    from . import __version__

    return {
        "vitscope_version": __version__,
        "git_hash": git_hash(),
        "torch_version": _torch_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
