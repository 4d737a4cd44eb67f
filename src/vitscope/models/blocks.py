"""The block contract: a model as an ordered list of residual-stream units.

Analyses (Fourier, variance, lesion) never reach into an architecture; they ask
:func:`blocks` for the units, hook their outputs with :func:`feature_maps` and remove one
with :func:`replace_unit`. The decomposition follows the paper's code (``docs/methods/blocks.md``):
ResNet =
stem, each residual block, head; ViT = patch embedding, then ``x + attn(norm1(x))`` and
``x + mlp(norm2(x))`` as two units per transformer block, then head.

Our models list their units in ``vitscope_blocks()``; any other ``nn.Module`` is described by
a ``spec`` of module-name patterns per kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from einops import rearrange
from torch import nn

from ..errors import VitscopeError

KINDS = ("stem", "conv", "msa", "mlp", "pool", "head")
Spec = Mapping[str, str | Sequence[str]]  # kind -> fnmatch pattern(s) over module names


@dataclass(frozen=True)
class Block:
    """One unit of the residual stream.

    Attributes:
        name: dotted module path, as in ``model.named_modules()``.
        kind: one of ``stem``, ``conv``, ``msa``, ``mlp``, ``pool``, ``head``.
        stage: stage index (0 for the stem and for user-spec models; stages count from 1).
        module: the unit; its forward output is the stream after the unit.
        downsample: the unit changes the spatial size of the stream (stem excluded).
    """

    name: str
    kind: str
    stage: int
    module: nn.Module
    downsample: bool = False


def make_blocks(model: nn.Module, units: Iterable[tuple[nn.Module, str, int, bool]]) -> list[Block]:
    """Blocks from ``(module, kind, stage, downsample)`` tuples, named by ``model``'s tree."""
    names = {id(m): name for name, m in model.named_modules()}
    return [Block(names[id(m)], kind, stage, m, down) for m, kind, stage, down in units]


def staged_token_units(model: nn.Module, pool_type: type) -> list[Block]:
    """Units of a multi-stage transformer (PiT, Swin): ``model.stem``, then per stage its
    ``pool_type`` downsampling modules (kind ``pool``) and each transformer block's ``attn``
    and ``mlp`` residual units, then ``model.head``."""
    units = [(model.stem, "stem", 0, False)]
    for i, stage in enumerate(model.stages, start=1):
        for m in stage:
            if isinstance(m, pool_type):
                units.append((m, "pool", i, True))
            else:
                units += [(m.attn, "msa", i, False), (m.mlp, "mlp", i, False)]
    units.append((model.head, "head", len(model.stages) + 1, False))
    return make_blocks(model, units)


def blocks(model: nn.Module, spec: Spec | None = None) -> list[Block]:
    """The ordered residual-stream units of a model.

    Args:
        model: a vitscope model (it defines ``vitscope_blocks()``) or any ``nn.Module``.
        spec: for other models, kind -> fnmatch pattern(s) over module names, e.g.
            ``{"msa": "blocks.*.attn", "mlp": "blocks.*.mlp"}``. Matches keep
            ``named_modules()`` order, all in stage 0.

    Returns:
        The units, stem first and head last for vitscope models.

    Raises:
        VitscopeError: unknown kind, a pattern that matches nothing, a module matched by two
            kinds, or an unknown model without a spec.
    """
    if spec is not None:
        return _blocks_from_spec(model, spec)
    own = getattr(model, "vitscope_blocks", None)
    if own is None:
        raise VitscopeError(
            f"{type(model).__name__} does not list its blocks; pass a spec of module-name "
            "patterns, e.g. spec={'msa': 'blocks.*.attn', 'mlp': 'blocks.*.mlp'}"
        )
    return own()


def _blocks_from_spec(model: nn.Module, spec: Spec) -> list[Block]:
    patterns = {k: [p] if isinstance(p, str) else list(p) for k, p in spec.items()}
    unknown = sorted(set(patterns) - set(KINDS))
    if unknown:
        raise VitscopeError(f"unknown block kind(s) {unknown} in spec; valid: {', '.join(KINDS)}")
    modules = list(model.named_modules())
    missing = [
        p for ps in patterns.values() for p in ps if not any(fnmatchcase(n, p) for n, _ in modules)
    ]
    if missing:
        raise VitscopeError(
            f"spec pattern(s) {missing} match no module of {type(model).__name__}; "
            f"module names look like {[n for n, _ in modules if n][:5]}"
        )
    found = []
    for name, module in modules:
        kinds = {k for k, ps in patterns.items() if any(fnmatchcase(name, p) for p in ps)}
        if len(kinds) > 1:
            raise VitscopeError(f"module {name!r} matches several kinds in spec: {sorted(kinds)}")
        if kinds:
            found.append(Block(name, kinds.pop(), 0, module))
    return found


def feature_maps(model: nn.Module, x: torch.Tensor, spec: Spec | None = None) -> list[torch.Tensor]:
    """Outputs of every unit but the head, as ``(B, C, H, W)`` maps, from one forward pass.

    Tokens ``(B, N, C)`` become ``(B, C, sqrt(N'), sqrt(N'))`` after dropping the
    ``model.num_prefix_tokens`` leading (CLS) tokens; channel-last maps (models with
    ``channels_last_features = True``, e.g. Swin) are permuted. The model's mode is left as it
    is and gradients are not disabled (wrap the call in ``torch.no_grad()`` if unwanted).

    Args:
        model: the model.
        x: an input batch ``(B, C_in, H, W)``.
        spec: module-name patterns for models without ``vitscope_blocks()`` (see :func:`blocks`).

    Returns:
        One map per unit, in stream order.
    """
    units = [b for b in blocks(model, spec) if b.kind != "head"]
    outputs: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_module, _inputs, output):
            outputs[i] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    handles = []
    try:
        for i, b in enumerate(units):
            handles.append(b.module.register_forward_hook(keep(i)))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    missed = [b.name for i, b in enumerate(units) if i not in outputs]
    if missed:
        raise VitscopeError(f"units {missed} were not called in the forward pass")
    return [_to_map(outputs[i], model, b.name) for i, b in enumerate(units)]


def _to_map(t: torch.Tensor, model: nn.Module, name: str) -> torch.Tensor:
    if t.ndim == 4:
        channels_last = getattr(model, "channels_last_features", None)
        if channels_last is None:  # unknown model: (B, H, H, C) with C != H is channel-last
            channels_last = t.shape[1] == t.shape[2] != t.shape[3]
        return t.permute(0, 3, 1, 2) if channels_last else t
    if t.ndim != 3:
        raise VitscopeError(f"unit {name!r} outputs shape {tuple(t.shape)}, not a feature map")
    n = t.shape[1]
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:  # unknown model: drop one CLS token if that leaves a square grid
        prefix = 1 if not _is_square(n) and _is_square(n - 1) else 0
    side = math.isqrt(n - prefix)
    if side * side != n - prefix:
        raise VitscopeError(f"unit {name!r} has {n - prefix} patch tokens, not a square grid")
    return rearrange(t[:, prefix:], "b (h w) c -> b c h w", h=side)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


class _SkipPath(nn.Module):
    """Stands in for a removed unit: only the unit's ``skip`` path (e.g. a projection)."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self._unit = (unit,)  # a tuple keeps the removed unit out of the module tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._unit[0].skip(x)


@contextmanager
def replace_unit(model: nn.Module, block: Block) -> Iterator[nn.Module]:
    """Temporarily remove a residual unit (lesion study, ``docs/methods/lesion.md#lesion-study``).

    The unit is replaced by its skip path: ``nn.Identity()``, or the unit's ``skip`` method
    where it has one (a projection, e.g. the first block of a bottleneck ResNet, which changes
    the channel count). The original module is restored on exit.

    Args:
        model: the model that owns the unit.
        block: one of ``blocks(model)``.

    Yields:
        The model, with the unit removed.

    Raises:
        VitscopeError: for the stem, the head and units that change the spatial size.
    """
    if block.kind in ("stem", "head") or block.downsample:
        what = "a downsampling unit" if block.downsample else f"the {block.kind}"
        raise VitscopeError(f"cannot remove {block.name!r}: it is {what}, not a residual unit")
    parent_name, _, attr = block.name.rpartition(".")
    parent = model.get_submodule(parent_name)
    original = getattr(parent, attr)
    if original is not block.module:
        raise VitscopeError(f"{block.name!r} is not the module of this block; was it replaced?")
    setattr(parent, attr, _SkipPath(original) if hasattr(original, "skip") else nn.Identity())
    try:
        yield model
    finally:
        setattr(parent, attr, original)
