"""The study report: one self-contained ``report.html`` and its ``report.md`` twin.

:func:`build_report` reads one or more study directories (``study.yaml``, ``runs/<run>/``
run directories, optionally ``buildup/buildup.json``) and writes, atomically:

- ``report.html``: a single file (inline CSS, figures as base64 PNG ``data:`` URIs, no
  external resources) with the runs' summary table, one section per question of the paper
  with its figures (all models side by side), and the findings table;
- ``report.md``: the same content in Markdown, its figures saved under ``figures/`` and
  linked relatively.

Everything is read from saved files; nothing is recomputed, and no model is imported.
The report is built as a list of blocks (:class:`Heading`, :class:`Text`, :class:`Table`,
:class:`Gallery`) that the HTML and Markdown renderers both walk, so the two agree.

The optional build-up file ``<study>/buildup/buildup.json`` is read as
``{"steps": [{"label": "c4", "num_msas": 1, "acc": 83.45}, ...]}`` (or a bare list of steps;
``acc`` may be a fraction or a percentage, ``num_msas`` a count or a per-stage list).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import VitscopeError  # noqa: E402
from ..io import atomic_write, atomic_write_text  # noqa: E402
from . import findings as F  # noqa: E402
from .compare import compare_figure  # noqa: E402
from .figures import FIGURES  # noqa: E402
from .landscape_figures import FIGURES as LANDSCAPE_FIGURES  # noqa: E402
from .study_figures import (  # noqa: E402
    accuracy_figure,
    buildup_figure,
    overfitting_caption,
    overfitting_figure,
    small_data_figure,
)

DPI = 110
BUILDUP = Path("buildup") / "buildup.json"
LANDSCAPE_RINGS = (0.1, 0.2, 0.3, 0.5, 1.0)  # the rings of spec §4's table
DASH = "—"


# ---------------------------------------------------------------------------------------------
# blocks


@dataclass
class Heading:
    text: str
    level: int = 2
    id: str = ""


@dataclass
class Text:
    text: str
    note: bool = False  # a side remark (missing data, fallbacks), shown smaller


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    id: str = ""
    verdict_col: int | None = None  # a column of verdicts, coloured in HTML


@dataclass
class Plot:
    file: str  # relative to the report: figures/<stem>.png
    png: bytes
    caption: str
    wide: bool = False


@dataclass
class Gallery:
    plots: list[Plot] = field(default_factory=list)


Block = Heading | Text | Table | Gallery


class FigureWriter:
    """Draws figures, saves each as ``<out>/figures/<stem>.png`` and keeps its bytes."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.stems: set[str] = set()

    def add(
        self, stem: str, draw: Callable[[], plt.Figure], caption: str, wide: bool = False
    ) -> Plot | Text:
        """The figure ``draw()`` as a :class:`Plot`, or a note if drawing it failed."""
        stem = _slug(stem)
        while stem in self.stems:
            stem += "_"
        self.stems.add(stem)
        try:
            fig = draw()
        except Exception as e:  # one malformed result must not cost the whole report
            warnings.warn(f"report: figure {stem} failed: {e!r}", stacklevel=2)
            plt.close("all")
            return Text(f"Figure {stem} could not be drawn: {type(e).__name__}: {e}", note=True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        plt.close(fig)
        png = buf.getvalue()
        rel = f"figures/{stem}.png"
        atomic_write(self.out_dir / rel, lambda p: p.write_bytes(png))
        return Plot(rel, png, caption, wide)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "figure"


def _gallery(items: Sequence[Plot | Text]) -> list[Block]:
    """The plots as one gallery, failure notes after it."""
    plots = [p for p in items if isinstance(p, Plot)]
    return ([Gallery(plots)] if plots else []) + [t for t in items if isinstance(t, Text)]


# ---------------------------------------------------------------------------------------------
# formatting


def _num(x: float | None, spec: str = ".3f") -> str:
    return DASH if x is None else format(x, spec)


def _pct_acc(acc: float | None) -> str:
    return DASH if acc is None else f"{100 * acc:.2f}%"


def _params(n: float | None) -> str:
    if n is None:
        return DASH
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def _duration(s: float | None) -> str:
    if s is None:
        return DASH
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s % 60:02d}s" if m else f"{s}s"


def _group_name(key: tuple) -> str:
    return f"{key[0]}, {F.pct(key[1])} of the training set"


# ---------------------------------------------------------------------------------------------
# the run tables


def summary_table(runs: Sequence[F.StudyRun], studies: int = 1) -> Table:
    """One row per run, from the last row of metrics.jsonl (and the best accuracy)."""
    header = ["Run", "Model", "Dataset", "Fraction", "Params", "Epochs", "Test acc"]
    header += ["Best acc (epoch)", "Test NLL", "ECE", "Training time"]
    rows = []
    for r in runs:
        best_epoch = None
        if r.best_acc is not None:
            best_epoch = next(
                (row.get("epoch") for row in r.metrics if row.get("test_acc") == r.best_acc), None
            )
        best = _pct_acc(r.best_acc) + (f" ({best_epoch})" if best_epoch is not None else "")
        epochs = r.last("epoch")
        rows.append(
            [
                r.name,
                r.model,
                r.dataset,
                F.pct(r.fraction),
                _params(r.last("params")),
                DASH if epochs is None else f"{epochs:.0f}",
                _pct_acc(r.last("test_acc")),
                best,
                _num(r.last("test_nll")),
                _num(r.last("test_ece"), ".4f"),
                _duration(r.last("train_seconds")),
            ]
        )
        if studies > 1:
            rows[-1].insert(1, r.study)
    if studies > 1:
        header.insert(1, "Study")
    return Table(header, rows, id="summary")


def coverage_table(runs: Sequence[F.StudyRun]) -> Table:
    """Which analyses each run has: ``✓``, ``not run`` or ``unreadable``."""
    rows = []
    for r in runs:
        cells = []
        for a in F.ANALYSIS_NAMES:
            s = r.status(a)
            cells.append("✓" if s == "ok" else "unreadable" if s.startswith("unreadable") else s)
        rows.append([r.name, *cells])
    return Table(["Run", *F.ANALYSIS_NAMES], rows, id="coverage")


def findings_table(findings: Sequence[F.Finding]) -> Table:
    rows = [[str(i), f.claim, f.verdict, f.evidence, f.detail] for i, f in enumerate(findings, 1)]
    return Table(["#", "Claim", "Verdict", "Evidence", "Rule"], rows, "findings", verdict_col=2)


# ---------------------------------------------------------------------------------------------
# figure helpers


def _labelled(run: F.StudyRun, name: str):
    """The run's ``name`` result with the report's label, model and fraction in its meta."""
    res = run.results[name]
    meta = {**res.meta, "label": run.label, "model": run.model, "fraction": run.fraction}
    return replace(res, meta=meta)


def _groups(runs: Sequence[F.StudyRun], name: str, by_dataset: bool = False) -> dict:
    out: dict = {}
    for r in runs:
        if name in r.results:
            out.setdefault((r.dataset,) if by_dataset else r.key, []).append(r)
    return out


def _not_run(runs: Sequence[F.StudyRun], name: str) -> list[Block]:
    missing = [r.name for r in runs if name not in r.results]
    if not missing:
        return []
    if len(missing) == len(runs):
        return [Text(f"`{name}`: not run for any run.", note=True)]
    bad = [f"{r.name} ({r.errors[name]})" for r in runs if name in r.errors]
    extra = f" Unreadable: {'; '.join(bad)}." if bad else ""
    return [Text(f"`{name}` not run for: {', '.join(missing)}.{extra}", note=True)]


def overlays(
    runs: Sequence[F.StudyRun], name: str, what: str, figs: FigureWriter, by_dataset=False
) -> list[Block]:
    """``compare_figure(name, ...)`` of the runs of each (dataset, fraction) group."""
    items = []
    for key, rs in _groups(runs, name, by_dataset).items():
        where = key[0] if by_dataset else _group_name(key)
        items.append(
            figs.add(
                f"{name}_compare_{'_'.join(map(str, key))}",
                lambda rs=rs: compare_figure(name, [_labelled(r, name) for r in rs]),
                f"{what}: {', '.join(r.label for r in rs)} ({where}).",
                wide=True,
            )
        )
    return _gallery(items)


def per_run(
    runs: Sequence[F.StudyRun],
    name: str,
    stem: str,
    draw: Callable,
    what: str,
    figs: FigureWriter,
    wide: bool = False,
) -> list[Block]:
    """One figure ``draw(result)`` per run that has a ``name`` result."""
    items = [
        figs.add(
            f"{stem}_{r.name}",
            lambda r=r: draw(_labelled(r, name)),
            f"{what}: {r.label} ({r.name}).",
            wide=wide,
        )
        for r in runs
        if name in r.results
    ]
    return _gallery(items)


# ---------------------------------------------------------------------------------------------
# the sections


def section_properties(runs: Sequence[F.StudyRun], figs: FigureWriter) -> list[Block]:
    """Q1: flat landscapes, Hessian spectra, overfitting and data size."""
    out: list[Block] = [
        Heading("1. What properties of MSAs do we need?", 2, "q1"),
        Text(
            "The paper: MSAs flatten the loss landscape (Fig 1a); ViT's Hessian has many "
            "negative eigenvalues, more so with little data (Fig 1c, Fig 4); and a weak "
            "inductive bias does not make ViT overfit: test error and training NLL rise "
            "together (Fig 1b)."
        ),
        Heading("Loss landscape", 3, "landscape"),
    ]
    out += _not_run(runs, "landscape")
    out += overlays(runs, "landscape", "Loss along d1 through the centre", figs)
    out += per_run(
        runs, "landscape", "landscape_surface", LANDSCAPE_FIGURES["landscape_surface"],
        "Loss landscape (NLL + L2 and NLL, minus the minimum)", figs, wide=True,
    )  # fmt: skip
    if any("landscape" in r.results for r in runs):
        out.append(landscape_table(runs))
    out.append(Heading("Hessian max-eigenvalue spectra", 3, "hessian"))
    out += _not_run(runs, "hessian")
    out += overlays(
        runs, "hessian", "Density of the batch-wise top-k Hessian eigenvalues (negative | "
        "positive, own y-scales; dashed: fraction < 100%)", figs, by_dataset=True,
    )  # fmt: skip
    if any("hessian" in r.results for r in runs):
        out.append(hessian_table(runs))
    out.append(Heading("Overfitting and the small-data regime", 3, "overfitting"))
    out += _not_run(runs, "overfitting")
    points = F.overfit_points(runs)
    if points:
        items = [
            figs.add("overfitting_error_vs_nll", lambda: overfitting_figure(points),
                     overfitting_caption(points), wide=True),
            figs.add("overfitting_small_data", lambda: small_data_figure(points),
                     "Small-data regime: test error (best epoch) and training NLL against the "
                     "fraction of the training set, one line per model (hollow: training NLL "
                     "from metrics.jsonl).", wide=True),
        ]  # fmt: skip
        out += _gallery(items)
        out.append(overfitting_table(points))
    else:
        out.append(Text("No run has both a test accuracy and a training NLL.", note=True))
    return out


def landscape_table(runs: Sequence[F.StudyRun]) -> Table:
    """Centre values and the rise of NLL + L2 on the L∞ rings of spec §4's table."""
    present = sorted(
        {
            row["r"]
            for r in runs
            if "landscape" in r.results
            for row in r.results["landscape"].values.get("rings", [])
        }
    )
    rings = [x for x in LANDSCAPE_RINGS if any(abs(x - p) < 1e-9 for p in present)]
    header = ["Run", "L2", "Centre NLL", "Centre NLL+L2"] + [f"Δ(NLL+L2) r={x:g}" for x in rings]
    rows = []
    for r in runs:
        res = r.results.get("landscape")
        if res is None:
            continue
        v = res.values
        centre = v.get("center", {})
        by_r = {round(row["r"], 6): row.get("loss") for row in v.get("rings", [])}
        rises = []
        for x in rings:
            loss = by_r.get(round(x, 6))
            ok = loss is not None and centre.get("loss") is not None
            rises.append(_num(loss - centre["loss"], ".3g") if ok else DASH)
        l2 = f"{v.get('l2_mode', '?')} × {v.get('weight_decay', '?')}"
        rows.append(
            [r.name, l2, _num(centre.get("nll"), ".3f"), _num(centre.get("loss"), ".3f"), *rises]
        )
    return Table(header, rows, id="landscape-table")


def hessian_table(runs: Sequence[F.StudyRun]) -> Table:
    header = ["Run", "Checkpoint", "Batches", "Eigenvalues", "Negative share", "Min", "Max"]
    header += ["Mean top λ", "Converged"]
    rows = []
    for r in runs:
        res = r.results.get("hessian")
        if res is None:
            continue
        eig = F.hessian_eigenvalues(res)
        share = F.negative_share(res)
        conv = res.values.get("converged") or []
        rows.append(
            [
                r.name,
                str(res.meta.get("checkpoint", "?")),
                str(len(res.values.get("eigenvalues") or [])),
                str(eig.size),
                DASH if share is None else f"{share:.1%}",
                _num(float(eig.min()) if eig.size else None, ".4g"),
                _num(float(eig.max()) if eig.size else None, ".4g"),
                _num(F.top_eigenvalue(res), ".4g"),
                f"{sum(map(bool, conv))}/{len(conv)}" if conv else DASH,
            ]
        )
    return Table(header, rows, id="hessian-table")


def overfitting_table(points: Sequence[F.OverfitPoint]) -> Table:
    rows = [
        [
            p.run.name,
            p.run.model,
            F.pct(p.run.fraction),
            f"{p.train_nll:.4f}",
            "overfitting result" if p.source == "overfitting" else "metrics.jsonl (fallback)",
            f"{p.test_error:.2f}%",
        ]
        for p in points
    ]
    header = ["Run", "Model", "Fraction", "Train NLL", "Train NLL from", "Test error"]
    return Table(header, rows, id="overfitting-table")


def section_convs(runs: Sequence[F.StudyRun], figs: FigureWriter) -> list[Block]:
    """Q2: Fourier analysis, feature-map variance, noise robustness."""
    out: list[Block] = [
        Heading("2. Do MSAs act like Convs?", 2, "q2"),
        Text(
            "The paper: no. MSAs are low-pass filters that reduce the high-frequency amplitude "
            "and the variance of feature maps, Convs are high-pass filters that raise both "
            "(Fig 2a, Fig 8, Fig 9); accordingly ViT is robust to high-frequency noise and "
            "ResNet to low-frequency noise (Fig 2b). Grey spans: MSA units; blue spans: "
            "downsampling units."
        ),
        Heading("Fourier analysis of feature maps", 3, "fourier"),
    ]
    out += _not_run(runs, "fourier")
    out += overlays(runs, "fourier", "High-frequency ΔLog amplitude (1.0π) vs depth", figs)
    out += per_run(
        runs, "fourier", "fourier_high_freq", FIGURES["fourier"]["fourier_high_freq"],
        "ΔLog amplitude at 1.0π vs depth (Fig 8)", figs,
    )  # fmt: skip
    out += per_run(
        runs, "fourier", "fourier_curves", FIGURES["fourier"]["fourier_curves"],
        "ΔLog amplitude vs frequency, one curve per unit (Fig 2a)", figs,
    )  # fmt: skip
    out.append(Heading("Feature-map variance", 3, "variance"))
    out += _not_run(runs, "variance")
    out += overlays(runs, "variance", "Feature-map variance vs depth", figs)
    out += per_run(
        runs, "variance", "variance", FIGURES["variance"]["variance"],
        "Feature-map variance vs depth (Fig 9)", figs,
    )  # fmt: skip
    out.append(Heading("Robustness to frequency-based noise", 3, "noise"))
    out += _not_run(runs, "noise")
    out += overlays(runs, "noise", "ΔAccuracy under band-limited noise (Fig 2b)", figs)
    if any("noise" in r.results for r in runs):
        out.append(noise_table(runs))
    return out


def noise_table(runs: Sequence[F.StudyRun]) -> Table:
    header = [
        "Run",
        "Clean acc",
        f"ΔAcc f ≤ {F.NOISE_LOW_MAX:g}π",
        f"ΔAcc f ≥ {F.NOISE_HIGH_MIN:g}π",
    ]
    rows = []
    for r in runs:
        res = r.results.get("noise")
        if res is None:
            continue
        low, high = F.noise_bands(res)
        clean = res.values.get("clean_acc")
        rows.append(
            [
                r.name,
                DASH if clean is None else f"{clean:.2f}%",
                _num(low, "+.2f"),
                _num(high, "+.2f"),
            ]
        )
    return Table(header, rows, id="noise-table")


def section_harmonise(
    runs: Sequence[F.StudyRun], study_dirs: Sequence[Path], figs: FigureWriter
) -> list[Block]:
    """Q3: lesion study, AlterNet vs ResNet, the build-up (when present)."""
    out: list[Block] = [
        Heading("3. How can we harmonise MSAs with Convs?", 2, "q3"),
        Text(
            "The paper: MSAs at the end of a stage matter most (lesion study, §7.1), so "
            "AlterNet replaces the Conv blocks at the end of stages with MSAs and outperforms "
            "CNNs (Fig 11: Alter-ResNet-50 84.02% vs ResNet-50 82.48% on CIFAR-100)."
        ),
        Heading("Lesion study", 3, "lesion"),
    ]
    out += _not_run(runs, "lesion")
    out += overlays(runs, "lesion", "ΔAccuracy when one unit is removed", figs)
    out += per_run(
        runs, "lesion", "lesion", FIGURES["lesion"]["lesion"],
        "Lesion study, coloured by unit kind", figs,
    )  # fmt: skip
    if any("lesion" in r.results for r in runs):
        out.append(lesion_table(runs))
    out.append(Heading("AlterNet vs ResNet (and the others): accuracy", 3, "accuracy"))
    with_acc = [r for r in runs if r.best_acc is not None]
    if with_acc:
        out += _gallery(
            [
                figs.add(
                    "accuracy_vs_fraction",
                    lambda: accuracy_figure(with_acc),
                    "Best test accuracy against the fraction of the training set, one line "
                    "per model.",
                    wide=True,
                )
            ]
        )
        out.append(accuracy_table(with_acc))
    else:
        out.append(Text("No run has a metrics.jsonl with test accuracy.", note=True))
    for d in study_dirs:
        out += buildup_section(d, figs, several=len(study_dirs) > 1)
    return out


def lesion_table(runs: Sequence[F.StudyRun]) -> Table:
    header = ["Run", "Base acc", "Most harmful unit", "Kind", "Stage", "ΔAcc"]
    rows = []
    for r in runs:
        res = r.results.get("lesion")
        if res is None:
            continue
        units, deltas = res.values.get("units", []), res.values.get("delta_acc", [])
        scored = [(abs(d), i) for i, d in enumerate(deltas) if d is not None]
        base = res.values.get("base_acc")
        if scored:
            i = max(scored)[1]
            u = units[i]
            worst = [u.get("name", str(i)), u.get("kind", "?"), str(u.get("stage", "?"))]
            worst.append(f"{deltas[i]:+.2f}")
        else:
            worst = [DASH] * 4
        rows.append([r.name, DASH if base is None else f"{base:.2f}%", *worst])
    return Table(header, rows, id="lesion-table")


def accuracy_table(runs: Sequence[F.StudyRun]) -> Table:
    """Best accuracy per (dataset, fraction) row and model column."""
    models = list(dict.fromkeys(r.model for r in runs))
    keys = list(dict.fromkeys(r.key for r in runs))
    rows = []
    for key in keys:
        row = [key[0], F.pct(key[1])]
        for m in models:
            accs = [r.best_acc for r in runs if r.key == key and r.model == m]
            row.append(_pct_acc(max(accs)) if accs else DASH)
        rows.append(row)
    return Table(["Dataset", "Fraction", *models], rows, id="accuracy-table")


def _ablation_groups(
    runs: Sequence[F.StudyRun], ablations: Sequence[F.StudyRun]
) -> dict[tuple, list[F.StudyRun]]:
    """(study, dataset, fraction) -> the ablation runs and the main runs of the same models."""
    groups: dict[tuple, list[F.StudyRun]] = {}
    for a in ablations:
        groups.setdefault((a.study, *a.key), []).append(a)
    for key, rs in groups.items():
        models = {r.model for r in rs}
        refs = [r for r in runs if (r.study, *r.key) == key and r.model in models]
        groups[key] = refs + rs
    return groups


def ablation_table(groups: dict[tuple, list[F.StudyRun]]) -> Table:
    header = ["Run", "Model", "Variant", "Fraction", "Best acc", "Test error"]
    header += ["Negative share", "Min λ", "Mean top λ", "Δ(NLL+L2) r=0.5"]
    rows = []
    for rs in groups.values():
        for r in rs:
            res = r.results.get("hessian")
            eig = F.hessian_eigenvalues(res) if res is not None else None
            share = F.negative_share(res) if res is not None else None
            land = r.results.get("landscape")
            rise = F.landscape_rise(land, F.LANDSCAPE_RING) if land is not None else None
            err = F.best_error(r)
            variant = r.variant or ("head=cls" if F.head_of(r) == "cls" else "default")
            rows.append(
                [
                    r.name,
                    r.model,
                    variant,
                    F.pct(r.fraction),
                    _pct_acc(r.best_acc),
                    DASH if err is None else f"{err:.2f}%",
                    DASH if share is None else f"{share:.1%}",
                    _num(float(eig.min()) if eig is not None and eig.size else None, ".4g"),
                    _num(F.top_eigenvalue(res) if res is not None else None, ".4g"),
                    DASH if rise is None else _num(rise[1], ".3g"),
                ]
            )
    return Table(header, rows, id="ablation-table")


def section_ablations(
    runs: Sequence[F.StudyRun], ablations: Sequence[F.StudyRun], figs: FigureWriter
) -> list[Block]:
    """The paper's ablations: GAP vs CLS token, local MSA kernel size (when a study has them)."""
    if not ablations:
        return []
    out: list[Block] = [
        Heading("Ablations: GAP vs CLS token, local MSA", 2, "ablations"),
        Text(
            "The paper: a GAP classifier instead of the CLS token suppresses ViT's negative "
            "Hessian eigenvalues (§5), and locality constraints (3×3 local MSA) lower both the "
            "test error and the negative eigenvalues (Fig 7). Each ablation run (under "
            "`ablations/`) is shown next to the main runs of the same model."
        ),
    ]
    groups = _ablation_groups(runs, ablations)
    items = []
    for key, rs in groups.items():
        with_h = [r for r in rs if "hessian" in r.results]
        if len(with_h) >= 2:
            items.append(
                figs.add(
                    f"ablation_hessian_{'_'.join(map(str, key))}",
                    lambda rs=with_h: compare_figure(
                        "hessian", [_labelled(r, "hessian") for r in rs]
                    ),
                    "Top-k Hessian eigenvalue densities: "
                    f"{', '.join(r.label for r in with_h)} ({_group_name(key[1:])}).",
                    wide=True,
                )
            )
    out += _gallery(items)
    out.append(ablation_table(groups))
    return out


def read_buildup(study_dir: Path) -> list[dict] | None:
    """The build-up steps of ``study_dir/buildup/buildup.json``, or None if there is none."""
    f = study_dir / BUILDUP
    if not f.is_file():
        return None
    try:
        body = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise VitscopeError(f"{f} is corrupt: {e}") from None
    items = body if isinstance(body, list) else next(
        (body[k] for k in ("steps", "results", "candidates") if isinstance(body.get(k), list)), []
    )  # fmt: skip
    steps = []
    for i, s in enumerate(items):
        if not isinstance(s, dict):
            continue
        acc = next((s[k] for k in ("acc", "test_acc", "best_acc") if s.get(k) is not None), None)
        n = next((s[k] for k in ("num_msas", "msas", "n_msas") if s.get(k) is not None), None)
        if isinstance(n, list):
            n = sum(n)
        if not (F._finite(acc) and F._finite(n)):
            continue
        steps.append(
            {
                "label": str(s.get("label") or s.get("name") or s.get("placement") or i),
                "num_msas": n,
                "acc": 100 * acc if acc <= 1 else acc,
                "kept": s.get("kept", s.get("accepted")),
            }
        )
    return steps


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
            "The paper's rule (§7.2): replace Conv blocks with MSAs from the end of the model; "
            "if an MSA does not help, put it at the end of an earlier stage."
        ),
    ]
    if not steps:
        return out + [Text(f"{study_dir / BUILDUP} holds no readable steps.", note=True)]
    out += _gallery(
        [
            figs.add(
                f"buildup_{study_dir.name}",
                lambda: buildup_figure(steps),
                "Accuracy against the number of MSAs of each build-up step (best in orange).",
                wide=True,
            )
        ]
    )
    rows = [
        [s["label"], f"{s['num_msas']:g}", f"{s['acc']:.2f}%", DASH if s["kept"] is None
         else "yes" if s["kept"] else "no"]
        for s in steps
    ]  # fmt: skip
    out.append(Table(["Step", "MSAs", "Accuracy", "Kept"], rows, id="buildup-table"))
    return out


# ---------------------------------------------------------------------------------------------
# rendering


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
 background:#fafbfc;margin:0}
main{max-width:1240px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.8em;margin:.2em 0 .1em}h2{margin-top:2em;border-bottom:2px solid #d8dee4;
 padding-bottom:.2em}h3{margin-top:1.6em;color:#33414e}
.meta,.note{color:#5b6670;font-size:.9em}.note{font-style:italic}
nav{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:8px 16px;margin:1em 0}
nav a{margin-right:1.2em;text-decoration:none;color:#0b5cad}
code{background:#eef1f4;padding:0 .3em;border-radius:3px;font-size:.92em}
table{border-collapse:collapse;margin:1em 0;background:#fff;font-size:.86em;width:auto}
th,td{border:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}tr:nth-child(even) td{background:#f7f9fa}
#findings td:nth-child(2){min-width:13em}#findings td:nth-child(4){min-width:22em}
#findings td:nth-child(5){color:#5b6670;font-size:.92em;min-width:22em}
.verdict{font-weight:600;white-space:nowrap;border-radius:4px;padding:1px 6px}
.v-holds{background:#dcf5e3;color:#146c2e}.v-fails{background:#fde2e1;color:#a4161a}
.v-inconclusive{background:#eceff2;color:#4b5560}
.gallery{display:flex;flex-wrap:wrap;align-items:flex-start;gap:14px;margin:.8em 0}
figure{margin:0;background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:8px;
 max-width:100%;box-sizing:border-box}
figure img{display:block;max-width:100%;height:auto}
figure.small img{width:360px}figure.wide img{width:560px}
figcaption{font-size:.8em;color:#5b6670;max-width:560px;margin-top:4px}
figure.small figcaption{max-width:360px}
"""


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _verdict_class(v: str) -> str:
    return {F.HOLDS: "v-holds", F.FAILS: "v-fails"}.get(v, "v-inconclusive")


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for j, c in enumerate(row):
            inner = _inline(c)
            if j == t.verdict_col:
                inner = f'<span class="verdict {_verdict_class(c)}">{inner}</span>'
            cells.append(f"<td>{inner}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    ident = f' id="{t.id}"' if t.id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_plot(p: Plot) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    cls = "wide" if p.wide else "small"
    alt = html.escape(p.caption, quote=True)
    return (
        f'<figure class="{cls}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{_inline(p.caption)}</figcaption></figure>"
    )


def render_html(title: str, intro: Sequence[Block], blocks: Sequence[Block]) -> str:
    """The whole page: inline CSS, every figure a ``data:`` URI, no external resource."""
    nav = "".join(
        f'<a href="#{b.id}">{html.escape(b.text)}</a>'
        for b in blocks
        if isinstance(b, Heading) and b.level == 2 and b.id
    )
    parts = [_html_block(b) for b in intro] + [f"<nav>{nav}</nav>"]
    parts += [_html_block(b) for b in blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n<h1>{html.escape(title)}</h1>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        ident = f' id="{b.id}"' if b.id else ""
        return f"<h{b.level}{ident}>{html.escape(b.text)}</h{b.level}>"
    if isinstance(b, Text):
        return f'<p class="note">{_inline(b.text)}</p>' if b.note else f"<p>{_inline(b.text)}</p>"
    if isinstance(b, Table):
        return _html_table(b)
    return f'<div class="gallery">{"".join(_html_plot(p) for p in b.plots)}</div>'


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, intro: Sequence[Block], blocks: Sequence[Block]) -> str:
    """The same blocks in Markdown; figures link to ``figures/*.png`` beside the file."""
    parts = [f"# {title}"] + [_md_block(b) for b in [*intro, *blocks]]
    return "\n\n".join(parts) + "\n"


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"{'#' * b.level} {b.text}"
    if isinstance(b, Text):
        return f"*{b.text}*" if b.note else b.text
    if isinstance(b, Table):
        lines = ["| " + " | ".join(map(_md_cell, b.header)) + " |"]
        lines.append("|" + "---|" * len(b.header))
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
        return "\n".join(lines)
    return "\n\n".join(f"![{_md_cell(p.caption)}]({p.file})\n*{p.caption}*" for p in b.plots)


# ---------------------------------------------------------------------------------------------
# the report


def _intro(studies: Sequence[dict], runs: Sequence[F.StudyRun], found) -> list[Block]:
    from .. import __version__

    out: list[Block] = []
    for s in studies:
        text = f"Study `{s['name']}` ({s['path']})" + (
            f": {s['description']}" if s["description"] else "."
        )
        out.append(Text(text))
    counts = {v: sum(f.verdict == v for f in found) for v in F.VERDICTS}
    out.append(
        Text(
            f"{len(runs)} runs. Findings: {counts[F.HOLDS]} hold, {counts[F.FAILS]} do not "
            f"hold, {counts[F.INCONCLUSIVE]} inconclusive (table at the end). Generated "
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
    dirs = (
        [Path(study_dirs)] if isinstance(study_dirs, (str, Path)) else list(map(Path, study_dirs))
    )
    if not dirs:
        raise VitscopeError("build_report needs at least one study directory")
    for d in dirs:
        if not d.is_dir():
            raise VitscopeError(f"study directory {d} does not exist")
    studies, runs = F.load_runs(dirs)
    if not runs:
        raise VitscopeError(
            f"no runs in {', '.join(map(str, dirs))}: expected run directories (with a "
            "config.yaml) under <study>/runs/"
        )
    out_dir, html_path, md_path = _outputs(dirs, out)
    figs = FigureWriter(out_dir)
    ablations = F.load_ablations(studies, runs)
    found = F.check_all(runs, ablations)
    title = "vitscope report: " + ", ".join(s["name"] for s in studies)
    blocks: list[Block] = [
        Heading("Runs", 2, "runs"),
        summary_table([*runs, *ablations], len(studies)),
        Text("Analyses per run (✓: result present).", note=True),
        coverage_table(runs),
        *section_properties(runs, figs),
        *section_convs(runs, figs),
        *section_harmonise(runs, dirs, figs),
        *section_ablations(runs, ablations, figs),
        Heading("Findings", 2, "findings"),
        Text(
            "Each claim is checked by a fixed rule on the saved results (column Rule; "
            "thresholds in `vitscope.report.findings`). Inconclusive: the data are missing, "
            "too few or mixed."
        ),
        findings_table(found),
    ]
    intro = _intro(studies, runs, found)
    atomic_write_text(md_path, render_markdown(title, intro, blocks))
    atomic_write_text(html_path, render_html(title, intro, blocks))
    return html_path
