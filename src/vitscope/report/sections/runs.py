"""The tables around the sections: the runs' summary, which analyses each run has, and the
findings."""

from __future__ import annotations

from collections.abc import Sequence

from ..blocks import DASH, Table, duration, num, params, pct_acc
from ..claims import Finding
from ..load import StudyRun, pct
from .other import PAPER_ANALYSES, other_analyses, shape_analyses


def _summary_row(r: StudyRun) -> list[str]:
    best_epoch = None
    if r.best_acc is not None:
        best_epoch = next(
            (row.get("epoch") for row in r.metrics if row.get("test_acc") == r.best_acc), None
        )
    epochs = r.last("epoch")
    return [
        r.name,
        r.model,
        r.dataset,
        pct(r.fraction),
        params(r.last("params")),
        DASH if epochs is None else f"{epochs:.0f}",
        pct_acc(r.last("test_acc")),
        pct_acc(r.best_acc) + (f" ({best_epoch})" if best_epoch is not None else ""),
        num(r.last("test_nll")),
        num(r.last("test_ece"), ".4f"),
        duration(r.last("train_seconds")),
    ]


def summary_table(runs: Sequence[StudyRun], studies: int = 1) -> Table:
    """One row per run, from the last row of metrics.jsonl (and the best accuracy)."""
    header = ["Run", "Model", "Dataset", "Fraction", "Params", "Epochs", "Test acc"]
    header += ["Best acc (epoch)", "Test NLL", "ECE", "Training time"]
    rows = [_summary_row(r) for r in runs]
    if studies > 1:  # a column with the study, after the run
        header.insert(1, "Study")
        for r, row in zip(runs, rows):
            row.insert(1, r.study)
    return Table(header, rows, id="summary")


def coverage_table(runs: Sequence[StudyRun]) -> Table:
    """Which analyses each run has: ``✓``, ``not run`` or ``unreadable``."""
    names = [*PAPER_ANALYSES, *shape_analyses(runs), *other_analyses(runs)]
    rows = []
    for r in runs:
        cells = []
        for a in names:
            s = r.status(a)
            cells.append("✓" if s == "ok" else "unreadable" if s.startswith("unreadable") else s)
        rows.append([r.name, *cells])
    return Table(["Run", *names], rows, id="coverage")


def findings_table(findings: Sequence[Finding]) -> Table:
    """One row per claim: the verdict, each estimate with its interval and n, the numbers
    behind them and the rule."""
    rows = []
    for i, f in enumerate(findings, 1):
        if f.measures:
            estimates = "\n".join(
                f"{m.label}: {m.interval_text()} → {m.verdict}" for m in f.measures
            )
            n = "\n".join(f"{m.estimate.n} {m.estimate.unit}" for m in f.measures)
            evidence = "\n".join(m.details() for m in f.measures if m.details()) or DASH
        else:
            estimates, n, evidence = DASH, DASH, f.evidence
        rows.append([str(i), f.claim, f.verdict, estimates, n, evidence, f.detail])
    header = ["#", "Claim", "Verdict", "Estimate [95% interval]", "n", "Evidence", "Rule"]
    return Table(header, rows, "findings", verdict_col=2)
