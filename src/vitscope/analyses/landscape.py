"""Loss landscapes along random normalised directions (Park & Kim 2022, Fig 1a, C.4a;
``docs/methods/landscape.md``).

For parameters θ0 and random directions d1, d2 (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets")::

    θ(a, b)    = θ0 + a·d1 + b·d2,       a, b ∈ linspace(-span, span, num_points)
    loss(a, b) = NLL(θ(a, b)) + L2(θ(a, b))

* NLL is the mean soft-target cross-entropy on the SAME ``batches`` augmented training
  batches at every point (the run's training transform, Mixup/CutMix included, as in the
  paper), in eval mode: no dropout, and BatchNorm keeps its running statistics
  (``docs/methods/decisions.md``).
* L2 is ``0.5·wd·Σθ²`` (``l2="squared"``, the regulariser whose Hessian is ``wd·I``) or the
  released code's ``wd·Σ_p ‖θ_p‖₂`` (``l2="official"``, a sum of unsquared per-tensor norms),
  over all parameters (``docs/methods/decisions.md#decisions``).
* Directions are Gaussian over the parameters (never the buffers). ``norm="filter"`` rescales
  each output filter ``d[i]`` to ``‖w[i]‖`` (Li et al.); ``norm="official"`` replicates the
  released code, norms along dim 0; ``norm="layer"`` rescales whole tensors. Tensors with
  ndim < 2 (biases, norm weights) and position embeddings / relative-position tables get a
  zero direction.

The grid runs y outer, x inner; under torchrun the points are sharded over the ranks
(:mod:`.sharding`) and every rank returns the whole grid. With a store (``ctx.store``, see
:mod:`.store`) the directions go to ``landscape.partial.npz`` and every finished point to
``landscape.partial.json`` (rank 0) or ``landscape.partial.rank<r>.jsonl``; a rerun with the
same config, data and θ0, at any world size, computes only the missing points.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.augment import soft_cross_entropy
from ..errors import ConfigError, VitscopeError
from ..io import RunDir
from ..results import Result, config_dict
from .base import TrainData, eval_mode
from .keys import LandscapeKeys as Keys
from .objective import L2_MODES, l2_penalty
from .rings import RING_STEP, ring_index
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec
from .store import state_digest

NORMS = ("filter", "official", "layer")
DIRECTIONS = ("random", "pca", "eigen", "interpolate")
BUFFERS = ("recompute", "nearer")  # directions=interpolate: where the buffers come from
CHECKPOINT_NAME = re.compile(r"^(best|last|init|warmup|epoch\d+)$")
PCA_MARGIN = 1.2  # the PCA grid's unit: this times the trajectory's largest coordinate
# parameters whose names match get a zero direction (the released code's exclusion list)
EXCLUDE = re.compile(r"pos_embed|relative_position")

Direction = dict[str, torch.Tensor]  # parameter name -> tensor; absent names: zero direction


@dataclass(frozen=True)
class Config:
    """Loss-landscape settings (defaults sized for a CPU; the paper: 21 points, whole set)."""

    dims: int = 2  # 1: a curve along d1; 2: a surface over (d1, d2)
    num_points: int = 11  # grid points per axis, odd so (0, 0) is on the grid (paper: 21)
    span: float = 1.0  # the grid covers [-span, span] on each axis
    # random: filter-normalised Gaussian (Li et al.) | pca: the training trajectory's top
    # principal directions (needs train.snapshot_every) | eigen: the top Hessian eigenvectors
    # | interpolate: 1-D, (1-α)·θ0 + α·θ_endpoint (dims, span and norm do not apply)
    directions: str = "random"
    # directions=interpolate: the other end, a checkpoint of this run (init, best, last, warmup,
    # epochN), another run's folder (its best.pt) or a weights file (.pt, .safetensors)
    endpoint: str | None = None
    alpha_range: tuple[float, float] = (-0.5, 1.5)  # α from, to; 0 and 1 are always on the grid
    # recompute: BatchNorm statistics re-estimated at each α on the landscape's batches (other
    # buffers from the nearer end) | nearer: every buffer from the nearer end (α <= 0.5: θ0's)
    buffers: str = "recompute"
    norm: str = "filter"  # random directions' normalisation: filter | official | layer
    eigen_max_iter: int = 60  # Lanczos products for directions=eigen
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
        if self.num_points % 2 == 0 and self.directions != "interpolate":
            raise ConfigError(
                f"landscape.num_points must be odd so the grid holds (0, 0), got {self.num_points}"
            )
        if not (math.isfinite(self.span) and self.span > 0):
            raise ConfigError(f"landscape.span must be a positive number, got {self.span!r}")
        _check_choice("directions", self.directions, DIRECTIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("buffers", self.buffers, BUFFERS)
        lo_hi = tuple(self.alpha_range)
        if len(lo_hi) != 2 or not all(math.isfinite(v) for v in lo_hi) or lo_hi[0] >= lo_hi[1]:
            raise ConfigError(
                f"landscape.alpha_range must be [from, to] with from < to, got {list(lo_hi)}"
            )
        if self.directions == "interpolate" and not self.endpoint:
            raise ConfigError(
                "landscape.directions=interpolate needs landscape.endpoint: a checkpoint of "
                "the run (e.g. init), another run's folder or a weights file"
            )
        if self.eigen_max_iter < 2:
            raise ConfigError(f"landscape.eigen_max_iter must be >= 2, got {self.eigen_max_iter}")
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


def pca_directions(
    final: torch.Tensor, points: list[torch.Tensor], dims: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The top ``dims`` principal directions of a training trajectory (Li et al. 2018, §7):
    the rows ``θ_e - θ_final`` of the trajectory's points are centred and decomposed, as
    ``sklearn.decomposition.PCA`` does, through their small Gram matrix (no ``P x P`` work).

    Args:
        final: ``(P,)`` the analysed parameters θ_final (perturbed entries only).
        points: the trajectory's other parameter vectors ``(P,)`` (e.g. init and epochs).
        dims: 1 or 2.

    Returns:
        ``(directions (dims, P) float64, unit-norm and orthogonal; explained variance ratio
        (dims,); the trajectory's coordinates (len(points), dims): each ``θ_e - θ_final``
        projected on the directions, as the reference tool's ``project_trajectory``)``.
    """
    rows = torch.stack([p.double() - final.double() for p in points])  # (E, P)
    centred = rows - rows.mean(0, keepdim=True)
    gram = centred @ centred.T  # (E, E)
    lam, vec = torch.linalg.eigh(gram)
    lam, vec = lam.flip(0).clamp(min=0), vec.flip(1)
    if len(points) < dims + 1 or lam[dims - 1] <= 1e-12 * max(float(lam[0]), 1e-300):
        raise VitscopeError(
            f"landscape.directions=pca: the {len(points)} trajectory points span fewer than "
            f"{dims} direction(s); keep more checkpoints (train.snapshot_every=1)"
        )
    dirs = (centred.T @ vec[:, :dims]) / lam[:dims].sqrt()  # (P, dims), unit columns
    explained = (lam[:dims] / lam.sum()).numpy()
    return dirs.T.contiguous(), explained, (rows @ dirs).numpy()


def _perturbed_vector(
    model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """The perturbed parameters of ``model`` (or their values in a checkpoint's ``state``) as
    one float64 vector in :func:`flatten_direction`'s layout, zeros elsewhere."""
    values = {}
    for name, p in model.named_parameters():
        if is_perturbed(name, p):
            if state is not None and name not in state:
                raise VitscopeError(f"landscape.directions=pca: a checkpoint lacks {name}")
            values[name] = state[name] if state is not None else p
    return flatten_direction(model, values).double()


def trajectory(run_dir: Path) -> list[tuple[str, Path]]:
    """The checkpoints of a run's trajectory, in training order: ``init`` and every
    ``epochN`` (``train.snapshot_every``)."""
    ckpts = RunDir(Path(run_dir)).checkpoints
    epochs = sorted(ckpts.glob("epoch*.pt"), key=lambda p: int(p.stem[5:] or 0))
    named = [("init", ckpts / "init.pt")] if (ckpts / "init.pt").is_file() else []
    return named + [(p.stem, p) for p in epochs if p.stem[5:].isdigit()]


def draw_pca(model: nn.Module, cfg: Config, run_dir: Path | None) -> tuple[list[Direction], dict]:
    """PCA directions of the run's trajectory, scaled so the trajectory lies in [-1, 1]^dims
    with a margin (``PCA_MARGIN``), and what the result keeps about them."""
    from ..train.checkpoint import load_checkpoint

    if run_dir is None:
        raise VitscopeError("landscape.directions=pca needs a run directory (its checkpoints)")
    points = trajectory(run_dir)
    if len(points) < cfg.dims + 1:
        raise VitscopeError(
            f"landscape.directions=pca needs at least {cfg.dims + 1} checkpoints of the "
            f"trajectory in {run_dir / 'checkpoints'} (init.pt, epochN.pt), found "
            f"{len(points)}; train with --set train.snapshot_every=1"
        )
    final = _perturbed_vector(model)
    flats = [_perturbed_vector(model, load_checkpoint(p)["model"]) for _, p in points]
    dirs, explained, coords = pca_directions(final, flats, cfg.dims)
    scale = PCA_MARGIN * float(np.abs(coords).max()) or 1.0
    out = [unflatten_direction(model, scale * d) for d in dirs]  # zero off the perturbed ones
    info = {
        "explained_variance": explained,
        "trajectory": np.vstack([coords / scale, np.zeros((1, cfg.dims))]),  # ends at θ0
        "scale": np.asarray(scale),
    }
    return out + [{}] * (2 - cfg.dims), {**info, "checkpoints": [n for n, _ in points]}


def draw_eigen(
    model: nn.Module, cfg: Config, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[list[Direction], dict]:
    """The top ``dims`` eigenvectors (largest algebraic eigenvalues) of the Hessian of the
    landscape's own objective (NLL + L2 over its batches, eval mode) at θ0, by vitscope's
    Lanczos, each scaled to the length of a filter-normalised random direction so the grid's
    units compare with ``random``'s. Only ``l2="squared"`` (a ``wd I`` shift) or ``none``."""
    from ..curvature import HessianOperator, lanczos, unflatten

    if cfg.l2 == "official":
        raise ConfigError("landscape.directions=eigen needs landscape.l2 squared or none")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    n = sum(len(t) for _, t in batches)

    def loss() -> torch.Tensor:
        return sum(soft_cross_entropy(model(x), t) * len(t) for x, t in batches) / n

    shift = cfg.weight_decay if cfg.l2 == "squared" else 0.0
    with HessianOperator(loss, params, l2_shift=shift or 0.0) as op:
        found = lanczos(op, k=cfg.dims, max_iter=min(cfg.eigen_max_iter, op.dim), which="LA",
                        seed=cfg.seed, return_vectors=True)  # fmt: skip
    vecs = found.eigenvectors.T  # (dims, P), unit
    ref = draw_directions(model, 1, "filter", cfg.seed)[0]
    length = float(torch.sqrt(sum((t.double() ** 2).sum() for t in ref.values())))
    out = [
        {
            name: t.to(p.device, p.dtype)
            for (name, p), t in zip(named, unflatten(length * v, params))
        }
        for v in vecs
    ]
    info = {
        "eigenvalues": found.eigenvalues.numpy(),
        "residuals": found.residuals.numpy(),
        "scale": np.asarray(length),
        "eigen_matvecs": np.asarray(found.num_matvecs),
    }
    return out + [{}] * (2 - cfg.dims), info


def endpoint_path(endpoint: str, run_dir: Path | None) -> Path:
    """The weights file ``landscape.endpoint`` names: a checkpoint of the analysed run
    (``init``, ``best``, ``last``, ``warmup``, ``epochN``), another run's folder (its
    ``checkpoints/best.pt``) or a file."""
    where = f"landscape.endpoint={endpoint}"
    if CHECKPOINT_NAME.match(endpoint):
        if run_dir is None:
            raise VitscopeError(f"{where} names a run's checkpoint: analyse a run directory")
        path = RunDir(run_dir).checkpoint(endpoint)
        if not path.is_file():
            hint = " (train with --set train.snapshot_every=1)" if endpoint[:5] == "epoch" else ""
            raise VitscopeError(f"{where}: {path} does not exist{hint}")
        return path
    path = Path(endpoint).expanduser()
    if path.is_dir():
        best = RunDir(path).checkpoint("best")
        if not best.is_file():
            raise VitscopeError(f"{where}: {path} holds no checkpoints/best.pt")
        return best
    if not path.is_file():
        raise VitscopeError(
            f"{where} is neither a checkpoint of the run (init, best, last, warmup, epochN), "
            "a run folder nor a weights file"
        )
    return path


def endpoint_state(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the weights at ``path`` under ``model``'s names, loaded
    strictly into a copy of ``model`` (or of a foreign model's network, for a file saved from
    it), on ``model``'s device and dtypes."""
    import copy

    from ..foreign import ForeignModel, state_dict_of
    from ..foreign.load import load_state

    state = state_dict_of(path)
    target, prefix = model, ""
    if isinstance(model, ForeignModel) and not set(state) & set(model.state_dict()):
        target, prefix = model.net, "net."  # a file of the network alone
    other = copy.deepcopy(target)
    load_state(other, state, path, "the analysed model (landscape.endpoint)")
    named = [*other.named_parameters(), *other.named_buffers()]
    return {prefix + n: t.detach() for n, t in named}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running mean and variance at the current parameters: the
    statistics are reset and averaged over ``inputs`` (each batch weighted equally, as
    ``torch.optim.swa_utils.update_bn`` does), with only the BatchNorm layers in training
    mode, so dropout and stochastic depth stay off and the estimate is deterministic."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    try:
        for x in inputs:
            model(x)
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)


class Interpolation:
    """Places a model at ``(1-α)·θa + α·θb`` (``torch.lerp``: θa at α = 0 and θb at α = 1
    bit-exactly), its buffers from the nearer end and, with ``buffers="recompute"``, its
    BatchNorm statistics re-estimated on ``inputs``."""

    def __init__(
        self,
        a: dict[str, torch.Tensor],
        b: dict[str, torch.Tensor],
        buffers: str,
        inputs: list[torch.Tensor],
    ) -> None:
        self.a, self.b, self.buffers, self.inputs = a, b, buffers, inputs

    @torch.no_grad()
    def place(self, model: nn.Module, alpha: float) -> None:
        for name, p in model.named_parameters():
            a, b = self.a[name], self.b.get(name, self.a[name])
            p.copy_(a if alpha == 0 else b if alpha == 1 else torch.lerp(a, b, alpha))
        near = self.a if alpha <= 0.5 else self.b
        for name, buf in model.named_buffers():
            buf.copy_(near.get(name, self.a[name]))
        if self.buffers == "recompute":
            recompute_batchnorm(model, self.inputs)


def interpolation_axis(cfg: Config) -> np.ndarray:
    """α: ``num_points`` values over ``alpha_range`` with 0 and 1 put on the grid exactly (a
    value within 1e-9 of the range's width is moved there, else they are added)."""
    lo, hi = cfg.alpha_range
    xs = np.linspace(lo, hi, cfg.num_points) if cfg.num_points > 1 else np.array([lo])
    for v in (0.0, 1.0):
        near = np.abs(xs - v) <= 1e-9 * (hi - lo)
        if near.any():
            xs[near] = v
        else:
            xs = np.sort(np.append(xs, v))
    return xs


def barrier(xs: np.ndarray, z: np.ndarray) -> float | None:
    """The loss barrier of linear interpolation (Frankle et al. 2020): the largest excess of
    ``z(α)`` over the straight line between ``z(0)`` and ``z(1)``, over the grid's α in
    [0, 1] (a lower bound of the supremum over the segment); None if an end is missing."""
    i0, i1 = int(np.flatnonzero(xs == 0)[0]), int(np.flatnonzero(xs == 1)[0])
    inside = (xs >= 0) & (xs <= 1) & np.isfinite(z)
    if not (np.isfinite(z[i0]) and np.isfinite(z[i1])):
        return None
    line = (1 - xs) * z[i0] + xs * z[i1]
    return float(np.max(z[inside] - line[inside]))


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
def restore(model: nn.Module, theta0: Direction, buffers: Direction | None = None) -> None:
    """Copy θ0 back into the parameters, and ``buffers`` into the buffers (bit-exact)."""
    for name, p in model.named_parameters():
        p.copy_(theta0[name])
    for name, b in model.named_buffers() if buffers is not None else ():
        b.copy_(buffers[name])


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
    interpolation: Interpolation | None = None,
) -> dict[str, float]:
    """NLL, accuracy, L2 and ``loss = NLL + L2`` at θ0 + a·d1 + b·d2 (with an
    ``interpolation``: at its α = a instead).

    The model should be in eval mode. It is left at the point: the caller restores θ0 (as
    :func:`run` does). ``cfg.weight_decay`` must be resolved (not None) unless ``l2="none"``.
    NLL is the sample mean of the soft-target cross-entropy over ``batches``; accuracy is
    against the argmax of the (mixed) soft targets, as in the released grids.
    """
    if cfg.weight_decay is None and cfg.l2 != "none":
        raise ConfigError("landscape.weight_decay must be resolved before evaluating a point")
    if interpolation is not None:
        interpolation.place(model, a)
    else:
        set_point(model, theta0, d1, d2, a, b)
    nll = torch.zeros((), dtype=torch.float64)
    correct, n = 0, 0
    per_batch = []
    for x, t in batches:
        logits = model(x)
        batch_nll = soft_cross_entropy(logits, t).double().cpu()
        per_batch.append(float(batch_nll))
        nll += batch_nll * len(t)
        correct += int((logits.argmax(1) == t.argmax(1)).sum())
        n += len(t)
    nll_mean = float(nll) / n
    l2 = float(l2_penalty(model.parameters(), cfg.l2, cfg.weight_decay or 0.0, dtype=torch.float64))
    return {
        "nll": nll_mean,
        "acc": correct / n,
        "l2": l2,
        "loss": nll_mean + l2,
        "nll_batches": per_batch,
    }


# ---------------------------------------------------------------------------------------------
# the grid and its resume files


def grid_axes(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """``xs`` and ``ys`` (``ys = [0]`` for ``dims=1``); the middle entry is exactly 0 (for
    ``directions=interpolate``: ``xs`` is :func:`interpolation_axis`)."""
    if cfg.directions == "interpolate":
        return interpolation_axis(cfg), np.zeros(1)
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
    nll_batches: np.ndarray  # (ys, xs, batches)

    @classmethod
    def empty(cls, shape: tuple[int, int], batches: int) -> _Grid:
        return cls(
            {k: np.full(shape, np.nan) for k in GRIDS},
            np.zeros(shape, dtype=bool),
            np.full((*shape, batches), np.nan),
        )

    def record(self, j: int, i: int, point: dict[str, float]) -> None:
        """Store one point's ``loss``, ``nll``, ``acc``, ``l2``, ``seconds`` and per-batch NLL
        (a point saved before vitscope kept it has NaN there)."""
        values = [float(point[k]) for k in GRIDS]  # all or nothing
        per_batch = [float(v) for v in point.get("nll_batches") or []]
        for k, v in zip(GRIDS, values):
            self.values[k][j, i] = v
        if len(per_batch) == self.nll_batches.shape[-1]:
            self.nll_batches[j, i] = per_batch
        self.done[j, i] = True

    def todo(self) -> list[tuple[int, int]]:
        """The missing points ``(j, i)``, y outer and x inner."""
        return [(j, i) for j, i in np.ndindex(*self.done.shape) if not self.done[j, i]]


def _partial_key(cfg: Config, data: TrainData, model: nn.Module, far: Direction | None) -> dict:
    """What a finished point depends on: the config, the data, θ0 and an interpolation's far
    end (the device does not)."""
    return {
        "config": {k: v for k, v in config_dict(cfg).items() if k != "device"},
        "data": {"images": len(data), "transform": data.transform},
        "state_sha256": state_digest(model),
        **({"endpoint_sha256": state_digest(far)} if far is not None else {}),
    }


INFO = ("explained_variance", "trajectory", "scale", "eigenvalues", "residuals", "eigen_matvecs")


def _directions(
    model: nn.Module, cfg: Config, data: TrainData, ctx: Context, batches, far: Direction | None
) -> tuple[list[Direction], dict, dict]:
    """d1, d2, what the result keeps about them (PCA, eigen) and the points already
    finished: from ``ctx.store`` if it holds this run's. ``far``: an interpolation's far end."""
    if ctx.store is None:
        dirs, info = _draw(model, cfg, ctx, batches, far)
        return dirs, info, {}

    def fresh() -> dict[str, np.ndarray]:
        dirs, info = _draw(model, cfg, ctx, batches, far)
        flat = {k: flatten_direction(model, d).numpy() for k, d in zip(("d1", "d2"), dirs)}
        return {**flat, **{k: np.asarray(v) for k, v in info.items() if k in INFO}}

    done, arrays = ctx.store.resume(_partial_key(cfg, data, model, far), fresh)
    dirs = [unflatten_direction(model, arrays[k]) for k in ("d1", "d2")]
    info = {k: arrays[k] for k in INFO if k in arrays}
    if cfg.directions == "pca":  # the names follow from the run folder, as in draw_pca
        info["checkpoints"] = [n for n, _ in trajectory(ctx.workdir.parent)]
    return dirs, info, done


def _run_dir(ctx: Context) -> Path | None:
    """The run folder of the results folder the analysis writes to."""
    return ctx.workdir.parent if ctx.workdir is not None else None


def _draw(
    model: nn.Module, cfg: Config, ctx: Context, batches, far: Direction | None
) -> tuple[list[Direction], dict]:
    """d1 and d2 (``{}`` for ``dims=1``) of ``cfg.directions``, and what to keep of them (an
    interpolation's d1 is ``θ_far - θ0``, over every parameter)."""
    if far is not None:
        d1 = {n: far[n] - p.detach() for n, p in model.named_parameters()}
        return [{n: t for n, t in d1.items() if torch.any(t != 0)}, {}], {}
    if cfg.directions == "pca":
        return draw_pca(model, cfg, _run_dir(ctx))
    if cfg.directions == "eigen":
        return draw_eigen(model, cfg, batches)
    return draw_directions(model, cfg.dims, cfg.norm, cfg.seed) + [{}] * (2 - cfg.dims), {}


# ---------------------------------------------------------------------------------------------
# summaries and the result


def ring_summaries(xs: np.ndarray, ys: np.ndarray, grid: dict[str, np.ndarray]) -> list[dict]:
    """Mean NLL, loss and accuracy over L∞ rings ``r = 0, 0.1, 0.2, ...``
    (``docs/methods/landscape.md``'s table).

    Ring ``r`` holds the points whose L∞ radius ``max(|a|, |b|)`` lies in
    ``(r - 0.05, r + 0.05]`` (ring 0.1 also takes anything nearer than that, ring 0 is the
    centre alone); means are over finite entries, as for the released CSVs. Empty rings (a
    coarse grid) are left out.
    """
    ring = ring_index(xs, ys)
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
    info: dict | None = None,
) -> Result:
    g = grid.values
    info = info or {}
    interpolate = cfg.directions == "interpolate"
    j0, i0 = int(np.flatnonzero(ys == 0)[0]), int(np.flatnonzero(xs == 0)[0])
    names = [n for n, _ in model.named_parameters()]
    values = {
        "coords": {"xs": xs.tolist(), "ys": ys.tolist()},
        **{k: _nested(g[k]) for k in ("loss", "nll", "acc", "l2", "seconds")},
        "center": {k: float(g[k][j0, i0]) for k in ("loss", "nll", "acc", "l2")},
        "rings": [] if interpolate else ring_summaries(xs, ys, g),  # no radius along a line
        "dims": 1 if interpolate else cfg.dims,
        "norm": cfg.norm if cfg.directions == "random" else None,
        "l2_mode": cfg.l2,
        "weight_decay": cfg.weight_decay,
        "bn_mode": f"interpolate: {cfg.buffers}" if interpolate else "eval",
        "operator": {
            "batches": cfg.batches,
            "batch_size": cfg.batch_size,
            "images_per_point": cfg.batches * min(cfg.batch_size, len(data)),
            "seed": cfg.seed,
            "transform": data.transform,
        },
        "seconds_per_point": float(np.nanmean(g["seconds"])),
        "directions": {
            "kind": cfg.directions,
            "parameters": names,
            "perturbed": [n for n in names if n in dirs[0]],
            "excluded": EXCLUDE.pattern if cfg.directions in ("random", "pca") else None,
        },
    }
    if interpolate:
        i1 = int(np.flatnonzero(xs == 1)[0])
        d1 = dirs[0]
        values[Keys.INTERPOLATE] = {
            "endpoint": cfg.endpoint,
            "file": info.get("file"),
            "buffers": cfg.buffers,
            "ends": [{k: float(g[k][0, i]) for k in ("loss", "nll", "acc")} for i in (i0, i1)],
            "barrier": {k: barrier(xs, g[k][0]) for k in ("loss", "nll")},
            "distance": float(torch.sqrt(sum((t.double() ** 2).sum() for t in d1.values()))),
        }
    if cfg.directions == "pca":
        values[Keys.PCA] = {
            "explained_variance": np.asarray(info["explained_variance"]).tolist(),
            "checkpoints": list(info.get("checkpoints", [])),
            "trajectory": np.asarray(info["trajectory"]).tolist(),
            "scale": float(info["scale"]),
        }
    if cfg.directions == "eigen":
        values[Keys.EIGEN] = {
            "eigenvalues": np.asarray(info["eigenvalues"]).tolist(),
            "residuals": np.asarray(info["residuals"]).tolist(),
            "scale": float(info["scale"]),
            "matvecs": int(info["eigen_matvecs"]),
        }
    arrays = {
        "xs": xs,
        "ys": ys,
        **{k: g[k] for k in ("loss", "nll", "acc", "l2", "seconds")},
        Keys.NLL_BATCHES: grid.nll_batches,
        "d1": flatten_direction(model, dirs[0]).numpy(),
        "d2": flatten_direction(model, dirs[1] if len(dirs) > 1 else {}).numpy(),
    }
    if cfg.directions == "pca":
        arrays[Keys.TRAJECTORY] = np.asarray(info["trajectory"])
    return Result("landscape", values=values, arrays=arrays, config=config_dict(cfg))


# ---------------------------------------------------------------------------------------------
# the analysis


def run(
    model: nn.Module, data: TrainData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """The loss landscape of ``model`` around its current parameters θ0.

    Args:
        model: any ``nn.Module`` on ``cfg.device``; put in eval mode for the run, then back in
            its former mode, with θ0 restored bit-exactly (also when interrupted).
        data: augmented training batches (:class:`TrainData`).
        cfg: settings; ``weight_decay=None`` takes ``data.weight_decay``.
        ctx: ``ctx.store`` keeps the directions and finished points; a rerun resumes the grid.

    Under torchrun the points are sharded over the ranks; every rank returns the whole grid.

    Returns:
        Result ``landscape``: grids ``loss``, ``nll``, ``acc``, ``l2``, ``seconds`` (rows y,
        columns x), ``coords``, ``center``, ``rings``; arrays ``xs``, ``ys``, the grids and the
        flattened directions ``d1``, ``d2`` (``named_parameters`` order).
    """
    if cfg.weight_decay is None:
        cfg = replace(cfg, weight_decay=float(data.weight_decay))
    xs, ys = grid_axes(cfg)
    grid = _Grid.empty((len(ys), len(xs)), cfg.batches)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers0 = {n: b.detach().clone() for n, b in model.named_buffers()}
    with eval_mode(model):
        try:
            dtype = next(iter(theta0.values())).dtype if theta0 else torch.float32
            batches = make_batches(data, cfg, dtype)
            far = interp = path = None
            if cfg.directions == "interpolate":
                path = endpoint_path(cfg.endpoint or "", _run_dir(ctx))
                far = endpoint_state(model, path)
                inputs = [x for x, _ in batches]
                interp = Interpolation({**theta0, **buffers0}, far, cfg.buffers, inputs)
            dirs, drawn, done = _directions(model, cfg, data, ctx, batches, far)
            info = {**drawn, **({"file": str(path)} if path is not None else {})}
            for (j, i), point in done.items():
                grid.record(j, i, point)

            def compute(point: tuple[int, int]) -> dict[str, float]:
                j, i = point
                t0 = time.perf_counter()
                a, b = float(xs[i]), float(ys[j])
                out = evaluate_point(model, batches, theta0, *dirs, a, b, cfg, interp)
                return {**out, "seconds": time.perf_counter() - t0}

            save = ctx.store.add if ctx.store is not None else None
            for (j, i), values in map_items(grid.todo(), compute, save).items():
                grid.record(j, i, values)
        finally:
            restore(model, theta0, buffers0)
    return _result(model, cfg, data, xs, ys, dirs, grid, info)


def summary(result: Result) -> dict[str, float | None]:
    """NLL + L2 at θ0 and its mean rise on the ring at radius 0.5; for an interpolation, NLL +
    L2 at both ends and the barrier between them."""
    interp = result.values.get(Keys.INTERPOLATE)
    if interp:
        return {
            "NLL + L2 at α = 0": interp["ends"][0]["loss"],
            "NLL + L2 at α = 1": interp["ends"][1]["loss"],
            "barrier (NLL + L2)": interp["barrier"]["loss"],
        }
    center = result.values[Keys.CENTER]["loss"]
    ring = next((r for r in result.values[Keys.RINGS] if abs(r["r"] - 0.5) < 1e-9), None)
    rise = ring["loss"] - center if ring and ring["loss"] is not None else None
    return {"NLL + L2 at θ0": center, "rise at r = 0.5": rise}


_FIGS = "vitscope.report.landscape_figures"
ANALYSIS = Analysis(
    name="landscape",
    config=Config,
    run=run,
    split="train",  # augmented training batches, as in the paper
    resumable=True,
    default_checkpoint="best",
    figures=(  # a 1-D result (dims=1, interpolate) gets its curve alone
        FigureSpec("landscape_contour", f"{_FIGS}:draw_contour", (8, 3.6), when=f"{_FIGS}:is_2d"),
        FigureSpec("landscape_surface", f"{_FIGS}:draw_surface", (8, 3.6), when=f"{_FIGS}:is_2d"),
        FigureSpec("landscape_1d", f"{_FIGS}:draw_1d", (8, 3.6)),
    ),
    summary=summary,
    compare="vitscope.report.compare:landscape",
    keys=Keys,
    description="Loss landscape (NLL + L2), random directions (Fig 1a), PCA, eigen or between "
    "two models",
    order=60,
)
