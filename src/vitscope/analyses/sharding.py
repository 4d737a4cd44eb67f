"""Sharding an analysis' independent items over torchrun ranks, with per-rank resume logs.

Every rank enumerates the same items (grid points, mini-batches, frequencies, units), computes
its round-robin share (:func:`vitscope.distributed.shard`) and the records meet on every
rank through an all-gather, so each rank returns the same result and rank 0 writes it. An item's
record depends on the item alone, so a sharded result equals the single-process one.

Resumable analyses (landscape, Hessian) also keep finished items on disk, in files no two
ranks share, so a rank that dies loses at most the item it was computing:

* rank 0 rewrites the analysis' own partial file atomically after each item (the format a
  single process has always written);
* rank ``r > 0`` appends one fsync'd JSON line per item to ``<stem>.rank<r>.jsonl``
  (:class:`RankLog`), tagged with a digest of the partial key, so lines of another config or
  model state are ignored and a torn last line is skipped.

On a (re)start rank 0 alone reads the partial file and every ``<stem>.rank*.jsonl`` (whatever
world size wrote them), keeps one record per item, rewrites the merged records into its partial
file and then deletes the logs; it broadcasts the finished items, so every rank shards exactly
the same missing ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import distributed as dist_utils
from ..io import append_jsonl

I = TypeVar("I", bound=Hashable)  # noqa: E741 — an item
R = TypeVar("R")  # its record


def map_items(
    items: Sequence[I],
    compute: Callable[[I], R],
    on_done: Callable[[I, R], None] | None = None,
) -> dict[I, R]:
    """``{item: compute(item)}`` for every item, each computed on one rank, on every rank.

    Items are sharded round-robin; ``on_done(item, record)`` runs on the computing rank right
    after each of its items (to save progress). Records must be picklable.
    """
    mine: dict[I, R] = {}
    for item in dist_utils.shard(items):
        mine[item] = compute(item)
        if on_done is not None:
            on_done(item, mine[item])
    out: dict[I, R] = {}
    for part in dist_utils.gather_objects(mine):
        out.update(part)
    return out


def sum_over_ranks(values: list) -> list:
    """Element-wise sum over ranks of a list of numbers or tensors (empty lists skipped).

    Ranks with no work (more ranks than items) contribute an empty list.
    """
    total: list = []
    for part in dist_utils.gather_objects(values):
        if not total:
            total = list(part)
        elif part:
            total = [a + b for a, b in zip(total, part)]
    return total


def key_digest(key: dict) -> str:
    """A short, order-independent fingerprint of a partial key (config, data, model state)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RankLog:
    """Append-only logs of finished items, one file per rank: ``<stem>.rank<r>.jsonl``.

    Each line is ``{"key": digest, "item": item, "record": record}`` (JSON), written and
    fsync'd as one append, so a killed rank leaves at most one torn last line.
    """

    workdir: Path
    stem: str  # e.g. ``landscape.partial``
    key: str  # :func:`key_digest` of the partial key

    def path(self, rank: int | None = None) -> Path:
        rank = dist_utils.rank() if rank is None else rank
        return self.workdir / f"{self.stem}.rank{rank}.jsonl"

    def paths(self) -> list[Path]:
        return sorted(self.workdir.glob(f"{self.stem}.rank*.jsonl"))

    def append(self, item: Any, record: Any) -> None:
        """Record one finished item of this rank."""
        self.workdir.mkdir(parents=True, exist_ok=True)  # rank 0 may not have written yet
        append_jsonl(self.path(), {"key": self.key, "item": item, "record": record})

    def read(self) -> Iterator[tuple[Any, Any]]:
        """``(item, record)`` from every rank's log with this key; torn lines skipped."""
        for path in self.paths():
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn by a kill
                if isinstance(row, dict) and row.get("key") == self.key and "item" in row:
                    yield row["item"], row.get("record")

    def clear(self) -> None:
        for path in self.paths():
            path.unlink(missing_ok=True)


__all__ = ["RankLog", "key_digest", "map_items", "sum_over_ranks"]
