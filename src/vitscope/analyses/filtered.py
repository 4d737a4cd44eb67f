"""Accuracy on frequency-filtered images: does a model read shape or texture?
(``docs/methods/shape.md``).

Low frequencies carry an image's global shape and high frequencies its texture and edges
(the reading behind the paper's conclusion that MSAs are shape-biased, §2.2, Fig 2). This
analysis tests it directly: test accuracy on images low-pass and high-pass filtered at a sweep
of cut-offs. A model that relies on shape keeps more accuracy on low-pass images and loses
more on high-pass ones.

The filter is a radial mask in the 2-D FFT with the frequency convention of ``noise``: the
frequency of bin ``(k_y, k_x)`` is ``2π (k_y / h, k_x / w)``, so ``π`` reaches the edge of
the spectrum along each axis, and its radius in units of π is

    rho = sqrt((2 k_y / h)^2 + (2 k_x / w)^2)  in [0, sqrt(2)].

``low_pass(x, c)`` keeps the bins with ``rho <= c`` (DC is always kept: a low-pass image has
the image's mean), ``high_pass(x, c)`` the others, so the two sum to the image exactly. The
mask depends on ``|k|`` only, so it is conjugate-symmetric and the filtered images are real.
Images are filtered as the model sees them (normalised, per channel), not clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..results import Result, config_dict
from .base import EvalData, accuracy_axes, chance_accuracy, correct, eval_mode
from .keys import FilteredKeys
from .sharding import map_items
from .spec import Analysis, Context, FigureSpec

KINDS = ("low", "high")


Keys = FilteredKeys  # the result keys (torch-free, in keys.py)


@dataclass(frozen=True)
class Config:
    """Frequency-filtered accuracy settings; cut-offs are radii in units of π."""

    cutoffs: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
    num_images: int = 2000  # test images per filter
    batch_size: int = 256  # images per forward pass
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if not self.cutoffs or any(not 0 <= c <= 2**0.5 for c in self.cutoffs):
            raise ConfigError(
                f"filtered.cutoffs must be radii in [0, 1.414] (units of π), got "
                f"{list(self.cutoffs)}"
            )
        if len(set(self.cutoffs)) != len(self.cutoffs):
            raise ConfigError(f"filtered.cutoffs lists a cut-off twice: {list(self.cutoffs)}")
        if self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("filtered.num_images and filtered.batch_size must be >= 1")


def radius(h: int, w: int) -> torch.Tensor:
    """``(h, w)`` radial frequency of each bin of an unshifted 2-D FFT, in units of π."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64) * 2  # cycles per pixel * 2: units of π
    fx = torch.fft.fftfreq(w, dtype=torch.float64) * 2
    return torch.sqrt(fy[:, None].abs() ** 2 + fx[None, :].abs() ** 2)


def low_pass_mask(h: int, w: int, cutoff: float) -> torch.Tensor:
    """0/1 float64 mask ``(h, w)`` (unshifted): the bins with radius ``<= cutoff`` (π)."""
    return (radius(h, w) <= cutoff + 1e-12).double()


def _apply(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.fft2(x.double()) * mask.to(x.device)
    return torch.fft.ifft2(spectrum).real.to(x.dtype)


def low_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``x`` (``(..., h, w)``) with only the frequencies of radius ``<= cutoff`` (π)."""
    return _apply(x, low_pass_mask(*x.shape[-2:], cutoff))


def high_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``x`` without the frequencies of radius ``<= cutoff`` (π): ``x - low_pass(x, c)``."""
    return _apply(x, 1 - low_pass_mask(*x.shape[-2:], cutoff))


FILTERS = {"low": low_pass, "high": high_pass}


@torch.no_grad()
def filtered_correct(
    model: torch.nn.Module, data: EvalData, cfg: Config, item: tuple[str, float] | None
) -> np.ndarray:
    """Per test image, whether it is classified right after filter ``item`` =
    ``(kind, cut-off)``; ``None``: the images as they are."""
    batches = data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images)
    if item is None:
        return correct(model, batches)
    kind, cutoff = item
    return correct(model, batches, lambda x: FILTERS[kind](x, cutoff))


@torch.no_grad()
def run(
    model: torch.nn.Module, data: EvalData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Accuracy (%) on low-pass and high-pass filtered test images at each cut-off.

    Under torchrun the filters (and the clean pass) are sharded over the ranks; every rank
    returns the whole result.

    Returns:
        Result ``filtered``: ``values.cutoffs`` (π), ``values.low_acc``, ``values.high_acc``,
        ``values.clean_acc`` and ``values.chance_acc`` (the commonest label's share) (%),
        ``values.kept`` (share of bins a low-pass keeps); array
        ``correct`` (uint8, rows: clean, the low-pass cut-offs, the high-pass cut-offs), which
        the report resamples.
    """
    h, w = data.images.shape[-2:]
    items: list[tuple[str, float] | None] = [None]
    items += [(kind, c) for kind in KINDS for c in cfg.cutoffs]
    with eval_mode(model):
        hits = map_items(range(len(items)), lambda k: filtered_correct(model, data, cfg, items[k]))
    table = np.stack([hits[k] for k in range(len(items))])
    acc = 100.0 * table.mean(axis=1)
    n = len(cfg.cutoffs)
    return Result(
        "filtered",
        values={
            Keys.CUTOFFS: list(cfg.cutoffs),
            Keys.LOW_ACC: acc[1 : 1 + n].tolist(),
            Keys.HIGH_ACC: acc[1 + n :].tolist(),
            Keys.CLEAN_ACC: float(acc[0]),
            Keys.CHANCE_ACC: chance_accuracy(data, cfg.num_images),
            Keys.KEPT: [float(low_pass_mask(h, w, c).mean()) for c in cfg.cutoffs],
            Keys.NUM_IMAGES: data.count(cfg.num_images),
        },
        arrays={Keys.CUTOFFS: np.asarray(cfg.cutoffs), Keys.CORRECT: table.astype(np.uint8)},
        config=config_dict(cfg),
    )


def summary(result: Result) -> dict[str, float | None]:
    """Clean accuracy and the mean accuracy over the cut-offs, low-pass and high-pass."""
    v = result.values
    return {
        "clean accuracy (%)": v[Keys.CLEAN_ACC],
        "mean low-pass accuracy (%)": float(np.mean(v[Keys.LOW_ACC])),
        "mean high-pass accuracy (%)": float(np.mean(v[Keys.HIGH_ACC])),
    }


def _draw(ax, results) -> None:
    import matplotlib as mpl

    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, result in enumerate(results):
        v, color, label = result.values, cycle[i % len(cycle)], result.label(f"run {i + 1}")
        ax.plot(v[Keys.CUTOFFS], v[Keys.LOW_ACC], "o-", color=color, ms=3, label=f"{label} low")
        ax.plot(v[Keys.CUTOFFS], v[Keys.HIGH_ACC], "s--", color=color, ms=3, label=f"{label} high")
        ax.axhline(v[Keys.CLEAN_ACC], color=color, lw=0.6, alpha=0.5)
    ax.set_xlabel("cut-off radius (×π)")
    accuracy_axes(ax)


def draw(result: Result, fig) -> None:
    """Accuracy vs cut-off: low-pass (solid) and high-pass (dashed); clean as a thin line."""
    ax = fig.subplots()
    _draw(ax, [result])
    ax.set_title("Frequency-filtered accuracy", fontsize=9)


def compare(results, fig) -> None:
    """Several runs' filtered accuracy overlaid, one colour per run."""
    _draw(fig.subplots(), list(results))


ANALYSIS = Analysis(
    name="filtered",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("filtered", "vitscope.analyses.filtered:draw", size=(4.4, 3.4)),),
    summary=summary,
    compare="vitscope.analyses.filtered:compare",
    keys=Keys,
    description="Accuracy on low-pass and high-pass filtered images (shape vs texture)",
    order=36,
    claims=("vitscope.report.claims.shape:check_shape_reliance",),
)
