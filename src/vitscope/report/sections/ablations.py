"""The paper's ablations (when a study has ``ablations/`` runs): GAP vs CLS token, local MSA
kernel size, each ablation run next to the main runs of the same model."""

from __future__ import annotations

from collections.abc import Sequence

from .. import compare
from ..blocks import (
    Block,
    FigureWriter,
    Table,
    gallery,
    group_name,
    num,
    pct_acc,
    percent,
)
from ..claims.ablations import head_of
from ..claims.accuracy import best_error
from ..claims.base import LANDSCAPE_RING
from ..claims.curvature import hessian_eigenvalues, landscape_rise, negative_share, top_eigenvalue
from ..load import StudyRun, pct
from .common import labelled, question, with_result


def ablation_groups(
    runs: Sequence[StudyRun], ablations: Sequence[StudyRun]
) -> dict[tuple, list[StudyRun]]:
    """(study, dataset, fraction) -> the ablation runs and the main runs of the same models."""
    groups: dict[tuple, list[StudyRun]] = {}
    for a in ablations:
        groups.setdefault((a.study, *a.key), []).append(a)
    for key, rs in groups.items():
        models = {r.model for r in rs}
        refs = [r for r in runs if (r.study, *r.key) == key and r.model in models]
        groups[key] = refs + rs
    return groups


def _ablation_row(r: StudyRun) -> list[str]:
    res, land = r.results.get("hessian"), r.results.get("landscape")
    eig = hessian_eigenvalues(res) if res is not None else None
    rise = landscape_rise(land, LANDSCAPE_RING) if land is not None else None
    return [
        r.name,
        r.model,
        r.variant or ("head=cls" if head_of(r) == "cls" else "default"),
        pct(r.fraction),
        pct_acc(r.best_acc),
        percent(best_error(r)),
        num(negative_share(res) if res is not None else None, ".1%"),
        num(float(eig.min()) if eig is not None and eig.size else None, ".4g"),
        num(top_eigenvalue(res) if res is not None else None, ".4g"),
        num(None if rise is None else rise[1], ".3g"),
    ]


def ablation_table(groups: dict[tuple, list[StudyRun]]) -> Table:
    header = ["Run", "Model", "Variant", "Fraction", "Best acc", "Test error"]
    header += ["Negative share", "Min λ", "Mean top λ", "Δ(NLL+L2) r=0.5"]
    rows = [_ablation_row(r) for rs in groups.values() for r in rs]
    return Table(header, rows, id="ablation-table")


def section_ablations(
    runs: Sequence[StudyRun], ablations: Sequence[StudyRun], figs: FigureWriter
) -> list[Block]:
    """The paper's ablations: GAP vs CLS token, local MSA kernel size (when a study has them)."""
    if not ablations:
        return []
    out = question(
        "Ablations: GAP vs CLS token, local MSA",
        "ablations",
        "The paper: a GAP classifier instead of the CLS token suppresses ViT's negative "
        "Hessian eigenvalues (docs/methods/hessian.md), and locality constraints (3×3 local "
        "MSA) lower both the "
        "test error and the negative eigenvalues (Fig 7). Each ablation run (under "
        "`ablations/`) is shown next to the main runs of the same model.",
    )
    groups = ablation_groups(runs, ablations)
    items = []
    for key, rs in groups.items():
        with_h = with_result(rs, "hessian")
        if len(with_h) >= 2:
            items.append(
                figs.add(
                    f"ablation_hessian_{'_'.join(map(str, key))}",
                    lambda rs=with_h: compare.overlay(
                        "hessian", compare.hessian, [labelled(r, "hessian") for r in rs]
                    ),
                    "Top-k Hessian eigenvalue densities: "
                    f"{', '.join(r.label for r in with_h)} ({group_name(key[1:])}).",
                    wide=True,
                )
            )
    return out + gallery(items) + [ablation_table(groups)]
