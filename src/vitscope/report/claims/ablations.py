"""The ablations' claims (``docs/methods/hessian.md``, ``docs/methods/alternet.md``): a GAP
head instead of the CLS token, local MSAs. They read the main runs and the ablation runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..load import StudyRun, pct
from .accuracy import best_error
from .base import INCONCLUSIVE, Finding, unanimous
from .curvature import fewer_negatives


def head_of(run: StudyRun) -> str | None:
    """``cls`` or ``gap`` for ViT/PiT runs (from ``model.kwargs.head``), else None."""
    if run.family not in ("ViT", "PiT"):
        return None
    return str(run.kwargs.get("head") or ("gap" if "local" in run.model.lower() else "cls"))


def kernel_of(run: StudyRun) -> float | None:
    """The local-MSA kernel of a ``vit_local*`` run (``inf``: global), else None."""
    if "kernel" not in run.kwargs and "local" not in run.model.lower():
        return None
    k = run.kwargs.get("kernel", 3)  # vit_local_* default
    return math.inf if not k else float(k)


def _kernel_str(k: float) -> str:
    return "global" if math.isinf(k) else f"{k:g}x{k:g}"


def check_gap_head(runs: Sequence[StudyRun]) -> Finding:
    """GAP instead of the CLS token suppresses negative Hessian eigenvalues
    (``docs/methods/hessian.md``)."""
    claim = "A GAP head instead of the CLS token suppresses negative Hessian eigenvalues"
    detail = (
        "Pairs of ViT/PiT runs that differ only in the head (`model.kwargs.head` gap vs cls, "
        "same model, dataset and fraction; usually an ablation run and its main run): share "
        "of negative top-k Hessian eigenvalues, a tie broken by |λmin|/λmax (mean over "
        "batches). Holds if the GAP run has fewer in every decided pair, does not hold if in "
        "none, else (or if every pair is tied) inconclusive. "
        "Paper: docs/methods/hessian.md (smoothing methods such as GAP suppress negative "
        "eigenvalues)."
    )
    groups: dict[tuple, dict[str, list[StudyRun]]] = {}
    for r in runs:
        head = head_of(r)
        if head is None or "hessian" not in r.results or kernel_of(r) is not None:
            continue
        rest = tuple(sorted((k, str(v)) for k, v in r.kwargs.items() if k != "head"))
        groups.setdefault((r.model, r.dataset, round(r.fraction, 6), rest), {}).setdefault(
            head, []
        ).append(r)
    votes, parts = [], []
    for (model, dataset, fraction, _), heads in sorted(groups.items()):
        if "gap" in heads and "cls" in heads:
            vote, text = fewer_negatives(heads["gap"], heads["cls"])
            parts.append(f"{model} {dataset} {pct(fraction)}: GAP vs CLS {text}")
            if vote is not None:
                votes.append(vote)
    if not votes:
        why = "; ".join(parts) or (
            "needs hessian results of two ViT/PiT runs differing only in head (gap vs cls), "
            "e.g. a study `ablations:` entry with model.kwargs.head=gap"
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    return Finding(claim, unanimous(votes), "; ".join(parts), detail)


def _kernel_votes(ks: list[float], rows: list[tuple[float, StudyRun]]) -> tuple[list, list]:
    """The votes of one local-MSA group (smallest vs largest kernel) and their numbers."""
    small = [r for k, r in rows if k == ks[0]]
    large = [r for k, r in rows if k == ks[-1]]
    err_s = np.mean([e for e in map(best_error, small) if e is not None] or [np.nan])
    err_l = np.mean([e for e in map(best_error, large) if e is not None] or [np.nan])
    votes, text = [], []
    if np.isfinite(err_s) and np.isfinite(err_l):
        votes.append(err_s < err_l)
        text.append(
            f"error {_kernel_str(ks[0])} {err_s:.2f}% vs {_kernel_str(ks[-1])} {err_l:.2f}%"
        )
    hs = [r for r in small if "hessian" in r.results]
    hl = [r for r in large if "hessian" in r.results]
    if hs and hl:
        vote, numbers = fewer_negatives(hs, hl)
        if vote is not None:
            votes.append(vote)
        text.append(numbers)
    return votes, text


def check_local_msa(runs: Sequence[StudyRun]) -> Finding:
    """Local MSAs (small kernels) lower test error and negative eigenvalues (Fig 7)."""
    claim = "Local MSAs (3x3 kernels) lower the test error and the negative Hessian eigenvalues"
    detail = (
        "Runs of one local-MSA model (`vit_local_*`, `model.kwargs.kernel`; 0/null = global) "
        "on the same dataset and fraction: the smallest kernel vs the largest (or global). Two "
        "votes per group: lower best test error, and fewer negative Hessian eigenvalues (share "
        "of negative top-k eigenvalues, a tie broken by |λmin|/λmax). Holds if every vote "
        "agrees, does not hold if none does, else "
        "inconclusive. Paper: Fig 7 (3x3 27.89% < 5x5 28.05% < 8x8 28.94% error, CIFAR-100)."
    )
    groups: dict[tuple, list[tuple[float, StudyRun]]] = {}
    for r in runs:
        k = kernel_of(r)
        if k is not None:
            groups.setdefault((r.model, r.dataset, round(r.fraction, 6)), []).append((k, r))
    votes, parts = [], []
    for (model, dataset, fraction), rows in sorted(groups.items()):
        ks = sorted({k for k, _ in rows})
        if len(ks) < 2:
            continue
        group_votes, text = _kernel_votes(ks, rows)
        votes += group_votes
        if text:
            parts.append(f"{model} {dataset} {pct(fraction)}: " + ", ".join(text))
    if not votes:
        why = (
            "needs runs of a vit_local_* model with two kernel sizes (model.kwargs.kernel) on "
            "the same dataset and fraction"
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    return Finding(claim, unanimous(votes), "; ".join(parts), detail)
