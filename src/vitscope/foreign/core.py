"""Any ``nn.Module`` under the block contract: its units described, its input adapted, its
output unwrapped to logits.

:func:`describe` lists a model's units: a user's spec (module-name patterns), else the
curated rule of its class (:mod:`.rules`), else the generic decomposition (:mod:`.generic`);
stage and downsample then come from the shapes of one forward pass.
:class:`ForeignModel` wraps a model for the analyses: it takes inputs normalised with the
dataset's statistics (as every vitscope analysis feeds them), maps them to the model's
channels, input size and normalisation, and returns plain logits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..analyses.base import eval_mode
from ..errors import VitscopeError
from ..models.blocks import Block, Spec, _blocks_from_spec, annotate, tapped, to_map
from .generic import generic_units
from .rules import find_rule


def logits_of(output: Any) -> torch.Tensor:
    """Logits from whatever a classifier returns: a tensor, a ``ModelOutput`` or dict with
    ``logits``, or a tuple whose first item is the logits (timm's distilled models)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise VitscopeError(
            f"the model returned {type(output).__name__}, not logits (a tensor, or an object "
            "with .logits)"
        )
    return logits


def guess_input(model: nn.Module) -> tuple[int, int]:
    """``(in_chans, img_size)`` from what a model says about itself, else ``(3, 224)``.

    Reads timm's ``pretrained_cfg``/``patch_embed.img_size``, torchvision's ``image_size``,
    Hugging Face's ``config.image_size``/``num_channels`` and the first convolution.
    """
    size = None
    config = getattr(model, "config", None)
    pe = getattr(model, "patch_embed", None)
    for candidate in (
        getattr(pe, "img_size", None),
        getattr(model, "image_size", None),
        getattr(config, "image_size", None),
        (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (None, None))[-1],
    ):
        if candidate is not None:
            size = candidate[0] if isinstance(candidate, (tuple, list)) else candidate
            break
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    chans = getattr(config, "num_channels", None) or (conv.in_channels if conv else 3)
    return int(chans), int(size or 224)


def _raw_units(model: nn.Module, spec: Spec | None, x: torch.Tensor):
    """``(units, source, family)`` from the spec, the model's rule, or the generic one."""
    if spec is not None:
        return _blocks_from_spec(model, spec), "spec", "other"
    found = find_rule(model)
    if found is not None:
        return found.units(model), found.name, found.family
    return generic_units(model, x), "generic", "other"


def _probe(model: nn.Module, shape: Sequence[int]) -> torch.Tensor:
    """A zero batch of one ``shape`` input on the model's device, in its float dtype."""
    param = next(model.parameters(), None)
    floating = param is not None and param.is_floating_point()
    return torch.zeros(1, *shape, device=param.device if param is not None else None,
                       dtype=param.dtype if floating else None)  # fmt: skip


def describe(
    model: nn.Module,
    spec: Spec | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    with_source: bool = False,
):
    """The units of any model, with stage and downsample from one forward pass.

    Args:
        model: the model (its train/eval flags and gradients are left as they are).
        spec: kind -> module-name pattern(s), which take precedence over rules.
        input_shape: ``(C, H, W)`` of one input; default :func:`guess_input`.
        with_source: also return which rule described it (``spec``, ``generic``, a rule
            name) and the family it gives (``other`` for a spec or the generic one).

    Raises:
        VitscopeError: a unit that was not called, or whose stream is not a feature map.
    """
    if input_shape is None:
        chans, size = guess_input(model)
        input_shape = (chans, size, size)
    x = _probe(model, input_shape)
    with eval_mode(model):
        units, source, family = _raw_units(model, spec, x)
        feats = [b for b in units if b.kind != "head"]
        with torch.no_grad(), tapped(feats) as outs:
            model(x)  # a backbone without a classifier is described too
    missed = [b.name for i, b in enumerate(feats) if i not in outs]
    if missed:
        raise VitscopeError(f"{type(model).__name__}: units {missed} were not called")
    shapes = iter(tuple(to_map(outs[i], b, model).shape[1:]) for i, b in enumerate(feats))
    described = annotate(units, [next(shapes) if b.kind != "head" else () for b in units])
    return (described, source, family) if with_source else described


class ForeignModel(nn.Module):
    """A foreign classifier under vitscope's contract.

    ``forward`` takes inputs normalised with the dataset's statistics (what
    :class:`~vitscope.analyses.EvalData` and :class:`~vitscope.analyses.TrainData` give),
    undoes that normalisation, repeats a grey channel for a colour model, resizes to the
    model's input size and applies the model's own normalisation, then returns logits. All of
    it is differentiable, so curvature analyses see the same function. Until :meth:`bind`
    declares the dataset's statistics (``analyze_model`` does), inputs are taken as already
    normalised for the model: only channels and size are adapted.

    Attributes:
        net: the wrapped model (its module names are the unit names).
        name, source, family: what it is and where it came from (stored in results).
        img_size, in_chans: the model's input.
        mean, std: the model's normalisation (None: the dataset's, left as it is).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str = "",
        source: str = "module",
        family: str | None = None,
        img_size: int | None = None,
        in_chans: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        spec: Spec | None = None,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise VitscopeError(f"{name or type(net).__name__}: give the input mean and std "
                                "together (--mean and --std)")  # fmt: skip
        guessed_chans, guessed_size = guess_input(net)
        self.net = net
        self.name = name or type(net).__name__
        self.source = source
        self.img_size = int(img_size or guessed_size)
        self.in_chans = int(in_chans or guessed_chans)
        self.mean = tuple(float(v) for v in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        self._data_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        shape = (self.in_chans, self.img_size, self.img_size)
        units, self.rule, found = describe(net, spec, input_shape=shape, with_source=True)
        self._units = tuple(units)
        self.family = family or found

    def vitscope_blocks(self) -> list[Block]:
        return list(self._units)

    def bind(self, mean: Sequence[float], std: Sequence[float]) -> ForeignModel:
        """Declare the dataset normalisation that inputs arrive with."""
        if len(mean) not in (1, self.in_chans):
            raise VitscopeError(
                f"{self.name} takes {self.in_chans} input channels; the data has {len(mean)}"
            )
        self._data_stats = (tuple(mean), tuple(std))
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset-normalised inputs -> the model's inputs (see the class docstring)."""
        if self._data_stats is not None and self.mean is not None:
            mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in self._data_stats)
            x = x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
        if x.shape[1] == 1 and self.in_chans > 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            shrink = x.shape[-1] > self.img_size
            x = F.interpolate(
                x, size=(self.img_size, self.img_size), mode="bilinear", antialias=shrink
            )
        if self._data_stats is not None and self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.net(self.prepare(x)))

    def info(self) -> dict:
        """What results store about the model: name, source, family, rule, input, units."""
        return {
            "model": self.name,
            "source": self.source,
            "family": self.family,
            "rule": self.rule,
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "units": len(self._units),
        }


def describe_table(model: nn.Module, img_size: int | None = None) -> str:
    """The units as text: index, name, kind, stage, downsample, stream shape, where the
    stream is read and how a lesion removes the unit (what ``vitscope blocks`` prints)."""
    from ..models.blocks import blocks, feature_maps

    units = blocks(model)
    foreign = isinstance(model, ForeignModel)
    names = {id(m): n for n, m in (model.net if foreign else model).named_modules()}
    chans = model.in_chans if foreign else guess_input(model)[0]
    size = img_size or (model.img_size if foreign else 32)
    with torch.no_grad(), eval_mode(model):
        maps = iter(feature_maps(model, _probe(model, (chans, size, size))))
    rows = [("#", "unit", "kind", "stage", "down", "stream (C, H, W)", "read at", "lesion")]
    for i, b in enumerate(units):
        shape = "" if b.kind == "head" else "x".join(str(d) for d in next(maps).shape[1:])
        tap = b.point
        tap_name = names.get(id(tap.module), "?")
        read = (
            ""
            if b.kind == "head"
            else (f"{tap.where} of {tap_name}" if b.tap is not None else "output")
        )
        if b.kind in ("stem", "head") or b.downsample:
            lesion = "-"
        elif b.branch is not None:
            lesion = f"zero {names.get(id(b.branch), '?')}"
        else:
            lesion = "skip path" if b.skip is not None or hasattr(b.module, "skip") else "identity"
        rows.append((str(i), b.name, b.kind, str(b.stage), "yes" if b.downsample else "",
                     shape, read, lesion))  # fmt: skip
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    kinds = Counter(b.kind for b in units)
    source = getattr(model, "rule", "vitscope")
    family = getattr(model, "family", None)
    head = (
        f"{getattr(model, 'name', type(model).__name__)}: {len(units)} units ("
        + ", ".join(f"{n} {k}" for k, n in kinds.items())
        + f"); described by {source}"
        + (f", family {family}" if family else "")
    )
    return "\n".join([head, *lines])


def wrap(model: nn.Module, **kwargs: Any) -> nn.Module:
    """``model`` under the contract: vitscope's own models as they are, any other model as a
    :class:`ForeignModel` (``kwargs`` go to it)."""
    if hasattr(model, "vitscope_blocks"):
        return model
    return ForeignModel(model, **kwargs)


__all__ = ["ForeignModel", "describe", "describe_table", "guess_input", "logits_of", "wrap"]
