"""Loss landscapes along random normalised directions (Park & Kim 2022, Fig 1a, C.4a; spec §4).

For parameters θ0 and random directions d1, d2 (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets")::

    θ(a, b)    = θ0 + a·d1 + b·d2,       a, b ∈ linspace(-span, span, num_points)
    loss(a, b) = NLL(θ(a, b)) + L2(θ(a, b))

* NLL is the mean soft-target cross-entropy on the SAME ``batches`` augmented training
  batches at every point (the run's training transform, Mixup/CutMix included, as in the
  paper), in eval mode: no dropout, and BatchNorm keeps its running statistics (spec §13.2).
* L2 is ``0.5·wd·Σθ²`` (``l2="squared"``, the regulariser whose Hessian is ``wd·I``) or the
  released code's ``wd·Σ_p ‖θ_p‖₂`` (``l2="official"``, a sum of unsquared per-tensor norms),
  over all parameters (spec §14).
* Directions are Gaussian over the parameters (never the buffers). ``norm="filter"`` rescales
  each output filter ``d[i]`` to ``‖w[i]‖`` (Li et al.); ``norm="official"`` replicates the
  released code, norms along dim 0; ``norm="layer"`` rescales whole tensors. Tensors with
  ndim < 2 (biases, norm weights) and position embeddings / relative-position tables get a
  zero direction.

The grid runs y outer, x inner; under torchrun the points are sharded over the ranks
(:mod:`.sharding`) and every rank returns the whole grid. With a ``workdir`` the directions go
to ``landscape.partial.dirs.npz``, the key (config, data, θ0 hash) to
``landscape.partial.json``, and every finished point to rank 0's ``landscape.partial.npz``
(NaN where missing) or rank r's ``landscape.partial.rank<r>.jsonl``; a rerun with the same key,
at any world size, fills in only the missing points.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.augment import soft_cross_entropy
from ..errors import ConfigError, VitscopeError
from ..io import atomic_write, atomic_write_json
from ..train import distributed as dist_utils
from .base import Result, TrainData, config_dict
from .sharding import RankLog, key_digest, map_items

SPLIT = "train"  # the landscape is measured on augmented training data
DEFAULT_CHECKPOINT = "best"
RESUMABLE = True  # run() resumes from landscape.partial.* in its workdir

NORMS = ("filter", "official", "layer")
L2_MODES = ("squared", "official", "none")
# parameters whose names match get a zero direction (the released code's exclusion list)
EXCLUDE = re.compile(r"pos_embed|relative_position")
RING_STEP = 0.1  # spacing of the L∞ rings summarised (spec §4's table)
PARTIAL = "landscape.partial"  # stem of the resume files in workdir

Direction = dict[str, torch.Tensor]  # parameter name -> tensor; absent names: zero direction


@dataclass(frozen=True)
class Config:
    """Loss-landscape settings (defaults sized for a CPU; the paper: 21 points, whole set)."""

    dims: int = 2  # 1: a curve along d1; 2: a surface over (d1, d2)
    num_points: int = 11  # grid points per axis, odd so (0, 0) is on the grid (paper: 21)
    span: float = 1.0  # the grid covers [-span, span] on each axis
    norm: str = "filter"  # direction normalisation: filter (Li et al.) | official | layer
    l2: str = "squared"  # squared: 0.5·wd·Σθ² | official: wd·Σ_p‖θ_p‖₂ | none
    weight_decay: float | None = None  # L2 coefficient; None: the run's weight decay
    batches: int = 4  # augmented training batches evaluated at every point
    batch_size: int = 128  # images per batch
    seed: int = 0  # seeds the directions and the batches
    device: str = "cpu"  # where the batches go (the model must already be there)

    def __post_init__(self) -> None:
        if self.dims not in (1, 2):
            raise ConfigError(f"landscape.dims must be 1 or 2, got {self.dims!r}")
        if not (isinstance(self.num_points, int) and self.num_points >= 1):
            raise ConfigError(f"landscape.num_points must be >= 1, got {self.num_points!r}")
        if self.num_points % 2 == 0:
            raise ConfigError(
                f"landscape.num_points must be odd so the grid holds (0, 0), got {self.num_points}"
            )
        if not (math.isfinite(self.span) and self.span > 0):
            raise ConfigError(f"landscape.span must be a positive number, got {self.span!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("l2", self.l2, L2_MODES)
        wd = self.weight_decay
        if wd is not None and not (math.isfinite(wd) and wd >= 0):
            raise ConfigError(f"landscape.weight_decay must be >= 0 or null, got {wd!r}")
        if self.batches < 1:
            raise ConfigError(f"landscape.batches must be >= 1, got {self.batches!r}")
        if self.batch_size < 1:
            raise ConfigError(f"landscape.batch_size must be >= 1, got {self.batch_size!r}")
        if self.seed < 0:
            raise ConfigError(f"landscape.seed must be >= 0, got {self.seed!r}")


def _check_choice(field: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"landscape.{field} must be one of {', '.join(valid)}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# directions


def is_perturbed(name: str, p: torch.Tensor) -> bool:
    """Whether parameter ``name`` gets a random direction (ndim >= 2, not a position table)."""
    return p.ndim >= 2 and EXCLUDE.search(name) is None


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Rescale a Gaussian direction ``d`` to the scale of the weight ``w``.

    * ``filter`` (Li et al. 2018): ``d[i] ← d[i]·‖w[i]‖ / ‖d[i]‖`` for each output filter
      (row) ``i``.
    * ``official`` (the released ops/norm.py): ``d ← d·‖w‖_dim0 / (‖d‖_dim0 + 1e-7)``, the
      norms taken along dim 0 with keepdim (per input column, not per filter).
    * ``layer``: ``d ← d·‖w‖ / ‖d‖`` over the whole tensor.
    """
    if norm == "filter":
        dn = d.flatten(1).norm(dim=1).view(-1, *[1] * (d.ndim - 1))  # (O, 1, ...)
        wn = w.flatten(1).norm(dim=1).view_as(dn)
        return d * (wn / (dn + 1e-10))
    if norm == "official":
        return d * w.norm(dim=0, keepdim=True) / (d.norm(dim=0, keepdim=True) + 1e-7)
    if norm == "layer":
        return d * (w.norm() / (d.norm() + 1e-10))
    _check_choice("norm", norm, NORMS)
    raise AssertionError("unreachable")


def draw_directions(model: nn.Module, dims: int, norm: str, seed: int) -> list[Direction]:
    """``dims`` normalised Gaussian directions over ``model``'s parameters.

    Entries are drawn in float32 on the CPU from one generator seeded with ``seed``, d1 for
    every parameter (excluded ones too, so exclusions do not shift the stream) and then d2, so
    d1 is the same for ``dims=1`` and ``dims=2`` and on every device and dtype.
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = []
    for _ in range(dims):
        d: Direction = {}
        for name, p in params.items():
            g = torch.randn(p.shape, generator=gen)
            if is_perturbed(name, p):
                w = p.detach()
                d[name] = normalize_direction(g.to(w.device, w.dtype), w, norm)
        out.append(d)
    return out


def flatten_direction(model: nn.Module, d: Direction) -> torch.Tensor:
    """One vector over all parameters (``named_parameters`` order), zeros where absent."""
    parts = [
        (d[n] if n in d else torch.zeros_like(p)).detach().reshape(-1).cpu()
        for n, p in model.named_parameters()
    ]
    return torch.cat(parts)


def unflatten_direction(model: nn.Module, flat: np.ndarray | torch.Tensor) -> Direction:
    """The inverse of :func:`flatten_direction`; all-zero tensors are left out."""
    flat = torch.as_tensor(flat)
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    if flat.numel() != total:
        raise VitscopeError(f"direction has {flat.numel()} entries, the model {total} parameters")
    d, i = {}, 0
    for name, p in params:
        t = flat[i : i + p.numel()].view(p.shape)
        i += p.numel()
        if torch.any(t != 0):
            d[name] = t.to(p.device, p.dtype)
    return d


# ---------------------------------------------------------------------------------------------
# one grid point


@torch.no_grad()
def set_point(
    model: nn.Module, theta0: Direction, d1: Direction, d2: Direction, a: float, b: float
) -> None:
    """Parameters ← θ0 + a·d1 + b·d2, written from θ0 (never incrementally).

    Only parameters with a non-zero direction are written; the others keep θ0 untouched.
    """
    params = dict(model.named_parameters())
    for name in d1.keys() | d2.keys():
        p = params[name].copy_(theta0[name])
        if a and name in d1:  # skipping a = 0 keeps θ0 bit-exact on the axes
            p.add_(d1[name], alpha=a)
        if b and name in d2:
            p.add_(d2[name], alpha=b)


@torch.no_grad()
def restore(model: nn.Module, theta0: Direction) -> None:
    """Copy θ0 back into the parameters (bit-exact)."""
    for name, p in model.named_parameters():
        p.copy_(theta0[name])


def l2_penalty(model: nn.Module, mode: str, weight_decay: float) -> float:
    """``0.5·wd·Σθ²`` (``squared``), ``wd·Σ_p ‖θ_p‖₂`` (``official``) or 0 (``none``), float64."""
    if mode == "none":
        return 0.0
    norms = torch.stack(
        [torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in model.parameters()]
    )
    if mode == "squared":
        return 0.5 * weight_decay * float(norms.square().sum())
    if mode == "official":
        return weight_decay * float(norms.sum())
    _check_choice("l2", mode, L2_MODES)
    raise AssertionError("unreachable")


@torch.no_grad()
def evaluate_point(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    theta0: Direction,
    d1: Direction,
    d2: Direction,
    a: float,
    b: float,
    cfg: Config,
) -> dict[str, float]:
    """NLL, accuracy, L2 and ``loss = NLL + L2`` at θ0 + a·d1 + b·d2.

    The model should be in eval mode. It is left at the point: the caller restores θ0 (as
    :func:`run` does). ``cfg.weight_decay`` must be resolved (not None) unless ``l2="none"``.
    NLL is the sample mean of the soft-target cross-entropy over ``batches``; accuracy is
    against the argmax of the (mixed) soft targets, as in the released grids.
    """
    if cfg.weight_decay is None and cfg.l2 != "none":
        raise ConfigError("landscape.weight_decay must be resolved before evaluating a point")
    set_point(model, theta0, d1, d2, a, b)
    nll = torch.zeros((), dtype=torch.float64)
    correct, n = 0, 0
    for x, t in batches:
        logits = model(x)
        nll += soft_cross_entropy(logits, t).double().cpu() * len(t)
        correct += int((logits.argmax(1) == t.argmax(1)).sum())
        n += len(t)
    nll_mean = float(nll) / n
    l2 = l2_penalty(model, cfg.l2, cfg.weight_decay or 0.0)
    return {"nll": nll_mean, "acc": correct / n, "l2": l2, "loss": nll_mean + l2}


# ---------------------------------------------------------------------------------------------
# the grid and its resume files


def grid_axes(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """``xs`` and ``ys`` (``ys = [0]`` for ``dims=1``); the middle entry is exactly 0."""
    xs = cfg.span * np.linspace(-1.0, 1.0, cfg.num_points)
    xs[cfg.num_points // 2] = 0.0
    ys = xs.copy() if cfg.dims == 2 else np.zeros(1)
    return xs, ys


def make_batches(
    data: TrainData, cfg: Config, dtype: torch.dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``cfg.batches`` augmented batches every point is evaluated on, computed once."""
    if len(data) == 0:
        raise VitscopeError("landscape needs training images, the training data is empty")
    out = []
    for i in range(cfg.batches):
        x, t = data.batch(i, cfg.batch_size, seed=cfg.seed, device=cfg.device)
        out.append((x.to(dtype), t.to(dtype)))
    return out


GRIDS = ("loss", "nll", "acc", "l2", "seconds")


@dataclass
class _Grid:
    """Per-point values, ``(len(ys), len(xs))`` each, NaN where not yet computed."""

    values: dict[str, np.ndarray]
    done: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> _Grid:
        return cls({k: np.full(shape, np.nan) for k in GRIDS}, np.zeros(shape, dtype=bool))

    def record(self, j: int, i: int, point: dict[str, float]) -> None:
        """Store one point's ``loss``, ``nll``, ``acc``, ``l2`` and ``seconds``."""
        values = [float(point[k]) for k in GRIDS]  # all or nothing
        for k, v in zip(GRIDS, values):
            self.values[k][j, i] = v
        self.done[j, i] = True

    def todo(self) -> list[tuple[int, int]]:
        """The missing points ``(j, i)``, y outer and x inner."""
        return [(j, i) for j, i in np.ndindex(*self.done.shape) if not self.done[j, i]]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)

    atomic_write(path, write)


def _theta_hash(theta0: Direction) -> str:
    h = hashlib.sha256()
    for name, t in theta0.items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _partial_key(cfg: Config, data: TrainData, theta0: Direction) -> dict:
    """What a partial grid depends on: the config, the data and θ0 (the device does not)."""
    key = {
        "config": {k: v for k, v in config_dict(cfg).items() if k != "device"},
        "data": {"images": len(data), "transform": data.transform},
        "theta0_sha256": _theta_hash(theta0),
    }
    return json.loads(json.dumps(key, default=str))


def _load_directions(workdir: Path, model: nn.Module) -> list[Direction]:
    with np.load(workdir / f"{PARTIAL}.dirs.npz") as z:
        return [unflatten_direction(model, z[k]) for k in ("d1", "d2")]


def _load_partial(
    workdir: Path, key: dict, model: nn.Module, shape: tuple[int, int]
) -> tuple[list[Direction], _Grid] | None:
    """Saved directions and grid if ``workdir`` holds a partial run with the same key."""
    meta = workdir / f"{PARTIAL}.json"
    if not meta.is_file():
        return None
    try:
        if json.loads(meta.read_text()).get("key") != key:
            warnings.warn(f"{meta} is from another config or model; starting over", stacklevel=4)
            return None
        dirs = _load_directions(workdir, model)
        with np.load(workdir / f"{PARTIAL}.npz") as z:
            grid = _Grid({k: z[k].astype(float) for k in GRIDS}, z["done"].astype(bool))
    except (OSError, ValueError, KeyError, VitscopeError) as e:
        warnings.warn(f"unreadable {PARTIAL}.* in {workdir} ({e}); starting over", stacklevel=4)
        return None
    if grid.done.shape != shape:
        return None
    return dirs, grid


def _merge_logs(grid: _Grid, log: RankLog) -> None:
    """Points other ranks finished (their logs) into ``grid``, each point once."""
    for item, point in log.read():
        try:
            j, i = (int(v) for v in item)
            if not grid.done[j, i]:
                grid.record(j, i, point)
        except (TypeError, ValueError, KeyError, IndexError):
            continue  # not a point of this grid


def _start_partial(
    workdir: Path, key: dict, model: nn.Module, dirs: list[Direction], grid: _Grid, log: RankLog
) -> None:
    """Write directions, an empty grid and then the key (the key last marks them valid)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{PARTIAL}.json").unlink(missing_ok=True)
    log.clear()
    flat = {k: flatten_direction(model, d).numpy() for k, d in zip(("d1", "d2"), dirs)}
    _save_npz(workdir / f"{PARTIAL}.dirs.npz", flat)
    _save_grid(workdir, grid)
    atomic_write_json(workdir / f"{PARTIAL}.json", {"key": key})


def _save_grid(workdir: Path, grid: _Grid) -> None:
    _save_npz(workdir / f"{PARTIAL}.npz", {**grid.values, "done": grid.done})


def _resume(
    workdir: Path, key: dict, model: nn.Module, cfg: Config, shape: tuple[int, int], log: RankLog
) -> tuple[list[Direction], _Grid]:
    """Rank 0: the saved directions and every rank's finished points, or a fresh start.

    The points in other ranks' logs are merged into ``landscape.partial.npz`` before the logs
    are deleted, so a kill at any moment loses nothing.
    """
    state = _load_partial(workdir, key, model, shape)
    if state is None:
        dirs = _draw(model, cfg)
        grid = _Grid.empty(shape)
        _start_partial(workdir, key, model, dirs, grid, log)
        return dirs, grid
    dirs, grid = state
    _merge_logs(grid, log)
    _save_grid(workdir, grid)
    log.clear()
    return dirs, grid


def _draw(model: nn.Module, cfg: Config) -> list[Direction]:
    """d1 and d2 (``{}`` for ``dims=1``)."""
    return draw_directions(model, cfg.dims, cfg.norm, cfg.seed) + [{}] * (2 - cfg.dims)


# ---------------------------------------------------------------------------------------------
# summaries and the result


def ring_summaries(xs: np.ndarray, ys: np.ndarray, grid: dict[str, np.ndarray]) -> list[dict]:
    """Mean NLL, loss and accuracy over L∞ rings ``r = 0, 0.1, 0.2, ...`` (spec §4's table).

    Ring ``r`` holds the points whose L∞ radius ``max(|a|, |b|)`` lies in
    ``(r - 0.05, r + 0.05]`` (ring 0.1 also takes anything nearer than that, ring 0 is the
    centre alone); means are over finite entries, as for the released CSVs. Empty rings (a
    coarse grid) are left out.
    """
    a, b = np.meshgrid(xs, ys)
    radius = np.maximum(np.abs(a), np.abs(b))
    ring = np.ceil(radius / RING_STEP - 0.5 - 1e-9).astype(int)
    ring[(radius > 1e-12) & (ring < 1)] = 1
    ring[radius <= 1e-12] = 0
    out = []
    for k in np.unique(ring):
        row = {"r": round(float(k) * RING_STEP, 10), "points": int((ring == k).sum())}
        for name in ("nll", "loss", "acc"):
            v = grid[name][ring == k]
            v = v[np.isfinite(v)]
            row[name] = float(v.mean()) if len(v) else None
        row["finite"] = int(np.isfinite(grid["loss"][ring == k]).sum())
        out.append(row)
    return out


def _nested(a: np.ndarray) -> list:
    """A grid as nested lists for JSON, non-finite entries as None."""
    return [[float(v) if math.isfinite(v) else None for v in row] for row in a]


def _result(
    model: nn.Module,
    cfg: Config,
    data: TrainData,
    xs: np.ndarray,
    ys: np.ndarray,
    dirs: list[Direction],
    grid: _Grid,
) -> Result:
    g = grid.values
    j0, i0 = len(ys) // 2, len(xs) // 2
    names = [n for n, _ in model.named_parameters()]
    values = {
        "coords": {"xs": xs.tolist(), "ys": ys.tolist()},
        **{k: _nested(g[k]) for k in ("loss", "nll", "acc", "l2", "seconds")},
        "center": {k: float(g[k][j0, i0]) for k in ("loss", "nll", "acc", "l2")},
        "rings": ring_summaries(xs, ys, g),
        "dims": cfg.dims,
        "norm": cfg.norm,
        "l2_mode": cfg.l2,
        "weight_decay": cfg.weight_decay,
        "bn_mode": "eval",
        "operator": {
            "batches": cfg.batches,
            "batch_size": cfg.batch_size,
            "images_per_point": cfg.batches * min(cfg.batch_size, len(data)),
            "seed": cfg.seed,
            "transform": data.transform,
        },
        "seconds_per_point": float(np.nanmean(g["seconds"])),
        "directions": {
            "parameters": names,
            "perturbed": [n for n in names if n in dirs[0]],
            "excluded": EXCLUDE.pattern,
        },
    }
    arrays = {
        "xs": xs,
        "ys": ys,
        **{k: g[k] for k in ("loss", "nll", "acc", "l2", "seconds")},
        "d1": flatten_direction(model, dirs[0]).numpy(),
        "d2": flatten_direction(model, dirs[1] if len(dirs) > 1 else {}).numpy(),
    }
    return Result("landscape", values=values, arrays=arrays, config=config_dict(cfg))


# ---------------------------------------------------------------------------------------------
# the analysis


def run(
    model: nn.Module,
    data: TrainData,
    cfg: Config = Config(),
    *,
    spec=None,
    workdir: Path | None = None,
) -> Result:
    """The loss landscape of ``model`` around its current parameters θ0.

    Args:
        model: any ``nn.Module`` on ``cfg.device``; put in eval mode for the run, then back in
            its former mode, with θ0 restored bit-exactly (also when interrupted).
        data: augmented training batches (:class:`TrainData`).
        cfg: settings; ``weight_decay=None`` takes ``data.weight_decay``.
        spec: unused (the landscape does not look at blocks); accepted for the contract.
        workdir: where ``landscape.partial.*`` go; a rerun there resumes the grid.

    Under torchrun the points are sharded over the ranks; every rank returns the whole grid.

    Returns:
        Result ``landscape``: grids ``loss``, ``nll``, ``acc``, ``l2``, ``seconds`` (rows y,
        columns x), ``coords``, ``center``, ``rings``; arrays ``xs``, ``ys``, the grids and the
        flattened directions ``d1``, ``d2`` (``named_parameters`` order).
    """
    if cfg.weight_decay is None:
        cfg = replace(cfg, weight_decay=float(data.weight_decay))
    xs, ys = grid_axes(cfg)
    shape = (len(ys), len(xs))
    was_training = model.training
    model.eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        if workdir is None:
            dirs, grid = _draw(model, cfg), _Grid.empty(shape)
        else:
            workdir = Path(workdir)
            key = _partial_key(cfg, data, theta0)
            log = RankLog(workdir, PARTIAL, key_digest(key))
            state = _resume(workdir, key, model, cfg, shape, log) if dist_utils.is_main() else None
            # after rank 0 has merged the logs and written the directions
            grid = dist_utils.broadcast_object(state[1] if state else None)
            dirs = state[0] if state else _load_directions(workdir, model)
        dtype = next(iter(theta0.values())).dtype if theta0 else torch.float32
        batches = make_batches(data, cfg, dtype)

        def compute(point: tuple[int, int]) -> dict[str, float]:
            j, i = point
            t0 = time.perf_counter()
            out = evaluate_point(model, batches, theta0, *dirs, float(xs[i]), float(ys[j]), cfg)
            return {**out, "seconds": time.perf_counter() - t0}

        def save(point: tuple[int, int], values: dict[str, float]) -> None:
            if dist_utils.is_main():
                grid.record(*point, values)
                _save_grid(workdir, grid)
            else:
                log.append(list(point), values)

        finished = map_items(grid.todo(), compute, save if workdir is not None else None)
        for (j, i), values in finished.items():
            grid.record(j, i, values)
    finally:
        restore(model, theta0)
        model.train(was_training)
    return _result(model, cfg, data, xs, ys, dirs, grid)
