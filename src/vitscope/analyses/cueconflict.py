"""Shape bias on cue-conflict images (Geirhos et al., ICLR 2019; ``docs/methods/shape.md``).

Each cue-conflict image has the shape of one class and the texture of another (a cat's
outline filled with elephant skin). A model's decision on it counts for *shape* when it names
the shape class and for *texture* when it names the texture class; the shape bias is

    shape bias = shape decisions / (shape decisions + texture decisions),

over the images whose two classes differ and are both classes the model knows (decisions of a
third class count for neither). Geirhos et al. measured about 0.22 for an ImageNet ResNet-50
and 0.96 for people; ImageNet ViTs measure higher than ResNets (Naseer et al. 2021, Tuli et
al. 2021).

The images come from ``cueconflict.source`` (:mod:`vitscope.data.cueconflict`: the release's
``<shape>/<shape><n>-<texture><m>.png`` layout). Each category is mapped onto the model's
classes: ``cueconflict.classes`` (``{category: [class index or name, ...]}``), or by default
the model's class of the same name (CIFAR-10 knows airplane, bird, cat, dog and truck of
the 16). A category's score is the mean (``aggregate: max``: the largest) of the softmax
probabilities of its classes, and the model's decision is the best-scoring mapped category
(model-vs-human's ImageNet-to-16-classes rule). Images are converted to the model's channels
and resized to its test images' size and normalisation.

The interval is Wilson's score interval for a binomial share (95%), over the counted
decisions; the report's claim resamples the images instead (paired across models).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import cueconflict as cue
from ..data.augment import normalize
from ..errors import ConfigError
from ..results import Result, config_dict
from .base import EvalData, eval_mode
from .keys import CueConflictKeys
from .shape_bias import shape_bias_counts
from .spec import Analysis, Context, FigureSpec

Keys = CueConflictKeys  # the result keys (torch-free, in keys.py)
AGGREGATES = ("mean", "max")
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Config:
    """Cue-conflict settings."""

    source: str = ""  # the folder of cue-conflict images (required)
    # category -> the model's classes (indices or names) it stands for; empty: same names
    classes: dict[str, tuple[int | str, ...]] = field(default_factory=dict)
    aggregate: str = "mean"  # how a category pools its classes' probabilities: mean | max
    num_images: int = 0  # the first images (sorted by path); 0: all of them
    batch_size: int = 64  # images per forward pass
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ConfigError(
                f"cueconflict.aggregate must be one of {', '.join(AGGREGATES)}, "
                f"got {self.aggregate!r}"
            )
        if self.num_images < 0 or self.batch_size < 1:
            raise ConfigError("cueconflict.num_images must be >= 0 and batch_size >= 1")
        for name, targets in self.classes.items():
            if not targets:
                raise ConfigError(f"cueconflict.classes.{name} lists no class of the model")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial share ``k / n`` (``(nan, nan)`` when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 and k = n the bounds are 0 and 1 exactly (centre -/+ half, up to round-off)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    return low, 1.0 if k == n else min(1.0, centre + half)


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def resolve_mapping(
    categories: Sequence[str],
    classes: dict[str, tuple[int | str, ...]],
    model_classes: Sequence[str],
    num_outputs: int,
) -> dict[str, list[int]]:
    """Category -> the model's class indices it pools: ``classes`` as configured (indices, or
    names of ``model_classes``), or by default each category whose name is a model class's
    (letters and digits compared, case ignored). One-line ConfigError for a category no
    image has, an unknown class name, an index outside the model's outputs, or fewer than
    two mapped categories (no conflict can be decided)."""
    names = {_norm(c): i for i, c in enumerate(model_classes)}
    out: dict[str, list[int]] = {}
    if classes:
        for cat, targets in classes.items():
            if cat.lower() not in categories:
                raise ConfigError(
                    f"cueconflict.classes names {cat!r}, which no image has; the images' "
                    f"classes: {', '.join(categories)}"
                )
            idx = []
            for t in targets:
                if isinstance(t, int) and not isinstance(t, bool):
                    if not 0 <= t < num_outputs:
                        raise ConfigError(
                            f"cueconflict.classes.{cat}: class {t} is outside the model's "
                            f"{num_outputs} outputs"
                        )
                    idx.append(t)
                elif isinstance(t, str) and _norm(t) in names:
                    idx.append(names[_norm(t)])
                else:
                    known = ", ".join(model_classes) if model_classes else "none known"
                    raise ConfigError(
                        f"cueconflict.classes.{cat}: {t!r} is no class of the model "
                        f"(its classes: {known}); give a name or an index"
                    )
            out[cat.lower()] = sorted(set(idx))
    else:
        for cat in categories:
            if _norm(cat) in names and names[_norm(cat)] < num_outputs:
                out[cat] = [names[_norm(cat)]]
    if len(out) < 2:
        shown = ", ".join(model_classes[:12]) + (", ..." if len(model_classes) > 12 else "")
        raise ConfigError(
            f"cueconflict maps {len(out)} of the images' classes ({', '.join(categories)}) "
            f"onto the model's ({shown or 'names unknown'}); at least 2 are needed: set "
            "cueconflict.classes, e.g. {cat: [3], dog: [5]}"
        )
    return dict(sorted(out.items()))


def decide(probs: torch.Tensor, mapping: dict[str, list[int]], aggregate: str) -> torch.Tensor:
    """The index (into ``mapping``'s categories) of the best-scoring category per image; a
    category scores the mean (or max) of its classes' probabilities."""
    scores = []
    for idx in mapping.values():
        p = probs[:, idx]
        scores.append(p.mean(1) if aggregate == "mean" else p.amax(1))
    return torch.stack(scores, 1).argmax(1)


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """The model's shape bias on the cue-conflict images of ``cfg.source``.

    Returns:
        Result ``cueconflict``: ``values.shape_bias`` and its Wilson interval, the decision
        counts, shape and texture accuracies (% of counted images), the shape bias per shape
        category, the categories and their class mapping; arrays ``shape``, ``texture``,
        ``decision`` (int16 per image, category indices; -1: a class the model does not know).
    """
    if not cfg.source:
        raise ConfigError(
            "cueconflict.source is not set: name a folder of cue-conflict images "
            "(<shape>/<shape><n>-<texture><m>.png), e.g. --set cueconflict.source=DIR"
        )
    images = cue.scan(cfg.source)
    if cfg.num_images:
        images = images[: cfg.num_images]
    cats = cue.categories(images)
    _, c, h, w = data.images.shape
    pixels = cue.read(images, c, h, w)
    probs = []
    with eval_mode(model):
        for s in range(0, len(images), cfg.batch_size):
            x = normalize(pixels[s : s + cfg.batch_size].to(cfg.device), data.mean, data.std)
            probs.append(model(x).float().softmax(-1).cpu())
    prob = torch.cat(probs)
    mapping = resolve_mapping(cats, cfg.classes, data.classes, prob.shape[1])
    order = {cat: i for i, cat in enumerate(mapping)}
    shape = np.array([order.get(im.shape, -1) for im in images], dtype=np.int16)
    texture = np.array([order.get(im.texture, -1) for im in images], dtype=np.int16)
    decision = decide(prob, mapping, cfg.aggregate).numpy().astype(np.int16)
    n_shape, n_texture, n_other, counted = shape_bias_counts(shape, texture, decision)
    decided = n_shape + n_texture
    same = int(sum(im.shape == im.texture for im in images))
    by_shape = {}
    for cat, i in order.items():
        sel = counted & (shape == i)
        k, t = int((sel & (decision == shape)).sum()), int((sel & (decision == texture)).sum())
        by_shape[cat] = k / (k + t) if k + t else None
    n = int(counted.sum())
    low, high = wilson(n_shape, decided)
    return Result(
        "cueconflict",
        values={
            Keys.CATEGORIES: list(mapping),
            Keys.MAPPING: mapping,
            Keys.SHAPE_BIAS: n_shape / decided if decided else None,
            Keys.INTERVAL: [low, high] if decided else None,
            Keys.SHAPE_DECISIONS: n_shape,
            Keys.TEXTURE_DECISIONS: n_texture,
            Keys.OTHER_DECISIONS: n_other,
            Keys.COUNTED: n,
            Keys.SAME: same,
            Keys.UNMAPPED: len(images) - n - same,
            Keys.SHAPE_ACC: 100.0 * n_shape / n if n else None,
            Keys.TEXTURE_ACC: 100.0 * n_texture / n if n else None,
            Keys.BY_SHAPE: by_shape,
            Keys.NUM_IMAGES: len(images),
        },
        arrays={Keys.SHAPE: shape, Keys.TEXTURE: texture, Keys.DECISION: decision},
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """The shape bias and the shares of images decided by shape and by texture."""
    v = result.values
    return {
        "shape bias": v[Keys.SHAPE_BIAS],
        "shape decisions (%)": v.get(Keys.SHAPE_ACC),
        "texture decisions (%)": v.get(Keys.TEXTURE_ACC),
    }


def _draw(ax, results) -> None:
    labels = []
    for i, result in enumerate(results):
        v = result.values
        bias = v[Keys.SHAPE_BIAS]
        if bias is None:
            continue
        low, high = v.get(Keys.INTERVAL) or (bias, bias)
        ax.errorbar([bias], [i], xerr=[[bias - low], [high - bias]], fmt="o", ms=4, capsize=3)
        labels.append((i, result.label(f"run {i + 1}")))
    ax.set_yticks([i for i, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="0.7", lw=0.6)
    ax.set_xlabel("shape bias (shape / (shape + texture) decisions), 95% interval")
    ax.grid(alpha=0.3, axis="x")


def draw(result: Result, fig) -> None:
    """The shape bias with its interval, and per shape category."""
    ax1, ax2 = fig.subplots(1, 2, width_ratios=(1, 1.4))
    _draw(ax1, [result])
    ax1.set_xlabel("shape bias, 95% interval", fontsize=8)
    by = {k: v for k, v in (result.values.get(Keys.BY_SHAPE) or {}).items() if v is not None}
    ax2.barh(range(len(by)), list(by.values()), color="0.5")
    ax2.set_yticks(range(len(by)), list(by), fontsize=6)
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("shape bias per shape class", fontsize=8)
    fig.suptitle("Cue-conflict shape bias", fontsize=9)


def compare(results, fig) -> None:
    """Several runs' shape bias with intervals, one row each."""
    _draw(fig.subplots(), list(results))


ANALYSIS = Analysis(
    name="cueconflict",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("cueconflict", "vitscope.analyses.cueconflict:draw", size=(6.0, 3.2)),),
    summary=summary,
    compare="vitscope.analyses.cueconflict:compare",
    keys=Keys,
    description="Shape bias on cue-conflict images (needs cueconflict.source)",
    order=38,
    default=False,  # needs a folder of images: runs when named (--only, a study's analyses)
    claims=("vitscope.report.claims.shape:check_shape_reliance",),
)
