"""Saved analysis results: the torch-free layer every reader (report, compare, notebooks) uses.

A :class:`Result` is plain data: small values (``values``, JSON) and arrays (``arrays``,
``.npz``), with the analysis config, provenance, the summary numbers the report tabulates and
the names of the figures drawn from it. ``save`` writes the ``.npz`` first and the ``.json``
last, each atomically, so the JSON's presence marks a finished result. Nothing here imports
torch; see ``docs/architecture.md``.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VitscopeError
from .io import atomic_write_json, atomic_write_npz, provenance


@dataclass
class Result:
    """What an analysis produced.

    Attributes:
        name: the analysis (``fourier``, ``variance``, ...), also the file stem.
        values: JSON-able values: the unit list, per-unit numbers, summaries.
        arrays: named numpy arrays (saved in ``<name>.npz``).
        config: the analysis config as a dict.
        meta: provenance and context (model, checkpoint, dataset, ...).
        summary: the headline numbers (name -> float or None) a report shows in its table;
            filled from the analysis' declared ``summary`` when the result is saved.
        figures: file names of the figures drawn from this result (in the run's
            ``figures/``), filled when they are drawn.
    """

    name: str
    values: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, float | None] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def save(self, results_dir: str | Path) -> Path:
        """Write ``<name>.npz`` then ``<name>.json`` atomically; returns the JSON path."""
        d = Path(results_dir)
        d.mkdir(parents=True, exist_ok=True)
        if self.arrays:
            atomic_write_npz(d / f"{self.name}.npz", self.arrays)
        body = {
            "name": self.name,
            "values": self.values,
            "config": self.config,
            "meta": {"provenance": provenance(), **self.meta},
            "arrays": sorted(self.arrays),
            "summary": self.summary,
            "figures": self.figures,
        }
        return atomic_write_json(d / f"{self.name}.json", body)

    @classmethod
    def load(cls, results_dir: str | Path, name: str) -> Result:
        """Read a saved result back; one-line errors for missing or corrupt files."""
        d = Path(results_dir)
        path = d / f"{name}.json"
        if not path.is_file():
            raise VitscopeError(
                f"no {name} result in {d} (missing {path.name}); run `vitscope analyze`"
            )
        try:
            body = json.loads(path.read_text())
            if not isinstance(body, dict) or not isinstance(body.get("values"), dict):
                raise ValueError("not a result")
        except (json.JSONDecodeError, ValueError, UnicodeDecodeError):
            raise VitscopeError(
                f"{path} is corrupt; run `vitscope analyze` on its run again to compute it anew"
            ) from None
        arrays: dict[str, np.ndarray] = {}
        if body.get("arrays"):
            try:
                with np.load(d / f"{name}.npz", allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise VitscopeError(
                    f"{d / (name + '.npz')} is unreadable ({e}); run `vitscope analyze` on "
                    "its run again to compute it anew"
                ) from None
        return cls(
            str(body.get("name", name)),
            body["values"],
            arrays,
            body.get("config", {}),
            body.get("meta", {}),
            dict(body.get("summary") or {}),
            list(body.get("figures") or []),
        )

    def label(self, default: str = "") -> str:
        """How figures name this result: ``meta.label``, else ``meta.model``, else ``default``."""
        return str(self.meta.get("label") or self.meta.get("model") or default)

    @staticmethod
    def exists(results_dir: str | Path, name: str) -> bool:
        return (Path(results_dir) / f"{name}.json").is_file()


TAG = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def check_tag(tag: str | None) -> str | None:
    """``tag`` if it can name a result (lower-case letters, digits, ``_``), None for none."""
    if tag is None or tag == "":
        return None
    if not TAG.match(tag):
        raise VitscopeError(
            f"--tag {tag!r}: use lower-case letters, digits and '_' (e.g. --tag pca)"
        )
    return tag


def result_name(analysis: str, tag: str | None = None) -> str:
    """The name (file stem) of ``analysis``'s result saved under ``tag``: ``landscape-pca``
    for tag ``pca``, the analysis name alone without one. A tag keeps a second result of an
    analysis (other settings) beside the first."""
    return analysis if check_tag(tag) is None else f"{analysis}-{tag}"


def analysis_of(name: str) -> str:
    """The analysis a result name belongs to: ``landscape`` for ``landscape-pca``."""
    return name.partition("-")[0]


def saved_names(results_dir: str | Path) -> list[str]:
    """Names of the finished results in a folder (every ``<name>.json`` but partial files)."""
    d = Path(results_dir)
    if not d.is_dir():
        return []
    return sorted(
        p.stem for p in d.glob("*.json") if ".partial" not in p.name and not p.name.startswith(".")
    )


def config_dict(cfg: Any) -> dict:
    """An analysis config as a plain dict (a dataclass or a mapping), tuples as lists: what
    its JSON file gives back."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return plain(asdict(cfg) if is_dataclass(cfg) else dict(cfg))


__all__ = ["TAG", "Result", "analysis_of", "check_tag", "config_dict", "result_name",
           "saved_names"]  # fmt: skip
