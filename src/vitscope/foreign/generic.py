"""The generic decomposition: residual blocks found from the module tree and one forward pass.

For a model no curated rule knows. A *block class* is a module class (not a bare
``Sequential``/``ModuleList``, not a leaf) of which at least two instances sit in containers,
as the blocks of stages do. The units are the called instances of block
classes that hold no other block-class instance (the innermost repeated level: the blocks
of a stage, not the stages), in call order; each unit's output is the stream after it.
Modules called between two units that change the stream's shape (patch merging, a stage's
downsampling conv) become ``pool`` units. The first module the input reaches is the stem
when it is not a unit itself; the last module called is the head.

Coarser than a rule: a transformer block is one unit (``msa``), not an MSA and an MLP unit.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ..errors import VitscopeError
from ..models.blocks import Block, _first
from .rules import has_attention, has_conv

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _block_classes(model: nn.Module) -> set[type]:
    """Classes with two or more instances held by containers (across stages: a ResNet with
    one block per stage still has four)."""
    counts: Counter = Counter()
    for parent in model.modules():
        if isinstance(parent, _CONTAINERS):
            for child in parent.children():
                if type(child) not in _CONTAINERS and any(True for _ in child.children()):
                    counts[type(child)] += 1
    return {cls for cls, n in counts.items() if n >= 2}


def _kind(module: nn.Module) -> str:
    if has_attention(module):
        return "msa"
    return "conv" if has_conv(module) else "mlp"


def generic_units(model: nn.Module, x: torch.Tensor) -> list[Block]:
    """The generic units of ``model`` for input ``x`` (stage 0; annotate gives stages).

    Raises:
        VitscopeError: no repeated blocks were found or called.
    """
    classes = _block_classes(model)
    names = {id(m): n for n, m in model.named_modules()}
    candidates = {
        id(m): m
        for m in model.modules()
        if type(m) in classes and not any(type(s) in classes for s in m.modules() if s is not m)
    }
    calls: list[tuple[int, str, nn.Module, tuple, tuple]] = []  # (end order, event, ...)
    starts: dict[int, int] = {}
    order = [0]

    def pre(module, inputs):
        starts.setdefault(id(module), order[0])
        order[0] += 1

    def post(module, inputs, output):
        out, inp = _first(output), _first(inputs)
        if isinstance(out, torch.Tensor):
            shape_in = tuple(inp.shape) if isinstance(inp, torch.Tensor) else ()
            calls.append((starts.get(id(module), -1), order[0], module, shape_in, tuple(out.shape)))
        order[0] += 1

    handles = []
    for m in model.modules():
        if m is not model:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    seen: set[int] = set()
    unit_calls = []
    for start, end, m, shape_in, shape_out in sorted(calls, key=lambda c: c[0]):
        if id(m) in candidates and id(m) not in seen:
            seen.add(id(m))
            unit_calls.append((start, end, m, shape_in, shape_out))
    if len(unit_calls) < 2:
        raise VitscopeError(
            f"{type(model).__name__}: no repeated residual blocks found; describe its units "
            'with --blocks \'{"msa": "...", "mlp": "..."}\''
        )
    units: list[Block] = []
    first_start = unit_calls[0][0]
    stem = _outermost(calls, -1, first_start, lambda c: c[2] is not model)
    if stem is not None:
        units.append(Block(names[id(stem[2])], "stem", 0, stem[2]))
    else:
        first = unit_calls[0][2]
        units.append(Block(names[id(first)], "stem", 0, first))
        unit_calls = unit_calls[1:]
    for k, (start, _end, m, shape_in, _out) in enumerate(unit_calls):
        if k and units and shape_in != unit_calls[k - 1][4]:
            prev_end = unit_calls[k - 1][1]
            pool = _outermost(calls, prev_end, start, lambda c, s=shape_in: c[4] == s)
            if pool is not None:
                units.append(Block(names[id(pool[2])], "pool", 0, pool[2]))
        units.append(Block(names[id(m)], _kind(m), 0, m))
    head = max(calls, key=lambda c: c[1])[2]
    if head is not units[-1].module:
        units.append(Block(names[id(head)], "head", 0, head))
    return units


def _outermost(calls, after: int, before: int, keep):
    """The outermost call that starts after ``after`` and ends before ``before``."""
    inside = [c for c in calls if c[0] > after and c[1] < before and keep(c)]
    if not inside:
        return None
    outer = [c for c in inside if not any(o[0] < c[0] and o[1] > c[1] for o in inside)]
    return max(outer, key=lambda c: c[1])


__all__ = ["generic_units"]
