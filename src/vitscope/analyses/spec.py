"""The analysis plug-in contract: one :class:`Analysis` object per analysis module.

A module declares ``ANALYSIS = Analysis(name=..., config=Config, run=run, ...)`` and nothing
else is read from it. Built-in analyses are found in this package; third-party ones register
through the ``vitscope.analyses`` entry-point group, ``--plugin module`` or the
``VITSCOPE_PLUGINS`` variable (:mod:`.registry`). ``docs/plugins.md`` has a worked example.

This module imports neither torch nor matplotlib.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import VitscopeError

if TYPE_CHECKING:  # pragma: no cover
    from ..results import Result
    from .store import PartialStore

SPLITS = ("test", "train")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def resolve_ref(ref: Any) -> Any:
    """A callable, or a ``"module:attribute"`` string imported now (lazy references)."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep:
        raise VitscopeError(f"{ref!r} is not a 'module:attribute' reference")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise VitscopeError(f"cannot load {ref!r}: {e}") from None


@dataclass(frozen=True)
class FigureSpec:
    """One figure drawn from a result into the run's ``figures/<stem>.png``.

    Attributes:
        stem: the file stem (unique per analysis).
        draw: ``draw(result, fig)`` on a fresh ``matplotlib.figure.Figure`` (no pyplot), or a
            ``"module:function"`` string imported when the figure is drawn.
        size: figure size in inches.
        when: ``when(result) -> bool`` (or a ``"module:function"`` string): draw the figure
            only for results it holds for (e.g. a surface only for a 2-D landscape); None:
            always.
    """

    stem: str
    draw: Callable[[Result, Any], None] | str
    size: tuple[float, float] = (4.0, 3.3)
    when: Callable[[Result], bool] | str | None = None


@dataclass(frozen=True)
class Context:
    """What ``run`` may need besides model, data and config.

    Attributes:
        spec: block patterns for models that do not list their blocks (see
            :func:`vitscope.blocks`), or None.
        workdir: the results folder the analysis writes to, or None (in memory only).
        store: for ``resumable`` analyses run with a ``workdir``, the store that keeps
            finished items across a kill (:class:`~vitscope.analyses.store.PartialStore`).
    """

    spec: Mapping | None = None
    workdir: Path | None = None
    store: PartialStore | None = None


@dataclass(frozen=True)
class Analysis:
    """The declaration of one analysis.

    Attributes:
        name: the registry key, the result's file stem and the ``--set <name>.*`` prefix.
        config: a (frozen) dataclass of settings with defaults; a ``device`` field, if it
            has one, is set from ``--device``.
        run: ``run(model, data, cfg, ctx) -> Result`` for every analysis.
        split: ``"test"`` (:class:`~vitscope.analyses.base.EvalData`: test images) or
            ``"train"`` (:class:`~vitscope.analyses.base.TrainData`: augmented training
            batches, which only a run directory provides).
        resumable: ``run`` keeps finished items in ``ctx.store`` and a rerun resumes them.
        default_checkpoint: the run checkpoint analysed unless ``--checkpoint`` says
            otherwise (``best``, ``last``, ``warmup``, ``init``, ``epochN``).
        figures: figures drawn from each result after it is saved.
        summary: ``summary(result) -> {label: number}``: the headline numbers a report
            tabulates for an analysis it has no paper section for (saved with the result).
        compare: ``compare(results, fig)``: the overlay ``vitscope compare`` draws, or a
            ``"module:function"`` string; None: no overlay figure.
        keys: the class naming the result keys the analysis writes (what figures, summaries
            and claim rules read).
        description: one line for ``vitscope list analyses``.
        order: position in listings and in the default ``--only`` (built-ins: 10, 20, ...).
        default: whether it is in the default ``--only`` (False: it runs only when named, for
            an analysis that needs input the user must supply, e.g. a folder of images).
        uses_labels: the analysis scores the model's predictions against labels, so the
            model's outputs must be the data's classes (False: feature maps only).
        table: ``table(results) -> (headers, rows)`` or None: a table over the results of
            every run of a study that the report shows in the analysis' section (e.g. errors
            relative to a baseline run), or a ``"module:function"`` string.
        claims: claim rules ``rule(runs) -> Finding`` (or ``"module:function"`` strings,
            imported when a report is built) over a study's
            :class:`~vitscope.report.load.StudyRun` records; the report's findings table and
            ``findings.json`` add one row per rule (``docs/methods/findings.md``).
    """

    name: str
    config: type
    run: Callable[..., Result]
    split: str = "test"
    resumable: bool = False
    default_checkpoint: str = "best"
    figures: Sequence[FigureSpec] = ()
    summary: Callable[[Result], dict[str, float | None]] | None = None
    compare: Callable[[Sequence[Result], Any], None] | str | None = None
    keys: type | None = None
    description: str = ""
    order: int = 1000
    default: bool = True
    uses_labels: bool = True
    claims: Sequence[Callable[..., Any] | str] = ()
    table: Callable[..., Any] | str | None = None

    def __post_init__(self) -> None:
        where = f"analysis {self.name!r}"
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise VitscopeError(f"{where}: the name must match {NAME.pattern}")
        if not (isinstance(self.config, type) and is_dataclass(self.config)):
            raise VitscopeError(f"{where}: config must be a dataclass type")
        if not callable(self.run):
            raise VitscopeError(f"{where}: run must be callable")
        if self.split not in SPLITS:
            raise VitscopeError(f"{where}: split must be one of {', '.join(SPLITS)}")
        object.__setattr__(self, "figures", tuple(self.figures))
        stems = [f.stem for f in self.figures]
        if any(not isinstance(f, FigureSpec) for f in self.figures) or len(set(stems)) < len(stems):
            raise VitscopeError(f"{where}: figures must be FigureSpecs with unique stems")
        if self.summary is not None and not callable(self.summary):
            raise VitscopeError(f"{where}: summary must be callable")
        object.__setattr__(self, "claims", tuple(self.claims))
        if any(not (callable(c) or isinstance(c, str)) for c in self.claims):
            raise VitscopeError(f"{where}: claims must be callables or 'module:function' strings")

    def summarize(self, result: Result) -> dict[str, float | None]:
        """The declared summary of ``result`` as plain floats (non-finite and missing: None)."""
        if self.summary is None:
            return {}
        out = {}
        for label, value in self.summary(result).items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = None
            out[str(label)] = v if v is not None and v == v and abs(v) != float("inf") else None
        return out

    def missing(self, result: Result, *, required_only: bool = False) -> list[str]:
        """The keys ``result`` lacks, in neither its values nor its arrays: every key its
        ``keys`` class names (upper-case string attributes, but ``{}`` patterns and those in
        ``keys.OPTIONAL``), or with ``required_only`` just those in ``keys.REQUIRED``. A saved
        result that lacks one was damaged, edited or written by an older version:
        ``vitscope analyze`` computes it again; the report refuses one that lacks a required
        key (and reads around the others)."""
        if self.keys is None:
            return []
        if required_only:
            wanted = list(getattr(self.keys, "REQUIRED", ()))
        else:
            optional = set(getattr(self.keys, "OPTIONAL", ()))
            named = [getattr(self.keys, k) for k in dir(self.keys) if k.isupper()]
            wanted = [k for k in named if isinstance(k, str) and "{" not in k and k not in optional]
        return [k for k in wanted if k not in result.values and k not in result.arrays]

    def execute(
        self,
        model: Any,
        data: Any,
        cfg: Any = None,
        *,
        workdir: str | Path | None = None,
        blocks: Mapping | None = None,
        saved_as: str | None = None,
    ) -> Result:
        """Run the analysis with its context: ``blocks`` patterns and, if it is resumable and
        ``workdir`` is given, a :class:`~vitscope.analyses.store.PartialStore` there.

        ``cfg`` defaults to the config's defaults; ``saved_as`` is the result's name when it
        is not the analysis name (a tagged result, ``landscape-pca``): its partial files
        take that name too.
        """
        store = None
        workdir = Path(workdir) if workdir is not None else None
        if self.resumable and workdir is not None:
            from .store import PartialStore

            store = PartialStore(workdir, saved_as or self.name)
        ctx = Context(spec=blocks, workdir=workdir, store=store)
        return self.run(model, data, self.config() if cfg is None else cfg, ctx)

    def compare_figure(self) -> Callable[[Sequence[Result], Any], None] | None:
        return resolve_ref(self.compare) if self.compare is not None else None

    def study_table(self) -> Callable[..., Any] | None:
        return resolve_ref(self.table) if self.table is not None else None

    def claim_rules(self) -> list[Callable[..., Any]]:
        """The declared claim rules, imported."""
        return [resolve_ref(c) for c in self.claims]


__all__ = ["Analysis", "Context", "FigureSpec", "SPLITS", "resolve_ref"]
