"""Report on saved results: figures, comparisons, findings and the study report.

``build_report(study_dirs, out=None)`` writes a self-contained ``report.html`` and a
``report.md`` for one or more study directories; see :mod:`vitscope.report.html`.
"""

from .findings import Finding, StudyRun, check_all, load_runs
from .html import build_report

__all__ = ["Finding", "StudyRun", "build_report", "check_all", "load_runs"]
