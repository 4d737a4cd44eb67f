"""Local (convolutional) self-attention, the paper's locality ablation
(``docs/methods/alternet.md``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from vitscope.errors import ConfigError, VitscopeError
from vitscope.models import blocks, create_model
from vitscope.models.layers import Attention, use_fused_attention


def reference_local_attention(attn: Attention, x: torch.Tensor, side: int) -> torch.Tensor:
    """Brute force: each query of a ``side x side`` grid takes a softmax over only the in-grid
    keys of its centred ``k x k`` neighbourhood."""
    r = attn.kernel // 2
    q, k, v = attn.qkv(x[0]).unflatten(-1, (3, attn.heads, -1)).unbind(1)  # (N, heads, d)
    q, k, v = (t.unflatten(0, (side, side)) for t in (q, k, v))  # (side, side, heads, d)
    out = torch.zeros_like(q)
    for i, j in itertools.product(range(side), range(side)):
        keys = [
            (i + a, j + b)
            for a, b in itertools.product(range(-r, r + 1), repeat=2)
            if 0 <= i + a < side and 0 <= j + b < side
        ]
        ks = torch.stack([k[a, b] for a, b in keys])  # (K, heads, d)
        vs = torch.stack([v[a, b] for a, b in keys])
        logits = torch.einsum("hd,khd->kh", q[i, j], ks) / math.sqrt(q.shape[-1])
        out[i, j] = torch.einsum("kh,khd->hd", logits.softmax(dim=0), vs)
    return attn.proj(out.flatten(-2).flatten(0, 1))[None]


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("fused", [False, True])
def test_local_attention_matches_brute_force(kernel, fused):
    torch.manual_seed(0)
    side = 6
    attn = Attention(8, heads=2, kernel=kernel).double()
    x = torch.randn(1, side * side, 8, dtype=torch.float64)
    with use_fused_attention(fused):
        out = attn(x)
    torch.testing.assert_close(out, reference_local_attention(attn, x, side))


@pytest.mark.parametrize("kernel", [11, 13])
def test_kernel_covering_the_grid_is_global_attention(kernel):
    torch.manual_seed(0)
    local = Attention(8, heads=2, kernel=kernel).double()
    glob = Attention(8, heads=2).double()
    glob.load_state_dict(local.state_dict())
    x = torch.randn(2, 36, 8, dtype=torch.float64)  # 6x6 grid: 2 * 6 - 1 = 11 covers it
    assert torch.equal(local(x), glob(x))


def test_even_kernel_covering_the_grid_is_global_vit():
    x = torch.randn(2, 3, 32, 32)  # 8x8 tokens, the paper's "8x8" kernel
    torch.manual_seed(0)
    local = create_model("vit_local_tiny", num_classes=10, kernel=8).eval()
    torch.manual_seed(0)
    glob = create_model("vit_local_tiny", num_classes=10, kernel=None).eval()
    assert local.kernel is None
    with torch.no_grad():
        assert torch.equal(local(x), glob(x))


def test_global_vit_is_unchanged():
    """kernel=None/0 builds the same weights and outputs as the plain GAP-head ViT."""
    x = torch.randn(2, 1, 28, 28)
    models = []
    for name, kw in (
        ("vit_tiny", {}),
        ("vit_local_tiny", {"kernel": None}),
        ("vit_local_tiny", {"kernel": 0}),
    ):
        torch.manual_seed(0)
        models.append(
            create_model(name, num_classes=10, in_chans=1, img_size=28, head="gap", **kw).eval()
        )
    with torch.no_grad():
        outs = [m(x) for m in models]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("kernel", [3, 5, None])
@pytest.mark.parametrize("size,chans", [(28, 1), (32, 3)])
def test_vit_local_tiny_blocks_and_shapes(kernel, size, chans):
    torch.manual_seed(0)
    model = create_model(
        "vit_local_tiny", num_classes=10, in_chans=chans, img_size=size, kernel=kernel
    ).eval()
    assert [b.kind for b in blocks(model)] == ["stem"] + ["msa", "mlp"] * 6 + ["head"]
    assert model.num_prefix_tokens == 0 and model.kernel == kernel
    with torch.no_grad():
        assert model(torch.randn(2, chans, size, size)).shape == (2, 10)


def test_local_attention_is_local():
    """A token's output depends only on the inputs of its neighbourhood (one MSA unit)."""
    torch.manual_seed(0)
    attn = Attention(8, heads=2, kernel=3).double()
    x = torch.randn(1, 49, 8, dtype=torch.float64, requires_grad=True)
    attn(x)[0, 3 * 7 + 3].sum().backward()  # query at (3, 3) of a 7x7 grid
    touched = x.grad[0].abs().sum(-1).reshape(7, 7) > 0
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[2:5, 2:5] = True
    assert torch.equal(touched, expected)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"kernel": 4}, "odd"),
        ({"kernel": 2}, "odd"),
        ({"kernel": -3}, "positive odd"),
        ({"kernel": 3, "head": "cls"}, "head='gap'"),
    ],
)
def test_bad_kernels_raise(kw, match):
    with pytest.raises(ConfigError, match=f"vit_local_tiny.*{match}"):
        create_model("vit_local_tiny", num_classes=10, in_chans=1, img_size=28, **kw)


def test_attention_rejects_bad_kernels_and_non_square_grids():
    for kernel in (0, 2, -1):
        with pytest.raises(ConfigError, match="odd"):
            Attention(8, heads=2, kernel=kernel)
    with pytest.raises(ConfigError, match="not both"):
        Attention(8, heads=2, kernel=3, window=4)
    with pytest.raises(VitscopeError, match="square grid"):
        Attention(8, heads=2, kernel=3)(torch.randn(1, 50, 8))


def test_gradient_flows():
    torch.manual_seed(0)
    model = create_model("vit_local_tiny", num_classes=10, in_chans=1, img_size=28, kernel=5)
    out = model(torch.randn(2, 1, 28, 28))
    nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_vit_local_ti_has_vit_ti_size():
    """Locality adds no parameters: ViT-Ti sizes less the CLS token."""
    ti = create_model("vit_local_ti", num_classes=100)
    ref = create_model("vit_ti", num_classes=100, head="gap")
    assert sum(p.numel() for p in ti.parameters()) == sum(p.numel() for p in ref.parameters())


def test_hessian_vector_product_through_local_attention(hvp_error):
    """Double backward through the masked softmax: Hv matches central differences."""
    torch.manual_seed(0)
    attn = Attention(8, heads=2, kernel=3).double()
    x = torch.randn(2, 25, 8, dtype=torch.float64)
    assert hvp_error(lambda: attn(x).pow(2).sum(), list(attn.parameters())) < 1e-6
