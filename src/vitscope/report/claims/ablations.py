"""The ablations' claims (``docs/methods/hessian.md``, ``docs/methods/alternet.md``): a GAP
head instead of the CLS token, local MSAs. They read the main runs and the ablation runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..load import StudyRun, pct
from .accuracy import accuracy_difference
from .base import Finding, finding
from .curvature import negative_difference


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
        "same model, dataset and fraction; usually an ablation run and its main run). Effect: "
        "share of negative top-k Hessian eigenvalues of the GAP run minus the CLS run. Holds "
        "when every pair's 95% interval lies below 0, does not hold when every one lies "
        "above, else inconclusive. Interval: t over seeds, or (one seed) a bootstrap over the "
        "mini-batches (the same batches for both heads). Paper: docs/methods/hessian.md "
        "(smoothing methods such as GAP suppress negative eigenvalues)."
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
    out = []
    for (model, dataset, fraction, _), heads in sorted(groups.items()):
        if "gap" in heads and "cls" in heads:
            label = f"{model} {dataset} {pct(fraction)}: negative share GAP - CLS"
            m = negative_difference(heads["gap"], heads["cls"], label, "less")
            if m is not None:
                out.append(m)
    why = (
        ""
        if out
        else "needs hessian results of two ViT/PiT runs differing only in head (gap vs cls), "
        "e.g. a study `ablations:` entry with model.kwargs.head=gap"
    )
    return finding("gap-head", claim, detail, out, why)


def check_local_msa(runs: Sequence[StudyRun]) -> Finding:
    """Local MSAs (small kernels) lower test error and negative eigenvalues (Fig 7)."""
    claim = "Local MSAs (3x3 kernels) lower the test error and the negative Hessian eigenvalues"
    detail = (
        "Runs of one local-MSA model (`vit_local_*`, `model.kwargs.kernel`; 0/null = global) "
        "on the same dataset and fraction: the smallest kernel vs the largest (or global). Two "
        "effects per group: test error small - large kernel (points; paired bootstrap over "
        "the test images with one seed) and share of negative top-k Hessian eigenvalues small "
        "- large (bootstrap over mini-batches); t over seeds with several. The claim: both "
        "< 0. Holds when every interval lies below 0, does not hold when every one lies above, "
        "else inconclusive. Paper: Fig 7 (3x3 27.89% < 5x5 28.05% < 8x8 28.94% error, "
        "CIFAR-100)."
    )
    groups: dict[tuple, list[tuple[float, StudyRun]]] = {}
    for r in runs:
        k = kernel_of(r)
        if k is not None:
            groups.setdefault((r.model, r.dataset, round(r.fraction, 6)), []).append((k, r))
    out = []
    for (model, dataset, fraction), rows in sorted(groups.items()):
        ks = sorted({k for k, _ in rows})
        if len(ks) < 2:
            continue
        small = [r for k, r in rows if k == ks[0]]
        large = [r for k, r in rows if k == ks[-1]]
        name = f"{model} {dataset} {pct(fraction)}"
        vs = f"{_kernel_str(ks[0])} - {_kernel_str(ks[-1])}"
        ids = {id(r) for r in small}
        m = accuracy_difference(
            [*small, *large],
            lambda r, ids=ids: id(r) in ids,
            lambda r, ids=ids: id(r) not in ids,
            f"{name}: test error {vs} (points)",
            side="less",
            error=True,
        )
        if m is not None:
            out.append(m)
        hs = [r for r in small if "hessian" in r.results]
        hl = [r for r in large if "hessian" in r.results]
        if hs and hl:
            m = negative_difference(hs, hl, f"{name}: negative share {vs}", "less")
            if m is not None:
                out.append(m)
    why = (
        ""
        if out
        else "needs runs of a vit_local_* model with two kernel sizes (model.kwargs.kernel) on "
        "the same dataset and fraction"
    )
    return finding("local-msa", claim, detail, out, why)
