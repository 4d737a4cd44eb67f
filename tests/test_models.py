"""The model zoo: every variant builds, runs, back-propagates and has the paper's size."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from torch import nn

from vitscope.errors import ConfigError, VitscopeError
from vitscope.models import create_model, list_models
from vitscope.models.layers import Attention, DropPath, use_fused_attention

TINY = [n for n in list_models() if n.endswith("_tiny")]
PAPER = [n for n in list_models() if n not in TINY]

# Spec §9, 100 classes: (millions, tolerance); pit_ti and swin_ti are approximate there.
PAPER_PARAMS = {
    "resnet18": (11.22, 0.005),
    "resnet50": (23.71, 0.005),
    "vit_ti": (5.40, 0.005),
    "alternet50": (33.0, 0.05),
    "pit_ti": (4.6, 0.1),
    "swin_ti": (27.6, 0.1),
}


@functools.cache
def paper_model(name: str) -> nn.Module:
    """Paper-sized models are slow to build: one shared eval-mode instance per name."""
    torch.manual_seed(0)
    return create_model(name, num_classes=100).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    if name in PAPER:  # shape only: one image, no gradient
        with torch.no_grad():
            out = paper_model(name)(torch.randn(1, 3, 32, 32))
        assert out.shape == (1, 100) and torch.isfinite(out).all()
        return
    for size, chans in ((28, 1), (32, 3)):
        torch.manual_seed(0)
        model = create_model(name, num_classes=5, in_chans=chans, img_size=size)
        out = model(torch.randn(2, chans, size, size))
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        assert model.num_classes == 5
        nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient at {pname}"
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_parameter_counts(name):
    expected, tol = PAPER_PARAMS[name]
    assert n_params(paper_model(name)) / 1e6 == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_small(name):
    assert n_params(create_model(name, num_classes=10, in_chans=1, img_size=28)) < 500_000


def test_drop_path_is_linear_in_depth():
    model = create_model("vit_tiny", num_classes=10, drop_path=0.1)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    for name in TINY:
        model = create_model(name, num_classes=10, drop_path=0.2)
        assert max(m.p for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.2)


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(VitscopeError, match=r"unknown model 'vit_huge'.*vit_tiny"):
        create_model("vit_huge", num_classes=10)


def test_unknown_override_names_key_and_model():
    with pytest.raises(ConfigError, match=r"model 'vit_tiny'.*'bogus'.*valid:.*depth"):
        create_model("vit_tiny", num_classes=10, bogus=1)


def test_invalid_values_raise_config_errors():
    with pytest.raises(ConfigError, match="alternet_tiny.*msas"):
        create_model("alternet_tiny", num_classes=10, msas=(0, 2, 1, 1))
    with pytest.raises(ConfigError, match="head"):
        create_model("pit_tiny", num_classes=10, head="max")


def test_vit_rejects_other_input_sizes():
    model = create_model("vit_tiny", num_classes=10, img_size=32)
    with pytest.raises(VitscopeError, match="img_size=28"):
        model(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("name", ["vit_tiny", "pit_tiny"])
def test_gap_head_has_no_cls_token(name):
    cls = create_model(name, num_classes=10, in_chans=1, img_size=28)
    gap = create_model(name, num_classes=10, in_chans=1, img_size=28, head="gap")
    assert gap.num_prefix_tokens == 0 and cls.num_prefix_tokens == 1
    assert n_params(gap) < n_params(cls)
    assert gap(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_fused_attention_matches_explicit_path():
    x = torch.randn(2, 3, 32, 32)
    for name in ("vit_tiny", "swin_tiny", "alternet_tiny"):
        model = create_model(name, num_classes=10).eval()
        with torch.no_grad():
            explicit = model(x)
            with use_fused_attention():
                fused = model(x)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)


def test_hessian_vector_product_through_attention(hvp_error):
    """Double backward through explicit attention; Hv matches central differences of the grad."""
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, in_chans=1, img_size=28).double().eval()
    x, y = torch.randn(2, 1, 28, 28, dtype=torch.float64), torch.tensor([1, 7])
    loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    assert hvp_error(loss, list(model.parameters())) < 1e-4


def reference_window_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Brute force: each query attends to the real tokens of its (shifted) window that are
    contiguous with it in the original map, with the table bias of their 2-D offset."""
    _, h, w, _ = x.shape
    win, shift = attn.window, attn.shift
    if max(h, w) <= win:
        win, shift = max(h, w), 0
    hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
    q, k, v = attn.qkv(x[0]).unflatten(-1, (3, attn.heads, -1)).unbind(2)  # (H, W, heads, d)
    table, t = attn.relative_position_bias_table, attn.window  # ((2t-1)^2, heads|1)
    out = torch.zeros_like(q)
    for i, j in itertools.product(range(h), range(w)):
        si, sj = (i - shift) % hp, (j - shift) % wp
        keys = [
            (a, b)
            for a, b in itertools.product(range(h), range(w))
            if ((a - shift) % hp) // win == si // win
            and ((b - shift) % wp) // win == sj // win
            and (a - shift) % hp - si == a - i
            and (b - shift) % wp - sj == b - j
        ]
        ks = torch.stack([k[a, b] for a, b in keys])  # (K, heads, d)
        vs = torch.stack([v[a, b] for a, b in keys])
        bias = torch.stack(
            [table[(i - a + t - 1) * (2 * t - 1) + (j - b + t - 1)] for a, b in keys]
        )
        logits = torch.einsum("hd,khd->kh", q[i, j], ks) / math.sqrt(q.shape[-1]) + bias
        out[i, j] = torch.einsum("kh,khd->hd", logits.softmax(dim=0), vs)
    return attn.proj(out.flatten(-2))[None]


@pytest.mark.parametrize(
    "h,w,window,shift",
    [
        (8, 8, 4, 0),
        (8, 8, 4, 2),
        (7, 7, 4, 0),
        (7, 7, 4, 2),
        (5, 7, 4, 2),
        (3, 3, 4, 2),
        (6, 6, 3, 1),
    ],
)
@pytest.mark.parametrize("rel_pos", ["per_head", "shared"])
def test_window_attention_matches_brute_force(h, w, window, shift, rel_pos):
    torch.manual_seed(0)
    attn = Attention(8, heads=2, window=window, shift=shift, rel_pos=rel_pos).double()
    x = torch.randn(1, h, w, 8, dtype=torch.float64)
    torch.testing.assert_close(attn(x), reference_window_attention(attn, x))
