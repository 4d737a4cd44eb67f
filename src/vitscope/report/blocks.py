"""The report's building blocks and how numbers are written in it.

The report is a list of blocks (:class:`Heading`, :class:`Text`, :class:`Table`,
:class:`Gallery` of :class:`Plot`) that the HTML and the Markdown renderer
(:mod:`vitscope.report.render`) both walk, so the two agree. :class:`FigureWriter` draws the
figures and saves them under ``<out>/figures/``.

No torch, no pyplot (figures come in as ``matplotlib.figure.Figure``).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..io import atomic_write
from .load import pct

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

DPI = 110
DASH = "—"


@dataclass
class Heading:
    text: str
    level: int = 2
    id: str = ""


@dataclass
class Text:
    text: str
    note: bool = False  # a side remark (missing data, fallbacks), shown smaller


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    id: str = ""
    verdict_col: int | None = None  # a column of verdicts, coloured in HTML


@dataclass
class Plot:
    file: str  # relative to the report: figures/<stem>.png
    png: bytes
    caption: str
    wide: bool = False


@dataclass
class Gallery:
    plots: list[Plot] = field(default_factory=list)


Block = Heading | Text | Table | Gallery


def slug(s: str) -> str:
    """``s`` as a file stem or HTML id: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "figure"


def save_png(out_dir: Path, rel: str, png: bytes, caption: str, wide: bool = False) -> Plot:
    """Write ``png`` to ``out_dir/rel`` atomically; the :class:`Plot` that shows it."""
    atomic_write(out_dir / rel, lambda p: p.write_bytes(png))
    return Plot(rel, png, caption, wide)


class FigureWriter:
    """Draws figures, saves each as ``<out>/figures/<stem>.png`` and keeps its bytes."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.stems: set[str] = set()

    def add(
        self, stem: str, draw: Callable[[], Figure], caption: str, wide: bool = False
    ) -> Plot | Text:
        """The figure ``draw()`` as a :class:`Plot`, or a note if drawing it failed."""
        stem = slug(stem)
        while stem in self.stems:
            stem += "_"
        self.stems.add(stem)
        try:
            fig = draw()
        except Exception as e:  # one malformed result must not cost the whole report
            warnings.warn(f"report: figure {stem} failed: {e!r}", stacklevel=2)
            return Text(f"Figure {stem} could not be drawn: {type(e).__name__}: {e}", note=True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        return save_png(self.out_dir, f"figures/{stem}.png", buf.getvalue(), caption, wide)


def gallery(items: Sequence[Plot | Text]) -> list[Block]:
    """The plots as one gallery, failure notes after it."""
    plots = [p for p in items if isinstance(p, Plot)]
    return ([Gallery(plots)] if plots else []) + [t for t in items if isinstance(t, Text)]


# ---- formatting ------------------------------------------------------------------------------


def num(x: float | None, spec: str = ".3f") -> str:
    return DASH if x is None else format(x, spec)


def pct_acc(acc: float | None) -> str:
    """An accuracy fraction as ``85.00%``."""
    return DASH if acc is None else f"{100 * acc:.2f}%"


def percent(x: float | None, spec: str = ".2f") -> str:
    """A number already in percent as ``85.00%``."""
    return DASH if x is None else f"{x:{spec}}%"


def params(n: float | None) -> str:
    if n is None:
        return DASH
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def duration(s: float | None) -> str:
    if s is None:
        return DASH
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s % 60:02d}s" if m else f"{s}s"


def group_name(key: tuple) -> str:
    """A (dataset, fraction) key as ``cifar10, 6% of the training set``."""
    return f"{key[0]}, {pct(key[1])} of the training set"
