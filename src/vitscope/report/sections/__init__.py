"""The report's sections, each a list of blocks: the paper's three questions and its
ablations (one module each), the generic section for any other analysis, and the tables
around them. Nothing is recomputed: every number comes from the saved results."""

from __future__ import annotations

from .ablations import section_ablations
from .convs import section_convs
from .harmonise import read_buildup, section_harmonise
from .other import PAPER_ANALYSES, section_other
from .properties import section_properties
from .runs import coverage_table, findings_table, summary_table

__all__ = [
    "PAPER_ANALYSES",
    "coverage_table",
    "findings_table",
    "read_buildup",
    "section_ablations",
    "section_convs",
    "section_harmonise",
    "section_other",
    "section_properties",
    "summary_table",
]
