"""Shared building blocks: every family (ResNet, ViT, PiT, Swin, AlterNet) composes these.

The residual stream is the thing the analyses look at, so each residual unit is one module
(:class:`ResidualUnit` or a conv block) whose ``forward`` maps stream -> stream.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import ConfigError, VitscopeError

_FUSED_ATTENTION = False
_MASK_VALUE = -100.0  # additive logit for forbidden pairs; finite, so fully masked rows stay finite


@contextmanager
def use_fused_attention(enabled: bool = True) -> Iterator[None]:
    """Route :class:`Attention` through ``F.scaled_dot_product_attention`` inside the block.

    The default explicit ``softmax(QK^T)V`` path supports double backward (Hessian-vector
    products); fused CPU kernels do not, so only switch this on for first-order work.

    Args:
        enabled: use the fused kernel while the context is active.
    """
    global _FUSED_ATTENTION
    previous, _FUSED_ATTENTION = _FUSED_ATTENTION, enabled
    try:
        yield
    finally:
        _FUSED_ATTENTION = previous


@contextmanager
def math_attention(model: nn.Module | None = None) -> Iterator[None]:
    """Attention on a path with a double backward, for any model, restored on exit.

    Hessian-vector products differentiate twice; the fused kernels behind
    ``F.scaled_dot_product_attention`` (flash, memory-efficient, fused CPU) have no double
    backward. Inside: vitscope's :class:`Attention` takes its explicit path, every module with
    timm's ``fused_attn`` switch has it off, and ``scaled_dot_product_attention`` (timm,
    torchvision, Hugging Face ``sdpa``) runs on the math backend.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mods = model.modules() if model is not None else ()
    switches = [m for m in mods if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in switches]
    try:
        for m in switches:
            m.fused_attn = False
        with use_fused_attention(False), sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m, value in zip(switches, saved):
            m.fused_attn = value


def drop_path_rates(drop_path: float, n: int) -> list[float]:
    """Stochastic-depth rate of each of ``n`` units, linear in depth: ``sd * i / (n - 1)``."""
    if n <= 1:
        return [0.0] * n
    return [drop_path * i / (n - 1) for i in range(n)]


def init_weights(module: nn.Module) -> None:
    """timm-style init: truncated-normal linears, Kaiming convs, unit norms (use with ``apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample (Huang et al., 2016)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, ...)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class ResidualUnit(nn.Module):
    """``x + drop_path(fn(norm(x)))``: one pre-norm residual unit of the stream."""

    def __init__(self, fn: nn.Module, *, norm: nn.Module | None = None, drop_path: float = 0.0):
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.fn = fn
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fn(self.norm(x)))


class ConvBnAct(nn.Sequential):
    """``Conv2d (no bias) -> BatchNorm2d -> ReLU`` (ReLU optional), 'same' padding."""

    def __init__(
        self, in_dim: int, out_dim: int, kernel: int = 3, stride: int = 1, *, act: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_dim, out_dim, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_dim),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class PatchEmbed(nn.Module):
    """Non-overlapping patches as a conv with ``kernel = stride = patch`` (stride overridable).

    Maps ``(B, C_in, H, W) -> (B, dim, H', W')``.
    """

    def __init__(self, in_chans: int, dim: int, patch: int, *, stride: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride or patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    """``Linear -> GELU -> Linear`` over the last (channel) dimension."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` over the last two dims; any leading dims broadcast.

    ``bias`` is an additive float bias, or a boolean mask (True = the query may attend to the
    key) whose False pairs are left out of the softmax exactly; every row needs one True.
    Explicit by default so that double backward works; see :func:`use_fused_attention`.
    """
    if _FUSED_ATTENTION:
        if bias is not None and bias.dtype != torch.bool:
            bias = bias.to(q.dtype)  # autocast may have lowered q only
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (..., N, N)
    if bias is not None and bias.dtype == torch.bool:
        logits = logits.masked_fill(~bias, float("-inf"))
    elif bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


@functools.lru_cache(maxsize=32)
def _relative_index(win: int, table_win: int) -> torch.Tensor:
    """``(win^2, win^2)`` indices into a ``(2*table_win - 1)^2`` table of 2-D offsets."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + table_win - 1  # (2, N, N), >= 0
    return rel[0] * (2 * table_win - 1) + rel[1]


@functools.lru_cache(maxsize=64)
def _window_mask(h: int, w: int, win: int, shift: int) -> torch.Tensor | None:
    """Additive mask ``(nW, 1, N, N)`` for windows of an ``h x w`` map, or None if not needed.

    Tokens may attend only within their region of the cyclically shifted map (Swin), and
    never to the zero padding that makes the map a multiple of the window.
    """
    hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
    if shift == 0 and (hp, wp) == (h, w):
        return None
    label = torch.zeros(hp, wp, dtype=torch.long)  # region id in the shifted frame
    if shift:
        cuts = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
        for i, hs in enumerate(cuts):
            for j, ws in enumerate(cuts):
                label[hs, ws] = 3 * i + j
    pad = torch.zeros(hp, wp, dtype=torch.long)
    pad[h:, :] = 1
    pad[:, w:] = 1
    label = label + 9 * torch.roll(pad, (-shift, -shift), (0, 1))
    label = rearrange(label, "(nh p) (nw q) -> (nh nw) (p q)", p=win, q=win)  # (nW, N)
    mask = (label[:, :, None] != label[:, None, :]).float() * _MASK_VALUE  # (nW, N, N)
    return mask[:, None]


@functools.lru_cache(maxsize=32)
def _neighbourhood_mask(h: int, w: int, kernel: int) -> torch.Tensor | None:
    """Boolean mask ``(N, N)`` over an ``h x w`` token grid, or None if it allows every pair.

    Query ``(i, j)`` may attend key ``(a, b)`` iff ``|a - i| <= kernel // 2`` and
    ``|b - j| <= kernel // 2``: a centred ``kernel x kernel`` neighbourhood whose out-of-image
    part is simply absent (not zero keys), i.e. 2-D convolutional self-attention with
    ``padding = (kernel - 1) / 2`` and the padding excluded from the softmax.
    """
    r = kernel // 2
    if r >= max(h, w) - 1:
        return None
    rows = torch.arange(h).repeat_interleave(w)  # (N,) grid row of each token
    cols = torch.arange(w).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= r  # (N, N): query x key
    near_cols = (cols[:, None] - cols[None, :]).abs() <= r
    return near_rows & near_cols


class Attention(nn.Module):
    """Multi-head self-attention: global, local to a neighbourhood, or over windows of a 2-D map.

    Global (``window=None``): ``(B, N, dim) -> (B, N, out_dim)``.
    Local (``kernel=k``): the same on the tokens of a square ``n x n`` grid (``N = n^2``,
    row-major, no prefix tokens); each query attends only to the keys of its centred ``k x k``
    neighbourhood that lie inside the grid (convolutional self-attention, Yang et al. 2019).
    Windowed: ``(B, H, W, dim) -> (B, H, W, out_dim)`` over non-overlapping ``window x window``
    windows, optionally cyclically shifted (Swin, Liu et al. 2021). A map not divisible by the
    window is zero-padded and cropped back (padding is masked out of the keys); a map no larger
    than the window is attended globally with the window clamped to it and no shift.

    Args:
        dim: input channels.
        heads: number of heads.
        head_dim: channels per head (default ``dim // heads``).
        out_dim: output channels (default ``dim``).
        qkv_bias: bias on the query/key/value projection.
        window: window side, or None for global attention.
        kernel: odd side of the local neighbourhood on a square token grid, or None for
            global attention; exclusive with ``window``.
        shift: cyclic shift of the windows (Swin's shifted windows), ``< window``.
        rel_pos: relative-position bias inside windows: ``"per_head"`` (Swin: one table per
            head), ``"shared"`` (AlterNet: one scalar table for all heads) or None.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        head_dim: int | None = None,
        out_dim: int | None = None,
        qkv_bias: bool = False,
        window: int | None = None,
        kernel: int | None = None,
        shift: int = 0,
        rel_pos: str | None = None,
    ) -> None:
        super().__init__()
        if kernel is not None and (kernel < 1 or kernel % 2 == 0):
            raise ConfigError(f"attention kernel must be odd and >= 1, got {kernel}")
        if kernel is not None and window is not None:
            raise ConfigError("attention takes a kernel or a window, not both")
        if rel_pos not in (None, "per_head", "shared"):
            raise ConfigError(f"rel_pos must be None, 'per_head' or 'shared', got {rel_pos!r}")
        if rel_pos is not None and window is None:
            raise ConfigError("a relative-position bias needs a window")
        if window is not None and not 0 <= shift < window:
            raise ConfigError(f"shift must be in [0, window={window}), got {shift}")
        head_dim = head_dim or dim // heads
        self.heads, self.window, self.kernel, self.shift = heads, window, kernel, shift
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=qkv_bias)
        self.proj = nn.Linear(heads * head_dim, out_dim or dim)
        self.relative_position_bias_table = None
        if rel_pos is not None:
            table_heads = heads if rel_pos == "per_head" else 1
            table = torch.zeros((2 * window - 1) ** 2, table_heads)
            self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self._attend_tokens(x, self._neighbourhood(x))
        if self.window is None:
            return self._attend_tokens(x, None)
        return self._attend_windows(x)

    def _neighbourhood(self, x: torch.Tensor) -> torch.Tensor | None:
        n = math.isqrt(x.shape[-2])
        if n * n != x.shape[-2]:
            raise VitscopeError(
                f"local attention needs the tokens of a square grid, got {x.shape[-2]} tokens "
                "(a CLS token? use head='gap')"
            )
        mask = _neighbourhood_mask(n, n, self.kernel)
        return None if mask is None else mask.to(x.device)

    def _attend_tokens(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x: (..., N, dim) -> (..., N, out_dim)
        qkv = rearrange(self.qkv(x), "... n (three h d) -> three ... h n d", three=3, h=self.heads)
        out = attend(qkv[0], qkv[1], qkv[2], bias)  # (..., h, N, d)
        return self.proj(rearrange(out, "... h n d -> ... n (h d)"))

    def _attend_windows(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape  # (B, H, W, C)
        win, shift = self.window, self.shift
        if max(h, w) <= win:
            win, shift = max(h, w), 0
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            x = torch.roll(x, (-shift, -shift), (1, 2))
        x = rearrange(x, "b (nh p) (nw q) c -> b (nh nw) (p q) c", p=win, q=win)  # (B, nW, N, C)
        x = self._attend_tokens(x, self._window_bias(h, w, win, shift, x))
        x = rearrange(x, "b (nh nw) (p q) c -> b (nh p) (nw q) c", nh=hp // win, p=win, q=win)
        if shift:
            x = torch.roll(x, (shift, shift), (1, 2))
        return x[:, :h, :w]

    def _window_bias(
        self, h: int, w: int, win: int, shift: int, x: torch.Tensor
    ) -> torch.Tensor | None:
        """Relative-position bias ``(1|h, N, N)`` plus window mask ``(nW, 1, N, N)``."""
        bias = None
        if self.relative_position_bias_table is not None:
            index = _relative_index(win, self.window).to(x.device)
            bias = self.relative_position_bias_table[index].permute(2, 0, 1)  # (heads|1, N, N)
        mask = _window_mask(h, w, win, shift)
        if mask is not None:
            mask = mask.to(x.device, x.dtype)
            bias = mask if bias is None else bias + mask
        return bias


class TransformerBlock(nn.Module):
    """Pre-norm transformer block as two residual units: ``attn`` then ``mlp``."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
        window: int | None = None,
        kernel: int | None = None,
        shift: int = 0,
        rel_pos: str | None = None,
    ) -> None:
        super().__init__()
        attention = Attention(
            dim,
            heads=heads,
            qkv_bias=qkv_bias,
            window=window,
            kernel=kernel,
            shift=shift,
            rel_pos=rel_pos,
        )
        norm = functools.partial(nn.LayerNorm, dim, eps=1e-6)
        self.attn = ResidualUnit(attention, norm=norm(), drop_path=drop_path)
        self.mlp = ResidualUnit(Mlp(dim, int(dim * mlp_ratio)), norm=norm(), drop_path=drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class TokenStem(nn.Module):
    """Patch embedding, learned position embedding, optional CLS token: image -> tokens.

    ``(B, C, H, W) -> (B, prefix + h*w, dim)``. The position embedding is kept as a 2-D map
    ``(1, dim, h, w)`` (PiT style); a CLS token's own position term is folded into the token.
    """

    def __init__(
        self,
        in_chans: int,
        dim: int,
        *,
        patch: int,
        img_size: int,
        stride: int | None = None,
        cls_token: bool = True,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, dim, patch, stride=stride)
        self.grid = (img_size - patch) // (stride or patch) + 1
        if self.grid < 1:
            raise ConfigError(f"img_size {img_size} is smaller than the patch size {patch}")
        self.img_size = img_size
        pos = torch.zeros(1, dim, self.grid, self.grid)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(pos, std=0.02))
        self.cls_token = None
        if cls_token:
            self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, dim), std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise VitscopeError(
                f"this model was built for {self.img_size}x{self.img_size} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; create it with img_size={x.shape[-1]}"
            )
        x = rearrange(self.patch_embed(x) + self.pos_embed, "b c h w -> b (h w) c")
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x  # (B, prefix + N, dim)


class TokenHead(nn.Module):
    """LayerNorm, then the CLS token or the mean of the tokens, then a linear classifier.

    Accepts tokens ``(B, prefix + N, C)`` or a channel-last map ``(B, H, W, C)`` (Swin).

    Args:
        dim: channels.
        num_classes: classifier outputs.
        pool: ``"cls"`` (first token) or ``"gap"`` (mean over the non-prefix tokens).
        num_prefix_tokens: leading tokens that are not patches (CLS).
    """

    def __init__(
        self, dim: int, num_classes: int, *, pool: str = "gap", num_prefix_tokens: int = 0
    ) -> None:
        super().__init__()
        if pool not in ("cls", "gap"):
            raise ConfigError(f"head must be 'cls' or 'gap', got {pool!r}")
        self.pool, self.num_prefix_tokens = pool, num_prefix_tokens
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = rearrange(x, "b h w c -> b (h w) c")
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x[:, self.num_prefix_tokens :].mean(dim=1)
        return self.fc(x)  # (B, num_classes)


class GapHead(nn.Module):
    """Global average pooling of a ``(B, C, H, W)`` map, then a linear classifier.

    Args:
        dim: channels.
        num_classes: classifier outputs.
        pre_act: BatchNorm + ReLU before pooling (pre-activation networks).
    """

    def __init__(self, dim: int, num_classes: int, *, pre_act: bool = False) -> None:
        super().__init__()
        self.act = nn.Sequential(nn.BatchNorm2d(dim), nn.ReLU()) if pre_act else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(x).mean(dim=(2, 3)))  # (B, num_classes)
