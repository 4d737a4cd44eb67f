"""Landscapes along the line between two models, ``(1-α)·θa + α·θb``
(``landscape.directions=interpolate``): both ends exact, BatchNorm statistics as stated, the
endpoint named as a checkpoint, a run folder or a file, resumed, and from the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_landscape import make_data
from test_landscape_directions import Tiny

from vitscope.analyses import landscape
from vitscope.analyses.spec import Context
from vitscope.cli import main
from vitscope.errors import ConfigError, VitscopeError
from vitscope.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def model_at(seed: int) -> nn.Module:
    """A ``Tiny`` of its own weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    m = Tiny().double()
    with torch.no_grad():
        m.bn.running_mean.normal_(0, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def cfg_of(endpoint: str, **kw) -> landscape.Config:
    base = {"directions": "interpolate", "endpoint": endpoint, "num_points": 5,
            "alpha_range": (-0.5, 1.5), "batches": 2, "batch_size": 8}  # fmt: skip
    return landscape.Config(**{**base, **kw})


def alone(model: nn.Module, data, cfg: landscape.Config) -> dict:
    """A model's NLL + L2 on the landscape's batches, evaluated by itself (no interpolation)."""
    cfg = landscape.Config(**{**landscape.config_dict(cfg), "weight_decay": data.weight_decay})
    batches = landscape.make_batches(data, cfg, torch.float64)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    return landscape.evaluate_point(model, batches, theta, {}, {}, 0.0, 0.0, cfg)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_axis_holds_both_ends_exactly():
    xs = landscape.interpolation_axis(landscape.Config(num_points=9, alpha_range=(-0.5, 1.5)))
    np.testing.assert_allclose(xs, np.linspace(-0.5, 1.5, 9))
    assert (xs == 0).sum() == 1 and (xs == 1).sum() == 1  # snapped, not 5e-17 beside 0
    xs = landscape.interpolation_axis(landscape.Config(num_points=5, alpha_range=(-0.3, 1.3)))
    assert len(xs) == 7 and list(xs[[1, 5]]) == [0.0, 1.0] and np.all(np.diff(xs) > 0)
    xs = landscape.interpolation_axis(landscape.Config(num_points=1, alpha_range=(0.2, 0.4)))
    assert list(xs) == [0.0, 0.2, 1.0]


def test_barrier_is_the_excess_over_the_straight_line():
    xs = np.linspace(-0.5, 1.5, 9)
    xs[2], xs[6] = 0.0, 1.0
    z = 1 + 2 * xs + xs * (1 - xs)  # the line 1 + 2α plus a bump of height 1/4 at α = 1/2
    z[0] = 50.0  # outside [0, 1]: not a barrier
    assert landscape.barrier(xs, z) == pytest.approx(0.25)
    assert landscape.barrier(xs, 1 + 2 * xs) == pytest.approx(0.0, abs=1e-12)
    z[6] = np.nan  # an end missing: no barrier
    assert landscape.barrier(xs, z) is None


@pytest.mark.parametrize("buffers", ["nearer", "recompute"])
def test_both_ends_give_the_two_models_losses_exactly(tmp_path, buffers):
    a, b, data = model_at(0), model_at(1), make_data()
    path = tmp_path / "b.pt"
    save_checkpoint(path, model=b, epoch=3)
    cfg = cfg_of(str(path), buffers=buffers)
    before = state(a)
    res = landscape.run(a, data, cfg)
    after = state(a)
    assert all(torch.equal(before[k], after[k]) for k in before)  # θa and its buffers restored
    xs, loss = res.arrays["xs"], res.arrays["loss"][0]
    assert list(xs) == [-0.5, 0.0, 0.5, 1.0, 1.5] and res.values["dims"] == 1
    if buffers == "recompute":  # each end with its statistics re-estimated on the batches
        inputs = [x for x, _ in landscape.make_batches(data, cfg, torch.float64)]
        for m in (a, b):
            landscape.recompute_batchnorm(m, inputs)
    ends = [alone(m, data, cfg) for m in (a, b)]
    for i, end in zip((1, 3), ends):  # bit-equal, not merely close
        assert loss[i] == end["loss"] and res.arrays["nll"][0, i] == end["nll"]
        assert res.arrays["acc"][0, i] == end["acc"]
    interp = res.values["interpolate"]
    assert [e["loss"] for e in interp["ends"]] == [e["loss"] for e in ends]
    assert res.values["center"]["loss"] == ends[0]["loss"]
    assert interp["file"] == str(path) and interp["buffers"] == buffers
    diff = [(pb - pa).detach().double() for pa, pb in zip(a.parameters(), b.parameters())]
    distance = float(torch.cat([d.reshape(-1) for d in diff]).norm())
    assert interp["distance"] == pytest.approx(distance)
    line = loss[1] + (loss[3] - loss[1]) * 0.5
    assert interp["barrier"]["loss"] == pytest.approx(max(0.0, loss[2] - line))
    assert landscape.summary(res)["NLL + L2 at α = 1"] == ends[1]["loss"]
    assert res.values["rings"] == []  # no radius along a line


def test_the_midpoint_is_the_average_model_with_the_stated_statistics(tmp_path):
    a, b, data = model_at(0), model_at(1), make_data()
    path = tmp_path / "b.pt"
    save_checkpoint(path, model=b, epoch=3)
    for buffers in ("nearer", "recompute"):
        res = landscape.run(a, data, cfg_of(str(path), buffers=buffers, num_points=3))
        assert list(res.arrays["xs"]) == [-0.5, 0.0, 0.5, 1.0, 1.5]
        mid = model_at(0)  # the nearer end of α = 0.5 is θa (α <= 0.5)
        with torch.no_grad():
            for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
                pm.copy_((pa + pb) / 2)
        if buffers == "recompute":
            cfg = cfg_of(str(path), weight_decay=data.weight_decay)
            inputs = [x for x, _ in landscape.make_batches(data, cfg, torch.float64)]
            landscape.recompute_batchnorm(mid, inputs)
            assert not torch.allclose(mid.bn.running_mean, a.bn.running_mean)
        ref = alone(mid, data, cfg_of(str(path)))
        assert res.arrays["loss"][0, 2] == pytest.approx(ref["loss"], rel=1e-12)


def test_batchnorm_recompute_matches_torchs_update_bn_and_leaves_dropout_off():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    inputs = [torch.randn(7, 6, dtype=torch.float64) for _ in range(3)]
    ref = copy.deepcopy(net)
    torch.optim.swa_utils.update_bn(inputs, ref)  # the library's estimate (no dropout here)
    net.eval()
    landscape.recompute_batchnorm(net, inputs)
    torch.testing.assert_close(net[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(net[1].running_var, ref[1].running_var)
    assert not net.training and not net[1].training and net[1].momentum == 0.1
    # with dropout before the norm, the estimate is still deterministic (dropout stays off)
    drop = nn.Sequential(nn.Dropout(0.5), *[copy.deepcopy(m) for m in net]).eval()
    landscape.recompute_batchnorm(drop, inputs)
    first = drop[2].running_var.clone()
    landscape.recompute_batchnorm(drop, inputs)
    torch.testing.assert_close(drop[2].running_var, first, rtol=0, atol=0)
    torch.testing.assert_close(first, net[1].running_var)


def _run_folder(tmp_path: Path, name: str, models: dict[str, nn.Module]) -> Path:
    run = tmp_path / name
    (run / "results").mkdir(parents=True)
    for ckpt, m in models.items():
        save_checkpoint(run / "checkpoints" / f"{ckpt}.pt", model=m, epoch=1)
    return run


def test_the_endpoint_is_a_checkpoint_a_run_folder_or_a_file(tmp_path):
    a, b, data = model_at(0), model_at(1), make_data()
    run = _run_folder(tmp_path, "run", {"best": a, "init": b})
    other = _run_folder(tmp_path, "seed1", {"best": b})
    ctx = Context(workdir=run / "results")
    by_name = landscape.run(a, data, cfg_of("init"), ctx)
    by_folder = landscape.run(a, data, cfg_of(str(other)), ctx)
    by_file = landscape.run(a, data, cfg_of(str(other / "checkpoints" / "best.pt")))
    for res in (by_folder, by_file):
        np.testing.assert_array_equal(res.arrays["loss"], by_name.arrays["loss"])
    assert by_folder.values["interpolate"]["file"] == str(other / "checkpoints" / "best.pt")
    with pytest.raises(VitscopeError, match=r"epoch7.pt does not exist \(train with"):
        landscape.run(a, data, cfg_of("epoch7"), ctx)
    with pytest.raises(VitscopeError, match="analyse a run directory"):
        landscape.run(a, data, cfg_of("init"))
    with pytest.raises(VitscopeError, match="neither a checkpoint of the run"):
        landscape.run(a, data, cfg_of(str(tmp_path / "nowhere")), ctx)
    with pytest.raises(VitscopeError, match="holds no checkpoints/best.pt"):
        landscape.run(a, data, cfg_of(str(tmp_path)), ctx)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, model=nn.Linear(3, 2), epoch=0)
    with pytest.raises(VitscopeError, match="do not fit the analysed model"):
        landscape.run(a, data, cfg_of(str(wrong)))
    with pytest.raises(ConfigError, match="needs landscape.endpoint"):
        landscape.Config(directions="interpolate")
    with pytest.raises(ConfigError, match="alpha_range must be"):
        landscape.Config(alpha_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="buffers must be one of"):
        landscape.Config(buffers="mean")


def test_an_interrupted_interpolation_resumes_and_a_new_endpoint_starts_over(tmp_path):
    from test_landscape import Interrupt, failing_after

    a, b, data = model_at(0), model_at(1), make_data()
    path = tmp_path / "b.pt"
    save_checkpoint(path, model=b, epoch=3)
    cfg = cfg_of(str(path))
    full = landscape.ANALYSIS.execute(a, data, cfg, workdir=tmp_path / "full")
    work = tmp_path / "killed"
    mp = pytest.MonkeyPatch()
    failing_after(3, mp)
    with pytest.raises(Interrupt):
        landscape.ANALYSIS.execute(a, data, cfg, workdir=work)
    mp.undo()
    calls = failing_after(0, mp)
    resumed = landscape.ANALYSIS.execute(a, data, cfg, workdir=work)
    assert len(calls) == 5 - 2
    np.testing.assert_array_equal(resumed.arrays["loss"], full.arrays["loss"])
    mp.undo()
    save_checkpoint(path, model=model_at(2), epoch=3)  # the same name, other weights
    calls = failing_after(0, mp)
    with pytest.warns(UserWarning, match="starting over"):
        landscape.ANALYSIS.execute(a, data, cfg, workdir=work)
    assert len(calls) == 5
    mp.undo()


@pytest.fixture(scope="module")
def trained(folder_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("interp") / "run"
    args = ["train", "--data", "folder", "--data-root", str(folder_data), "--epochs", "2"]
    args += ["--model", "resnet_tiny", "--set", "train.batch_size=16", "--no-progress"]
    assert main([*args, "--out", str(run)]) == 0
    return run


def test_interpolation_from_the_cli_with_its_figure_and_export(trained, capsys):
    sets = ["directions=interpolate", "endpoint=init", "num_points=5", "batches=1",
            "batch_size=16"]  # fmt: skip
    args = ["analyze", str(trained), "--only", "landscape"]
    assert main([*args, *[x for s in sets for x in ("--set", f"landscape.{s}")]]) == 0
    body = json.loads((trained / "results" / "landscape.json").read_text())
    interp = body["values"]["interpolate"]
    assert interp["endpoint"] == "init" and interp["buffers"] == "recompute"
    assert body["values"]["dims"] == 1
    assert body["values"]["coords"]["xs"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert set(body["summary"]) == {"NLL + L2 at α = 0", "NLL + L2 at α = 1", "barrier (NLL + L2)"}
    assert interp["distance"] > 0 and interp["barrier"]["nll"] is not None
    assert (trained / "figures" / "landscape_1d.png").stat().st_size > 1000
    assert body["figures"] == ["landscape_1d.png"]  # no contour or surface of a curve
    assert not (trained / "figures" / "landscape_contour.png").exists()
    assert main(["export", "landscape", str(trained), "--format", "csv"]) == 0
    rows = (trained / "exports" / "landscape.csv").read_text().splitlines()
    assert len(rows) == 1 + 5
    capsys.readouterr()  # the saved result is not silently taken for other settings
    assert main([*args, "--set", "landscape.num_points=3"]) == 0
    out = capsys.readouterr().out
    assert "landscape: exists with other settings (num_points: 5 → 3, directions: " in out
    assert "'interpolate' → 'random', batches: 1 → 4, ...), skipped: add --force" in out
    assert json.loads((trained / "results" / "landscape.json").read_text()) == body
    bad = [*args, "--force", "--set", "landscape.directions=interpolate"]
    assert main([*bad, "--set", "landscape.endpoint=epoch9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epoch9.pt does not exist" in err[0]


def test_the_report_tabulates_the_barrier_of_an_interpolation(tmp_path):
    import yaml
    from planted import write_run
    from test_landscape import synthetic

    from vitscope.report import build_report

    res = synthetic(1, "")
    interp = {"endpoint": "init", "file": "x/init.pt", "buffers": "recompute", "distance": 3.0,
              "ends": [{"loss": 2.0}, {"loss": 2.5}],
              "barrier": {"loss": 0.4375, "nll": 0.5}}  # fmt: skip
    values = {"dims": 1, "interpolate": interp, "center": {"loss": 2.0, "nll": 1.5}}
    root = tmp_path / "study"
    root.mkdir()
    (root / "study.yaml").write_text(yaml.safe_dump({"name": "t", "description": "t"}))
    rng = np.random.default_rng(0)
    write_run(root / "runs", "resnet_tiny-f1-s0", "resnet_tiny", seed=0, rng=rng, acc=0.8,
              results=[("landscape", values, res.arrays)])  # fmt: skip
    html = build_report([root]).read_text()
    table = html[html.index('id="landscape-table"') :]
    table = table[: table.index("</table>")]
    assert "Barrier (NLL+L2)" in table and "0.438" in table and "2.500" in table
    assert ">init<" in table


def test_a_tagged_landscape_is_kept_beside_the_untagged_one(trained, tmp_path, capsys):
    """`--tag` saves a second landscape (here an interpolation beside a random one) as
    `landscape-TAG`, with its own figures, resume, export and comparison."""
    small = ["num_points=3", "batches=1", "batch_size=16"]
    base = ["analyze", str(trained), "--only", "landscape", "--force"]
    assert main([*base, *[x for s in small for x in ("--set", f"landscape.{s}")]]) == 0
    results, figures = trained / "results", trained / "figures"
    untagged = (results / "landscape.json").read_bytes()
    assert json.loads(untagged)["values"]["dims"] == 2
    interp = [*small, "directions=interpolate", "endpoint=init"]
    tagged = ["analyze", str(trained), "--only", "landscape", "--tag", "interp"]
    tagged += [x for s in interp for x in ("--set", f"landscape.{s}")]
    capsys.readouterr()
    assert main(tagged) == 0
    assert f"results: {trained}/results (landscape-interp)" in capsys.readouterr().out
    body = json.loads((results / "landscape-interp.json").read_text())
    assert body["name"] == "landscape-interp" and body["meta"]["tag"] == "interp"
    assert body["values"]["interpolate"]["endpoint"] == "init"
    assert body["figures"] == ["landscape_1d-interp.png"]
    assert (figures / "landscape_1d-interp.png").stat().st_size > 1000
    assert (results / "landscape.json").read_bytes() == untagged  # the first one is kept
    assert (figures / "landscape_contour.png").is_file()  # with its 2-D figures
    assert not list(results.glob("landscape-interp.partial*"))  # its partial files are gone
    capsys.readouterr()
    assert main(tagged) == 0  # resumes as the untagged one does: done, skipped
    assert "landscape-interp: exists, skipped" in capsys.readouterr().out

    assert main(["export", "landscape", str(trained), "--format", "csv", "--tag", "interp"]) == 0
    rows = (trained / "exports" / "landscape-interp.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # the interpolation's 5 α, not the random 3 × 3 grid
    out = tmp_path / "both.png"
    assert main(["compare", "landscape", str(trained), str(trained), "--tag", "interp",
                 "--out", str(out)]) == 0  # fmt: skip
    assert out.stat().st_size > 1000

    before = sorted(p.name for p in results.iterdir())
    capsys.readouterr()
    assert main([*tagged[:4], "--tag", "Bad Tag"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: --tag 'Bad Tag': use lower-case letters, digits and '_' (e.g. --tag pca)"
    assert sorted(p.name for p in results.iterdir()) == before
    assert main(["export", "landscape", str(trained), "--format", "csv", "--tag", "nope"]) == 2
    assert "no landscape-nope result in" in capsys.readouterr().err
