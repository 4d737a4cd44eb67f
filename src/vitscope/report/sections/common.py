"""What the report's sections share: one analysis' subsection (its note on the runs without
it, its overlays, its per-run figures, its table) and the helpers behind it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ...results import Result
from .. import compare
from ..blocks import Block, FigureWriter, Heading, Table, Text, gallery, group_name
from ..load import StudyRun
from ..spread import CAPTION


def question(title: str, ident: str, answer: str) -> list[Block]:
    """A section's opening: its heading (id ``ident``) and what the paper answers."""
    return [Heading(title, 2, ident), Text(answer)]


def labelled(run: StudyRun, name: str) -> Result:
    """The run's ``name`` result with the report's label, model and fraction in its meta."""
    res = run.results[name]
    meta = {**res.meta, "label": run.label, "model": run.model, "fraction": run.fraction,
            "group": run.group or run.label, "seed": run.seed}  # fmt: skip
    return replace(res, meta=meta)


def first_seeds(runs: Sequence[StudyRun]) -> list[StudyRun]:
    """One run per group (the lowest seed): per-run figures are not repeated per seed."""
    best: dict[str, StudyRun] = {}
    for r in runs:
        g = r.group or r.label
        if g not in best or r.seed < best[g].seed:
            best[g] = r
    keep = {id(r) for r in best.values()}
    return [r for r in runs if id(r) in keep]


def with_result(runs: Sequence[StudyRun], name: str) -> list[StudyRun]:
    return [r for r in runs if name in r.results]


def result_rows(
    runs: Sequence[StudyRun], name: str, row: Callable[[StudyRun, Result], list[str]]
) -> list[list[str]]:
    """``row(run, result)`` for every run with a ``name`` result, in order."""
    return [row(r, r.results[name]) for r in with_result(runs, name)]


def not_run(runs: Sequence[StudyRun], name: str) -> list[Block]:
    """A note naming the runs without a ``name`` result (and why unreadable ones are)."""
    missing = [r.name for r in runs if name not in r.results]
    if not missing:
        return []
    bad = [f"{r.name} ({r.errors[name]})" for r in runs if name in r.errors]
    extra = f" Unreadable: {'; '.join(bad)}." if bad else ""
    if len(missing) == len(runs):
        return [Text(f"`{name}`: no run has a readable result.{extra}" if bad else
                     f"`{name}`: not run for any run.", note=True)]  # fmt: skip
    return [Text(f"`{name}` not run for: {', '.join(missing)}.{extra}", note=True)]


def _groups(runs: Sequence[StudyRun], name: str, by_dataset: bool) -> dict:
    out: dict = {}
    for r in with_result(runs, name):
        out.setdefault((r.dataset,) if by_dataset else r.key, []).append(r)
    return out


def overlays(
    runs: Sequence[StudyRun],
    name: str,
    what: str,
    figs: FigureWriter,
    by_dataset=False,
    draw: Callable | None = None,
) -> list[Block]:
    """``draw`` (default ``compare.<name>``) overlaid for the runs of each (dataset,
    fraction) group."""
    draw = draw if draw is not None else getattr(compare, name)
    items = []
    for key, rs in _groups(runs, name, by_dataset).items():
        where = key[0] if by_dataset else group_name(key)
        seeds = len({r.seed for r in rs}) > 1
        shown = ", ".join(dict.fromkeys(r.group or r.label for r in rs))
        items.append(
            figs.add(
                f"{name}_compare_{'_'.join(map(str, key))}",
                lambda rs=rs: compare.overlay(name, draw, [labelled(r, name) for r in rs]),
                f"{what}: {shown} ({where}).{' ' + CAPTION if seeds else ''}",
                wide=True,
            )
        )
    return gallery(items)


@dataclass(frozen=True)
class PerRun:
    """One figure per run: ``draw(result) -> Figure``, saved as ``<stem>_<run>.png``."""

    stem: str
    draw: Callable
    what: str  # the caption, before the run's label
    wide: bool = False


def per_run(runs: Sequence[StudyRun], name: str, spec: PerRun, figs: FigureWriter) -> list[Block]:
    """The figure ``spec`` of every run that has a ``name`` result, as one gallery."""
    have = with_result(runs, name)
    shown = first_seeds(have)
    items = [
        figs.add(
            f"{spec.stem}_{r.name}",
            lambda r=r: spec.draw(labelled(r, name)),
            f"{spec.what}: {r.label} ({r.name}).",
            wide=spec.wide,
        )
        for r in shown
    ]
    out = gallery(items)
    if len(shown) < len(have):
        out.append(Text(f"{spec.what}: the lowest seed of each run shown; the overlays above "
                        "show every seed.", note=True))  # fmt: skip
    return out


def analysis_blocks(
    runs: Sequence[StudyRun],
    figs: FigureWriter,
    name: str,
    title: str,
    overlay: str,
    *,
    by_dataset: bool = False,
    figures: Sequence[PerRun] = (),
    table: Callable[[Sequence[StudyRun]], Table] | None = None,
    draw: Callable | None = None,
) -> list[Block]:
    """One analysis' subsection: its heading (id ``name``), a note on the runs without it, the
    overlays (caption ``overlay``; grouped by dataset alone if ``by_dataset``), the per-run
    ``figures`` and the ``table`` (when any run has the result); ``draw``: the overlay
    (default ``compare.<name>``)."""
    out: list[Block] = [Heading(title, 3, name), *not_run(runs, name)]
    out += overlays(runs, name, overlay, figs, by_dataset, draw)
    for spec in figures:
        out += per_run(runs, name, spec, figs)
    if table is not None and with_result(runs, name):
        out.append(table(runs))
    return out
