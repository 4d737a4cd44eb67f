"""The paper's claims checked against a study's saved results (read, never recomputed).

A study directory holds ``runs/<run>/`` run directories (``config.yaml``, ``metrics.jsonl``,
``results/<analysis>.json``); :func:`load_runs` reads them into :class:`StudyRun` records and
:func:`check_all` turns them into :class:`Finding` rows. Every check is one function with a
documented rule whose thresholds are the module constants below; its ``evidence`` gives the
measured numbers and it is ``inconclusive``, with the reason, when the data are missing or
mixed. Claims are from Park & Kim (ICLR 2022); the paper's numbers are in ``paper_spec.md``.

Plain numpy and yaml: no torch, no models, no matplotlib.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..analyses.base import Result
from ..errors import VitscopeError
from ..io import read_jsonl

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)

# ---- thresholds of the rules (documented in each check) ----------------------------------------
HOLDS_SHARE = 2 / 3  # a per-unit claim holds when at least this share of the units agree ...
FAILS_SHARE = 1 / 3  # ... and does not hold when at most this share does
MIN_UNITS = 3  # fewer units than this (over all runs) leave a per-unit claim inconclusive
NOISE_LOW_MAX = 0.3  # noise bands centred at f <= 0.3π are "low frequency"
NOISE_HIGH_MIN = 0.6  # noise bands centred at f >= 0.6π are "high frequency"
LANDSCAPE_RING = 0.5  # L∞ ring (in direction units) where the rise of NLL + L2 is compared
HESSIAN_NEG_MARGIN = 0.0  # ViT's negative share must exceed ResNet's by more than this
MIN_OVERFIT_RUNS = 3  # runs needed (per dataset) for the rank correlation of claim 8
OVERFIT_RHO_MIN = 0.0  # Spearman ρ(train NLL, test error) above this -> "holds"
ALTERNET_MARGIN = 0.0  # AlterNet holds when its accuracy >= ResNet's - this (points)
MIN_LESION_STAGES = 2  # stages with >= 2 MSA units needed for claim 11

ANALYSIS_NAMES = ("overfitting", "landscape", "hessian", "fourier", "variance", "noise", "lesion")
# model family: the first key that is a substring of the lower-cased model name
FAMILIES = {
    "alternet": "AlterNet",
    "resnet": "ResNet",
    "pit": "PiT",
    "swin": "Swin",
    "vit": "ViT",
}
FAMILY_ORDER = ("ResNet", "ViT", "PiT", "Swin", "AlterNet", "other")


def family(model: str) -> str:
    """``ResNet``, ``ViT``, ``PiT``, ``Swin``, ``AlterNet`` or ``other`` from a model name."""
    name = model.lower()
    return next((fam for key, fam in FAMILIES.items() if key in name), "other")


def pct(fraction: float) -> str:
    """A data fraction as a percentage: ``0.06 -> '6%'``, ``1.0 -> '100%'``."""
    return f"{100 * fraction:.3g}%"


# ---------------------------------------------------------------------------------------------
# the runs of a study


@dataclass
class StudyRun:
    """One run directory of a study, with everything the report reads from it.

    Attributes:
        name: unique name in the report (``<study>/<run>`` when several studies clash).
        path: the run directory.
        study: the study's name.
        model, dataset, fraction: from ``config.yaml``.
        metrics: the rows of ``metrics.jsonl`` (one per epoch).
        results: analysis name -> saved Result (only those present and readable).
        errors: analysis name -> why its result could not be read.
        label: the legend label (``model (6%)``; made unique across the report).
    """

    name: str
    path: Path
    study: str
    model: str
    dataset: str
    fraction: float
    metrics: list[dict] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    label: str = ""
    kwargs: dict = field(default_factory=dict)
    ablation: bool = False

    @property
    def variant(self) -> str:
        """The model kwargs that set this run apart, e.g. ``head=gap`` (empty: defaults)."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))

    @property
    def family(self) -> str:
        return family(self.model)

    @property
    def key(self) -> tuple[str, float]:
        """Runs with equal keys (dataset, fraction) are compared with each other."""
        return (self.dataset, round(self.fraction, 6))

    def last(self, metric: str) -> float | None:
        """``metric`` of the last epoch that recorded it."""
        for row in reversed(self.metrics):
            if _finite(row.get(metric)):
                return float(row[metric])
        return None

    @property
    def best_acc(self) -> float | None:
        """Best test accuracy over epochs (a fraction, like ``metrics.jsonl``)."""
        accs = [float(r["test_acc"]) for r in self.metrics if _finite(r.get("test_acc"))]
        return max(accs) if accs else None

    def result(self, name: str) -> Result | None:
        return self.results.get(name)

    def status(self, name: str) -> str:
        """``ok``, ``not run`` or ``unreadable: ...`` for analysis ``name``."""
        if name in self.results:
            return "ok"
        return f"unreadable: {self.errors[name]}" if name in self.errors else "not run"


def find_run_dirs(study_dir: Path, sub: str = "runs") -> list[Path]:
    """Every folder under ``study_dir/<sub>`` holding a ``config.yaml`` (links followed)."""
    found = []
    # os.walk follows symlinked run folders (a study assembled from links); a run's own
    # sub-folders (checkpoints, results) are not searched
    for root, dirs, files in os.walk(study_dir / sub, followlinks=True):
        if "config.yaml" in files:
            found.append(Path(root))
            dirs.clear()
        dirs.sort()
    return sorted(found)


def read_study_meta(study_dir: Path) -> dict:
    """``name`` and ``description`` from ``study.yaml`` (optional), the folder name by default."""
    meta: dict[str, Any] = {}
    f = study_dir / "study.yaml"
    if f.is_file():
        try:
            meta = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError as e:
            raise VitscopeError(f"{f} is not valid YAML: {e}") from None
    return {
        "name": str(meta.get("name") or study_dir.resolve().name),
        "description": str(meta.get("description") or "").strip(),
        "path": study_dir,
    }


def load_run(run_dir: Path, study: str, name: str) -> StudyRun:
    """Read one run directory: config, metrics, and whichever analysis results exist."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise VitscopeError(f"{run_dir / 'config.yaml'} is not valid YAML: {e}") from None
    model = str((cfg.get("model") or {}).get("name") or "?")
    data = cfg.get("data") or {}
    kwargs = (cfg.get("model") or {}).get("kwargs") or {}
    run = StudyRun(
        name=name,
        path=run_dir,
        study=study,
        model=model,
        dataset=str(data.get("name") or "?"),
        fraction=float(data.get("fraction") or 1.0),
        metrics=read_jsonl(run_dir / "metrics.jsonl"),
        kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
    )
    for analysis in ANALYSIS_NAMES:
        if not Result.exists(run_dir / "results", analysis):
            continue
        try:
            run.results[analysis] = Result.load(run_dir / "results", analysis)
        except (VitscopeError, KeyError, ValueError) as e:
            run.errors[analysis] = str(e)
    return run


def load_runs(study_dirs: Sequence[Path]) -> tuple[list[dict], list[StudyRun]]:
    """The studies' metadata and all their runs, sorted by study, fraction (desc.), family."""
    studies = [read_study_meta(Path(d)) for d in study_dirs]
    runs: list[StudyRun] = []
    for meta in studies:
        d = meta["path"]
        for run_dir in find_run_dirs(d):
            name = str(run_dir.relative_to(d / "runs"))
            runs.append(load_run(run_dir, meta["name"], name))
    _unique_names(runs)
    order = {s["name"]: i for i, s in enumerate(studies)}
    runs.sort(key=lambda r: (order[r.study], -r.fraction, _family_rank(r.family), r.model, r.name))
    return studies, runs


def load_ablations(studies: Sequence[dict], runs: Sequence[StudyRun]) -> list[StudyRun]:
    """The ablation runs (``<study>/ablations/<run>/``) of studies read by :func:`load_runs`.

    Their labels carry the model kwargs that define the ablation (``vit_tiny head=gap (6%)``)
    and never clash with the main runs' labels.
    """
    out: list[StudyRun] = []
    for meta in studies:
        d = meta["path"]
        for run_dir in find_run_dirs(d, "ablations"):
            name = "ablations/" + str(run_dir.relative_to(d / "ablations"))
            run = load_run(run_dir, meta["name"], name)
            run.ablation = True
            out.append(run)
    several = len(studies) > 1
    taken = {r.label for r in runs}
    for r in out:
        r.name = f"{r.study}/{r.name}" if several else r.name
        r.label = " ".join(
            x for x in (r.model, r.variant, f"({pct(r.fraction)})" if r.fraction < 1 else "") if x
        )
        if r.label in taken or sum(o.label == r.label for o in out) > 1:
            r.label = f"{r.label} [{r.name}]"
    out.sort(key=lambda r: (r.study, -r.fraction, r.model, r.name))
    return out


def _family_rank(fam: str) -> int:
    return FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER)


def _unique_names(runs: list[StudyRun]) -> None:
    """Prefix names and labels with the study (then the run name) where they would clash."""
    clash = _duplicates(r.name for r in runs)
    for r in runs:
        if r.name in clash:
            r.name = f"{r.study}/{r.name}"
        r.label = r.model + (f" ({pct(r.fraction)})" if r.fraction < 1 else "")
    if len({r.dataset for r in runs}) > 1:
        for r in runs:
            r.label += f" {r.dataset}"
    clash = _duplicates(r.label for r in runs)
    for r in runs:
        if r.label in clash:
            r.label = f"{r.label} [{r.name}]"


def _duplicates(items: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for x in items:
        (dup if x in seen else seen).add(x)
    return dup


# ---------------------------------------------------------------------------------------------
# findings


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and what the study's results say about it.

    Attributes:
        claim: the claim, in the paper's words where possible.
        verdict: ``holds``, ``does not hold`` or ``inconclusive``.
        evidence: the measured numbers behind the verdict (or why there are none).
        detail: the rule and its thresholds, and where the paper makes the claim.
    """

    claim: str
    verdict: str
    evidence: str
    detail: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _by_share(share: float) -> str:
    if share >= HOLDS_SHARE:
        return HOLDS
    return FAILS if share <= FAILS_SHARE else INCONCLUSIVE


def _unanimous(votes: Sequence[bool]) -> str:
    """All true -> holds, all false -> does not hold, mixed or none -> inconclusive."""
    if not votes:
        return INCONCLUSIVE
    if all(votes):
        return HOLDS
    return FAILS if not any(votes) else INCONCLUSIVE


def _missing(runs: Sequence[StudyRun], analysis: str) -> str:
    names = [r.name for r in runs if analysis not in r.results]
    return (
        f"; {analysis} not run for {', '.join(names)}" if names and len(names) < len(runs) else ""
    )


def _none_run(analysis: str, runs: Sequence[StudyRun]) -> str:
    bad = [f"{r.name} ({r.errors[analysis]})" for r in runs if analysis in r.errors]
    why = f"; unreadable: {'; '.join(bad)}" if bad else ""
    return f"no {analysis} result in any run (not run){why}"


# ---- claims 1-4: what each unit does to a per-unit quantity ---------------------------------


def _is_msa(u: dict) -> bool:
    return u.get("kind") == "msa"


def _is_conv(u: dict) -> bool:
    return u.get("kind") == "conv" and not u.get("downsample")


def _is_conv_or_mlp(u: dict) -> bool:
    return _is_conv(u) or u.get("kind") == "mlp"


def unit_changes(
    result: Result, key: str, select: Callable[[dict], bool]
) -> list[tuple[str, float]]:
    """``(unit name, value[i] - value[i-1])`` for the units ``select`` picks (index >= 1)."""
    units, values = result.values.get("units", []), result.values.get(key, [])
    out = []
    for i in range(1, min(len(units), len(values))):
        a, b = values[i - 1], values[i]
        if select(units[i]) and _finite(a) and _finite(b):
            out.append((str(units[i].get("name", i)), float(b) - float(a)))
    return out


def _unit_rule(
    runs: Sequence[StudyRun],
    *,
    claim: str,
    analysis: str,
    key: str,
    select: Callable[[dict], bool],
    what: str,
    lowers: bool,
    quantity: str,
    paper: str,
) -> Finding:
    sign = "lower" if lowers else "raise"
    detail = (
        f"Δ = {quantity} of unit i minus that of unit i-1 (`{analysis}.values.{key}`), for every "
        f"{what} unit of every run. Holds if ≥ {HOLDS_SHARE:.0%} of them {sign} it, does not hold "
        f"if ≤ {FAILS_SHARE:.0%}, inconclusive in between or with < {MIN_UNITS} units. {paper}"
    )
    have = [r for r in runs if analysis in r.results]
    if not have:
        return Finding(claim, INCONCLUSIVE, _none_run(analysis, runs), detail)
    agree = n = 0
    per_run, deltas = [], []
    for r in have:
        ch = [d for _, d in unit_changes(r.results[analysis], key, select)]
        if not ch:
            continue
        k = sum((d < 0) if lowers else (d > 0) for d in ch)
        agree, n = agree + k, n + len(ch)
        deltas += ch
        per_run.append(f"{r.name} {k}/{len(ch)}")
    if n < MIN_UNITS:
        runs_with = ", ".join(r.name for r in have)
        return Finding(
            claim,
            INCONCLUSIVE,
            f"only {n} {what} unit(s) in the runs with {analysis} results ({runs_with}); "
            f"need ≥ {MIN_UNITS}{_missing(runs, analysis)}",
            detail,
        )
    share = agree / n
    evidence = (
        f"{agree}/{n} {what} units ({share:.0%}) {sign} the {quantity}; median Δ = "
        f"{np.median(deltas):+.3g}; per run: {', '.join(per_run)}{_missing(runs, analysis)}"
    )
    return Finding(claim, _by_share(share), evidence, detail)


def check_msa_high_freq(runs: Sequence[StudyRun]) -> Finding:
    """Claim 1: MSA units lower the high-frequency ΔLog amplitude (Fig 8)."""
    return _unit_rule(
        runs,
        claim="MSA units lower the high-frequency amplitude of feature maps (low-pass filters)",
        analysis="fourier",
        key="high_freq",
        select=_is_msa,
        what="MSA",
        lowers=True,
        quantity="ΔLog amplitude at 1.0π",
        paper="Paper: Fig 2a, Fig 8 (§1).",
    )


def check_conv_high_freq(runs: Sequence[StudyRun]) -> Finding:
    """Claim 2: Conv units (not downsampling) raise the high-frequency amplitude (Fig 8)."""
    return _unit_rule(
        runs,
        claim="Conv units raise the high-frequency amplitude of feature maps (high-pass filters)",
        analysis="fourier",
        key="high_freq",
        select=_is_conv,
        what="Conv (non-downsampling)",
        lowers=False,
        quantity="ΔLog amplitude at 1.0π",
        paper="Paper: Fig 2a, Fig 8 (§1).",
    )


def check_msa_variance(runs: Sequence[StudyRun]) -> Finding:
    """Claim 3: MSA units reduce feature-map variance (Fig 9)."""
    return _unit_rule(
        runs,
        claim="MSA units reduce feature-map variance",
        analysis="variance",
        key="variance",
        select=_is_msa,
        what="MSA",
        lowers=True,
        quantity="feature-map variance",
        paper="Paper: Fig 9, D.1 (§3).",
    )


def check_conv_variance(runs: Sequence[StudyRun]) -> Finding:
    """Claim 4: Conv (non-downsampling) and MLP units increase feature-map variance (Fig 9)."""
    return _unit_rule(
        runs,
        claim="Conv and MLP units increase feature-map variance",
        analysis="variance",
        key="variance",
        select=_is_conv_or_mlp,
        what="Conv (non-downsampling) or MLP",
        lowers=False,
        quantity="feature-map variance",
        paper="Paper: Fig 9, D.1 (§3).",
    )


# ---- claims 5-7: Hessian and landscape ------------------------------------------------------


def hessian_eigenvalues(result: Result) -> np.ndarray:
    """Every batch's top-k eigenvalues of a ``hessian`` result, flat and finite."""
    rows = result.values.get("eigenvalues") or []
    flat = [v for row in rows for v in (row if isinstance(row, list) else [row]) if _finite(v)]
    return np.asarray(flat, dtype=float)


def negative_share(result: Result) -> float | None:
    """Share of negative values among the batch-wise top-k eigenvalues (Fig 1c's mass)."""
    eig = hessian_eigenvalues(result)
    if eig.size:
        return float((eig < 0).mean())
    v = (result.values.get("summary") or {}).get("negative_fraction")
    return float(v) if _finite(v) else None


def negative_ratio(result: Result) -> float | None:
    """Mean over batches of ``max(0, -λ_min) / λ_max``: how negative the spectrum reaches,
    relative to its top (scale-free, so models with different curvature scales compare)."""
    lo, hi = result.values.get("smallest") or [], result.values.get("largest") or []
    ratios = [max(0.0, -a) / b for a, b in zip(lo, hi) if _finite(a) and _finite(b) and b > 0]
    return float(np.mean(ratios)) if ratios else None


def fewer_negatives(a: Sequence[StudyRun], b: Sequence[StudyRun]) -> tuple[bool | None, str]:
    """Whether runs ``a`` have fewer negative Hessian eigenvalues than runs ``b``.

    Compares the share of negative top-k eigenvalues; a tie (common with few batches) is
    broken by :func:`negative_ratio`; still tied (or missing): ``None``. Returns the vote and
    the numbers behind it.
    """
    sa, sb = _mean_of(a, negative_share, "hessian"), _mean_of(b, negative_share, "hessian")
    ra, rb = _mean_of(a, negative_ratio, "hessian"), _mean_of(b, negative_ratio, "hessian")
    if sa is None or sb is None:
        return None, "no eigenvalues"
    text = f"negative share {sa:.1%} vs {sb:.1%}"
    if ra is not None and rb is not None:
        text += f", |λmin|/λmax {ra:.3f} vs {rb:.3f}"
    if sa != sb:
        return sa < sb, text
    if ra is None or rb is None or ra == rb:
        return None, text + " (tied)"
    return ra < rb, text


def top_eigenvalue(result: Result) -> float | None:
    """Mean over batches of the largest Hessian eigenvalue (``values.largest``, else top-k max)."""
    largest = [float(v) for v in result.values.get("largest") or [] if _finite(v)]
    if not largest:
        rows = result.values.get("eigenvalues") or []
        largest = [max(v for v in row if _finite(v)) for row in rows if any(map(_finite, row))]
    return float(np.mean(largest)) if largest else None


def _groups(runs: Iterable[StudyRun], fam: str, analysis: str) -> dict[tuple, list[StudyRun]]:
    out: dict[tuple, list[StudyRun]] = {}
    for r in runs:
        if r.family == fam and analysis in r.results:
            out.setdefault(r.key, []).append(r)
    return out


def _mean_of(runs: Sequence[StudyRun], fn: Callable[[Result], float | None], analysis: str):
    vals = [fn(r.results[analysis]) for r in runs]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _key_str(key: tuple) -> str:
    return f"{key[0]} {pct(key[1])}"


def _pairs(runs, fam_a, fam_b, analysis, fn) -> tuple[list[tuple], str]:
    """``(key, a, b)`` for every (dataset, fraction) with both families; a reason if none."""
    ga, gb = _groups(runs, fam_a, analysis), _groups(runs, fam_b, analysis)
    pairs = []
    for key in sorted(set(ga) & set(gb)):
        a, b = _mean_of(ga[key], fn, analysis), _mean_of(gb[key], fn, analysis)
        if a is not None and b is not None:
            pairs.append((key, a, b))
    if pairs:
        return pairs, ""
    if not any(analysis in r.results for r in runs):
        return [], _none_run(analysis, runs)
    have = lambda g: ", ".join(map(_key_str, sorted(g))) or "none"  # noqa: E731
    return [], (
        f"needs {analysis} results of a {fam_a} and a {fam_b} run on the same dataset and "
        f"fraction; {fam_a}: {have(ga)}; {fam_b}: {have(gb)}"
    )


def check_hessian_negative(runs: Sequence[StudyRun]) -> Finding:
    """Claim 5: ViT has a larger share of negative Hessian eigenvalues than ResNet (Fig 1c)."""
    claim = "ViT has more negative Hessian eigenvalues than ResNet (non-convex losses)"
    detail = (
        "Share of negative values among the batch-wise top-k Hessian eigenvalues "
        "(`hessian.values.eigenvalues`), ViT vs ResNet runs on the same dataset and fraction "
        f"(mean over runs). Holds if ViT's share exceeds ResNet's by > {HESSIAN_NEG_MARGIN:g} "
        "at every such fraction, does not hold if at none, else inconclusive. Paper: Fig 1c, "
        "Fig 4 (§5)."
    )
    pairs, why = _pairs(runs, "ViT", "ResNet", "hessian", negative_share)
    if not pairs:
        return Finding(claim, INCONCLUSIVE, why, detail)
    votes = [v > r + HESSIAN_NEG_MARGIN for _, v, r in pairs]
    evidence = "; ".join(f"{_key_str(k)}: ViT {v:.1%} vs ResNet {r:.1%}" for k, v, r in pairs)
    return Finding(claim, _unanimous(votes), evidence, detail)


def check_hessian_small_data(runs: Sequence[StudyRun]) -> Finding:
    """Claim 6: ViT's negative eigenvalues grow with less data (Fig 1c's "ViT (6%)")."""
    claim = "ViT has more negative Hessian eigenvalues with less data"
    detail = (
        "Share of negative top-k Hessian eigenvalues of ViT runs at the smallest vs the largest "
        "data fraction of each dataset. Holds if larger at the smallest fraction for every "
        "dataset, does not hold if for none, else inconclusive. Paper: Fig 1c (ViT vs ViT (6%))."
    )
    groups = _groups(runs, "ViT", "hessian")
    by_data: dict[str, list[tuple]] = {}
    for key, rs in groups.items():
        share = _mean_of(rs, negative_share, "hessian")
        if share is not None:
            by_data.setdefault(key[0], []).append((key[1], share))
    comps = []
    for dataset, rows in sorted(by_data.items()):
        if len(rows) >= 2:
            rows.sort()
            (f_small, s_small), (f_full, s_full) = rows[0], rows[-1]
            comps.append((dataset, f_small, s_small, f_full, s_full))
    if not comps:
        why = (
            _none_run("hessian", runs)
            if not any("hessian" in r.results for r in runs)
            else "needs hessian results of ViT runs at two data fractions of one dataset; have: "
            + (", ".join(map(_key_str, sorted(groups))) or "no ViT run")
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    votes = [s_small > s_full for _, _, s_small, _, s_full in comps]
    evidence = "; ".join(
        f"{d}: ViT {pct(fs)} {ss:.1%} vs {pct(ff)} {sf:.1%}" for d, fs, ss, ff, sf in comps
    )
    return Finding(claim, _unanimous(votes), evidence, detail)


def landscape_rise(result: Result, ring: float) -> tuple[float, float] | None:
    """``(r, mean NLL+L2 on the ring nearest ring - NLL+L2 at the centre)``, or None."""
    center = (result.values.get("center") or {}).get("loss")
    rings = [
        row
        for row in result.values.get("rings") or []
        if row.get("r", 0) > 0 and _finite(row.get("loss"))
    ]
    if not _finite(center) or not rings:
        return None
    row = min(rings, key=lambda row: (abs(row["r"] - ring), row["r"]))
    return float(row["r"]), float(row["loss"]) - float(center)


def check_flat_landscape(runs: Sequence[StudyRun]) -> Finding:
    """Claim 7: MSAs flatten the loss landscape (Fig 1a, Fig 1c)."""
    claim = "MSAs flatten the loss landscape (ViT flatter than ResNet)"
    detail = (
        "Two measures, ViT vs ResNet runs on the same dataset and fraction: (a) the rise of "
        f"NLL + L2 from the centre to the L∞ ring nearest r = {LANDSCAPE_RING:g} "
        "(`landscape.values.rings`); (b) the mean over batches of the largest Hessian "
        "eigenvalue. Each comparison votes 'flatter' when ViT's number is smaller. Holds if all "
        "votes say ViT is flatter, does not hold if none does, else inconclusive. Paper: "
        "Fig 1a, Fig 1c (§4, §5)."
    )
    votes, parts = [], []
    pairs, why_l = _pairs(runs, "ViT", "ResNet", "landscape", lambda r: _rise(r))
    for key, v, r in pairs:
        votes.append(v < r)
        parts.append(
            f"{_key_str(key)}: rise of NLL+L2 at r≈{LANDSCAPE_RING:g} ViT {v:.3g} vs ResNet {r:.3g}"
        )
    hpairs, why_h = _pairs(runs, "ViT", "ResNet", "hessian", top_eigenvalue)
    for key, v, r in hpairs:
        votes.append(v < r)
        parts.append(f"{_key_str(key)}: top Hessian eigenvalue ViT {v:.3g} vs ResNet {r:.3g}")
    if not votes:
        return Finding(claim, INCONCLUSIVE, f"landscape: {why_l}; hessian: {why_h}", detail)
    return Finding(claim, _unanimous(votes), "; ".join(parts), detail)


def _rise(result: Result) -> float | None:
    got = landscape_rise(result, LANDSCAPE_RING)
    return None if got is None else got[1]


# ---- claim 8: overfitting -------------------------------------------------------------------


@dataclass(frozen=True)
class OverfitPoint:
    """One run in the test-error vs training-NLL plane (Fig 1b)."""

    run: StudyRun
    train_nll: float
    source: str  # "overfitting" (augmented train data, eval mode) or "metrics" (training loop)
    test_error: float  # %, of the best epoch


def overfit_point(run: StudyRun) -> OverfitPoint | None:
    """The run's augmented training NLL (``overfitting`` result, else metrics.jsonl) and error."""
    acc = run.best_acc
    if acc is None:
        return None
    res = run.results.get("overfitting")
    if res is not None and _finite(res.values.get("train_nll")):
        nll, source = float(res.values["train_nll"]), "overfitting"
    else:
        last = run.last("train_nll")
        if last is None:
            return None
        nll, source = last, "metrics"
    return OverfitPoint(run, nll, source, 100.0 * (1.0 - acc))


def overfit_points(runs: Sequence[StudyRun]) -> list[OverfitPoint]:
    return [p for p in map(overfit_point, runs) if p is not None]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None if undefined."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = a.argsort(kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # ties share their mean rank
        ranks[a == v] = ranks[a == v].mean()
    return ranks


def check_no_overfitting(runs: Sequence[StudyRun]) -> Finding:
    """Claim 8: lower training NLL goes with lower test error (Fig 1b): no overfitting."""
    claim = "ViT does not overfit: lower training NLL goes with lower test error"
    detail = (
        "Spearman rank correlation, across the runs of each dataset, between the training NLL "
        "on augmented data (`overfitting.values.train_nll`; else the last `train_nll` of "
        "metrics.jsonl) and the test error of the best epoch. Holds if ρ > "
        f"{OVERFIT_RHO_MIN:g} for every dataset with ≥ {MIN_OVERFIT_RUNS} runs, does not hold if "
        "ρ ≤ that for every one, else inconclusive. Paper: Fig 1b (§6)."
    )
    pts = overfit_points(runs)
    by_data: dict[str, list[OverfitPoint]] = {}
    for p in pts:
        by_data.setdefault(p.run.dataset, []).append(p)
    votes, parts = [], []
    for dataset, ps in sorted(by_data.items()):
        if len(ps) < MIN_OVERFIT_RUNS:
            continue
        rho = spearman([p.train_nll for p in ps], [p.test_error for p in ps])
        if rho is None:
            parts.append(f"{dataset}: ρ undefined (constant values)")
            continue
        votes.append(rho > OVERFIT_RHO_MIN)
        n_fb = sum(p.source == "metrics" for p in ps)
        fb = f", {n_fb} train NLL from metrics.jsonl" if n_fb else ""
        pairs = ", ".join(f"{p.run.name} {p.train_nll:.3g}/{p.test_error:.1f}%" for p in ps)
        parts.append(f"{dataset}: ρ = {rho:+.2f} over {len(ps)} runs{fb} (NLL/error: {pairs})")
    if not votes:
        why = (
            f"needs ≥ {MIN_OVERFIT_RUNS} runs of one dataset with a test accuracy and a training "
            f"NLL; have {len(pts)} ({', '.join(f'{d}: {len(p)}' for d, p in by_data.items())})"
        )
        return Finding(claim, INCONCLUSIVE, "; ".join(parts + [why]), detail)
    return Finding(claim, _unanimous(votes), "; ".join(parts), detail)


# ---- claim 9: AlterNet ----------------------------------------------------------------------


def check_alternet(runs: Sequence[StudyRun]) -> Finding:
    """Claim 9: AlterNet is at least as accurate as ResNet (§7.2, §11: 84.02% vs 82.48%)."""
    claim = "AlterNet is at least as accurate as ResNet"
    detail = (
        "Best test accuracy (metrics.jsonl) of AlterNet vs ResNet runs on the same dataset and "
        f"fraction (best over runs). Holds if AlterNet ≥ ResNet - {ALTERNET_MARGIN:g} points at "
        "every such fraction, does not hold if at none, else inconclusive. Paper: §7.2, §11 "
        "(CIFAR-100: 84.02% vs 82.48%)."
    )
    best: dict[tuple, dict[str, float]] = {}
    for r in runs:
        if r.family in ("AlterNet", "ResNet") and r.best_acc is not None:
            d = best.setdefault(r.key, {})
            d[r.family] = max(d.get(r.family, 0.0), 100 * r.best_acc)
    pairs = [(k, d["AlterNet"], d["ResNet"]) for k, d in sorted(best.items()) if len(d) == 2]
    if not pairs:
        have = {
            fam: sorted(_key_str(k) for k, d in best.items() if fam in d)
            for fam in ("AlterNet", "ResNet")
        }
        why = (
            "needs an AlterNet and a ResNet run (with metrics.jsonl) on the same dataset and "
            f"fraction; AlterNet: {', '.join(have['AlterNet']) or 'none'}; ResNet: "
            f"{', '.join(have['ResNet']) or 'none'}"
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    votes = [a >= r - ALTERNET_MARGIN for _, a, r in pairs]
    evidence = "; ".join(
        f"{_key_str(k)}: AlterNet {a:.2f}% vs ResNet {r:.2f}%" for k, a, r in pairs
    )
    return Finding(claim, _unanimous(votes), evidence, detail)


# ---- claim 10: noise ------------------------------------------------------------------------


def noise_bands(result: Result) -> tuple[float | None, float | None]:
    """Mean ΔAccuracy (%) over low (f ≤ 0.3π) and high (f ≥ 0.6π) noise-frequency bands."""
    f = np.asarray(result.values.get("frequencies") or [], float)
    d = np.asarray(
        [np.nan if v is None else v for v in result.values.get("delta_acc") or []], float
    )
    n = min(len(f), len(d))
    f, d = f[:n], d[:n]
    low, high = (
        d[(f <= NOISE_LOW_MAX + 1e-9) & np.isfinite(d)],
        d[(f >= NOISE_HIGH_MIN - 1e-9) & np.isfinite(d)],
    )
    return (float(low.mean()) if low.size else None, float(high.mean()) if high.size else None)


def check_noise(runs: Sequence[StudyRun]) -> Finding:
    """Claim 10: Convs are hurt most by high-frequency noise, ViTs by low-frequency (Fig 2b)."""
    claim = "Convs are hurt most by high-frequency noise, ViTs by low-frequency noise"
    detail = (
        "Mean ΔAccuracy over noise bands with f ≥ "
        f"{NOISE_HIGH_MIN:g}π (high) and f ≤ {NOISE_LOW_MAX:g}π (low), averaged over the runs "
        "of a family (`noise.values`). Holds if ResNet's high-band drop is larger than its "
        "low-band drop and ViT's low-band drop larger than its high-band drop; does not hold if "
        "both are the other way round; else inconclusive. Paper: Fig 2b (§2)."
    )
    fams: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        res = r.results.get("noise")
        if res is None:
            continue
        low, high = noise_bands(res)
        if low is not None and high is not None:
            fams.setdefault(r.family, []).append((low, high))
    means = {fam: tuple(np.mean(v, axis=0)) for fam, v in fams.items()}
    parts = [f"{fam}: low {lo:+.2f}, high {hi:+.2f} points" for fam, (lo, hi) in means.items()]
    if "ResNet" not in means or "ViT" not in means:
        why = (
            _none_run("noise", runs)
            if not any("noise" in r.results for r in runs)
            else "needs noise results with low and high bands for a ResNet and a ViT run"
        )
        return Finding(claim, INCONCLUSIVE, "; ".join([why] + parts), detail)
    conv_ok = means["ResNet"][1] < means["ResNet"][0]
    vit_ok = means["ViT"][0] < means["ViT"][1]
    verdict = HOLDS if conv_ok and vit_ok else FAILS if not (conv_ok or vit_ok) else INCONCLUSIVE
    return Finding(claim, verdict, "; ".join(parts), detail)


# ---- claim 11: lesion -----------------------------------------------------------------------


def lesion_stages(result: Result) -> list[tuple[int, str, bool]]:
    """``(stage, name of the most harmful MSA, whether it is the stage's last MSA)`` per stage
    holding ≥ 2 removable MSA units whose |ΔAcc| are not all equal."""
    units, deltas = result.values.get("units", []), result.values.get("delta_acc", [])
    stages: dict[int, list[tuple[int, float]]] = {}
    for i, (u, d) in enumerate(zip(units, deltas)):
        if _is_msa(u) and _finite(d):
            stages.setdefault(int(u.get("stage", 0)), []).append((i, float(d)))
    out = []
    for stage, msas in sorted(stages.items()):
        size = [abs(d) for _, d in msas]
        if len(msas) < 2 or max(size) == min(size):  # no MSA stands out: nothing to tell
            continue
        worst = [i for i, d in msas if abs(d) == max(size)]
        out.append((stage, str(units[worst[-1]].get("name", worst[-1])), msas[-1][0] in worst))
    return out


def _stage_count(result: Result) -> int:
    return len(
        {
            u.get("stage")
            for u in result.values.get("units", [])
            if u.get("kind") in ("msa", "mlp", "conv")
        }
    )


def check_lesion(runs: Sequence[StudyRun]) -> Finding:
    """Claim 11: MSAs at the end of a stage matter most (lesion study, §7.1)."""
    claim = "MSAs at the end of a stage matter most (removing them hurts most)"
    detail = (
        "Lesion study (`lesion.values.delta_acc`, `units[i].stage`) of multi-stage models: in "
        "each stage with ≥ 2 MSA units, is the MSA whose removal changes accuracy most (largest "
        f"|ΔAcc|) the stage's last MSA? Holds if in ≥ {HOLDS_SHARE:.0%} of such stages, does "
        f"not hold if in ≤ {FAILS_SHARE:.0%}, inconclusive in between or with < "
        f"{MIN_LESION_STAGES} stages. Single-stage models (ViT) are left out: there the middle "
        "MSAs matter most (issue #41). Paper: §7.1 (Swin lesion study)."
    )
    have = [r for r in runs if "lesion" in r.results]
    if not have:
        return Finding(claim, INCONCLUSIVE, _none_run("lesion", runs), detail)
    hits, chance, per_run = [], [], []
    for r in have:
        res = r.results["lesion"]
        if _stage_count(res) < 2:
            continue
        stages = lesion_stages(res)
        if not stages:
            continue
        k = sum(end for _, _, end in stages)
        hits += [end for _, _, end in stages]
        per_run.append(f"{r.name} {k}/{len(stages)}")
        units = res.values["units"]
        for stage, _, _ in stages:
            chance.append(1 / sum(_is_msa(u) and u.get("stage") == stage for u in units))
    if len(hits) < MIN_LESION_STAGES:
        multi = [r.name for r in have if _stage_count(r.results["lesion"]) >= 2]
        return Finding(
            claim,
            INCONCLUSIVE,
            f"only {len(hits)} stage(s) with ≥ 2 MSA units (and unequal |ΔAcc|) in the "
            f"multi-stage models with lesion results ({', '.join(multi) or 'none'}); need ≥ "
            f"{MIN_LESION_STAGES}. A stage with one MSA (e.g. AlterNet's) cannot tell where in "
            f"a stage MSAs matter{_missing(runs, 'lesion')}",
            detail,
        )
    share = sum(hits) / len(hits)
    evidence = (
        f"the most harmful MSA is the stage's last in {sum(hits)}/{len(hits)} stages "
        f"({share:.0%}; chance {np.mean(chance):.0%}); per run: {', '.join(per_run)}"
        f"{_missing(runs, 'lesion')}"
    )
    return Finding(claim, _by_share(share), evidence, detail)


# ---- ablations (spec §5, §7.4): GAP vs CLS, local MSA ------------------------------------------


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


def best_error(run: StudyRun) -> float | None:
    """Best test error in percent."""
    return None if run.best_acc is None else 100 * (1 - run.best_acc)


def check_gap_head(runs: Sequence[StudyRun]) -> Finding:
    """GAP instead of the CLS token suppresses negative Hessian eigenvalues (spec §5)."""
    claim = "A GAP head instead of the CLS token suppresses negative Hessian eigenvalues"
    detail = (
        "Pairs of ViT/PiT runs that differ only in the head (`model.kwargs.head` gap vs cls, "
        "same model, dataset and fraction; usually an ablation run and its main run): share "
        "of negative top-k Hessian eigenvalues, a tie broken by |λmin|/λmax (mean over "
        "batches). Holds if the GAP run has fewer in every decided pair, does not hold if in "
        "none, else (or if every pair is tied) inconclusive. "
        "Paper: §5 (smoothing methods such as GAP suppress negative eigenvalues)."
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
    return Finding(claim, _unanimous(votes), "; ".join(parts), detail)


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
        small = [r for k, r in rows if k == ks[0]]
        large = [r for k, r in rows if k == ks[-1]]
        err_s = np.mean([e for e in map(best_error, small) if e is not None] or [np.nan])
        err_l = np.mean([e for e in map(best_error, large) if e is not None] or [np.nan])
        text = [f"{model} {dataset} {pct(fraction)}:"]
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
        if len(text) > 1:
            parts.append(" ".join(text[:1]) + " " + ", ".join(text[1:]))
    if not votes:
        why = (
            "needs runs of a vit_local_* model with two kernel sizes (model.kwargs.kernel) on "
            "the same dataset and fraction"
        )
        return Finding(claim, INCONCLUSIVE, why, detail)
    return Finding(claim, _unanimous(votes), "; ".join(parts), detail)


CHECKS: tuple[Callable[[Sequence[StudyRun]], Finding], ...] = (
    check_msa_high_freq,
    check_conv_high_freq,
    check_msa_variance,
    check_conv_variance,
    check_hessian_negative,
    check_hessian_small_data,
    check_flat_landscape,
    check_no_overfitting,
    check_alternet,
    check_noise,
    check_lesion,
)


#: checks that read the ablation runs too (the others read the main runs only)
ABLATION_CHECKS: tuple[Callable[[Sequence[StudyRun]], Finding], ...] = (
    check_gap_head,
    check_local_msa,
)


def check_all(runs: Sequence[StudyRun], ablations: Sequence[StudyRun] = ()) -> list[Finding]:
    """Every claim of :data:`CHECKS`, in the paper's order, then the ablations' claims."""
    both = [*runs, *ablations]
    return [check(runs) for check in CHECKS] + [check(both) for check in ABLATION_CHECKS]
