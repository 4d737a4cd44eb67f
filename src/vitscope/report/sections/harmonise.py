"""Q3 of the paper, "How can we harmonise MSAs with Convs?": the lesion study, AlterNet vs
ResNet accuracy, and the AlterNet build-up.

The optional build-up file ``<study>/buildup/buildup.json`` is read as
``{"steps": [{"label": "c4", "num_msas": 1, "acc": 83.45}, ...]}`` (``acc`` a fraction,
``num_msas`` a count).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ...analyses.keys import LesionKeys
from ...errors import VitscopeError
from ...results import Result
from .. import figures
from ..blocks import DASH, Block, FigureWriter, Heading, Table, Text, gallery, pct_acc, percent
from ..figures import single
from ..load import StudyRun, finite, pct
from ..study_figures import accuracy_figure, buildup_figure
from .common import PerRun, analysis_blocks, question, result_rows

BUILDUP = Path("buildup") / "buildup.json"


def section_harmonise(
    runs: Sequence[StudyRun], study_dirs: Sequence[Path], figs: FigureWriter
) -> list[Block]:
    """Q3: lesion study, AlterNet vs ResNet, the build-up (when present)."""
    out = question(
        "3. How can we harmonise MSAs with Convs?",
        "q3",
        "The paper: MSAs at the end of a stage matter most (lesion study, "
        "docs/methods/lesion.md), so "
        "AlterNet replaces the Conv blocks at the end of stages with MSAs and outperforms "
        "CNNs (Fig 11: Alter-ResNet-50 84.02% vs ResNet-50 82.48% on CIFAR-100).",
    )
    lesion = PerRun("lesion", single(figures.lesion), "Lesion study, coloured by unit kind")
    out += analysis_blocks(
        runs, figs, "lesion", "Lesion study", "ΔAccuracy when one unit is removed",
        figures=[lesion], table=lesion_table,
    )  # fmt: skip
    out.append(Heading("AlterNet vs ResNet (and the others): accuracy", 3, "accuracy"))
    with_acc = [r for r in runs if r.best_acc is not None]
    if with_acc:
        plot = figs.add(
            "accuracy_vs_fraction", lambda: accuracy_figure(with_acc),
            "Best test accuracy against the fraction of the training set, one line per model.",
            wide=True,
        )  # fmt: skip
        out += gallery([plot]) + [accuracy_table(with_acc)]
    else:
        out.append(Text("No run has a metrics.jsonl with test accuracy.", note=True))
    for d in study_dirs:
        out += buildup_section(d, figs, several=len(study_dirs) > 1)
    return out


def lesion_table(runs: Sequence[StudyRun]) -> Table:
    header = ["Run", "Base acc", "Most harmful unit", "Kind", "Stage", "ΔAcc"]

    def row(r: StudyRun, res: Result) -> list[str]:
        units = res.values.get(LesionKeys.UNITS, [])
        deltas = res.values.get(LesionKeys.DELTA_ACC, [])
        scored = [(abs(d), i) for i, d in enumerate(deltas) if d is not None]
        if scored:
            i = max(scored)[1]
            u = units[i]
            worst = [u.get("name", str(i)), u.get("kind", "?"), str(u.get("stage", "?"))]
            worst.append(f"{deltas[i]:+.2f}")
        else:
            worst = [DASH] * 4
        return [r.name, percent(res.values.get(LesionKeys.BASE_ACC)), *worst]

    return Table(header, result_rows(runs, "lesion", row), id="lesion-table")


def accuracy_table(runs: Sequence[StudyRun]) -> Table:
    """Best accuracy per (dataset, fraction) row and model column."""
    models = list(dict.fromkeys(r.model for r in runs))
    keys = list(dict.fromkeys(r.key for r in runs))
    rows = []
    for key in keys:
        row = [key[0], pct(key[1])]
        for m in models:
            accs = [r.best_acc for r in runs if r.key == key and r.model == m]
            row.append(pct_acc(max(accs)) if accs else DASH)
        rows.append(row)
    return Table(["Dataset", "Fraction", *models], rows, id="accuracy-table")


def read_buildup(study_dir: Path) -> list[dict] | None:
    """The build-up steps of ``study_dir/buildup/buildup.json``, or None if there is none."""
    f = study_dir / BUILDUP
    if not f.is_file():
        return None
    try:
        body = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise VitscopeError(f"{f} is corrupt: {e}") from None
    items = body.get("steps") if isinstance(body, dict) else None
    return [
        {
            "label": str(s.get("label") or i),
            "num_msas": s["num_msas"],
            "acc": 100 * s["acc"],
            "kept": s.get("kept"),
        }
        for i, s in enumerate(items if isinstance(items, list) else [])
        if isinstance(s, dict) and finite(s.get("acc")) and finite(s.get("num_msas"))
    ]


def buildup_section(study_dir: Path, figs: FigureWriter, several: bool) -> list[Block]:
    """The AlterNet build-up of a study, if it has one (silently nothing otherwise)."""
    try:
        steps = read_buildup(study_dir)
    except VitscopeError as e:
        return [Heading("AlterNet build-up", 3, "buildup"), Text(str(e), note=True)]
    if steps is None:
        return []
    title = "AlterNet build-up" + (f" ({study_dir.name})" if several else "")
    out: list[Block] = [
        Heading(title, 3, "buildup"),
        Text(
            "The paper's rule (docs/methods/alternet.md): replace Conv blocks with MSAs from "
            "the end of the model; "
            "if an MSA does not help, put it at the end of an earlier stage."
        ),
    ]
    if not steps:
        return out + [Text(f"{study_dir / BUILDUP} holds no readable steps.", note=True)]
    plot = figs.add(
        f"buildup_{study_dir.name}", lambda: buildup_figure(steps),
        "Accuracy against the number of MSAs of each build-up step (best in orange).", wide=True,
    )  # fmt: skip
    rows = [
        [s["label"], f"{s['num_msas']:g}", f"{s['acc']:.2f}%", DASH if s["kept"] is None
         else "yes" if s["kept"] else "no"]
        for s in steps
    ]  # fmt: skip
    return (
        out + gallery([plot]) + [Table(["Step", "MSAs", "Accuracy", "Kept"], rows, "buildup-table")]
    )
