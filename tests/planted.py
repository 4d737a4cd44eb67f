"""A synthetic study with planted effects, written as the analyses write their results.

``plant(root, sign, seeds)`` writes, for every seed, the runs every claim rule reads: result
files with their per-image and per-batch values, ``metrics.jsonl`` and ``predictions.npz``.
``sign = +1`` plants effects that make every claim hold, ``-1`` the reverse ones, ``0`` none:
then the compared quantities are the same draws (ViT's and ResNet's Hessian batches, a unit's
values and its predecessor's, AlterNet's and ResNet's predictions, ...), so every effect is
exactly its null in every resample. Values are drawn with noise from a seeded generator, so
each seed is a different sample of the same truth. (How often a noisy null is called
significant is the coverage tests' business.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from vitscope.analyses.base import Result
from vitscope.io import write_jsonl

N_IMAGES = 1000  # test images of every per-image array
N_BATCHES = 8  # Hessian / landscape mini-batches
TOP_K = 10
DATASET = "fashion-mnist"
FREQS = [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]


def units(kinds, stages=None, down=()):
    n = len(kinds)
    stages = stages or [0 if k == "stem" else 1 for k in kinds]
    return [
        {"index": i, "name": f"u{i}.{k}", "kind": k, "stage": s, "downsample": i in down,
         "depth": i / (n - 1)}
        for i, (k, s) in enumerate(zip(kinds, stages))
    ]  # fmt: skip


RESNET = units(["stem", "conv", "conv", "conv", "conv", "conv"], down={3})
VIT = units(["stem", "msa", "mlp", "msa", "mlp", "msa", "mlp"])
ALTERNET = units(["stem", "conv", "conv", "msa", "conv", "msa"], [0, 1, 1, 1, 2, 2], {4})
SWIN = units(
    ["stem", "msa", "mlp", "msa", "mlp", "pool", "msa", "mlp", "msa", "mlp"],
    [0, 1, 1, 1, 1, 2, 2, 2, 2, 2],
    {5},
)


def _per_unit(us, rng, sign, msa_step, other_step, start):
    """(units, images): a walk along the units, each image noisy around it; with sign 0 a
    unit that is not a downsampling one repeats its predecessor's values exactly."""
    rows = [start + rng.normal(0, 1.0, N_IMAGES)]
    for u in us[1:]:
        if u["downsample"] or u["kind"] in ("stem", "pool"):
            rows.append(rows[-1].mean() - 0.5 + rng.normal(0, 1.0, N_IMAGES))
        elif sign == 0:
            rows.append(rows[-1].copy())
        else:
            step = sign * (msa_step if u["kind"] == "msa" else other_step)
            rows.append(rows[-1].mean() + step + rng.normal(0, 1.0, N_IMAGES))
    return np.stack(rows)


def fourier_variance(us, rng, sign):
    hf = _per_unit(us, rng, sign, -1.0, +1.0, -3.0).astype(np.float32)
    var = (_per_unit(us, rng, sign, -0.5, +0.5, 10.0)).astype(np.float32)
    return (
        ("fourier", {"units": us, "high_freq": hf.mean(1).tolist(), "curves": [],
                     "num_images": N_IMAGES}, {"high_freq_images": hf}),
        ("variance", {"units": us, "variance": var.mean(1).tolist(), "num_images": N_IMAGES},
         {"variance_images": var}),
    )  # fmt: skip


def bernoulli(rng, p, n=N_IMAGES):
    return (rng.random(n) < p).astype(np.uint8)


def noise(rng, hurt_high: bool | None):
    """Per-band correctness: high bands hurt more (True), low bands (False), neither (None)."""
    rows = [bernoulli(rng, 0.85)]
    if hurt_high is None:  # every band the same draw
        rows += [bernoulli(rng, 0.8)] * len(FREQS)
    for f in FREQS if hurt_high is not None else ():
        low_p, high_p = (0.83, 0.6) if hurt_high else (0.6, 0.83)
        rows.append(bernoulli(rng, low_p if f <= 0.3 else high_p if f >= 0.6 else 0.7))
    table = np.stack(rows)
    acc = table.mean(1)
    values = {"frequencies": FREQS, "delta_acc": (100 * (acc[1:] - acc[0])).tolist(),
              "clean_acc": 100 * acc[0], "num_images": N_IMAGES}  # fmt: skip
    return ("noise", values, {"correct": table})


def hessian(rng, negative: float, top: float):
    """Per batch: top-k eigenvalues, each negative with probability ``negative``; the largest
    near ``top``."""
    mags = np.abs(rng.normal(10, 3, (N_BATCHES, TOP_K)))
    signs = np.where(rng.random((N_BATCHES, TOP_K)) < negative, -1.0, 1.0)
    eig = mags * signs
    largest = (top * np.exp(rng.normal(0, 0.1, N_BATCHES))).tolist()
    values = {"eigenvalues": eig.tolist(), "largest": largest,
              "smallest": eig.min(1).tolist()}  # fmt: skip
    return ("hessian", values, {"eigenvalues": eig})


def landscape(rng, k: float):
    """Each batch a bowl ``0.5 + k_b (a² + b²)`` on a 5x5 grid, ``k_b`` near ``k``; L2 = 0."""
    xs = np.linspace(-1, 1, 5)
    a, b = np.meshgrid(xs, xs)
    kb = k * np.exp(rng.normal(0, 0.2, N_BATCHES))
    per_batch = 0.5 + kb[None, None, :] * (a**2 + b**2)[..., None]
    nll = per_batch.mean(2)
    ring = np.maximum(abs(a), abs(b))
    rings = [{"r": r, "loss": float(nll[ring == r].mean())} for r in (0.5, 1.0)]
    values = {"center": {"loss": 0.5, "nll": 0.5}, "rings": rings, "l2_mode": "none"}
    arrays = {"xs": xs, "ys": xs, "loss": nll, "nll": nll, "l2": np.zeros_like(nll),
              "nll_batches": per_batch}  # fmt: skip
    return ("landscape", values, arrays)


def lesion(rng, last_matters: bool | None):
    """Swin-like: which MSA of each stage matters (the last, the first, or equally)."""
    drop_first, drop_last = {True: (0.02, 0.2), False: (0.2, 0.02), None: (0.1, 0.1)}[last_matters]
    removed, rows = [], [bernoulli(rng, 0.85)]
    first_row = {}  # stage -> its first MSA's row (the last MSA repeats it with no effect)
    for i, u in enumerate(SWIN):
        if u["kind"] in ("stem", "pool"):
            continue
        removed.append(i)
        if u["kind"] != "msa":
            rows.append(bernoulli(rng, 0.84))
        elif u["stage"] not in first_row:
            rows.append(first_row.setdefault(u["stage"], bernoulli(rng, 0.85 - drop_first)))
        else:
            same = last_matters is None
            rows.append(first_row[u["stage"]] if same else bernoulli(rng, 0.85 - drop_last))
    table = np.stack(rows)
    acc = 100 * table.mean(1)
    deltas = [None] * len(SWIN)
    for j, i in enumerate(removed, 1):
        deltas[i] = float(acc[j] - acc[0])
    values = {"units": SWIN, "delta_acc": deltas, "base_acc": float(acc[0]),
              "removed": removed, "num_images": N_IMAGES}  # fmt: skip
    return ("lesion", values, {"correct": table})


def exact(rng, p, n=N_IMAGES):
    """Correctness with exactly ``round(p n)`` hits, at random places."""
    row = np.zeros(n, np.uint8)
    row[rng.permutation(n)[: round(p * n)]] = 1
    return row


def corruption(rng, clean: float, robust: float, rows=None, draw=None):
    """A ``corruption`` result: the clean row and 6 corrupted rows (3 corruptions x 2
    severities) drawn around ``robust``; ``rows``: reuse those corrupted rows (a shared draw)."""
    draw = draw or bernoulli
    rows = [draw(rng, robust) for _ in range(6)] if rows is None else rows
    table = np.stack([draw(rng, clean), *rows])
    acc = 100 * table.mean(1)
    grid = acc[1:].reshape(3, 2)
    names = ["gaussian_noise", "defocus_blur", "fog"]
    values = {"corruptions": names, "severities": [1, 5], "clean_acc": float(acc[0]),
              "accuracy": grid.tolist(), "mean_acc": float(grid.mean()),
              "errors": (100 - grid).sum(1).tolist(), "num_images": N_IMAGES,
              "source": "generated"}  # fmt: skip
    return ("corruption", values, {"correct": table})


CUTOFFS = [0.1, 0.3, 0.5, 1.0]
GRIDS = [1, 2, 4, 8]
N_CUE = 160  # cue-conflict images
CUE_CATS = ["bear", "bird", "cat", "dog"]


def shape_tests(rng, clean: float, low: float, shuffled: float, bias: float, draw=None):
    """``filtered``, ``shuffle`` and ``cueconflict`` results: low-pass rows drawn around
    ``low``, high-pass ones around 0.2, shuffled rows around ``shuffled``, cue-conflict images
    decided by their shape with probability ``bias`` (by their texture otherwise). ``draw``
    (e.g. :func:`exact`) draws correctness rows."""
    draw = draw or bernoulli
    n = len(CUTOFFS)
    table = np.stack([draw(rng, clean), *(draw(rng, low) for _ in range(n)),
                      *(draw(rng, 0.2) for _ in range(n))])  # fmt: skip
    acc = 100 * table.mean(1)
    filtered = {"cutoffs": CUTOFFS, "low_acc": acc[1 : n + 1].tolist(),
                "high_acc": acc[n + 1 :].tolist(), "clean_acc": float(acc[0]),
                "chance_acc": 10.0, "kept": [0.1] * n, "num_images": N_IMAGES}  # fmt: skip
    rows = np.stack([table[0], *(draw(rng, shuffled) for _ in GRIDS[1:])])
    shuffle = {"grids": GRIDS, "accuracy": (100 * rows.mean(1)).tolist(), "chance_acc": 10.0,
               "skipped": [], "patch": [32 // g for g in GRIDS],
               "num_images": N_IMAGES}  # fmt: skip
    shape = np.arange(N_CUE) % len(CUE_CATS)
    texture = (shape + 1 + np.arange(N_CUE) // len(CUE_CATS) % 3) % len(CUE_CATS)
    by_shape = draw(rng, bias, N_CUE).astype(bool)
    decision = np.where(by_shape, shape, texture)
    k = int(by_shape.sum())
    cue = {"categories": CUE_CATS, "mapping": {c: [i] for i, c in enumerate(CUE_CATS)},
           "shape_bias": k / N_CUE, "shape_bias_interval": [0.0, 1.0], "shape_decisions": k,
           "texture_decisions": N_CUE - k, "other_decisions": 0, "counted": N_CUE,
           "same_class": 0, "unmapped": 0, "shape_acc": 100 * k / N_CUE,
           "texture_acc": 100 - 100 * k / N_CUE, "num_images": N_CUE}  # fmt: skip
    cue_arrays = {k: v.astype(np.int16) for k, v in
                  (("shape", shape), ("texture", texture), ("decision", decision))}  # fmt: skip
    return (
        ("filtered", filtered, {"cutoffs": np.asarray(CUTOFFS), "correct": table}),
        ("shuffle", shuffle, {"grids": np.asarray(GRIDS), "correct": rows}),
        ("cueconflict", cue, cue_arrays),
    )


def write_run(
    folder: Path, name: str, model: str, *, seed: int, rng, acc: float, fraction=1.0,
    train_nll=None, results=(), kwargs=None, right=None,
) -> Path:  # fmt: skip
    """A run directory: config, two epochs of metrics (the second the best), the best
    epoch's predictions (``right``: which test images it gets right; default drawn with
    probability ``acc``) and the results."""
    d = Path(folder) / name
    (d / "results").mkdir(parents=True)
    cfg = {"model": {"name": model, "kwargs": kwargs or {}},
           "data": {"name": DATASET, "fraction": fraction}, "train": {"seed": seed}}  # fmt: skip
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    label = np.arange(N_IMAGES) % 10
    right = (bernoulli(rng, acc) if right is None else right).astype(bool)
    pred = np.where(right, label, (label + 1) % 10)
    best = float(right.mean())
    rows = [
        {"epoch": 1, "test_acc": best - 0.05, "test_nll": 1.0, "train_nll": 0.9, "params": 1e5},
        {"epoch": 2, "test_acc": best, "test_nll": 0.8, "train_nll": 0.7, "params": 1e5},
    ]
    write_jsonl(d / "metrics.jsonl", rows)
    np.savez(d / "predictions.npz", pred=pred, label=label, epoch=np.asarray(2))
    for kind, values, arrays in results:
        config = {"source": "cue"} if kind == "cueconflict" else {}
        Result(kind, values, arrays, config=config,
               meta={"model": model, "fraction": fraction}).save(d / "results")  # fmt: skip
    if train_nll is not None:
        Result("overfitting", {"train_nll": train_nll}).save(d / "results")
    return d


def plant(root: Path, sign: int, seeds=(0,), name: str = "planted") -> Path:
    """Every claim's effect planted with ``sign`` (see the module doc), for each seed."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump({"name": name, "description": "planted"}))
    for seed in seeds:
        _plant_seed(root, sign, seed)
    return root


def _plant_seed(root: Path, sign: int, seed: int) -> None:
    null = sign == 0
    pick = lambda hold, fail, none: {1: hold, -1: fail, 0: none}[sign]  # noqa: E731
    rng = np.random.default_rng(1000 * seed + 7 + sign)
    runs, abl = root / "runs", root / "ablations"
    # with no effect, every compared Hessian, landscape and prediction is one draw
    shared_h = hessian(rng, 0.3, 10) if null else None
    shared_l = landscape(rng, 2.0) if null else None
    shared_right = bernoulli(rng, 0.8) if null else None
    hess = lambda neg, top: shared_h or hessian(rng, neg, top)  # noqa: E731
    land = lambda k: shared_l or landscape(rng, k)  # noqa: E731
    acc = {"resnet": 0.80, "alternet": pick(0.92, 0.68, 0.80), "vit": 0.70,
           "vit_small": 0.55, "swin": 0.75}  # fmt: skip
    # training NLL against test error: rising (+1), falling (-1), unrelated (0: the ranks
    # 2, 5, 3, 1, 4 of the models ordered by error, Spearman ρ = 0)
    order = {"alternet": 0, "resnet": 1, "swin": 2, "vit": 3, "vit_small": 4}
    flat = [0.4, 1.0, 0.6, 0.2, 0.8]

    def nll(model):
        err = 1 - acc[model]
        return pick(0.1 + 2 * err, 1.2 - 2 * err, flat[order[model]])

    # corruption: (clean, robust) per run; holds: robustness rises with accuracy and AlterNet's
    # is highest; fails: the reverse; none: Spearman ρ exactly 0 (exact hit counts) and
    # AlterNet's corrupted rows are ResNet's, the best of the others
    rob = {
        1: {"resnet": (0.80, 0.60), "vit": (0.70, 0.45), "vit_small": (0.55, 0.30),
            "alternet": (0.92, 0.75), "swin": (0.75, 0.55)},
        -1: {"resnet": (0.80, 0.40), "vit": (0.70, 0.55), "vit_small": (0.55, 0.60),
             "alternet": (0.90, 0.30), "swin": (0.75, 0.45)},
        0: {"resnet": (0.70, 0.60), "vit": (0.85, 0.40), "vit_small": (0.75, 0.40),
            "alternet": (0.90, 0.60), "swin": (0.80, 0.35)},
    }[sign]  # fmt: skip
    draw = exact if null else bernoulli
    shared_rows = [exact(rng, rob["resnet"][1]) for _ in range(6)] if null else None

    def corr(model):
        rows = shared_rows if model in ("resnet", "alternet") else None
        return corruption(rng, *rob[model], rows=rows, draw=draw)

    # shape tests: (clean, low-pass, shuffled, shape bias); holds: ViT and AlterNet keep more
    # above chance than ResNet and are more shape-biased; fails: the reverse; none: one
    # shared draw for every model
    shapes = {
        1: {"resnet": (0.8, 0.3, 0.25, 0.3), "vit": (0.7, 0.5, 0.55, 0.7),
            "alternet": (0.9, 0.6, 0.5, 0.6)},
        -1: {"resnet": (0.8, 0.6, 0.55, 0.7), "vit": (0.7, 0.2, 0.2, 0.3),
             "alternet": (0.9, 0.3, 0.25, 0.3)},
    }.get(sign)  # fmt: skip
    shared_shape = shape_tests(rng, 0.8, 0.4, 0.4, 0.5, exact) if null else None

    def shape(model):
        return list(shared_shape or shape_tests(rng, *shapes[model]))

    s = f"-s{seed}"
    write_run(
        runs, f"resnet_tiny-f1{s}", "resnet_tiny", seed=seed, rng=rng, acc=acc["resnet"],
        train_nll=nll("resnet"), right=shared_right,
        results=[*fourier_variance(RESNET, rng, sign), noise(rng, pick(True, False, None)),
                 hess(pick(0.02, 0.8, 0), pick(20, 5, 0)), land(pick(4.0, 1.0, 0)),
                 corr("resnet"), *shape("resnet")],
    )  # fmt: skip
    write_run(
        runs, f"vit_tiny-f1{s}", "vit_tiny", seed=seed, rng=rng, acc=acc["vit"],
        train_nll=nll("vit"),
        results=[*fourier_variance(VIT, rng, sign), noise(rng, pick(False, True, None)),
                 hess(0.4, pick(5, 20, 0)), land(pick(1.0, 4.0, 0)), corr("vit"),
                 *shape("vit")],
    )  # fmt: skip
    write_run(
        runs, f"vit_tiny-f0.1{s}", "vit_tiny", seed=seed, rng=rng, acc=acc["vit_small"],
        fraction=0.1, train_nll=nll("vit_small"),
        results=[hess(pick(0.8, 0.02, 0), 10), corr("vit_small")],
    )  # fmt: skip
    write_run(
        runs, f"alternet_tiny-f1{s}", "alternet_tiny", seed=seed, rng=rng,
        acc=acc["alternet"], train_nll=nll("alternet"), right=shared_right,
        results=[*fourier_variance(ALTERNET, rng, sign), corr("alternet"), *shape("alternet")],
    )  # fmt: skip
    write_run(
        runs, f"swin_tiny-f1{s}", "swin_tiny", seed=seed, rng=rng, acc=acc["swin"],
        train_nll=nll("swin"), results=[lesion(rng, pick(True, False, None)), corr("swin")],
    )  # fmt: skip
    # ablations: a GAP head on the 10% ViT; local MSAs, 3x3 vs global
    write_run(
        abl, f"vit_tiny-gap-f0.1{s}", "vit_tiny", seed=seed, rng=rng, acc=0.55,
        fraction=0.1, kwargs={"head": "gap"}, results=[hess(pick(0.02, 0.8, 0), 10)],
    )  # fmt: skip
    write_run(
        abl, f"local-k3-f0.1{s}", "vit_local_tiny", seed=seed, rng=rng,
        acc=pick(0.75, 0.55, 0.65), fraction=0.1, kwargs={"kernel": 3}, right=shared_right,
        results=[hess(pick(0.05, 0.6, 0), 10)],
    )  # fmt: skip
    write_run(
        abl, f"local-global-f0.1{s}", "vit_local_tiny", seed=seed, rng=rng,
        acc=pick(0.55, 0.75, 0.65), fraction=0.1, kwargs={"kernel": 0}, right=shared_right,
        results=[hess(pick(0.6, 0.05, 0), 10)],
    )  # fmt: skip
