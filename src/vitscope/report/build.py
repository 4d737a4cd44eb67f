"""The study report: one self-contained ``report.html`` and its ``report.md`` twin.

:func:`build_report` reads one or more study directories (``study.yaml``, ``runs/<run>/``
run directories, optionally ``ablations/<run>/`` and ``buildup/buildup.json``) and writes,
atomically:

- ``report.html``: a single file (inline CSS, figures as base64 PNG ``data:`` URIs, no
  external resources) with the runs' summary table, one section per question of the paper
  with its figures (all models side by side), and the findings table;
- ``report.md``: the same content in Markdown, its figures saved under ``figures/`` and
  linked relatively;
- ``findings.json``: the findings, machine-readable (:func:`write_findings`).

Everything is read from saved files (:mod:`.load`); nothing is recomputed, and no model is
imported. The claims are checked by :mod:`.claims`, the sections built by :mod:`.sections`
as one block list (:mod:`.blocks`) that :mod:`.render` writes as HTML and as Markdown.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import VitscopeError
from ..io import atomic_write_json, atomic_write_text
from .blocks import Block, FigureWriter, Heading, Text
from .claims import FAILS, HOLDS, INCONCLUSIVE, VERDICTS, Finding, check_all
from .claims.base import LEVEL
from .figures import literal_text
from .load import StudyRun, load_ablations, load_runs
from .render import render_html, render_markdown
from .sections import (
    coverage_table,
    findings_table,
    section_ablations,
    section_convs,
    section_harmonise,
    section_other,
    section_properties,
    summary_table,
)


def _intro(studies: Sequence[dict], runs: Sequence[StudyRun], found: Sequence[Finding]):
    """One line per study, then the counts of verdicts and how the report was made."""
    from .. import __version__

    out: list[Block] = []
    for s in studies:
        text = f"Study `{s['name']}` ({s['path']})" + (
            f": {s['description']}" if s["description"] else "."
        )
        out.append(Text(text))
    counts = {v: sum(f.verdict == v for f in found) for v in VERDICTS}
    out.append(
        Text(
            f"{len(runs)} runs. Findings: {counts[HOLDS]} hold, {counts[FAILS]} do not "
            f"hold, {counts[INCONCLUSIVE]} inconclusive (table at the end). Generated "
            f"{time.strftime('%Y-%m-%d %H:%M')} by vitscope {__version__} from saved results "
            "only; nothing was recomputed.",
            note=True,
        )
    )
    return out


def _outputs(dirs: Sequence[Path], out: str | Path | None) -> tuple[Path, Path, Path]:
    """``(out_dir, report.html, report.md)``; ``out`` may be a folder or an ``.html`` path."""
    if out is None:
        out_dir = dirs[0]
        html_path = out_dir / "report.html"
    else:
        out = Path(out)
        html_path = out if out.suffix == ".html" else out / "report.html"
        out_dir = html_path.parent
    return out_dir, html_path, html_path.with_suffix(".md")


def _study_dirs(study_dirs: Sequence[str | Path] | str | Path) -> list[Path]:
    """The study directories as paths; each must exist."""
    dirs = (
        [Path(study_dirs)] if isinstance(study_dirs, (str, Path)) else list(map(Path, study_dirs))
    )
    if not dirs:
        raise VitscopeError("build_report needs at least one study directory")
    for d in dirs:
        if not d.is_dir():
            raise VitscopeError(f"study directory {d} does not exist")
    return dirs


def build_report(
    study_dirs: Sequence[str | Path] | str | Path, out: str | Path | None = None
) -> Path:
    """Write ``report.html`` and ``report.md`` for one or more study directories.

    Args:
        study_dirs: study directories, each with ``runs/<run>/`` run directories (any folder
            under ``runs/`` holding a ``config.yaml``) and optionally ``study.yaml`` (``name``,
            ``description``) and ``buildup/buildup.json``. Runs of all of them appear side
            by side.
        out: the output folder (``report.html``, ``report.md``, ``figures/``) or an ``.html``
            path; default: the first study directory.

    Returns:
        The path of ``report.html``.

    Raises:
        VitscopeError: a study directory is missing, or none holds a run.
    """
    dirs = _study_dirs(study_dirs)
    studies, runs = load_runs(dirs)
    if not runs:
        raise VitscopeError(
            f"no runs in {', '.join(map(str, dirs))}: expected run directories (with a "
            "config.yaml) under <study>/runs/"
        )
    out_dir, html_path, md_path = _outputs(dirs, out)
    with literal_text():  # every figure's names are text, never mathtext
        blocks, intro, title, found, seeds = _page(dirs, studies, runs, out_dir)
    atomic_write_text(md_path, render_markdown(title, intro, blocks))
    atomic_write_text(html_path, render_html(title, intro, blocks))
    write_findings(out_dir / "findings.json", studies, found, seeds)
    return html_path


def _page(dirs: list[Path], studies: list[dict], runs: list[StudyRun], out_dir: Path):
    """The report's blocks (drawing its figures into ``out_dir/figures``) and its findings."""
    figs = FigureWriter(out_dir)
    ablations = load_ablations(studies, runs)
    found = check_all(runs, ablations)
    title = "vitscope report: " + ", ".join(s["name"] for s in studies)
    seeds = sorted({r.seed for r in runs})
    blocks: list[Block] = [
        Heading("Runs", 2, "runs"),
        summary_table([*runs, *ablations], len(studies)),
        Text("Analyses per run (✓: result present).", note=True),
        coverage_table(runs),
        *section_properties(runs, figs),
        *section_convs(runs, figs),
        *section_harmonise(runs, dirs, figs),
        *section_ablations(runs, ablations, figs),
        *section_other(runs, out_dir, figs),
        Heading("Findings", 2, "findings"),
        Text(
            "Each claim is an effect estimated from the saved results with a 95% interval "
            "(column Rule: the effect, its null and how it is resampled; "
            "`docs/methods/findings.md`). It holds when the interval lies on the claim's side "
            "of the null, does not hold when it lies on the other side, and is inconclusive "
            "when it straddles the null or the data are missing. The same table is in "
            "`findings.json`."
        ),
        Text(_seed_note(seeds), note=True),
        findings_table(found),
    ]
    return blocks, _intro(studies, runs, found), title, found, seeds


def _seed_note(seeds: Sequence[int]) -> str:
    if len(seeds) > 1:
        return (
            f"Seeds {', '.join(map(str, seeds))}: where an effect is defined for two or more "
            "seeds, its interval is a Student-t interval over the seeds (n = seeds)."
        )
    return (
        f"One seed ({seeds[0] if seeds else 0}): the intervals come from resampling inside "
        "each run (test images, mini-batches) and do not cover seed-to-seed variation; a "
        "study with `seeds: [0, 1, 2]` does."
    )


def write_findings(
    path: Path, studies: Sequence[dict], found: Sequence[Finding], seeds: Sequence[int]
) -> Path:
    """``findings.json``: every claim's id, text, verdict, estimate, interval, n, unit,
    measures and evidence, so one study's findings can be compared with another's."""
    from .. import __version__

    doc = {
        "studies": [{"name": s["name"], "path": str(s["path"])} for s in studies],
        "seeds": list(seeds),
        "level": LEVEL,
        "vitscope": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "findings": [f.to_dict() for f in found],
    }
    atomic_write_json(path, doc)
    return path
