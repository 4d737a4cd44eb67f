"""Report on saved results: figures, comparisons, findings and the study report.

``build_report(study_dirs, out=None)`` writes a self-contained ``report.html`` and a
``report.md`` for one or more study directories. The modules, by job: :mod:`.load` (study and
run folders into records), :mod:`.claims` (the paper's claims, one rule each),
:mod:`.blocks`, :mod:`.sections` and :mod:`.render` (the report as one block list, written as
HTML and Markdown), :mod:`.build` (:func:`build_report`); the figures are in :mod:`.figures`,
:mod:`.compare` and the ``*_figures`` modules. Names load on first use (PEP 562):
``import vitscope.report`` loads neither torch, the models nor the analyses.
"""

from __future__ import annotations

from .._lazy import exports

_EXPORTS = {
    "Finding": ".claims",
    "check_all": ".claims",
    "StudyRun": ".load",
    "load_runs": ".load",
    "load_ablations": ".load",
    "build_report": ".build",
}


__getattr__ = exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
