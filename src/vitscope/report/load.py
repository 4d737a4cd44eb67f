"""A study's folders read into :class:`StudyRun` records (read, never recomputed).

A study directory holds ``runs/<run>/`` run directories (``config.yaml``, ``metrics.jsonl``,
``results/<analysis>.json``) and optionally ``ablations/<run>/`` and ``study.yaml``;
:func:`load_runs` and :func:`load_ablations` read them for the claim rules
(:mod:`vitscope.report.claims`) and the report's sections.

Plain numpy and yaml: no torch, no models, no matplotlib.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import VitscopeError
from ..io import read_jsonl
from ..results import Result, analysis_of, saved_names

FAMILY_ORDER = ("ResNet", "ConvNeXt", "ViT", "PiT", "Swin", "AlterNet", "other")


# run folders written before vitscope recorded the family: the old rule, a substring of the
# model name (first match wins); nothing written since is read this way
_LEGACY_FAMILIES = (
    ("alternet", "AlterNet"),
    ("resnet", "ResNet"),
    ("pit", "PiT"),
    ("swin", "Swin"),
    ("vit", "ViT"),
)


def family(model: str, recorded: str | None = None) -> str:
    """``ResNet``, ``ViT``, ``PiT``, ``Swin``, ``AlterNet`` or ``other``.

    ``recorded`` is the family a run or result stored: the model registry's metadata
    (:func:`vitscope.models.model_family`), written when it was trained or analysed. Only
    folders from before that fall back to the model name.
    """
    if recorded:
        return str(recorded)
    name = model.lower()
    return next((fam for key, fam in _LEGACY_FAMILIES if key in name), "other")


def pct(fraction: float) -> str:
    """A data fraction as a percentage: ``0.06 -> '6%'``, ``1.0 -> '100%'``."""
    return f"{100 * fraction:.3g}%"


def finite(v: Any) -> bool:
    """Whether ``v`` is a finite int or float (not a bool, not None)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    recorded_family: str | None = None
    seed: int = 0  # ``train.seed``: runs that differ only in it are replicates
    group: str = ""  # the label without the seed: the replicates of one configuration
    _predictions: Any = field(default=None, repr=False)

    @property
    def variant(self) -> str:
        """The model kwargs that set this run apart, e.g. ``head=gap`` (empty: defaults)."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))

    @property
    def family(self) -> str:
        return family(self.model, self.recorded_family)

    @property
    def key(self) -> tuple[str, float]:
        """Runs with equal keys (dataset, fraction) are compared with each other."""
        return (self.dataset, round(self.fraction, 6))

    def last(self, metric: str) -> float | None:
        """``metric`` of the last epoch that recorded it."""
        for row in reversed(self.metrics):
            if finite(row.get(metric)):
                return float(row[metric])
        return None

    @property
    def best_acc(self) -> float | None:
        """Best test accuracy over epochs (a fraction, like ``metrics.jsonl``)."""
        accs = [float(r["test_acc"]) for r in self.metrics if finite(r.get("test_acc"))]
        return max(accs) if accs else None

    @property
    def best_epoch(self) -> int | None:
        """The first epoch with the best test accuracy (the one ``best.pt`` holds)."""
        best = self.best_acc
        rows = [r for r in self.metrics if finite(r.get("test_acc"))]
        return next((int(r["epoch"]) for r in rows if float(r["test_acc"]) == best), None)

    def correct(self) -> np.ndarray | str:
        """Per test image, whether the best epoch classified it right (``predictions.npz``),
        or why that is not known (a one-line reason)."""
        if self._predictions is None:
            self._predictions = _read_predictions(self.path / "predictions.npz", self.best_epoch)
        return self._predictions

    def result(self, name: str) -> Result | None:
        return self.results.get(name)

    def status(self, name: str) -> str:
        """``ok``, ``not run`` or ``unreadable: ...`` for analysis ``name``."""
        if name in self.results:
            return "ok"
        return f"unreadable: {self.errors[name]}" if name in self.errors else "not run"


def _read_predictions(path: Path, best_epoch: int | None) -> np.ndarray | str:
    """``pred == label`` of a ``predictions.npz`` written for ``best_epoch``, or why not."""
    if not path.is_file():
        return (
            f"no {path.name} in {path.parent} (training writes it for the best epoch; for an "
            f"older run `vitscope evaluate {path.parent}` does)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            pred, label, epoch = npz["pred"], npz["label"], int(npz["epoch"])
    except (OSError, ValueError, KeyError) as e:
        return f"{path} is unreadable ({e})"
    if pred.shape != label.shape or pred.ndim != 1 or not len(pred):
        return f"{path} holds no per-image predictions"
    if best_epoch is not None and epoch != best_epoch:
        return f"{path} is of epoch {epoch}, not the best epoch {best_epoch}"
    return pred == label


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
    seed = (cfg.get("train") or {}).get("seed", 0)
    run = StudyRun(
        name=name,
        path=run_dir,
        study=study,
        model=model,
        dataset=str(data.get("name") or "?"),
        fraction=float(data.get("fraction") or 1.0),
        metrics=read_jsonl(run_dir / "metrics.jsonl"),
        kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
        seed=int(seed) if finite(seed) else 0,
    )
    for analysis in saved_names(run_dir / "results"):
        if analysis.startswith("evaluate_"):  # `vitscope evaluate` metrics, not a result
            continue
        try:
            result = Result.load(run_dir / "results", analysis)
        except (VitscopeError, KeyError, ValueError) as e:
            run.errors[analysis] = str(e)
            continue
        missing = _missing_keys(analysis, result)
        if missing:  # nothing is drawn or scored from a result that lacks what readers need
            run.errors[analysis] = (
                f"{run_dir / 'results' / analysis}.json lacks {', '.join(missing)}; run "
                f"`vitscope analyze {run_dir} --only {analysis}` to compute it again"
            )
        else:
            run.results[analysis] = result
    run.recorded_family = _recorded_family(run_dir, run.results.values())
    return run


def _missing_keys(name: str, result: Result) -> list[str]:
    """The required keys a result of a known analysis (tagged or not) lacks ([] for an
    unknown analysis)."""
    from ..analyses import analyses

    spec = analyses().get(analysis_of(name))
    return spec.missing(result, required_only=True) if spec is not None else []


def _recorded_family(run_dir: Path, results: Iterable[Result]) -> str | None:
    """The model family the run stored: ``provenance.json`` (training), else a result's meta."""
    try:
        fam = json.loads((run_dir / "provenance.json").read_text()).get("model_family")
    except (OSError, ValueError, AttributeError):
        fam = None
    return fam or next((r.meta["family"] for r in results if r.meta.get("family")), None)


def _load_sub(meta: dict, sub: str) -> list[StudyRun]:
    """The runs under ``<study>/<sub>/``, named by their path there."""
    d = meta["path"]
    return [
        load_run(run_dir, meta["name"], str(run_dir.relative_to(d / sub)))
        for run_dir in find_run_dirs(d, sub)
    ]


def load_runs(study_dirs: Sequence[Path]) -> tuple[list[dict], list[StudyRun]]:
    """The studies' metadata and all their runs, sorted by study, fraction (desc.), family."""
    studies = [read_study_meta(Path(d)) for d in study_dirs]
    runs = [run for meta in studies for run in _load_sub(meta, "runs")]
    _unique_names(runs)
    order = {s["name"]: i for i, s in enumerate(studies)}
    runs.sort(key=lambda r: (order[r.study], -r.fraction, _family_rank(r.family), r.model, r.name))
    return studies, runs


def load_ablations(studies: Sequence[dict], runs: Sequence[StudyRun]) -> list[StudyRun]:
    """The ablation runs (``<study>/ablations/<run>/``) of studies read by :func:`load_runs`.

    Their labels carry the model kwargs that define the ablation (``vit_tiny head=gap (6%)``)
    and never clash with the main runs' labels.
    """
    out = [run for meta in studies for run in _load_sub(meta, "ablations")]
    several = len(studies) > 1
    taken = {r.label for r in runs}
    for r in out:
        r.ablation = True
        r.name = f"{r.study}/ablations/{r.name}" if several else f"ablations/{r.name}"
        r.label = " ".join(
            x for x in (r.model, r.variant, f"({pct(r.fraction)})" if r.fraction < 1 else "") if x
        )
    _seed_labels(out)
    for r in out:  # a label still clashing (another study, a main run) gets the run's name
        if r.label in taken or sum(o.label == r.label for o in out) > 1:
            r.label = f"{r.label} [{r.name}]"
            r.group = r.label
    out.sort(key=lambda r: (r.study, -r.fraction, r.model, r.name))
    return out


def _family_rank(fam: str) -> int:
    return FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER)


def _unique_names(runs: list[StudyRun]) -> None:
    """Prefix names and labels with the study (then the run name) where they would clash;
    runs that differ only in their seed share a group and are labelled ``... s<seed>``."""
    clash = _duplicates(r.name for r in runs)
    for r in runs:
        if r.name in clash:
            r.name = f"{r.study}/{r.name}"
        r.label = r.model + (f" ({pct(r.fraction)})" if r.fraction < 1 else "")
    if len({r.dataset for r in runs}) > 1:
        for r in runs:
            r.label += f" {r.dataset}"
    _seed_labels(runs)
    clash = _duplicates(r.label for r in runs)
    for r in runs:
        if r.label in clash:
            r.label = f"{r.label} [{r.name}]"
            r.group = r.label


def _seed_labels(runs: Sequence[StudyRun]) -> None:
    """``group`` = the label so far; ``label`` gains `` s<seed>`` where a group has seeds."""
    seeds: dict[tuple, set[int]] = {}
    for r in runs:
        seeds.setdefault((r.study, r.label), set()).add(r.seed)
    for r in runs:
        r.group = r.label
        if len(seeds[(r.study, r.label)]) > 1:
            r.label = f"{r.label} s{r.seed}"


def _duplicates(items: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dup: set[str] = set()
    for x in items:
        (dup if x in seen else seen).add(x)
    return dup
