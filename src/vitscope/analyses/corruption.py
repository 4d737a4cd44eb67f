"""Accuracy under the 15 common corruptions at 5 severities (Hendrycks & Dietterich 2019), and
the paper's "robustness": the mean accuracy over them (Park & Kim 2022, Fig 8c / poster;
``docs/methods/corruption.md``).

The corrupted test images are made on the fly from the run's own test set
(:mod:`vitscope.data.corruptions`: CIFAR-C parameters at 32 px, ImageNet-C at 224 px, a
stated rule in between), so Fashion-MNIST-C, CIFAR-C-style and folder-C data need no files.
Each (corruption, severity) draws from its own generator seeded by ``seed``: every model of a
study sees the same corrupted images (a paired design), whatever rank computes the pair.

``source`` names released corrupted images to use instead, in either of the two layouts:

- the CIFAR-10-C / CIFAR-100-C arrays (``<corruption>.npy``, 50000 x 32 x 32 x 3 uint8,
  severity ``s`` in rows ``10000 (s - 1)`` to ``10000 s``, and ``labels.npy``); their labels
  must equal the test set's;
- an ImageNet-C folder (``<corruption>/<severity>/<class>/<file>``, the layout of the
  ImageNet-C and Tiny-ImageNet-C releases; a group level ``<group>/<corruption>/...`` as the
  tar files unpack is accepted too) for a folder dataset whose test split
  (``val/<class>/<file>``) holds the clean originals under the same names: each test image
  is matched by its class folder and file name, whatever the file's extension (the release
  is JPEG, the originals may be anything). Its images are already centre-cropped, so they
  are read at the test split's size without ``data.crop_pct``.

Everything this analysis is (config, result keys, run, figures, the overlay, the claim rule)
goes through the plug-in contract: this module, :mod:`vitscope.data.corruptions` (the ops) and
:mod:`vitscope.report.claims.corruption` (the claim, numpy only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import normalize
from ..data.corruptions import CORRUPTIONS, GROUPS, SEVERITIES, check, corrupt_uint8, seed_for
from ..data.stream import FolderImages, read_images
from ..errors import ConfigError, VitscopeError
from ..results import Result, config_dict
from .base import EvalData, correct, eval_mode
from .keys import CorruptionKeys as Keys
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec


@dataclass(frozen=True)
class Config:
    """Corruption-robustness settings."""

    corruptions: tuple[str, ...] = CORRUPTIONS  # names (vitscope.data.corruptions)
    severities: tuple[int, ...] = SEVERITIES  # 1-5
    num_images: int = 1000  # test images per (corruption, severity)
    batch_size: int = 200
    seed: int = 0  # the corruption noise (the same for every model)
    source: str = ""  # released CIFAR-10/100-C .npy files or an ImageNet-C folder; "": generate
    baseline: str = ""  # a model name: the report's mCE divides by its errors (Hendrycks)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.corruptions or len(set(self.corruptions)) < len(self.corruptions):
            raise ConfigError("corruption.corruptions must be distinct names, at least one")
        for name in self.corruptions:
            check(name)
        if not self.severities or any(s not in SEVERITIES for s in self.severities):
            raise ConfigError(f"corruption.severities must be in 1-5, got {list(self.severities)}")
        if self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("corruption.num_images and corruption.batch_size must be >= 1")


def row(cfg: Config, name: str, severity: int) -> int:
    """The row of ``(name, severity)`` in ``arrays.correct`` (row 0: clean)."""
    return 1 + cfg.corruptions.index(name) * len(cfg.severities) + cfg.severities.index(severity)


def released(cfg: Config, data: EvalData) -> Released | ReleasedFolder:
    """The released corrupted images in ``cfg.source``, in whichever layout it holds, checked
    up front for every corruption and severity ``cfg`` names (before any is evaluated)."""
    root, n = Path(cfg.source).expanduser(), data.count(cfg.num_images)
    if not root.is_dir():
        raise VitscopeError(f"corruption.source: no folder {root}")
    if (root / "labels.npy").is_file():
        out: Released | ReleasedFolder = Released(root, data, n)
    elif any(ReleasedFolder.folder_of(root, c) for c in CORRUPTIONS):
        out = ReleasedFolder(root, data, n)
    else:
        raise VitscopeError(
            f"corruption.source: {root} holds neither labels.npy and <corruption>.npy (CIFAR-10/"
            "100-C) nor <corruption>/<severity>/<class>/ folders (ImageNet-C)"
        )
    for name in cfg.corruptions:
        for severity in cfg.severities:
            out.check(name, severity)
    return out


class Released:
    """The released CIFAR-10-C / CIFAR-100-C arrays in ``folder``, memory-mapped (numpy
    ``.npy`` without pickles), checked against the test set they corrupt: its first ``n``
    labels and its image shape. Each array is opened and checked once."""

    def __init__(self, folder: str | Path, data: EvalData, n: int):
        self.folder = Path(folder).expanduser()
        self.n = n
        c, h, w = data.images.shape[1:]
        self.shape = (h, w, c)  # the release's layout: (5 N, H, W, C)
        self._arrays: dict[str, np.ndarray] = {}
        theirs = self._load("labels")
        if theirs.ndim != 1 or len(theirs) < n:
            raise VitscopeError(f"{self.folder / 'labels.npy'}: expected >= {n} labels")
        if not np.array_equal(theirs[:n].astype(np.int64), data.labels[:n].numpy()):
            raise VitscopeError(
                f"{self.folder / 'labels.npy'}: its labels are not the test set's "
                "(the released arrays corrupt CIFAR's test split in its order)"
            )

    def _load(self, stem: str) -> np.ndarray:
        path = self.folder / f"{stem}.npy"
        if not path.is_file():
            raise VitscopeError(f"corruption.source: missing {path}")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:  # pickled or corrupt: never unpickled
            raise VitscopeError(f"{path}: not a plain .npy array ({e})") from None

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            a = self._load(name)
            if a.ndim != 4 or a.shape[1:] != self.shape or len(a) // 5 < self.n:
                raise VitscopeError(
                    f"{self.folder / (name + '.npy')}: expected (5 x N, H, W, C) = "
                    f"(5 x >= {self.n}, {', '.join(map(str, self.shape))}) uint8 like the "
                    f"test set, got {a.shape}"
                )
            self._arrays[name] = a
        return self._arrays[name]

    def check(self, name: str, severity: int) -> None:
        self._array(name)

    def images(self, name: str, severity: int, start: int, end: int) -> torch.Tensor:
        a = self._array(name)
        first = (severity - 1) * (len(a) // 5)
        return torch.from_numpy(np.array(a[first + start : first + end])).permute(0, 3, 1, 2)


class ReleasedFolder:
    """An ImageNet-C folder ``<root>/<corruption>/<severity>/<class>/<file>`` matched to the
    folder test split ``data.files`` by class folder and file stem, read lazily (a
    :class:`~vitscope.data.stream.FolderImages` per corruption and severity, the test split's
    size and decoder, no border cut). Each (corruption, severity) folder is listed and checked
    once (:func:`released` checks them all up front): a test image without its corrupted copy
    is an error."""

    def __init__(self, root: Path, data: EvalData, n: int):
        if data.files is None:
            raise VitscopeError(
                f"corruption.source: {root} is an ImageNet-C folder, which matches the test "
                "images by file name; it needs a folder dataset (data.name=folder) whose "
                f"val/<class>/<file> are the clean originals, not {data.name or 'this dataset'}"
            )
        self.root = root
        self.files = data.files[:n]
        self.size, self.decoder = self.files.size, self.files.decoder
        self._views: dict[tuple[str, int], FolderImages] = {}

    @staticmethod
    def places(root: Path, name: str) -> tuple[Path, Path]:
        """Where a corruption's folder may be: ``root/<name>``, ``root/<group>/<name>``."""
        group = next(g for g, members in GROUPS.items() if name in members)
        return root / name, root / group / name

    @staticmethod
    def folder_of(root: Path, name: str) -> Path | None:
        return next((p for p in ReleasedFolder.places(root, name) if p.is_dir()), None)

    def _view(self, name: str, severity: int) -> FolderImages:
        if (name, severity) in self._views:
            return self._views[(name, severity)]
        top = self.folder_of(self.root, name)
        if top is None:
            plain, grouped = self.places(self.root, name)
            raise VitscopeError(
                f"corruption.source: no folder {plain} (nor {grouped}); the ImageNet-C layout "
                "is <corruption>/<severity>/<class>/<file>"
            )
        where = top / str(severity)
        if not where.is_dir():
            raise VitscopeError(f"corruption.source: no folder {where} (severity {severity})")
        listed: dict[bytes, bytes] = {}  # b"<class>/<stem>" -> b"<class>/<file>"
        for cls in sorted({os.path.dirname(f) for f in self.files.names}):
            folder = where / os.fsdecode(cls)
            try:
                entries = os.listdir(folder)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise VitscopeError(f"cannot list {folder}: {e.strerror}") from None
            for f in entries:
                name_b = os.fsencode(f)
                listed[os.path.join(cls, os.path.splitext(name_b)[0])] = os.path.join(cls, name_b)
        stems = [os.path.splitext(f)[0] for f in self.files.names]
        missing = [f for f, stem in zip(self.files.names, stems) if stem not in listed]
        if missing:
            raise VitscopeError(
                f"corruption.source: {where} lacks {len(missing)} of the {len(stems)} test "
                f"images, e.g. {os.fsdecode(missing[0])}; it must hold a corrupted copy of "
                "each, under the same <class>/<name>"
            )
        names = np.array([listed[stem] for stem in stems], dtype=bytes)
        view = FolderImages(str(where), names, self.size, self.decoder, 1.0)
        self._views[(name, severity)] = view
        return view

    def check(self, name: str, severity: int) -> None:
        self._view(name, severity)

    def images(self, name: str, severity: int, start: int, end: int) -> torch.Tensor:
        return read_images(self._view(name, severity)[start:end])


@torch.no_grad()
def corrupted_correct(
    model: torch.nn.Module,
    data: EvalData,
    cfg: Config,
    name: str | None,
    severity: int = 0,
    released: Released | ReleasedFolder | None = None,
) -> np.ndarray:
    """Per test image, whether ``model`` classifies it right under ``name`` at ``severity``
    (``None``: clean)."""
    if name is None:
        return correct(model, data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images))
    n = data.count(cfg.num_images)
    g = torch.Generator().manual_seed(seed_for(cfg.seed, name, severity))

    def batches():
        for start in range(0, n, cfg.batch_size):
            end = min(start + cfg.batch_size, n)
            if released is not None:
                images = released.images(name, severity, start, end).to(cfg.device)
            else:
                clean = read_images(data.images[start:end]).to(cfg.device)
                images = corrupt_uint8(clean, name, severity, g)
            yield normalize(images, data.mean, data.std), data.labels[start:end].to(cfg.device)

    return correct(model, batches())


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Accuracy per corruption and severity, their mean (robustness) and the clean accuracy.

    Under torchrun the (corruption, severity) pairs are sharded over the ranks.

    Returns:
        Result ``corruption``: values ``corruptions``, ``severities``, ``clean_acc`` (%),
        ``accuracy`` (``[corruption][severity]``, %), ``mean_acc`` (%), ``errors`` (per
        corruption, the error summed over severities, %), ``num_images``, ``source``; array
        ``correct`` (uint8, ``1 + corruptions x severities`` rows by test images), which the
        report resamples.
    """
    if len(data) == 0:
        raise VitscopeError("corruption: no test images")
    source = released(cfg, data) if cfg.source else None
    items: list[tuple[str | None, int]] = [(None, 0)]
    items += [(c, s) for c in cfg.corruptions for s in cfg.severities]
    with eval_mode(model):
        hits = map_items(
            range(len(items)), lambda k: corrupted_correct(model, data, cfg, *items[k], source)
        )
    table = np.stack([hits[k] for k in range(len(items))]).astype(np.uint8)
    acc = 100.0 * table.mean(axis=1)
    grid = acc[1:].reshape(len(cfg.corruptions), len(cfg.severities))
    return Result(
        "corruption",
        values={
            Keys.CORRUPTIONS: list(cfg.corruptions),
            Keys.SEVERITIES: list(cfg.severities),
            Keys.CLEAN_ACC: float(acc[0]),
            Keys.ACCURACY: grid.tolist(),
            Keys.MEAN_ACC: float(grid.mean()),
            Keys.ERRORS: (100.0 - grid).sum(axis=1).tolist(),
            Keys.NUM_IMAGES: int(table.shape[1]),
            Keys.SOURCE: str(cfg.source) if cfg.source else "generated",
        },
        arrays={Keys.CORRECT: table},
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """Clean accuracy, robustness (mean corruption accuracy) and the worst corruption's."""
    v = result.values
    worst = min(float(np.mean(r)) for r in v[Keys.ACCURACY])
    return {
        "clean accuracy (%)": v[Keys.CLEAN_ACC],
        "robustness (%)": v[Keys.MEAN_ACC],
        "worst corruption (%)": worst,
    }


# ---- corruption error relative to a baseline (Hendrycks & Dietterich 2019) -------------------


def corruption_errors(result: Result, baseline: Sequence[Result]) -> tuple[float, float] | None:
    """``(mCE, relative mCE)`` in percent of ``result`` against the mean errors of the
    ``baseline`` results, over the corruptions they share; None if there is nothing to
    compare (no baseline, other severities).

    ``CE_c = sum_s E_sc / sum_s E_sc(baseline)``, ``mCE = mean_c CE_c``; the relative one
    subtracts each model's clean error from every ``E_sc`` first.
    """

    def table(r: Result) -> dict[str, tuple[np.ndarray, float]]:
        v = r.values
        err = 100.0 - np.asarray(v[Keys.ACCURACY], float)  # (corruptions, severities)
        clean = 100.0 - float(v[Keys.CLEAN_ACC])
        return {c: (err[i], clean) for i, c in enumerate(v[Keys.CORRUPTIONS])}

    levels = list(result.values[Keys.SEVERITIES])
    if not baseline or any(list(b.values[Keys.SEVERITIES]) != levels for b in baseline):
        return None
    mine, theirs = table(result), [table(b) for b in baseline]
    ce, rel = [], []
    for c in [c for c in mine if all(c in t for t in theirs)]:
        e, clean = mine[c]
        base = np.mean([t[c][0] for t in theirs], axis=0)
        base_clean = float(np.mean([t[c][1] for t in theirs]))
        if base.sum() > 0:
            ce.append(e.sum() / base.sum())
        if (base - base_clean).sum() > 0:
            rel.append((e - clean).sum() / (base - base_clean).sum())
    if not ce:
        return None
    return 100.0 * float(np.mean(ce)), (100.0 * float(np.mean(rel)) if rel else float("nan"))


def _where(r: Result) -> tuple:
    return (r.meta.get("dataset"), r.meta.get("fraction"))


def baseline_table(results: Sequence[Result]) -> tuple[list[str], list[list[str]]] | None:
    """The report's table of mCE against the model the results' ``baseline`` names: the
    runs of that model with the same dataset and fraction, errors averaged over their seeds.
    None when no baseline (or more than one) is named."""
    named = {str(r.config.get("baseline") or "") for r in results} - {""}
    if len(named) != 1:
        return None
    (model,) = named
    rows = []
    for r in results:
        base = [b for b in results if b.meta.get("model") == model and _where(b) == _where(r)]
        got = corruption_errors(r, base)
        mce = ["—", "—"] if got is None else [f"{got[0]:.1f}", f"{got[1]:.1f}"]
        rows.append([r.label(r.meta.get("run", "")), f"{r.values[Keys.MEAN_ACC]:.2f}", *mce])
    return ["Run", "robustness (%)", f"mCE vs {model} (%)", f"relative mCE vs {model} (%)"], rows


# ---- figures ---------------------------------------------------------------------------------


def draw_heatmap(result: Result, fig: Any) -> None:
    """Accuracy (%) per corruption (rows) and severity (columns), clean accuracy in the title."""
    v = result.values
    grid = np.asarray(v[Keys.ACCURACY], float)
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_yticks(
        range(len(v[Keys.CORRUPTIONS])), [c.replace("_", " ") for c in v[Keys.CORRUPTIONS]]
    )
    ax.set_xticks(range(len(v[Keys.SEVERITIES])), [str(s) for s in v[Keys.SEVERITIES]])
    ax.tick_params(labelsize=7)
    ax.set_xlabel("Severity")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if grid[i, j] < 60 else "black")  # fmt: skip
    label = result.label(result.meta.get("run", ""))
    ax.set_title(
        f"{label}: clean {v[Keys.CLEAN_ACC]:.1f}%, robustness {v[Keys.MEAN_ACC]:.1f}%", fontsize=8
    )
    fig.colorbar(im, ax=ax, label="Accuracy (%)")


def draw_scatter(results: Any, fig: Any) -> None:
    """The paper's accuracy-vs-robustness plane (Fig 8c): one point per run group (mean over
    seeds, with a 95% t interval on each axis when there are several)."""
    from ..report.load import family
    from ..report.spread import group_label, groups, mean_band

    ax = fig.subplots()
    for group, members in groups(results):
        clean = [m.values[Keys.CLEAN_ACC] for m in members]
        robust = [m.values[Keys.MEAN_ACC] for m in members]
        (cx, clo, chi, _), (ry, rlo, rhi, _) = (
            mean_band([[v] for v in vs]) for vs in (clean, robust)
        )
        fam = family(str(members[0].meta.get("model", "")), members[0].meta.get("family"))
        marker = {"ViT": "o", "PiT": "s", "Swin": "^", "AlterNet": "*"}.get(fam, "D")
        ax.errorbar(
            cx, ry, xerr=[[cx[0] - clo[0]], [chi[0] - cx[0]]], yerr=[[ry[0] - rlo[0]],
            [rhi[0] - ry[0]]], fmt=marker, ms=7 if marker == "*" else 5, capsize=2,
            label=group_label(group, members),
        )  # fmt: skip
    ax.set_xlabel("Clean accuracy (%)")
    ax.set_ylabel("Robustness: mean corrupted accuracy (%)")
    ax.legend(fontsize=6)


ANALYSIS = Analysis(
    name="corruption",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("corruption", draw_heatmap, size=(5, 4.6)),),
    summary=summary,
    compare=draw_scatter,
    keys=Keys,
    description="Accuracy under 15 corruptions x 5 severities; robustness (Fig 8c)",
    order=35,
    claims=("vitscope.report.claims.corruption:check_robustness",),
    table=baseline_table,
)
