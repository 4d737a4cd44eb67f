"""Hessian max-eigenvalue spectra (Park & Kim 2022, Fig 1c, Fig 4, C.5-C.7;
``docs/methods/hessian.md``, ``docs/methods/decisions.md``).

Per augmented training mini-batch ``i`` (the run's training transform, Mixup/CutMix soft
targets included, its randomness frozen by :meth:`TrainData.batch`), the Hessian of::

    L_i(θ) = NLL_i(θ) + L2(θ),    NLL_i = soft_cross_entropy(model(x_i), t_i)

with respect to the selected parameters θ, in eval mode (BatchNorm running statistics
frozen) unless ``bn_mode="train"``. L2 (``docs/methods/decisions.md#decisions``) is

* ``squared``: ``0.5·wd·Σθ²``, whose Hessian is ``wd·I``: added analytically as the
  operator's ``l2_shift`` (every eigenvalue moves by exactly ``wd``);
* ``official``: ``wd·Σ_p ‖θ_p‖₂`` (the released landscape code), inside the autograd graph;
  its Hessian ``wd (I - u uᵀ) / ‖θ_p‖`` per tensor is not a multiple of ``I``;
* ``none``.

The paper (issue #12) takes PyHessian's top-5 eigenvalues by magnitude per mini-batch
(power iteration with deflation) and draws the density of all of them. Here each batch gets
one Lanczos run (:func:`vitscope.curvature.lanczos`, ``which="LM"``): the same top-k by
magnitude, plus the largest and most negative Ritz values of the same Krylov space, with
about 4x fewer Hessian-vector products (``docs/methods/decisions.md``). The first
``density_batches`` batches
also get an SLQ spectral density (Ghorbani et al. 2019) and the first ``trace_batches`` a
Hutchinson trace.

Every batch is independent of the others (:func:`analyze_batch`), so under torchrun the
batches are sharded over the ranks (:mod:`.sharding`) and every rank returns the whole result.
With a store (``ctx.store``, :mod:`.store`) each finished batch is saved at once, rank
0's in ``hessian.partial.json`` and rank r's in ``hessian.partial.rank<r>.jsonl``, and a
rerun with the same config, data and model state, at any world size, skips them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import torch
from torch import nn

from ..curvature import HessianOperator, hutchinson_trace, lanczos, slq_density
from ..data.augment import soft_cross_entropy
from ..errors import ConfigError, VitscopeError
from ..models.layers import math_attention
from ..results import Result, config_dict
from .base import TrainData, eval_mode
from .keys import HessianKeys as Keys
from .objective import L2_MODES, l2_penalty
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec
from .store import state_digest

BN_MODES = ("eval", "train")


@dataclass(frozen=True)
class Config:
    """Hessian-spectrum settings.

    Defaults are sized for a CPU: on ``resnet_tiny`` / ``vit_tiny`` (0.3M parameters, batch
    64, one thread) a Hessian-vector product takes about 0.4 s and a top-5 Lanczos run
    20-35 of them; the defaults spend about 200-250 products (4 Lanczos runs, one SLQ
    density of 2 x 40, one 30-probe trace): 100 s for ``vitscope analyze RUN --only
    hessian``. The paper took the top 5 of every mini-batch of (a fraction of) the training
    set, batch size 16 [UNVERIFIED]: raise ``batches`` on a GPU. Lanczos keeps its whole
    basis, allocated 8 vectors at a time as it grows (``m x num_params`` numbers after ``m``
    products, rounded up to 8)."""

    batches: int = 4  # mini-batches, each with its own Hessian (indices 0 .. batches-1)
    batch_size: int = 64  # images per mini-batch
    top_k: int = 5  # eigenvalues of largest magnitude per batch (paper: 5)
    tol: float = 1e-3  # relative Ritz-residual tolerance of Lanczos (PyHessian's tol: 1e-3)
    max_iter: int = 100  # most Hessian-vector products per Lanczos run (Krylov dimension)
    l2: str = "squared"  # squared: 0.5·wd·Σθ² (Hessian wd·I) | official: wd·Σ_p‖θ_p‖ | none
    weight_decay: float | None = None  # L2 coefficient; None: the run's weight decay
    bn_mode: str = "eval"  # eval: frozen running statistics | train: batch statistics
    # fnmatch pattern(s) over parameter names ("head.*", or several comma-separated or as a
    # tuple); the Hessian is w.r.t. the matching parameters only. None: all parameters
    params: str | tuple[str, ...] | None = None
    density_batches: int = 1  # the first this many batches also get an SLQ density
    slq_probes: int = 2  # random probes per SLQ density
    slq_steps: int = 40  # Lanczos steps (quadrature nodes) per probe (PyHessian: 100)
    trace_batches: int = 1  # the first this many batches also get a Hutchinson trace
    trace_samples: int = 30  # Rademacher probes (one product each) per trace
    seed: int = 0  # seeds the batches, the Lanczos start vectors and the probes
    # start batches 1.. from batch 0's top-k Ritz vectors (plus a little of the seeded
    # random vector) instead of the random vector alone: fewer products per batch
    warm_start: bool = False
    device: str = "cpu"  # where the batches go (the model must already be there)

    def __post_init__(self) -> None:
        for name in ("batches", "batch_size", "top_k", "max_iter", "slq_probes", "slq_steps"):
            _check_int(name, getattr(self, name), 1)
        for name in ("density_batches", "trace_batches", "seed"):
            _check_int(name, getattr(self, name), 0)
        _check_int("trace_samples", self.trace_samples, 2)
        if self.max_iter < self.top_k:
            raise ConfigError(
                f"hessian.max_iter must be >= top_k ({self.top_k}), got {self.max_iter}"
            )
        if not (isinstance(self.tol, (int, float)) and 0 < self.tol < 1):
            raise ConfigError(f"hessian.tol must be in (0, 1), got {self.tol!r}")
        if self.l2 not in L2_MODES:
            raise ConfigError(f"hessian.l2 must be one of {', '.join(L2_MODES)}, got {self.l2!r}")
        if self.bn_mode not in BN_MODES:
            raise ConfigError(
                f"hessian.bn_mode must be one of {', '.join(BN_MODES)}, got {self.bn_mode!r}"
            )
        wd = self.weight_decay
        if wd is not None and not (isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0):
            raise ConfigError(f"hessian.weight_decay must be >= 0 or null, got {wd!r}")
        object.__setattr__(self, "params", _patterns(self.params))
        if not (isinstance(self.device, str) and self.device):
            raise ConfigError(f"hessian.device must be a device name, got {self.device!r}")

    @property
    def patterns(self) -> tuple[str, ...] | None:
        """The parameter patterns as a tuple (None: all parameters)."""
        return None if self.params is None else tuple(self.params.split(","))


def _check_int(name: str, value: Any, low: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ConfigError(f"hessian.{name} must be an integer >= {low}, got {value!r}")


def _patterns(params: str | Sequence[str] | None) -> str | None:
    """Canonical form of ``Config.params``: comma-joined patterns (round-trips via YAML/CLI)."""
    if params is None:
        return None
    items = params.split(",") if isinstance(params, str) else list(params)
    if not all(isinstance(p, str) for p in items):
        raise ConfigError(f"hessian.params must be pattern strings, got {params!r}")
    items = [p.strip() for p in items]
    if not items or not all(items):
        raise ConfigError(f"hessian.params has an empty pattern: {params!r}")
    return ",".join(items)


# ---------------------------------------------------------------------------------------------
# the operator of one batch


def select_params(
    model: nn.Module, patterns: str | Sequence[str] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs the Hessian is taken over, in ``named_parameters`` order.

    Only trainable parameters (``requires_grad``) take part; with ``patterns`` (a sequence,
    or one comma-separated string), only those whose name matches one of them
    (:func:`fnmatch.fnmatchcase`). A pattern that matches nothing raises, listing a few
    valid names.
    """
    if isinstance(patterns, str):
        patterns = _patterns(patterns).split(",")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise VitscopeError("hessian: the model has no trainable parameters")
    if patterns is None:
        return named
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n, _ in named):
            some = ", ".join(n for n, _ in named[:4])
            raise ConfigError(f"hessian.params: {pat!r} matches no parameter (names: {some}, ...)")
    return [(n, p) for n, p in named if any(fnmatchcase(n, pat) for pat in patterns)]


def weight_decay(cfg: Config, data: TrainData) -> float:
    """The L2 coefficient in use: ``cfg.weight_decay``, else the run's; 0 for ``l2="none"``."""
    if cfg.l2 == "none":
        return 0.0
    wd = cfg.weight_decay if cfg.weight_decay is not None else data.weight_decay
    return float(wd or 0.0)


@contextmanager
def analysis_state(
    model: nn.Module, bn_mode: str, params: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Put ``model`` in the state its Hessian is taken in; restore everything afterwards.

    Inside: every module in eval mode (no Dropout/DropPath), except normalisation layers
    with running statistics in train mode when ``bn_mode="train"`` (batch statistics);
    parameters outside ``params`` do not require grad (the double backward then stops where
    the selected parameters start); attention on the explicit ``softmax(QKᵀ)V`` path, which
    has a double backward. Afterwards the train/eval flag of every submodule, every
    ``requires_grad`` flag, every ``.grad`` and every buffer (the running statistics a
    train-mode forward updates) are as before, bit for bit.
    """
    flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    chosen = {id(p) for p in params}
    with eval_mode(model):
        yield from _inside(model, bn_mode, flags, buffers, chosen)


def _inside(model, bn_mode, flags, buffers, chosen) -> Iterator[None]:
    """The body of :func:`analysis_state` inside eval mode: BN mode, grad flags, restore."""
    try:
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.train()
        for p, _, _ in flags:
            if id(p) not in chosen:
                p.requires_grad_(False)
        with math_attention(model):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, requires_grad, grad in flags:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _seeds(cfg: Config, index: int) -> dict[str, int]:
    """Seeds of batch ``index``'s Lanczos start vector, SLQ probes and trace probes.

    Disjoint blocks of 10⁶ seeds per use (probes ``j`` take ``seed + j``), so no two random
    vectors of any batch share a seed, and each batch's seeds depend on its index alone.
    """
    base = ((cfg.seed * 1_000_003 + index) * 3_000_000) % 2**62
    return {"lanczos": base, "slq": base + 1_000_000, "trace": base + 2_000_000}


#: weight of the seeded random vector in a warm start (the Ritz vectors' sum has norm 1):
#: it keeps every eigendirection in the Krylov space, so an eigenvalue that was not among
#: batch 0's top k can still be found
WARM_NOISE = 0.1


def warm_vector(start: torch.Tensor, seed: int) -> torch.Tensor:
    """The start vector of a warm-started batch: the normalised sum of ``start``'s columns
    (the pilot's Ritz vectors) plus :data:`WARM_NOISE` times a seeded random unit vector."""
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same on every device
    noise = torch.randn(start.shape[0], generator=g, dtype=torch.float64).to(start.device)
    base = start.sum(1, dtype=torch.float64)
    v = base / base.norm() + WARM_NOISE * noise / noise.norm()
    return v.to(start.dtype)


def analyze_batch(
    model: nn.Module,
    data: TrainData,
    cfg: Config,
    index: int,
    *,
    warm: torch.Tensor | None = None,
    vectors_out: list | None = None,
) -> dict:
    """Top-k (by magnitude) Hessian eigenvalues of mini-batch ``index``, and optional extras.

    Independent of every other batch (its data, seeds and result depend on ``index`` and,
    warm-started, on the pilot batch 0 only), so batches can run on different ranks. The
    model's state is untouched afterwards. ``warm``: the pilot's Ritz vectors ``(dim, k)``
    to start Lanczos from (:func:`warm_vector`); ``vectors_out``: receives this batch's.

    Returns:
        JSON-able record: ``index``, ``num_samples``, ``loss`` (NLL + L2), ``nll``, ``l2``;
        Lanczos ``eigenvalues`` (magnitude descending), their ``residuals``, ``largest`` /
        ``smallest`` Ritz values and their residuals, ``num_matvecs``, ``converged``,
        ``lanczos_seconds``; ``density`` (SLQ ``nodes``/``weights`` per probe) and ``trace``
        (``estimate``, ``std_error``, ``samples``) or None; ``matvecs_all`` and ``seconds``
        for the whole batch.
    """
    start = time.perf_counter()
    params = [p for _, p in select_params(model, cfg.patterns)]
    wd = weight_decay(cfg, data)
    x, t = data.batch(index, cfg.batch_size, seed=cfg.seed, device=cfg.device)
    x, t = x.to(params[0].dtype), t.to(params[0].dtype)  # (B, C, H, W), (B, K)
    seeds = _seeds(cfg, index)
    parts: dict[str, float] = {}

    def loss() -> torch.Tensor:
        nll = soft_cross_entropy(model(x), t)
        # the squared term enters as the operator's analytic shift: only its value is needed
        with torch.set_grad_enabled(cfg.l2 == "official"):
            penalty = l2_penalty(params, cfg.l2, wd)
        parts["nll"], parts["l2"] = float(nll.detach()), float(penalty.detach())
        return nll + penalty if cfg.l2 == "official" else nll

    with analysis_state(model, cfg.bn_mode, params):
        shift = wd if cfg.l2 == "squared" else 0.0
        with HessianOperator(loss, params, l2_shift=shift) as op:
            t0 = time.perf_counter()
            v0 = None if warm is None else warm_vector(warm, seeds["lanczos"])
            lz = lanczos(op, k=cfg.top_k, max_iter=cfg.max_iter, tol=cfg.tol,
                         seed=seeds["lanczos"], v0=v0,
                         return_vectors=vectors_out is not None)  # fmt: skip
            if vectors_out is not None:
                vectors_out.append(lz.eigenvectors)
            lanczos_seconds = time.perf_counter() - t0
            density = trace = None
            if index < cfg.density_batches:
                slq = slq_density(
                    op, num_probes=cfg.slq_probes, num_steps=cfg.slq_steps, seed=seeds["slq"]
                )
                density = {
                    "nodes": slq.nodes.tolist(),
                    "weights": slq.weights.tolist(),
                    "num_matvecs": slq.num_matvecs,
                }
            if index < cfg.trace_batches:
                tr = hutchinson_trace(op, num_matvecs=cfg.trace_samples, seed=seeds["trace"])
                trace = {
                    "estimate": tr.estimate,
                    "std_error": tr.std_error,
                    "samples": tr.samples.tolist(),
                }
            matvecs_all = op.num_matvecs
    return {
        "index": index,
        "num_samples": len(t),
        "loss": parts["nll"] + parts["l2"],
        "nll": parts["nll"],
        "l2": parts["l2"],
        "eigenvalues": lz.eigenvalues.tolist(),
        "residuals": lz.residuals.tolist(),
        "largest": lz.largest,
        "smallest": lz.smallest,
        "largest_residual": float(lz.ritz_residuals[-1]),  # Ritz values are ascending
        "smallest_residual": float(lz.ritz_residuals[0]),
        "num_matvecs": lz.num_matvecs,
        "converged": lz.converged,
        "warm_start": warm is not None,
        "lanczos_seconds": lanczos_seconds,
        "density": density,
        "trace": trace,
        "matvecs_all": matvecs_all,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# resume files


def partial_key(model: nn.Module, data: TrainData, cfg: Config) -> dict:
    """What a finished batch depends on: config, data and model state.

    Neither the device nor ``batches`` is part of it: a batch's record depends on its index
    alone, so a rerun with more batches keeps the finished ones.
    """
    labels = data.labels.detach().cpu().contiguous().numpy().tobytes()
    return {
        "config": {k: v for k, v in config_dict(cfg).items() if k not in ("device", "batches")},
        "data": {
            "images": len(data),
            "labels_sha256": hashlib.sha256(labels).hexdigest(),
            "num_classes": data.num_classes,
            "weight_decay": data.weight_decay,
            "transform": data.transform,
        },
        "model_sha256": state_digest(model),
    }


# ---------------------------------------------------------------------------------------------
# the result


def summarize(records: Sequence[dict]) -> dict:
    """Spectrum summary over every batch's top-k: negative fraction, extremes, median.

    ``top1_mean`` averages each batch's eigenvalue of largest magnitude (signed);
    ``largest_max`` / ``smallest_min`` are the extreme Ritz values over all batches.
    """
    eigs = np.array([v for r in records for v in r["eigenvalues"]], dtype=float)
    largest = [r["largest"] for r in records]
    smallest = [r["smallest"] for r in records]
    return {
        "num_eigenvalues": int(eigs.size),
        "negative_fraction": float((eigs < 0).mean()),
        "max": float(eigs.max()),
        "min": float(eigs.min()),
        "median": float(np.median(eigs)),
        "top1_mean": float(np.mean([r["eigenvalues"][0] for r in records])),
        "largest_max": max(largest),
        "smallest_min": min(smallest),
        "all_converged": all(r["converged"] for r in records),
    }


def build_result(records: Sequence[dict], cfg: Config, operator: dict, resumed: int = 0) -> Result:
    """The ``hessian`` Result from per-batch records (in batch order)."""
    k = cfg.top_k
    eig = np.full((len(records), k), np.nan)
    for i, r in enumerate(records):
        eig[i, : len(r["eigenvalues"])] = r["eigenvalues"]
    arrays = {
        "eigenvalues": eig,
        "largest": np.array([r["largest"] for r in records]),
        "smallest": np.array([r["smallest"] for r in records]),
    }
    dens = [r for r in records if r["density"] is not None]
    if dens:
        arrays["density_nodes"] = np.array([r["density"]["nodes"] for r in dens])
        arrays["density_weights"] = np.array([r["density"]["weights"] for r in dens])
    values = {
        "batch_indices": [r["index"] for r in records],
        "eigenvalues": [r["eigenvalues"] for r in records],
        "residuals": [r["residuals"] for r in records],
        "largest": [r["largest"] for r in records],
        "smallest": [r["smallest"] for r in records],
        "largest_residual": [r["largest_residual"] for r in records],
        "smallest_residual": [r["smallest_residual"] for r in records],
        "num_matvecs": [r["num_matvecs"] for r in records],
        "num_matvecs_total": sum(r["matvecs_all"] for r in records),
        "converged": [r["converged"] for r in records],
        "seconds": [r["seconds"] for r in records],
        "seconds_total": sum(r["seconds"] for r in records),
        "loss": [r["loss"] for r in records],
        "nll": [r["nll"] for r in records],
        "l2": [r["l2"] for r in records],
        "summary": summarize(records),
        "operator": operator,
        "resumed_batches": resumed,
    }
    if dens:
        nodes, weights = arrays["density_nodes"], arrays["density_weights"]
        values["density"] = {
            "batches": [r["index"] for r in dens],
            "num_probes": int(nodes.shape[1]),
            "num_steps": int(nodes.shape[2]),
            # tr(H^p)/d estimated by Gauss quadrature, mean over probes, per batch
            "moment1": (weights * nodes).sum(-1).mean(-1).tolist(),
            "moment2": (weights * nodes**2).sum(-1).mean(-1).tolist(),
            "num_matvecs": [r["density"]["num_matvecs"] for r in dens],
        }
    traces = [r for r in records if r["trace"] is not None]
    if traces:
        values["trace"] = [
            {
                "batch": r["index"],
                "estimate": r["trace"]["estimate"],
                "std_error": r["trace"]["std_error"],
                "num_samples": len(r["trace"]["samples"]),
            }
            for r in traces
        ]
    return Result("hessian", values=values, arrays=arrays, config=config_dict(cfg))


def operator_info(model: nn.Module, data: TrainData, cfg: Config) -> dict:
    """What the operator is: loss, L2 mode and coefficient, BN mode, batch, transform, params."""
    params = select_params(model, cfg.patterns)
    return {
        "loss": "soft_cross_entropy + l2",
        "l2": cfg.l2,
        "weight_decay": weight_decay(cfg, data),
        "bn_mode": cfg.bn_mode,
        "batch_size": cfg.batch_size,
        "transform": data.transform,
        "params": cfg.params,
        "num_params": sum(p.numel() for _, p in params),
        "num_tensors": len(params),
        "dtype": str(params[0][1].dtype).removeprefix("torch."),
    }


def run(
    model: nn.Module, data: TrainData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Top-k Hessian eigenvalues of ``cfg.batches`` augmented training mini-batches.

    Args:
        model: any classifier ``x -> logits`` (on ``cfg.device``); its parameters, buffers,
            gradients and train/eval modes are the same afterwards.
        data: augmented training batches (the run's transform and weight decay).
        cfg: settings.
        ctx: ``ctx.store`` keeps every finished batch; a rerun with the same config, data and
            model state, at any world size, skips them. None: nothing is kept.

    Returns:
        Result ``hessian``: ``values.eigenvalues`` (per batch, top-k by magnitude),
        ``largest``, ``smallest``, ``num_matvecs`` (per batch) and ``num_matvecs_total``,
        ``converged``, ``seconds``, ``loss``, ``trace`` / ``density`` if computed,
        ``operator`` and ``summary``; arrays ``eigenvalues`` ``(batches, top_k)`` (NaN where
        a batch found fewer), ``largest``, ``smallest``, ``density_nodes`` /
        ``density_weights`` ``(density batches, probes, steps)``.
    """
    if not callable(getattr(data, "batch", None)):
        raise VitscopeError("hessian needs augmented training batches (a TrainData)")
    if len(data) == 0:
        raise VitscopeError("hessian needs training images, the training data is empty")
    operator = operator_info(model, data, cfg)  # also checks the params patterns
    store = ctx.store
    records: dict[int, dict] = {}
    if store is not None:  # rank 0 merges the saved batches; every rank skips the same ones
        records, _ = store.resume(partial_key(model, data, cfg))
    records = {i: r for i, r in records.items() if isinstance(i, int) and i < cfg.batches}
    resumed = len(records)
    todo = [i for i in range(cfg.batches) if i not in records]
    save = store.add if store is not None else None
    pilot: tuple[dict, torch.Tensor] | None = None
    if cfg.warm_start and any(i > 0 for i in todo):
        # every rank computes the pilot itself (the same numbers), so no rank waits
        vectors: list = []
        pilot = analyze_batch(model, data, cfg, 0, vectors_out=vectors), vectors[0]

    def compute(i: int) -> dict:
        if pilot is None:
            return analyze_batch(model, data, cfg, i)
        return pilot[0] if i == 0 else analyze_batch(model, data, cfg, i, warm=pilot[1])

    records.update(map_items(todo, compute, save))
    return build_result([records[i] for i in range(cfg.batches)], cfg, operator, resumed)


def summary(result: Result) -> dict[str, float | None]:
    """Share of negative top-k eigenvalues, and the extremes."""
    s = result.values[Keys.SUMMARY]
    return {
        "negative share": s["negative_fraction"],
        "top-1 eigenvalue (mean)": s["top1_mean"],
        "λmin": s["smallest_min"],
    }


ANALYSIS = Analysis(
    name="hessian",
    config=Config,
    run=run,
    split="train",  # augmented training batches, as in the paper
    resumable=True,
    default_checkpoint="warmup",  # the paper's plots are labelled "warmup^th"
    figures=(
        FigureSpec("hessian_spectrum", "vitscope.report.hessian_figures:draw_spectrum", (5.5, 3)),
        FigureSpec("hessian_density", "vitscope.report.hessian_figures:draw_density", (4, 3.2)),
    ),
    summary=summary,
    compare="vitscope.report.compare:hessian",
    keys=Keys,
    description="Hessian max-eigenvalue spectra by Lanczos, SLQ density, trace (Fig 1c, 4)",
    order=70,
)
