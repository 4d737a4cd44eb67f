"""Accuracy on patch-shuffled images: global shape destroyed, local texture kept
(``docs/methods/shape.md``).

Each test image is cut into a ``g × g`` grid of equal patches that are put back in a random
order (Naseer et al., NeurIPS 2021, "Intriguing Properties of Vision Transformers", Fig 5):
the larger ``g``, the less of the object's shape survives, while every patch's texture is
untouched. A model that reads shape loses more accuracy as ``g`` grows than one that reads
texture.

The permutation is drawn per image from a generator seeded with ``seed + g`` (the same
shuffles for every model, whatever the other grids), uniformly over all ``(g²)!`` orders (the
identity included). A grid runs where it divides the image's height and width (28 px: 1, 2, 4,
7; 32 px: 1, 2, 4, 8); the others are listed as skipped. ``g = 1``, the image itself, always
runs first: it is the intact accuracy the others are read against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from ..errors import ConfigError
from ..results import Result, config_dict
from .base import EvalData, accuracy_axes, chance_accuracy, correct, eval_mode
from .keys import ShuffleKeys
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec

Keys = ShuffleKeys  # the result keys (torch-free, in keys.py)


@dataclass(frozen=True)
class Config:
    """Patch-shuffling settings."""

    grids: tuple[int, ...] = (2, 4, 7, 8)  # g x g patches; those that divide the image run
    num_images: int = 2000  # test images per grid
    batch_size: int = 256  # images per forward pass
    seed: int = 0  # shuffle seed (the same shuffles for every model)
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if not self.grids or any(isinstance(g, bool) or g < 1 for g in self.grids):
            raise ConfigError(f"shuffle.grids must be integers >= 1, got {list(self.grids)}")
        if len(set(self.grids)) != len(self.grids):
            raise ConfigError(f"shuffle.grids lists a grid twice: {list(self.grids)}")
        if self.num_images < 1 or self.batch_size < 1 or self.seed < 0:
            raise ConfigError(
                "shuffle.num_images and shuffle.batch_size must be >= 1, shuffle.seed >= 0"
            )


def permutations(n: int, g: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, g²)`` int64: a uniformly random order of the ``g²`` patches for each of ``n``
    images (the argsort of i.i.d. uniforms)."""
    return torch.rand((n, g * g), generator=generator, dtype=torch.float64).argsort(dim=1)


def shuffle_patches(x: torch.Tensor, g: int, order: torch.Tensor) -> torch.Tensor:
    """``x`` ``(b, c, h, w)`` cut into ``g × g`` patches, patch ``order[i, j]`` of image ``i``
    put at position ``j`` (row-major). ``g`` must divide ``h`` and ``w``."""
    b, _, h, w = x.shape
    if h % g or w % g:
        raise ConfigError(f"shuffle: a {g}x{g} grid does not divide {h}x{w} images")
    if g == 1:
        return x
    patches = rearrange(x, "b c (gh ph) (gw pw) -> b (gh gw) c ph pw", gh=g, gw=g)
    index = order.to(x.device)[:, :, None, None, None].expand_as(patches)
    moved = torch.gather(patches, 1, index)
    return rearrange(moved, "b (gh gw) c ph pw -> b c (gh ph) (gw pw)", gh=g, gw=g)


def usable(grids: tuple[int, ...], h: int, w: int) -> tuple[list[int], list[int]]:
    """The grids that divide an ``h × w`` image, and the ones that do not."""
    ok = [g for g in grids if h % g == 0 and w % g == 0]
    return ok, [g for g in grids if g not in ok]


@torch.no_grad()
def shuffled_correct(model: torch.nn.Module, data: EvalData, cfg: Config, g: int) -> np.ndarray:
    """Per test image, whether it is classified right with its patches shuffled on a
    ``g × g`` grid (the generator is seeded with ``seed + g``)."""
    batches = data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images)
    if g == 1:
        return correct(model, batches)
    gen = torch.Generator().manual_seed(cfg.seed + g)
    return correct(model, batches, lambda x: shuffle_patches(x, g, permutations(len(x), g, gen)))


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Accuracy (%) on test images whose patches are shuffled, per grid size.

    Under torchrun the grids are sharded over the ranks; every rank returns the whole result.

    Returns:
        Result ``shuffle``: ``values.grids`` (those that ran), ``values.accuracy`` (%),
        ``values.skipped``, ``values.patch`` (patch side, px); array ``correct`` (uint8,
        one row per grid), which the report resamples.
    """
    h, w = data.images.shape[-2:]
    grids, skipped = usable(cfg.grids, h, w)
    if not [g for g in grids if g > 1]:
        raise ConfigError(
            f"shuffle.grids {list(cfg.grids)}: no grid above 1 divides the {h}x{w} test images"
        )
    grids = sorted({1, *grids})  # g = 1, the intact images, is the reference
    with eval_mode(model):
        hits = map_items(grids, lambda g: shuffled_correct(model, data, cfg, g))
    table = np.stack([hits[g] for g in grids])
    return Result(
        "shuffle",
        values={
            Keys.GRIDS: grids,
            Keys.ACCURACY: (100.0 * table.mean(axis=1)).tolist(),
            Keys.CHANCE_ACC: chance_accuracy(data, cfg.num_images),
            Keys.SKIPPED: skipped,
            Keys.PATCH: [h // g for g in grids],
            Keys.NUM_IMAGES: data.count(cfg.num_images),
        },
        arrays={Keys.GRIDS: np.asarray(grids), Keys.CORRECT: table.astype(np.uint8)},
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """Accuracy intact (g = 1) and on the finest grid."""
    v = result.values
    grids, acc = v[Keys.GRIDS], v[Keys.ACCURACY]
    return {
        "accuracy g=1 (%)": acc[0],  # run() always starts with g = 1
        f"accuracy g={grids[-1]} (%)": acc[-1],
    }


def _draw(ax, results) -> None:
    import matplotlib as mpl

    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    grids = sorted({g for r in results for g in r.values[Keys.GRIDS]})
    for i, result in enumerate(results):
        v = result.values
        ax.plot(v[Keys.GRIDS], v[Keys.ACCURACY], "o-", ms=3, color=cycle[i % len(cycle)],
                label=result.label(f"run {i + 1}"))  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(grids, [str(g) for g in grids])
    ax.set_xlabel("grid g (g×g shuffled patches)")
    accuracy_axes(ax)


def draw(result: Result, fig) -> None:
    """Accuracy vs grid size."""
    ax = fig.subplots()
    _draw(ax, [result])
    ax.set_title("Patch-shuffled accuracy", fontsize=9)


def compare(results, fig) -> None:
    """Several runs' shuffled accuracy overlaid."""
    _draw(fig.subplots(), list(results))


ANALYSIS = Analysis(
    name="shuffle",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("shuffle", "vitscope.analyses.shuffle:draw", size=(4.0, 3.3)),),
    summary=summary,
    compare="vitscope.analyses.shuffle:compare",
    keys=Keys,
    description="Accuracy on patch-shuffled images (shape destroyed, texture kept)",
    order=37,
    claims=("vitscope.report.claims.shape:check_shuffle",),
)
