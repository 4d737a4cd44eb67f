"""One resumable store of partial results, for every analysis whose items are independent.

An analysis with ``resumable=True`` gets a :class:`PartialStore` in ``ctx.store``. Its files,
in the results folder:

* ``<name>.partial.json``: ``{"version", "key", "items": {item: record}}``, rewritten
  atomically by rank 0 after each of its items (the key: what the records depend on);
* ``<name>.partial.npz``: arrays fixed for the whole run (e.g. landscape directions), a
  function of the key, written before the file that holds the key, so a key on disk means
  its arrays are complete;
* ``<name>.partial.rank<r>.jsonl``: under torchrun, rank ``r > 0`` appends one fsync'd line
  per finished item (:class:`~vitscope.analyses.sharding.RankLog`).

:meth:`PartialStore.resume` is collective: rank 0 reads its file (if the key matches), merges
every rank's log (whatever world size wrote them) into it, deletes the logs and broadcasts the
records, so every rank skips the same finished items and a kill at any moment loses nothing.
Items are JSON values (ints, strings, lists: lists come back as tuples).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed as dist_utils
from .. import preempt
from ..io import atomic_write_json, atomic_write_npz
from .sharding import RankLog, key_digest

VERSION = 2


def _item(value: Any) -> Hashable:
    """A JSON item back as a hashable value (lists become tuples)."""
    return tuple(_item(v) for v in value) if isinstance(value, list) else value


def state_digest(module: Any) -> str:
    """SHA-256 of a model's state: every parameter and buffer (names, shapes, dtypes, bytes);
    ``module`` may also be a mapping of names to tensors."""
    h = hashlib.sha256()
    state = module if isinstance(module, Mapping) else module.state_dict()
    for name, t in state.items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class PartialStore:
    """Finished items of one analysis run, kept across kills and shared across ranks."""

    def __init__(self, workdir: str | Path, name: str) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.json = self.workdir / f"{name}.partial.json"
        self.npz = self.workdir / f"{name}.partial.npz"
        self.key: dict = {}
        self.records: dict[Hashable, Any] = {}
        self._log: RankLog | None = None

    def resume(
        self, key: dict, arrays: Callable[[], dict[str, np.ndarray]] | None = None
    ) -> tuple[dict[Hashable, Any], dict[str, np.ndarray]]:
        """Finished records and the run's fixed arrays; collective under torchrun.

        Args:
            key: what the records depend on (JSON-able); records saved under another key
                are dropped with a warning.
            arrays: makes the fixed arrays on a fresh start (rank 0 only); None: no arrays.

        Returns:
            ``(records, arrays)``: item -> record, and the fixed arrays (on every rank).
        """
        self.key = json.loads(json.dumps({"version": VERSION, **key}, default=str))
        self._log = RankLog(self.workdir, f"{self.name}.partial", key_digest(self.key))
        state = self._resume_main(arrays) if dist_utils.is_main() else None
        self.records = dist_utils.broadcast_object(state)  # after rank 0 wrote the arrays
        fixed = self._read_arrays() if arrays is not None else {}
        return dict(self.records), fixed

    def _resume_main(self, arrays: Callable[[], dict[str, np.ndarray]] | None) -> dict:
        records = self._load()
        if arrays is not None and (records is None or not self._arrays_readable()):
            if records:  # the arrays follow from the key: the finished items still fit them
                warnings.warn(
                    f"{self.npz} is missing or unreadable; writing it again and keeping the "
                    f"{len(records)} finished items of {self.json.name}",
                    stacklevel=5,
                )
            atomic_write_npz(self.npz, arrays())  # on a fresh start: before the key's file
        records = records or {}
        # other ranks' items under this key are kept even on a fresh start (rank 0 killed
        # before its file was written): the key fixes them, and ``arrays`` must be a
        # function of the key (the landscape's directions are seeded), so they still fit
        for item, record in self._log.read():
            records.setdefault(_item(item), record)
        self.records = records
        self._write()
        self._log.clear()
        return records

    def _load(self) -> dict | None:
        """Records of a valid partial file with this key, else None (a fresh start)."""
        if not self.json.is_file():
            return None
        try:
            body = json.loads(self.json.read_text())
            if body.get("key") != self.key:
                warnings.warn(
                    f"{self.json} is from another config or model; starting over", stacklevel=5
                )
                return None
            return {_item(json.loads(k)): v for k, v in body["items"].items()}
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            warnings.warn(f"unreadable {self.json} ({e}); starting over", stacklevel=5)
            return None

    def _arrays_readable(self) -> bool:
        """Whether the arrays file is whole (every member read: zip CRCs checked)."""
        try:
            self._read_arrays()
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return False
        return True

    def _read_arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.npz, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _write(self) -> None:
        items = {json.dumps(_json_item(i)): r for i, r in self.records.items()}
        atomic_write_json(self.json, {"key": self.key, "items": items})

    def add(self, item: Hashable, record: Any) -> None:
        """Keep one finished item: rank 0 rewrites its file, other ranks append to their log;
        then stop if a signal asked to (:func:`vitscope.preempt.check`)."""
        if dist_utils.is_main():
            self.records[item] = record
            self._write()
        else:
            self._log.append(_json_item(item), record)
        # a safe point: the item is on disk, so a stop signal loses nothing
        preempt.check(f"{self.name} item {_json_item(item)} (saved in {self.workdir})")

    def clear(self) -> None:
        """Delete every partial file of this analysis (the result supersedes them)."""
        for path in self.workdir.glob(f"{self.name}.partial.*"):
            path.unlink(missing_ok=True)


def _json_item(item: Hashable) -> Any:
    return list(item) if isinstance(item, tuple) else item


__all__ = ["PartialStore", "state_digest"]
