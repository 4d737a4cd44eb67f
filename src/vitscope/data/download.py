"""Resumable, checksummed downloads with one-line errors.

A download streams into ``<dest>.part``; a later call resumes that file with an HTTP
``Range`` request (and starts over when the server ignores it). Only a file whose MD5
matches is renamed onto ``dest`` (atomically), so ``dest`` is either absent or complete.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DatasetError

_CHUNK = 1 << 20  # 1 MiB per read: large enough to keep Python overhead negligible


def md5sum(path: str | Path, *, chunk: int = _CHUNK) -> str:
    """Hex MD5 of a file, read in chunks (CIFAR tarballs are ~170 MB)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _oneline(err: object) -> str:
    """An exception's text squeezed onto one line (the CLI prints errors as one line)."""
    return " ".join(str(err).split()) or type(err).__name__


def _by_hand(url: str, dest: Path) -> str:
    return f"download it by hand from {url} and place it at {dest}"


def download_url(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` and checking its MD5.

    Args:
        url: ``http(s)://`` or ``file://`` address.
        dest: final path; its folder is created. An existing ``dest`` is overwritten.
        md5: expected hex MD5 of the whole file; ``None`` skips the check.
        timeout: seconds a connect or a read may block before the download fails.
        progress: show a tqdm progress bar.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: network failure (the ``.part`` file is kept so a re-run resumes),
            an incomplete transfer, or a checksum mismatch (the ``.part`` file is deleted).
    """
    dest = Path(dest).expanduser().absolute()
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create folder {dest.parent} for {url}: {_oneline(e)}") from None
    done = part.stat().st_size if part.is_file() else 0
    if done and md5 is not None and md5sum(part) == md5.lower():
        # A previous run received every byte but stopped before the rename.
        os.replace(part, dest)
        return dest
    try:
        _fetch(url, part, done, timeout=timeout, progress=progress)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # range not satisfiable: the part file is stale; start over
            part.unlink(missing_ok=True)
            return download_url(url, dest, md5=md5, timeout=timeout, progress=progress)
        raise DatasetError(
            f"could not download {url} (HTTP {e.code}); {_by_hand(url, dest)}"
        ) from None
    except ValueError as e:  # urllib's "unknown url type"
        raise DatasetError(
            f"invalid download URL {url!r} ({_oneline(e)}); {_by_hand(url, dest)}"
        ) from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
        reason = _oneline(getattr(e, "reason", e))
        raise DatasetError(
            f"could not download {url} ({reason}); re-run to resume, or {_by_hand(url, dest)}"
        ) from None
    if md5 is not None:
        actual = md5sum(part)
        if actual != md5.lower():
            part.unlink(missing_ok=True)
            raise DatasetError(
                f"checksum mismatch for {dest} downloaded from {url}: expected md5 {md5.lower()}, "
                f"got {actual}; the download was deleted, re-run or {_by_hand(url, dest)}"
            )
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, done: int, *, timeout: float, progress: bool) -> None:
    """Append the bytes after ``done`` to ``part``; restart at 0 if the server sends all."""
    from tqdm.auto import tqdm

    from ..progress import bar_disable

    headers = {"User-Agent": "vitscope"}
    if done:
        headers["Range"] = f"bytes={done}-"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", None) or 200  # file:// responses carry no status
        if done and not (status == 206 and _range_start(resp) == done):
            done = 0  # the server ignored the Range header: it is sending the whole file
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        received = done
        with (
            open(part, "ab" if done else "wb") as f,
            tqdm(
                total=total,
                initial=done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                disable=bar_disable(progress),
                leave=False,
            ) as bar,
        ):
            while block := resp.read(_CHUNK):
                f.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def _range_start(resp) -> int | None:
    """First byte offset of a 206 response (``Content-Range: bytes 100-199/200``)."""
    cr = resp.headers.get("Content-Range", "")
    try:
        return int(cr.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
