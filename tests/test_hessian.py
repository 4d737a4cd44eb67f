"""The Hessian-spectrum analysis against dense float64 Hessians (style rule 8).

Reference: ``torch.func.hessian`` of the same loss (soft-target NLL on the same augmented
batch, Mixup on, plus the same L2) over the same parameters, diagonalised with
``torch.linalg.eigvalsh``. Models: a tiny MLP, a CNN with BatchNorm (eval and train mode)
and Dropout, a one-head attention model, and vitscope's ``vit_tiny`` / ``resnet_tiny``
restricted to a few hundred parameters.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vitscope import create_model
from vitscope.analyses import Result, TrainData, hessian
from vitscope.config import from_dict, parse_overrides
from vitscope.curvature import dense_hessian, flatten, unflatten
from vitscope.data import BatchAugment
from vitscope.data.augment import soft_cross_entropy
from vitscope.errors import ConfigError
from vitscope.models.layers import DropPath, math_attention, use_fused_attention

F64 = torch.float64
WD = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- data and models


@functools.cache
def train_data(chans: int = 1, size: int = 6, classes: int = 3, n: int = 24) -> TrainData:
    """Random uint8 images through a real BatchAugment: crop, flip, Mixup, smoothing."""
    g = torch.Generator().manual_seed(chans * 100 + size)
    images = torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    aug = BatchAugment(
        mean=(0.5,) * chans,
        std=(0.25,) * chans,
        num_classes=classes,
        crop_padding=1,
        mixup_alpha=1.0,
        label_smoothing=0.1,
    )
    return TrainData(images, labels, aug, classes, WD, {"mixup_alpha": 1.0, "smoothing": 0.1})


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(36, 4), nn.Linear(4, 3)

    def forward(self, x):  # (B, 1, 6, 6)
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


class TinyCNN(nn.Module):
    """Conv-BN-ReLU twice, with Dropout and DropPath that must stay off during the analysis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4)
        self.drop, self.drop_path = nn.Dropout(0.5), DropPath(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # (B, 1, 6, 6)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 3, 6, 6)
        x = x + self.drop_path(x)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 4, 3, 3)
        return self.fc(self.drop(x.mean((2, 3))))


class TinyAttention(nn.Module):
    """Image rows as tokens, one head of explicit ``softmax(q kᵀ / sqrt(d)) v``."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.d = d
        self.embed, self.qkv = nn.Linear(6, d), nn.Linear(d, 3 * d)
        self.proj, self.head = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):  # (B, 1, 6, 6) -> tokens (B, 6, 6)
        h = self.embed(x[:, 0])  # (B, T, d)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d), dim=-1)  # (B, T, T)
        h = h + self.proj(att @ v)
        return self.head(h.mean(1))


def perturb(model: nn.Module, seed: int = 0, bn_stats: bool = True) -> nn.Module:
    """Move off the init (zero biases, unit norms) and give BatchNorm non-trivial statistics.

    Weights get 10% multiplicative noise (depth does not blow the logits up), vectors
    additive noise; BatchNorm running statistics are random (``bn_stats``) or else
    calibrated on two training batches, so a deep net stays out of softmax saturation.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.mul_(1 + 0.1 * noise) if p.ndim >= 2 else p.add_(0.1 * noise)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            if bn_stats:
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
            else:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        if bns and not bn_stats:
            data = train_data(size=28)
            model.train()
            for i in (100, 101):
                model(data.batch(i, 16)[0])
            for m in bns:
                m.momentum = 0.1
    return model


def tiny_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = {"mlp": TinyMLP, "cnn": TinyCNN, "attention": TinyAttention}[name]()
    return perturb(model).double().eval()


def vitscope_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, img_size=28)
    return perturb(model, bn_stats=False).double().eval()


class BatchStatNorm(nn.Module):
    """Train-mode BatchNorm2d written out: biased batch variance, no running statistics.

    The reference for ``bn_mode="train"``: in torch 2.13 ``torch.func.hessian`` of
    ``F.batch_norm(..., training=True)`` gets the input x weight cross terms wrong (the
    result is not even symmetric), while autograd's double backward matches finite
    differences and this explicit form.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps

    def forward(self, x):  # (B, C, H, W)
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        scale = (self.weight / torch.sqrt(var.flatten() + self.eps)).view(1, -1, 1, 1)
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)


def dense_reference(model: nn.Module, data: TrainData, cfg: hessian.Config, index: int):
    """Dense Hessian of the analysis' loss on batch ``index`` over the selected parameters."""
    named = hessian.select_params(model, cfg.patterns)
    names, params = [n for n, _ in named], [p for _, p in named]
    x, t = data.batch(index, cfg.batch_size, seed=cfg.seed)
    x, t = x.to(F64), t.to(F64)
    wd = hessian.weight_decay(cfg, data)
    ref = copy.deepcopy(model).eval().requires_grad_(False)  # theta enters functionally
    if cfg.bn_mode == "train":
        for name, m in list(ref.named_modules()):
            if isinstance(m, nn.BatchNorm2d):
                parent, _, child = name.rpartition(".")
                setattr(ref.get_submodule(parent) if parent else ref, child, BatchStatNorm(m))

    def loss_of_flat(theta):
        ps = unflatten(theta, params)
        loss = soft_cross_entropy(functional_call(ref, dict(zip(names, ps)), (x,)), t)
        if cfg.l2 == "squared":
            loss = loss + 0.5 * wd * sum(p.pow(2).sum() for p in ps)
        elif cfg.l2 == "official":
            loss = loss + wd * sum(p.norm() for p in ps)
        return loss

    with math_attention(ref):  # timm's fused attention too: it has no double backward
        return dense_hessian(loss_of_flat, flatten(params).detach())


def by_magnitude(eigs: torch.Tensor, k: int) -> torch.Tensor:
    return eigs[torch.argsort(eigs.abs(), descending=True)][:k]


def exact_config(model: nn.Module, **kw) -> hessian.Config:
    """Lanczos run to the full dimension (tol out of reach): Ritz values are exact."""
    dim = sum(p.numel() for _, p in hessian.select_params(model, kw.get("params")))
    base = dict(batch_size=8, tol=1e-14, max_iter=dim, density_batches=0, trace_batches=0)
    return hessian.Config(**{**base, **kw})


def assert_matches_dense(result: Result, model, data, cfg) -> list[torch.Tensor]:
    """Top-k, largest and smallest of every batch against the dense Hessian; returns those."""
    dense = []
    for b, index in enumerate(result.values["batch_indices"]):
        dense.append(dense_reference(model, data, cfg, index))
        eigs = torch.linalg.eigvalsh(dense[-1])
        got = torch.tensor(result.values["eigenvalues"][b], dtype=F64)
        torch.testing.assert_close(got, by_magnitude(eigs, cfg.top_k), rtol=1e-6, atol=1e-9)
        assert result.values["largest"][b] == pytest.approx(eigs[-1].item(), rel=1e-6)
        assert result.values["smallest"][b] == pytest.approx(eigs[0].item(), rel=1e-6)
    return dense


# ---------------------------------------------------------------------- against dense Hessians


@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
@pytest.mark.parametrize("l2", ["none", "squared"])
def test_tiny_models_match_dense_hessian(name, l2):
    model, data = tiny_model(name), train_data()
    cfg = exact_config(model, batches=2, l2=l2)
    result = hessian.run(model, data, cfg)
    assert_matches_dense(result, model, data, cfg)
    eigs = result.values["eigenvalues"]
    assert len(eigs) == 2 and all(len(e) == cfg.top_k for e in eigs)
    assert eigs[0] != eigs[1]  # two different augmented batches
    assert result.values["summary"]["min"] < 0 < result.values["summary"]["max"]
    assert all(result.values["converged"])


@pytest.mark.parametrize(
    "name, params",
    [
        ("vit_tiny", "blocks.5.attn.norm.*,head.fc.bias"),  # upstream of attention
        ("resnet_tiny", "stages.3.1.branch.1.1.*,head.fc.bias"),  # the last BatchNorm
    ],
)
def test_vitscope_models_match_dense_hessian(name, params):
    model, data = vitscope_model(name), train_data(size=28)
    cfg = exact_config(
        model,
        params=params,
        batches=1,
        l2="squared",
        density_batches=1,
        slq_probes=30,
        slq_steps=8,
        trace_batches=1,
        trace_samples=100,
    )
    with use_fused_attention(True):  # the analysis must switch to the explicit path itself
        result = hessian.run(model, data, cfg)
    (h,) = assert_matches_dense(result, model, data, cfg)
    eigs, dim = torch.linalg.eigvalsh(h), h.shape[0]
    op = result.values["operator"]
    assert op["num_params"] == dim == 131 and op["params"] == params
    assert op["transform"] == data.transform and op["weight_decay"] == WD
    # Hutchinson: within 3 standard errors of the exact trace
    tr = result.values["trace"][0]
    exact = torch.trace(h).item()
    print(f"\n{name}: trace {exact:.5g}, Hutchinson {tr['estimate']:.5g} ± {tr['std_error']:.2g}")
    assert tr["num_samples"] == 100 and abs(tr["estimate"] - exact) <= 3 * tr["std_error"]
    # SLQ: the first two moments of the spectral density, within 4 standard errors
    nodes, weights = result.arrays["density_nodes"][0], result.arrays["density_weights"][0]
    assert nodes.shape == weights.shape == (30, 8)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-9)
    for p in (1, 2):
        per_probe = (weights * nodes**p).sum(-1)
        se = per_probe.std(ddof=1) / math.sqrt(len(per_probe))
        exact_p = eigs.pow(p).mean().item()
        assert result.values["density"][f"moment{p}"][0] == pytest.approx(per_probe.mean())
        assert abs(per_probe.mean() - exact_p) <= 4 * se, (p, per_probe.mean(), exact_p, se)


def test_default_tolerance_is_close_to_exact():
    model, data = tiny_model("attention"), train_data()
    result = hessian.run(model, data, hessian.Config(batches=1, batch_size=8, trace_batches=0))
    h = dense_reference(model, data, exact_config(model, l2="none"), 0)
    eigs = torch.linalg.eigvalsh(h)
    got = torch.tensor(result.values["eigenvalues"][0], dtype=F64)
    ref = by_magnitude(eigs + WD, 5)  # default l2: squared, the run's weight decay
    assert result.values["converged"][0] and result.values["num_matvecs"][0] < 60
    assert ((got - ref).abs() / ref.abs()).max() < 1e-2


# ----------------------------------------------------------------------------- the L2 term


def test_squared_l2_shifts_every_eigenvalue_by_wd():
    model, data = tiny_model("cnn"), train_data()
    kw = dict(batches=1, density_batches=1, slq_probes=2, slq_steps=6, weight_decay=0.3)
    none = hessian.run(model, data, exact_config(model, l2="none", **kw))
    sq = hessian.run(model, data, exact_config(model, l2="squared", **kw))
    v0, v1 = none.values, sq.values
    assert v1["largest"][0] == pytest.approx(v0["largest"][0] + 0.3, abs=1e-9)
    assert v1["smallest"][0] == pytest.approx(v0["smallest"][0] + 0.3, abs=1e-9)
    # same probes, same Krylov spaces: every SLQ node moves by wd, no weight changes
    np.testing.assert_allclose(
        sq.arrays["density_nodes"], none.arrays["density_nodes"] + 0.3, rtol=0, atol=1e-9
    )
    np.testing.assert_allclose(
        sq.arrays["density_weights"], none.arrays["density_weights"], atol=1e-9
    )
    theta = flatten([p.detach() for p in model.parameters()])
    l2 = 0.5 * 0.3 * theta.pow(2).sum().item()
    assert v1["l2"][0] == pytest.approx(l2) and v0["l2"][0] == 0
    assert v1["loss"][0] == pytest.approx(v0["loss"][0] + l2)
    assert v1["nll"][0] == v0["nll"][0]
    assert sq.values["operator"]["weight_decay"] == 0.3
    assert none.values["operator"]["weight_decay"] == 0.0


def test_official_l2_matches_its_dense_hessian():
    model, data = tiny_model("mlp"), train_data()
    cfg = exact_config(model, batches=1, l2="official")
    result = hessian.run(model, data, cfg)
    assert_matches_dense(result, model, data, cfg)
    # its Hessian is not wd·I: the spectrum does not just shift
    h_off = dense_reference(model, data, cfg, 0)
    h_none = dense_reference(model, data, exact_config(model, batches=1, l2="none"), 0)
    diff = h_off - h_none
    assert not torch.allclose(diff, WD * torch.eye(len(diff), dtype=F64), atol=1e-3)
    norms = sum(p.detach().norm().item() for p in model.parameters())
    assert result.values["l2"][0] == pytest.approx(WD * norms)


# ------------------------------------------------------------------------- model state


def snapshot(model: nn.Module) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def assert_same(a: dict, b: dict) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert all(torch.equal(x, y) for x, y in zip(a["buffers"], b["buffers"]))
    assert all(
        (x is None and y is None) or torch.equal(x, y) for x, y in zip(a["grads"], b["grads"])
    )
    for key in ("grad_ids", "requires_grad", "training"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_model_state_unchanged_and_bn_mode(bn_mode):
    model, data = tiny_model("cnn"), train_data()
    model.train()
    model.bn2.eval()  # a mixed state, to be restored per module
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.conv1.bias.requires_grad_(False)  # frozen: left out of the Hessian, flag restored
    before = snapshot(model)
    cfg = exact_config(model, batches=1, bn_mode=bn_mode, trace_batches=1, trace_samples=3)
    result = hessian.run(model, data, cfg)
    assert_same(before, snapshot(model))
    assert result.values["operator"]["bn_mode"] == bn_mode
    assert result.values["operator"]["num_params"] == before["params"][0].numel() + sum(
        p.numel() for p in before["params"][2:]
    )
    # batch statistics through BatchNorm, Dropout and DropPath off: the dense reference
    ref_model = copy.deepcopy(model).eval()
    assert_matches_dense(result, ref_model, data, cfg)


def test_bn_modes_differ():
    model, data = tiny_model("cnn"), train_data()
    ev = hessian.run(model, data, exact_config(model, batches=1, bn_mode="eval"))
    tr = hessian.run(model, data, exact_config(model, batches=1, bn_mode="train"))
    assert ev.values["largest"][0] != pytest.approx(tr.values["largest"][0], rel=1e-3)


# ---------------------------------------------------------------------------- resume


def test_kill_and_resume_gives_the_same_result(tmp_path, monkeypatch):
    model, data = tiny_model("cnn"), train_data()
    cfg = hessian.Config(
        batches=4,
        batch_size=8,
        top_k=3,
        density_batches=2,
        slq_probes=2,
        slq_steps=5,
        trace_batches=3,
        trace_samples=4,
    )
    full = hessian.ANALYSIS.execute(model, data, cfg, workdir=tmp_path / "a")
    assert full.values["resumed_batches"] == 0

    real = hessian.analyze_batch

    def killed_at_2(model, data, cfg, index):
        if index == 2:
            raise KeyboardInterrupt("killed")
        return real(model, data, cfg, index)

    monkeypatch.setattr(hessian, "analyze_batch", killed_at_2)
    with pytest.raises(KeyboardInterrupt):
        hessian.ANALYSIS.execute(model, data, cfg, workdir=tmp_path / "b")
    partial = json.loads((tmp_path / "b" / "hessian.partial.json").read_text())
    assert sorted(partial["items"]) == ["0", "1"]
    monkeypatch.setattr(hessian, "analyze_batch", real)

    resumed = hessian.ANALYSIS.execute(model, data, cfg, workdir=tmp_path / "b")
    assert resumed.values["resumed_batches"] == 2
    timing = {"seconds", "seconds_total", "resumed_batches"}
    for key, value in full.values.items():
        if key not in timing:
            assert resumed.values[key] == value, key
    assert full.arrays.keys() == resumed.arrays.keys()
    for key, a in full.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[key], a)

    # more batches: the finished ones are kept
    more = hessian.ANALYSIS.execute(model, data, replace(cfg, batches=5), workdir=tmp_path / "b")
    assert more.values["resumed_batches"] == 4
    assert more.values["eigenvalues"][:4] == full.values["eigenvalues"]
    # another config or another model state: start over
    with pytest.warns(UserWarning, match="starting over"):
        other = hessian.ANALYSIS.execute(model, data, replace(cfg, top_k=2), workdir=tmp_path / "b")
    assert other.values["resumed_batches"] == 0
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    with pytest.warns(UserWarning, match="starting over"):
        moved = hessian.ANALYSIS.execute(model, data, replace(cfg, top_k=2), workdir=tmp_path / "b")
    assert moved.values["resumed_batches"] == 0
    # a torn file is ignored
    (tmp_path / "b" / "hessian.partial.json").write_text("{")
    with pytest.warns(UserWarning, match="unreadable"):
        hessian.ANALYSIS.execute(model, data, replace(cfg, batches=1), workdir=tmp_path / "b")


# ------------------------------------------------------------------- attention models, result


@pytest.mark.parametrize(
    "name, params",
    [  # parameters whose second derivatives pass through softmax(QKᵀ)
        ("pit_tiny", "stages.2.1.attn.fn.qkv.bias"),
        ("swin_tiny", "stages.2.2.attn.fn.relative_position_bias_table"),
        ("alternet_tiny", "stages.3.1.branch.2.attn.relative_position_bias_table"),
    ],
)
def test_runs_through_attention(name, params):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, img_size=28).eval()
    cfg = hessian.Config(
        batches=1,
        batch_size=4,
        top_k=2,
        max_iter=8,
        params=params,
        trace_batches=1,
        trace_samples=2,
        density_batches=0,
    )
    # fused CPU attention has no double backward: the analysis must switch it off itself
    with use_fused_attention(True):
        result = hessian.run(model, train_data(size=28), cfg)
    assert all(math.isfinite(v) for v in result.values["eigenvalues"][0])
    assert result.values["eigenvalues"][0][0] != 0
    assert result.values["num_matvecs"][0] <= 8


def test_result_saves_and_loads(tmp_path):
    model, data = tiny_model("mlp"), train_data()
    cfg = hessian.Config(batches=2, batch_size=8, slq_steps=5, trace_samples=3)
    result = hessian.run(model, data, cfg)
    result.meta["label"] = "MLP"
    result.save(tmp_path)
    back = Result.load(tmp_path, "hessian")
    assert back.name == "hessian"
    assert back.values == json.loads(json.dumps(result.values))
    assert back.config == json.loads(json.dumps(result.config))
    assert back.arrays["eigenvalues"].shape == (2, 5)
    assert back.arrays["density_nodes"].shape == (1, 2, 5)
    for k, a in result.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], a)
    v = back.values
    assert v["num_matvecs_total"] == sum(v["num_matvecs"]) + 2 * 5 + 3
    s = v["summary"]
    flat = np.concatenate(back.arrays["eigenvalues"])
    assert s["negative_fraction"] == pytest.approx((flat < 0).mean())
    assert s["max"] == flat.max() and s["min"] == flat.min()
    assert v["operator"]["l2"] == "squared" and v["operator"]["num_params"] == 163


# ------------------------------------------------------------------------------- config


def test_config_validation_and_overrides():
    for bad, field in [
        (dict(batches=0), "batches"),
        (dict(top_k=0), "top_k"),
        (dict(tol=0.0), "tol"),
        (dict(max_iter=3), "max_iter"),
        (dict(l2="l1"), "l2"),
        (dict(bn_mode="frozen"), "bn_mode"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(params=""), "params"),
        (dict(trace_samples=1), "trace_samples"),
        (dict(density_batches=-1), "density_batches"),
    ]:
        with pytest.raises(ConfigError, match=f"hessian.{field}") as e:
            hessian.Config(**bad)
        assert "\n" not in str(e.value)
    assert hessian.Config(params=("head.*", "blocks.0.*")) == hessian.Config(
        params="head.*, blocks.0.*"
    )
    assert hessian.Config(params=["head.*"]).patterns == ("head.*",)
    cfg = from_dict(
        hessian.Config,
        parse_overrides(["hessian.params=head.*,blocks.0.*", "hessian.weight_decay=1e-4"])[
            "hessian"
        ],
        "hessian",
    )
    assert cfg.patterns == ("head.*", "blocks.0.*") and cfg.weight_decay == 1e-4
    with pytest.raises(ConfigError, match="matches no parameter"):
        hessian.run(tiny_model("mlp"), train_data(), hessian.Config(params="nothing.*"))
    spec = hessian.ANALYSIS
    assert spec.split == "train" and spec.default_checkpoint == "warmup" and spec.resumable


# ------------------------------------------------------------------------------ figures


def fake_result(label: str, fraction: float, seed: int, neg: float) -> Result:
    family = "ViT" if label.startswith("ViT") else "ResNet"
    rng = np.random.default_rng(seed)
    eig = np.concatenate([rng.normal(40, 10, (6, 4)), rng.normal(-neg, 5, (6, 1))], 1)
    nodes = np.sort(rng.normal(0, 20, (1, 2, 10)), -1)
    w = rng.random((1, 2, 10))
    values = {"eigenvalues": eig.tolist()}
    arrays = {
        "eigenvalues": eig,
        "density_nodes": nodes,
        "density_weights": w / w.sum(-1, keepdims=True),
    }
    meta = {"label": label, "fraction": fraction, "family": family}
    return Result("hessian", values, arrays, meta=meta)


def test_figures_render(tmp_path):
    from vitscope.report import hessian_figures as hf
    from vitscope.report.figures import draw_figure

    results = [
        fake_result("ResNet", 1.0, 0, 1.0),
        fake_result("ViT", 1.0, 1, 30.0),
        fake_result("ViT (6%)", 0.06, 2, 35.0),
    ]
    fig = hf.spectrum_figure(results)
    ax_neg, ax_pos = fig.axes[:2]
    assert [t.get_text() for t in ax_pos.get_legend().get_texts()] == ["ResNet", "ViT", "ViT (6%)"]
    styles = [(ln.get_color(), ln.get_linestyle()) for ln in ax_pos.get_lines()[:3]]
    assert styles == [("tab:blue", "-"), ("tab:red", "-"), ("tab:red", "--")]
    assert ax_neg.get_xlim()[1] == 0 and ax_pos.get_xlim()[0] == 0
    fig.savefig(tmp_path / "spectrum.png")
    for figure in hessian.ANALYSIS.figures:
        draw_figure(results[1], figure).savefig(tmp_path / f"{figure.stem}.png")
    no_density = Result("hessian", {"eigenvalues": [[1.0, -0.5]]}, {})
    for figure in hessian.ANALYSIS.figures:
        draw_figure(no_density, figure)
    assert (tmp_path / "hessian_spectrum.png").stat().st_size > 0


def test_kde_is_a_density():
    from vitscope.report.hessian_figures import half_density

    v = np.array([-30.0, -28.0, 20.0, 25.0, 40.0])
    neg_grid, pos_grid = np.linspace(-200, 0, 20001), np.linspace(0, 200, 20001)
    neg = np.trapezoid(half_density(v[v < 0], neg_grid, v.size), neg_grid)
    pos = np.trapezoid(half_density(v[v >= 0], pos_grid, v.size), pos_grid)
    assert neg == pytest.approx(0.4, rel=1e-3) and pos == pytest.approx(0.6, rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert half_density(np.array([5.0]), pos_grid, 1).max() > 0


@pytest.mark.parametrize("name", ["cnn", "attention"])
def test_warm_started_batches_match_dense_hessians_with_fewer_products(name):
    """Batches 1.. started from batch 0's Ritz vectors find the same top-k as the dense
    float64 Hessian of each batch, to the same tolerance as cold starts, with fewer
    Hessian-vector products; batch 0 (the pilot) is the cold one, bit for bit."""
    model, data = tiny_model(name), train_data(n=48)
    cfg = hessian.Config(batches=5, batch_size=16, top_k=3, tol=1e-6, max_iter=200,
                         l2="none", density_batches=0, trace_batches=0)  # fmt: skip
    cold = hessian.run(model, data, cfg)
    warm = hessian.run(model, data, replace(cfg, warm_start=True))
    assert warm.values["eigenvalues"][0] == cold.values["eigenvalues"][0]
    assert warm.values["num_matvecs"][0] == cold.values["num_matvecs"][0]
    for result in (cold, warm):
        for b in range(cfg.batches):
            eigs = torch.linalg.eigvalsh(dense_reference(model, data, cfg, b))
            got = torch.tensor(result.values["eigenvalues"][b], dtype=F64)
            torch.testing.assert_close(got, by_magnitude(eigs, 3), rtol=1e-4, atol=1e-8)
        assert all(result.values["converged"])
    c, w = sum(cold.values["num_matvecs"][1:]), sum(warm.values["num_matvecs"][1:])
    print(f"\n{name}: HVPs over batches 1-4, cold {c}, warm {w}")
    assert w < c
