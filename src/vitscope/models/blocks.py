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
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import torch
from einops import rearrange
from torch import nn

from ..errors import VitscopeError

KINDS = ("stem", "conv", "msa", "mlp", "pool", "head")
Spec = Mapping[str, str | Sequence[str]]  # kind -> fnmatch pattern(s) over module names


@dataclass(frozen=True)
class Tap:
    """Where a unit's stream is read: a module's output, or its first positional input.

    The input of the next norm is the stream after a functional residual add
    (``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``: the stream after the MSA is the input
    of ``norm2``), which no module outputs.
    """

    module: nn.Module
    where: str = "output"  # "output" (forward hook) or "input" (forward pre-hook)


@dataclass(frozen=True)
class Block:
    """One unit of the residual stream.

    Attributes:
        name: dotted module path, as in ``model.named_modules()``.
        kind: one of ``stem``, ``conv``, ``msa``, ``mlp``, ``pool``, ``head``.
        stage: stage index (0 for the stem; stages count from 1; the head comes last).
        module: the unit. Without ``tap`` its forward output is the stream after the unit.
        downsample: the unit changes the spatial size of the stream (stem excluded).
        tap: where the stream after the unit is read, when the module's output is not it
            (the module is a residual *branch*).
        branch: the unit's residual branch: a lesion zeroes its output, so the stream skips
            the unit (``x + 0``). ``None``: the lesion puts the unit's skip path in its place.
        skip: the unit's skip path when it is not the identity (a projection shortcut).
        layout: ``nchw``, ``nhwc`` or ``tokens`` (``(B, N, C)``); ``None``: guessed.
        prefix: leading tokens that are not patches (CLS, distillation, registers) in this
            unit's stream; ``None``: guessed (see :func:`feature_maps`).
    """

    name: str
    kind: str
    stage: int
    module: nn.Module
    downsample: bool = False
    tap: Tap | None = None
    branch: nn.Module | None = None
    skip: nn.Module | None = None
    layout: str | None = None
    prefix: int | None = None

    @property
    def point(self) -> Tap:
        """The tap the stream after this unit is read from."""
        return self.tap or Tap(self.module)


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
        model: a vitscope model (it defines ``vitscope_blocks()``), a wrapped foreign model
            (:func:`vitscope.foreign.wrap`, which defines it too) or any ``nn.Module``: then
            the units come from the curated rules for its family (timm, torchvision, Hugging
            Face) or the generic decomposition, with stage and downsample from the shapes of
            one forward pass (:func:`vitscope.foreign.describe`).
        spec: kind -> fnmatch pattern(s) over module names, e.g.
            ``{"msa": "blocks.*.attn", "mlp": "blocks.*.mlp"}``. Matches keep
            ``named_modules()`` order. Without a forward pass they all sit in stage 0;
            :func:`vitscope.foreign.wrap` gives them stages from their shapes.

    Returns:
        The units, stem first and head last for vitscope models.

    Raises:
        VitscopeError: unknown kind, a pattern that matches nothing, a module matched by two
            kinds, or a model no rule and no generic decomposition can describe.
    """
    if spec is not None:
        return _blocks_from_spec(model, spec)
    own = getattr(model, "vitscope_blocks", None)
    if own is not None:
        return own()
    from ..foreign import describe

    return describe(model)


def _split_pattern(p: str) -> tuple[str, str | None, str]:
    """``"unit -> tap[:input|:output]"`` -> (unit pattern, tap pattern or None, where)."""
    unit, arrow, tap = (part.strip() for part in p.partition("->"))
    if not arrow:
        return unit, None, "output"
    tap, _, where = tap.partition(":")
    if where not in ("", "input", "output"):
        raise VitscopeError(f"spec pattern {p!r}: the tap ends in :input or :output")
    return unit, tap.strip(), where or "output"


def _tap_name(unit_pattern: str, name: str, tap_pattern: str) -> str:
    """The tap's module name: the unit pattern's ``*`` values filled into the tap pattern."""
    groups = re.fullmatch(fnmatch_regex(unit_pattern), name).groups()
    parts = tap_pattern.split("*")
    if len(parts) - 1 > len(groups):
        raise VitscopeError(f"spec tap {tap_pattern!r} has more * than {unit_pattern!r}")
    return parts[0] + "".join(g + rest for g, rest in zip(groups, parts[1:]))


def fnmatch_regex(pattern: str) -> str:
    """A regex for a name pattern in which each ``*`` is a group (``blocks.*.attn``
    captures the block index), ``?`` any one character."""
    return "".join("(.*?)" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


def _blocks_from_spec(model: nn.Module, spec: Spec) -> list[Block]:
    """Units from ``kind -> pattern(s)``. A pattern names the module whose output is the
    stream after the unit (a whole block), or ``"branch -> tap:input"`` a residual branch and
    where the stream after it is read, e.g. ``"blocks.*.attn -> blocks.*.norm2:input"``; the
    lesion then zeroes the branch."""
    patterns = {k: [p] if isinstance(p, str) else list(p) for k, p in spec.items()}
    unknown = sorted(set(patterns) - set(KINDS))
    if unknown:
        raise VitscopeError(f"unknown block kind(s) {unknown} in spec; valid: {', '.join(KINDS)}")
    split = {k: [_split_pattern(p) for p in ps] for k, ps in patterns.items()}
    modules = list(model.named_modules())
    by_name = dict(modules)
    missing = [
        u
        for ps in split.values()
        for u, _, _ in ps
        if not any(fnmatchcase(n, u) for n, _ in modules)
    ]
    if missing:
        raise VitscopeError(
            f"spec pattern(s) {missing} match no module of {type(model).__name__}; "
            f"module names look like {[n for n, _ in modules if n][:5]}"
        )
    found = []
    for name, module in modules:
        hits = [(k, p) for k, ps in split.items() for p in ps if fnmatchcase(name, p[0])]
        kinds = {k for k, _ in hits}
        if len(kinds) > 1:
            raise VitscopeError(f"module {name!r} matches several kinds in spec: {sorted(kinds)}")
        if not hits:
            continue
        kind, (unit, tap_pattern, where) = hits[0]
        if tap_pattern is None:
            found.append(Block(name, kind, 0, module))
            continue
        tap_name = _tap_name(unit, name, tap_pattern)
        if tap_name not in by_name:
            raise VitscopeError(f"spec: unit {name!r} reads its stream at {tap_name!r}, "
                                "which is no module of the model")  # fmt: skip
        found.append(Block(name, kind, 0, module, tap=Tap(by_name[tap_name], where), branch=module))
    return found


def _first(value):
    """The tensor of a module's output: tuples/lists give their first item, ModelOutputs
    (and dicts) their first tensor."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first(value[0])
    if isinstance(value, Mapping):
        for v in value.values():
            if isinstance(v, torch.Tensor):
                return v
    return value


@contextmanager
def tapped(units: Sequence[Block]) -> Iterator[dict[int, torch.Tensor]]:
    """Hooks on each unit's tap while the context is open: ``out[i]`` is unit ``i``'s stream
    from the last forward pass (its raw tensor; :func:`to_map` makes it a map)."""
    outputs: dict[int, torch.Tensor] = {}

    def after(i: int):
        def hook(_module, _inputs, output):
            outputs[i] = _first(output)

        return hook

    def before(i: int):
        def hook(_module, args, kwargs):  # the stream: first positional, else first keyword
            outputs[i] = _first(args) if args else _first(kwargs)

        return hook

    handles = []
    try:
        for i, b in enumerate(units):
            tap = b.point
            if tap.where == "input":
                handles.append(tap.module.register_forward_pre_hook(before(i), with_kwargs=True))
            else:
                handles.append(tap.module.register_forward_hook(after(i)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def feature_maps(model: nn.Module, x: torch.Tensor, spec: Spec | None = None) -> list[torch.Tensor]:
    """The residual stream after every unit but the head, as ``(B, C, H, W)`` maps, from one
    forward pass.

    Each unit's stream is read at its tap (the module's output, or the input of the next
    norm where the residual add is functional). Tokens ``(B, N, C)`` become
    ``(B, C, sqrt(N'), sqrt(N'))`` after dropping the unit's prefix tokens (CLS, distillation,
    registers; only where they exist); channel-last maps (``layout="nhwc"``, e.g. Swin) are
    permuted. The model's mode is left as it is and gradients are not disabled (wrap the call
    in ``torch.no_grad()`` if unwanted).

    Args:
        model: the model.
        x: an input batch ``(B, C_in, H, W)``.
        spec: module-name patterns for models without ``vitscope_blocks()`` (see :func:`blocks`).

    Returns:
        One map per unit, in stream order.
    """
    units = [b for b in blocks(model, spec) if b.kind != "head"]
    with tapped(units) as outputs:
        model(x)
    missed = [b.name for i, b in enumerate(units) if i not in outputs]
    if missed:
        raise VitscopeError(f"units {missed} were not called in the forward pass")
    return [to_map(outputs[i], b, model) for i, b in enumerate(units)]


def layout_of(t: torch.Tensor, block: Block, model: nn.Module | None = None) -> str:
    """``nchw``, ``nhwc`` or ``tokens``: the block's declared layout, else from the shape."""
    if block.layout is not None:
        return block.layout
    if t.ndim == 3:
        return "tokens"
    if t.ndim == 4:
        channels_last = getattr(model, "channels_last_features", None)
        if channels_last is None:  # unknown model: (B, H, H, C) with C != H is channel-last
            channels_last = t.shape[1] == t.shape[2] != t.shape[3]
        return "nhwc" if channels_last else "nchw"
    raise VitscopeError(f"unit {block.name!r} outputs shape {tuple(t.shape)}, not a feature map")


def prefix_of(n: int, block: Block, model: nn.Module | None = None) -> int:
    """Leading non-patch tokens among ``n``: the block's, else the model's
    ``num_prefix_tokens`` where that leaves a square grid, else 0 for a square ``n``, else
    what the largest square grid leaves (CLS + distillation + register tokens)."""
    if block.prefix is not None:
        return block.prefix
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int) and _is_square(n - declared):
        return declared
    if _is_square(n):
        return 0
    return n - math.isqrt(n) ** 2


def to_map(t: torch.Tensor, block: Block, model: nn.Module | None = None) -> torch.Tensor:
    """A unit's stream tensor as a ``(B, C, H, W)`` map (see :func:`feature_maps`)."""
    layout = layout_of(t, block, model)
    want = 3 if layout == "tokens" else 4
    if t.ndim != want:
        raise VitscopeError(
            f"unit {block.name!r} outputs shape {tuple(t.shape)}, not {layout} as declared"
        )
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    if layout == "nchw":
        return t
    n = t.shape[1]
    prefix = prefix_of(n, block, model)
    side = math.isqrt(max(n - prefix, 0))
    if side == 0 or side * side != n - prefix:
        raise VitscopeError(f"unit {block.name!r} has {n - prefix} patch tokens, not a square grid")
    return rearrange(t[:, prefix:], "b (h w) c -> b c h w", h=side)


def annotate(units: Sequence[Block], shapes: Sequence[tuple[int, ...]]) -> list[Block]:
    """Stage and downsample of each unit from its stream's map shape ``(C, H, W)``.

    The stem is stage 0; stages count from 1 and a new one starts at each unit whose spatial
    size differs from the previous unit's (that unit downsamples); the head comes last.
    """
    out: list[Block] = []
    stage, side = 0, None
    for b, shape in zip(units, shapes):
        if b.kind == "head":
            out.append(replace(b, stage=stage + 1, downsample=False))
            continue
        here = tuple(shape[-2:])
        if b.kind == "stem":
            out.append(replace(b, stage=0, downsample=False))
        else:
            down = side is not None and here != side
            stage = 1 if stage == 0 else stage + int(down)  # the first unit after the stem: 1
            out.append(replace(b, stage=stage, downsample=down))
        side = here
    return out


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


class _SkipPath(nn.Module):
    """Stands in for a removed unit: only the unit's skip path (e.g. a projection)."""

    def __init__(self, skip) -> None:
        super().__init__()
        self._skip = (skip,)  # a tuple keeps the removed unit out of the module tree

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self._skip[0](x)


def _zeroed(output):
    """``output`` with its tensor(s) zeroed, keeping tuples (e.g. ``(out, attn_weights)``)."""
    if isinstance(output, torch.Tensor):
        return torch.zeros_like(output)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (torch.zeros_like(output[0]), *output[1:])
    raise VitscopeError(f"cannot zero a branch output of type {type(output).__name__}")


@contextmanager
def zero_output(module: nn.Module) -> Iterator[None]:
    """``module``'s output zeroed (its first tensor, for tuples) while the context is open."""
    handle = module.register_forward_hook(lambda _m, _i, out: _zeroed(out))
    try:
        yield
    finally:
        handle.remove()


def _owner(model: nn.Module, module: nn.Module) -> tuple[nn.Module, str]:
    """The parent module and attribute name that hold ``module`` in ``model``'s tree."""
    for parent in model.modules():
        for attr, child in parent.named_children():
            if child is module:
                return parent, attr
    raise VitscopeError(f"{type(module).__name__} is not part of the model; was it replaced?")


@contextmanager
def replace_unit(model: nn.Module, block: Block) -> Iterator[nn.Module]:
    """Temporarily remove a residual unit (lesion study, ``docs/methods/lesion.md#lesion-study``).

    A unit that names its residual ``branch`` keeps the residual and loses the branch (the
    branch's output is zeroed: ``x + 0``). Any other unit is replaced by its skip path:
    ``nn.Identity()``, or its ``skip`` (the block's field, else the unit's ``skip`` method: a
    projection, e.g. the first block of a bottleneck ResNet, which changes the channel
    count). The original is restored on exit.

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
    if block.branch is not None:
        with zero_output(block.branch):
            yield model
        return
    parent, attr = _owner(model, block.module)
    original = getattr(parent, attr)
    skip = block.skip if block.skip is not None else getattr(original, "skip", None)
    setattr(parent, attr, _SkipPath(skip) if skip is not None else nn.Identity())
    try:
        yield model
    finally:
        setattr(parent, attr, original)
