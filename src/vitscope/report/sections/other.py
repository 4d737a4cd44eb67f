"""The generic section: every analysis no paper section covers (a plug-in, a new built-in).

Its numbers are the ``summary`` the analysis declared (saved with each result) and its figures
the PNGs drawn when it ran (listed in the result), copied beside the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..blocks import Block, FigureWriter, Heading, Plot, Table, Text, gallery, num, save_png, slug
from ..claims import PAPER_ANALYSES, SHAPE_ANALYSES
from ..load import StudyRun
from .common import first_seeds, not_run, with_result

# PAPER_ANALYSES: those the paper sections cover, in the coverage table's order; any other
# analysis gets a generic section (:func:`section_other`)


def _found(runs: Sequence[StudyRun]) -> set[str]:
    """The analyses with results (or unreadable ones) in the runs."""
    return {a for r in runs for a in (*r.results, *r.errors)}


def other_analyses(runs: Sequence[StudyRun]) -> list[str]:
    """Analyses with results in the runs that no paper section covers (plug-ins, new ones)."""
    return sorted(_found(runs) - set(PAPER_ANALYSES) - set(SHAPE_ANALYSES))


def shape_analyses(runs: Sequence[StudyRun]) -> list[str]:
    """The shape-or-texture analyses (Q2) with results (or unreadable ones) in the runs."""
    return [a for a in SHAPE_ANALYSES if a in _found(runs)]


def section_other(
    runs: Sequence[StudyRun], out_dir: Path, figs: FigureWriter | None = None
) -> list[Block]:
    """A generic section per analysis with no paper section: its summary table, the overlay
    of all runs it declares (``Analysis.compare``, drawn with ``figs``) and each run's saved
    figures (the lowest seed of each model and fraction)."""
    names = other_analyses(runs)
    if not names:
        return []
    out: list[Block] = [Heading("Other analyses", 2, "other")]
    for name in names:
        out.append(Heading(name, 3, slug(f"other_{name}")))
        out += not_run(runs, name)
        have = with_result(runs, name)
        labels = list(dict.fromkeys(k for r in have for k in r.results[name].summary))
        if labels:
            rows = [[r.label, *(num(r.results[name].summary.get(k)) for k in labels)] for r in have]
            out.append(Table(["Run", *labels], rows, id=slug(f"other_{name}_summary")))
        plots: list[Plot | Text] = []
        declared = _declared(name)
        if declared is not None and have:
            results = [r.results[name] for r in have]
            table = declared.study_table()
            made = table(results) if table is not None else None
            if made:
                out.append(Table(made[0], made[1], id=slug(f"other_{name}_table")))
            draw = declared.compare_figure()
            if draw is not None and figs is not None:
                plots.append(_overlay(figs, name, draw, results))
        plots += [p for r in first_seeds(have) for p in _saved_plots(r, name, out_dir)]
        out += gallery(plots)
    return out


def _declared(name: str):
    """The registered :class:`~vitscope.analyses.spec.Analysis` of result ``name`` (``name``
    itself, or ``landscape`` for a tagged ``landscape-pca``), or None."""
    from ...analyses import analyses
    from ...results import analysis_of

    return analyses().get(analysis_of(name))


def _overlay(figs: FigureWriter, name: str, draw, results) -> Plot | Text:
    """The analysis' overlay of every run's result, as ``vitscope compare`` draws it."""
    from ..compare import overlay

    caption = f"{name}: every run ({len(results)}), the analysis' overlay."
    return figs.add(f"{name}_overlay", lambda: overlay(name, draw, results), caption)


def _saved_plots(run: StudyRun, name: str, out_dir: Path) -> list[Plot]:
    """The figures a run's ``name`` result lists, copied to ``<out>/figures/``."""
    plots = []
    for file in run.results[name].figures:
        src = run.path / "figures" / Path(file).name
        if not src.is_file():
            continue
        stem = Path(file).stem
        rel = f"figures/{slug(f'{name}_{run.name}_{stem}')}.png"
        caption = f"{name}: {stem}, {run.label} ({run.name})."
        plots.append(save_png(out_dir, rel, src.read_bytes(), caption))
    return plots
