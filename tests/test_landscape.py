"""Loss landscape against brute-force references (style rule 8).

The reference builds θ0 + a·d1 + b·d2 by hand and evaluates it with
``torch.func.functional_call`` on the same augmented batches, so the analysis' in-place
parameter writes, its batching and its resume logic are all checked against obvious code.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from vitscope import create_model
from vitscope.analyses import landscape
from vitscope.analyses.base import Result, TrainData
from vitscope.config import from_dict
from vitscope.data import BatchAugment
from vitscope.errors import ConfigError
from vitscope.report import landscape_figures as lf

WD = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


class SmallMLP(nn.Module):
    """An MLP with a position embedding (excluded) and BatchNorm (buffers, ndim-1 weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, 784))
        self.fc1 = nn.Linear(784, 24)
        self.bn = nn.BatchNorm1d(24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x.flatten(1) + self.pos_embed))))


def make_data(n: int = 24, weight_decay: float = WD) -> TrainData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    aug = BatchAugment(
        mean=(0.5,),
        std=(0.25,),
        num_classes=10,
        crop_padding=2,
        mixup_alpha=1.0,
        label_smoothing=0.1,
    )
    return TrainData(images, labels, aug, 10, weight_decay, {"mixup_alpha": 1.0, "smoothing": 0.1})


def make_model(name: str) -> nn.Module:
    """A model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    if name == "mlp":
        model = SmallMLP().double()
    else:
        model = create_model(name, num_classes=10, in_chans=1, img_size=28)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():  # move the running statistics away from (0, 1)
        model.train()
        model(torch.randn(8, 1, 28, 28, dtype=dtype) * 2 + 0.5)
    return model.eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(now[k], v), k


SMALL = dict(num_points=3, batches=2, batch_size=8)


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field,value",
    [
        ("dims", 3),
        ("num_points", 0),
        ("num_points", 4),
        ("span", 0.0),
        ("span", float("nan")),
        ("norm", "batch"),
        ("l2", "l1"),
        ("weight_decay", -1.0),
        ("batches", 0),
        ("batch_size", 0),
        ("seed", -1),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"landscape\.{field}"):
        landscape.Config(**{field: value})


def test_config_from_yaml_mapping():
    cfg = from_dict(landscape.Config, {"dims": 1, "weight_decay": None, "span": 2}, "landscape")
    assert cfg == landscape.Config(dims=1, span=2.0)
    assert from_dict(landscape.Config, {"weight_decay": 0.1}).weight_decay == 0.1


# ---------------------------------------------------------------------- directions


def raw_draws(model: nn.Module, seed: int) -> list[dict[str, torch.Tensor]]:
    """The Gaussian entries the contract specifies: float32 CPU, d1 for all then d2."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {n: torch.randn(p.shape, generator=gen).to(p.dtype) for n, p in model.named_parameters()}
        for _ in range(2)
    ]


def expected_direction(g: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Slice-by-slice rescaling, written as plainly as possible."""
    out = torch.empty_like(g)
    if norm == "filter":  # row i of the output dimension
        for i in range(g.shape[0]):
            out[i] = g[i] * w[i].norm() / g[i].norm()
    elif norm == "official":  # every column along dim 0
        gc, wc, oc = g.reshape(g.shape[0], -1), w.reshape(w.shape[0], -1), out.view(g.shape[0], -1)
        for j in range(gc.shape[1]):
            oc[:, j] = gc[:, j] * wc[:, j].norm() / (gc[:, j].norm() + 1e-7)
    else:
        out = g * w.norm() / g.norm()
    return out


@pytest.mark.parametrize("norm", landscape.NORMS)
@pytest.mark.parametrize("name", ["mlp", "resnet_tiny", "vit_tiny", "swin_tiny"])
def test_directions_match_per_slice_normalisation(name, norm):
    model = make_model(name) if name != "swin_tiny" else create_model(name, num_classes=10)
    d1, d2 = landscape.draw_directions(model, 2, norm, seed=3)
    raw = raw_draws(model, seed=3)
    excluded = 0
    for n, p in model.named_parameters():
        if p.ndim < 2 or "pos_embed" in n or "relative_position" in n:
            assert n not in d1 and n not in d2, n  # zero direction
            excluded += p.ndim >= 2
            continue
        w = p.detach()
        for d, g in zip((d1, d2), raw):
            torch.testing.assert_close(d[n], expected_direction(g[n], w, norm), rtol=1e-5, atol=0)
        if norm == "filter":  # Li et al.: every output filter has its weight filter's norm
            torch.testing.assert_close(d1[n].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))
    assert excluded >= (name != "resnet_tiny")  # pos_embed / relative-position tables seen
    flat = landscape.flatten_direction(model, d1)
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert not torch.equal(flat, landscape.flatten_direction(model, d2))
    back = landscape.unflatten_direction(model, flat)
    assert back.keys() == d1.keys() and all(torch.equal(back[k], d1[k]) for k in d1)
    (only_d1,) = landscape.draw_directions(model, 1, norm, seed=3)
    assert all(torch.equal(only_d1[k], d1[k]) for k in d1)


# ---------------------------------------------------------------------- the grid


def reference_grid(model: nn.Module, data: TrainData, result: Result) -> dict[str, np.ndarray]:
    """Brute force: θ0 + a·d1 + b·d2 by hand, ``functional_call``, explicit soft CE."""
    cfg = landscape.Config(**result.config)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    dtype = next(iter(theta0.values())).dtype
    dirs = []
    for key in ("d1", "d2"):
        flat, i, d = torch.from_numpy(result.arrays[key]), 0, {}
        for n, p in theta0.items():
            d[n] = flat[i : i + p.numel()].view(p.shape).to(dtype)
            i += p.numel()
        dirs.append(d)
    batches = [data.batch(i, cfg.batch_size, seed=cfg.seed) for i in range(cfg.batches)]
    xs, ys = result.arrays["xs"], result.arrays["ys"]
    out = {k: np.zeros((len(ys), len(xs))) for k in ("nll", "acc", "l2", "loss")}
    out["nll_batches"] = np.zeros((len(ys), len(xs), len(batches)))
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            theta = {n: t + a * dirs[0][n] + b * dirs[1][n] for n, t in theta0.items()}
            nll = correct = count = 0
            for k, (x, t) in enumerate(batches):
                with torch.no_grad():
                    logits = functional_call(model, {**theta, **buffers}, (x.to(dtype),))
                batch_nll = float(-(t.double() * logits.double().log_softmax(1)).sum())
                out["nll_batches"][j, i, k] = batch_nll / len(t)
                nll += batch_nll
                correct += int((logits.argmax(1) == t.argmax(1)).sum())
                count += len(t)
            l2 = (
                0.5 * cfg.weight_decay * sum(float((v.double() ** 2).sum()) for v in theta.values())
            )
            out["nll"][j, i], out["acc"][j, i] = nll / count, correct / count
            out["l2"][j, i], out["loss"][j, i] = l2, nll / count + l2
    return out


@pytest.mark.parametrize("name", ["mlp", "resnet_tiny", "vit_tiny"])
def test_grid_matches_brute_force(name):
    model, data = make_model(name), make_data()
    before = state(model)
    result = landscape.run(model, data, landscape.Config(**SMALL, span=0.6, seed=1))
    assert_same_state(model, before)
    ref = reference_grid(model, data, result)
    tol = 1e-10 if name == "mlp" else 2e-5
    for k, v in ref.items():
        np.testing.assert_allclose(result.arrays[k], v, rtol=tol, atol=tol, err_msg=k)
        if k != "nll_batches":  # an array only
            np.testing.assert_allclose(np.array(result.values[k]), v, rtol=tol, atol=tol)
    assert result.arrays["loss"].shape == (3, 3)
    np.testing.assert_array_equal(result.arrays["xs"], [-0.6, 0.0, 0.6])
    assert result.values["coords"]["ys"] == [-0.6, 0.0, 0.6]


def test_center_equals_loss_at_theta0():
    model, data = make_model("resnet_tiny"), make_data()
    cfg = landscape.Config(**SMALL)
    center = landscape.run(model, data, cfg).values["center"]
    nll = n = 0
    with torch.no_grad():
        for i in range(cfg.batches):
            x, t = data.batch(i, cfg.batch_size, seed=cfg.seed)
            nll += float(F.cross_entropy(model(x), t, reduction="sum"))
            n += len(t)
    l2 = 0.5 * WD * sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert center["nll"] == pytest.approx(nll / n, rel=1e-6)
    assert center["l2"] == pytest.approx(l2, rel=1e-12)
    assert center["loss"] == pytest.approx(nll / n + l2, rel=1e-6)


@pytest.mark.parametrize("mode", landscape.L2_MODES)
@pytest.mark.parametrize("wd", [None, 0.3])
def test_l2_modes_give_documented_values(mode, wd):
    model, data = make_model("vit_tiny"), make_data()
    cfg = landscape.Config(num_points=1, batches=1, batch_size=4, l2=mode, weight_decay=wd)
    r = landscape.run(model, data, cfg)
    coef = WD if wd is None else wd
    norms = [float(p.detach().double().norm()) for p in model.parameters()]
    expected = {
        "squared": 0.5 * coef * sum(v**2 for v in norms),
        "official": coef * sum(norms),
        "none": 0.0,
    }[mode]
    assert r.values["center"]["l2"] == pytest.approx(expected, rel=1e-10, abs=0)
    assert r.values["center"]["loss"] == pytest.approx(r.values["center"]["nll"] + expected)
    assert r.values["weight_decay"] == coef and r.config["weight_decay"] == coef
    assert r.values["l2_mode"] == mode


def test_one_dimensional_run_is_the_centre_row_of_the_surface():
    model, data = make_model("mlp"), make_data()
    surface = landscape.run(model, data, landscape.Config(**SMALL))
    curve = landscape.run(model, data, landscape.Config(**SMALL, dims=1))
    assert curve.arrays["loss"].shape == (1, 3) and curve.values["coords"]["ys"] == [0.0]
    np.testing.assert_array_equal(curve.arrays["loss"][0], surface.arrays["loss"][1])
    np.testing.assert_array_equal(curve.arrays["d1"], surface.arrays["d1"])
    assert not curve.arrays["d2"].any()


# ---------------------------------------------------------------------- restoring θ0, resuming


class Interrupt(Exception):
    pass


def failing_after(k: int, monkeypatch, *, mid_point: bool = False) -> list:
    """Patch ``evaluate_point``: count calls, raise on call ``k`` (after moving θ if mid_point)."""
    real, calls = landscape.evaluate_point, []

    def wrapper(model, batches, theta0, d1, d2, a, b, cfg, *rest):
        calls.append((a, b))
        if len(calls) == k:
            if mid_point:
                landscape.set_point(model, theta0, d1, d2, a, b)
            raise Interrupt
        return real(model, batches, theta0, d1, d2, a, b, cfg, *rest)

    monkeypatch.setattr(landscape, "evaluate_point", wrapper)
    return calls


@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny"])
def test_theta0_restored_bit_exactly_even_after_an_exception(name, monkeypatch):
    model, data = make_model(name), make_data()
    model.train()  # the run uses eval mode and must hand train mode back
    before = state(model)
    landscape.run(model, data, landscape.Config(**SMALL))
    assert_same_state(model, before)
    assert model.training
    failing_after(4, monkeypatch, mid_point=True)
    with pytest.raises(Interrupt):
        landscape.run(model, data, landscape.Config(**SMALL))
    assert_same_state(model, before)
    assert model.training


def test_resume_fills_only_missing_points(tmp_path, monkeypatch):
    model, data = make_model("mlp"), make_data()
    cfg = landscape.Config(**SMALL)
    full = landscape.ANALYSIS.execute(model, data, cfg, workdir=tmp_path / "full")

    work = tmp_path / "killed"
    failing_after(4, monkeypatch)  # three points finish, the fourth is killed
    with pytest.raises(Interrupt):
        landscape.ANALYSIS.execute(model, data, cfg, workdir=work)
    partial = json.loads((work / "landscape.partial.json").read_text())
    assert partial["key"]["config"]["seed"] == 0
    done = {tuple(json.loads(k)): v["loss"] for k, v in partial["items"].items()}
    assert sorted(done) == [(0, 0), (0, 1), (0, 2)]  # y outer, x inner
    np.testing.assert_array_equal([done[p] for p in sorted(done)], full.arrays["loss"].ravel()[:3])
    with np.load(work / "landscape.partial.npz") as z:  # the directions, kept for the resume
        np.testing.assert_array_equal(z["d1"], full.arrays["d1"])

    monkeypatch.undo()
    calls = failing_after(0, monkeypatch)  # count only
    monkeypatch.setattr(landscape, "draw_directions", None)  # saved directions are re-used
    resumed = landscape.ANALYSIS.execute(model, data, cfg, workdir=work)
    assert len(calls) == 9 - 3
    for k in ("loss", "nll", "acc", "l2", "d1", "d2"):
        np.testing.assert_array_equal(resumed.arrays[k], full.arrays[k], err_msg=k)
    assert np.isfinite(resumed.arrays["seconds"]).all()

    monkeypatch.undo()
    calls = failing_after(0, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:  # another config: start over
        warnings.simplefilter("always")
        other = landscape.Config(**{**SMALL, "span": 0.5})
        landscape.ANALYSIS.execute(model, data, other, workdir=work)
    assert len(calls) == 9 and any("starting over" in str(w.message) for w in caught)


# ---------------------------------------------------------------------- summaries, saving, figures


def test_ring_summaries_average_linf_rings():
    xs = np.linspace(-1, 1, 21)
    a, b = np.meshgrid(xs, xs)
    radius = np.maximum(abs(a), abs(b))
    grid = {"nll": radius, "loss": 2 * radius, "acc": 1 - radius}
    grid["loss"][0, 0] = np.inf  # a corner overflows: means are over finite entries
    rings = landscape.ring_summaries(xs, xs, grid)
    assert [r["r"] for r in rings] == [round(0.1 * k, 10) for k in range(11)]
    assert [r["points"] for r in rings] == [1] + [8 * k for k in range(1, 11)]
    for r in rings:
        assert r["nll"] == pytest.approx(r["r"]) and r["loss"] == pytest.approx(2 * r["r"])
    assert rings[-1]["finite"] == 79


def test_result_saves_and_loads(tmp_path):
    model, data = make_model("mlp"), make_data()
    result = landscape.run(model, data, landscape.Config(**SMALL))
    result.save(tmp_path)
    back = Result.load(tmp_path, "landscape")
    assert back.values == json.loads(json.dumps(result.values))
    assert back.config == result.config
    for k, v in result.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
    v = back.values
    assert v["operator"]["transform"] == data.transform and v["norm"] == "filter"
    assert v["center"] == {k: v[k][1][1] for k in ("loss", "nll", "acc", "l2")}
    assert v["directions"]["perturbed"] == ["fc1.weight", "fc2.weight"]
    assert [r["r"] for r in v["rings"]] == [0.0, 1.0]


def synthetic(dims: int, label: str) -> Result:
    xs = np.linspace(-1, 1, 7)
    ys = xs if dims == 2 else np.zeros(1)
    a, b = np.meshgrid(xs, ys)
    nll = 2 + a**2 + 0.5 * b**2
    loss = nll + 30
    loss[0, 0] = np.inf
    arrays = {"xs": xs, "ys": ys, "loss": loss, "nll": nll}
    return Result("landscape", {"dims": dims}, arrays, meta={"label": label})


def test_figures_render(tmp_path):
    from vitscope.report.figures import render

    stems = ["landscape_contour", "landscape_surface", "landscape_1d"]
    # a 2-D result gets all three figures
    drawn = render(synthetic(2, "ViT"), tmp_path, landscape.ANALYSIS.figures)
    assert [p.name for p in drawn] == [f"{s}.png" for s in stems]
    assert all(p.stat().st_size > 1000 for p in drawn)
    # a 1-D result replacing it gets its curve alone: the 2-D figures are not drawn again as
    # the same curve, and the old ones do not stay beside it
    drawn = render(synthetic(1, "ViT"), tmp_path, landscape.ANALYSIS.figures)
    assert [p.name for p in drawn] == ["landscape_1d.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landscape_1d.png"]


def test_a_figure_that_fails_to_draw_or_to_decide_costs_only_itself(tmp_path):
    from vitscope.analyses import FigureSpec
    from vitscope.report.figures import render

    def broken(*_):
        raise RuntimeError("bug")

    figures = (FigureSpec("a", broken), FigureSpec("b", lf.draw_1d, when=broken),
               FigureSpec("c", lf.draw_1d, when=lambda r: True))  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        drawn = render(synthetic(1, "ViT"), tmp_path, figures)
    assert [p.name for p in drawn] == ["c.png"]
    assert sorted(str(w.message) for w in caught) == [
        "landscape: figure a failed: RuntimeError('bug')",
        "landscape: figure b failed: RuntimeError('bug')",
    ]


def test_one_dimensional_curves_overlay():
    from vitscope.report.figures import subplots

    fig, ax = subplots((4, 3))
    lf.plot_landscape_1d([synthetic(2, "ViT"), synthetic(1, "ResNet")], ax, "nll")
    curves = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert [line.get_label() for line in curves] == ["ViT", "ResNet"]
    np.testing.assert_allclose(curves[0].get_ydata(), np.linspace(-1, 1, 7) ** 2)
    assert math.isnan(lf.landscape_slice(synthetic(1, ""), "loss")[1][0])
