"""Landscape directions beyond random ones (PCA of the training trajectory, Hessian
eigenvectors) against closed forms and dense float64 Hessians, and the export to the
reference tool's formats (HDF5 keys, a ParaView .vtp surface, CSV)."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_landscape import make_data, synthetic
from torch.func import functional_call

from vitscope.analyses import landscape
from vitscope.analyses.spec import Context
from vitscope.cli import main
from vitscope.errors import ConfigError, VitscopeError
from vitscope.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """226 parameters: a dense float64 Hessian is cheap."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(F.adaptive_avg_pool2d(x, 4).flatten(1))
        return self.fc2(torch.tanh(self.bn(h)))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().double().eval()


def test_pca_recovers_a_plane_the_trajectory_lies_in():
    g = torch.Generator().manual_seed(0)
    p = 500
    final = torch.randn(p, generator=g, dtype=torch.float64)
    u, v = torch.linalg.qr(torch.randn(p, 2, generator=g, dtype=torch.float64))[0].T
    ab = torch.tensor([[3.0, 1.0], [2.0, -1.5], [1.0, 0.5], [0.5, 0.2], [-0.3, 0.1]])
    points = [final + a * u + b * v for a, b in ab.double()]
    dirs, explained, coords = landscape.pca_directions(final, points, 2)
    assert dirs.shape == (2, p)
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(2, dtype=torch.float64))
    basis = torch.stack([u, v])  # the plane: each direction lies in it, and they span it
    torch.testing.assert_close((dirs @ basis.T).norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert explained.sum() == pytest.approx(1.0) and explained[0] >= explained[1] > 0
    # the projections are the points' in-plane coordinates up to a rotation or reflection
    rows = torch.stack([pt - final for pt in points])
    torch.testing.assert_close(torch.from_numpy(coords) @ dirs, rows)
    d_true = torch.cdist(ab.double(), ab.double())
    torch.testing.assert_close(torch.cdist(*(torch.from_numpy(coords),) * 2), d_true)
    with pytest.raises(VitscopeError, match="span fewer than 2"):
        landscape.pca_directions(final, [final + u, final + 2 * u, final - u], 2)


def _run_dir(tmp_path, model, ab):
    """A run folder whose checkpoints (init, epoch1..) lie in a plane through θ0 (perturbed
    weights only; the rest equal θ0's)."""
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    perturbed = {n: torch.ones_like(p) for n, p in model.named_parameters()
                 if landscape.is_perturbed(n, p)}  # fmt: skip
    mask = landscape.flatten_direction(model, perturbed).bool()
    flat = landscape._perturbed_vector(model)
    q = torch.linalg.qr(torch.randn(int(mask.sum()), 2, generator=g, dtype=torch.float64))[0]
    u, v = torch.zeros(2, len(flat), dtype=torch.float64)
    u[mask], v[mask] = q[:, 0], q[:, 1]  # orthonormal, in the perturbed weights only
    for k, (a, b) in enumerate(ab):
        other = tiny()
        other.load_state_dict(model.state_dict())
        moved = landscape.unflatten_direction(other, flat + a * u + b * v)
        with torch.no_grad():
            for n, p in other.named_parameters():
                if n in perturbed:
                    p.copy_(moved[n])
        name = "init" if k == 0 else f"epoch{k}"
        save_checkpoint(run / "checkpoints" / f"{name}.pt", model=other, epoch=k)
    return run


def test_pca_directions_from_a_runs_checkpoints_draw_its_trajectory(tmp_path):
    model, data = tiny(), make_data()
    ab = [(4.0, 1.0), (3.0, -1.0), (1.5, 0.5), (0.5, 0.1)]
    run = _run_dir(tmp_path, model, ab)
    cfg = landscape.Config(directions="pca", num_points=3, batches=1, batch_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = landscape.run(model, data, cfg, Context(workdir=run / "results"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pca = res.values["pca"]
    assert pca["checkpoints"] == ["init", "epoch1", "epoch2", "epoch3"]
    assert sum(pca["explained_variance"]) == pytest.approx(1.0)
    path = res.arrays["trajectory"]
    assert path.shape == (5, 2) and np.all(path[-1] == 0)  # it ends at θ0, the origin
    assert np.abs(path).max() == pytest.approx(1 / landscape.PCA_MARGIN)  # inside the grid
    true = np.vstack([np.array(ab), [[0, 0]]])
    scale = pca["scale"]
    np.testing.assert_allclose(  # distances along the trajectory, in parameter units
        np.linalg.norm(np.diff(path, axis=0), axis=1) * scale,
        np.linalg.norm(np.diff(true, axis=0), axis=1), rtol=1e-6)  # fmt: skip
    d1 = landscape.unflatten_direction(model, res.arrays["d1"])
    assert set(d1) == {"fc1.weight", "fc2.weight"}  # the perturbed parameters only
    # a run without its trajectory: one line saying how to keep it
    (run / "checkpoints" / "epoch3.pt").unlink()
    (run / "checkpoints" / "epoch2.pt").unlink()
    with pytest.raises(VitscopeError, match="train.snapshot_every=1"):
        landscape.run(model, data, cfg, Context(workdir=run / "results"))
    with pytest.raises(VitscopeError, match="needs a run directory"):
        landscape.run(model, data, cfg)


def _dense_hessian(model, batches, wd):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    n = sum(len(t) for _, t in batches)

    def objective(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            k = int(np.prod(shape))
            params[name] = flat[i : i + k].view(shape)
            i += k
        nll = sum((-(t * functional_call(model, params, (x,)).log_softmax(1)).sum(1)).sum()
                  for x, t in batches) / n  # fmt: skip
        return nll + 0.5 * wd * (flat**2).sum()

    return torch.func.hessian(objective)(theta)


def test_eigen_directions_are_top_hessian_eigenvectors_of_the_landscape_objective():
    model, data = tiny(), make_data()
    cfg = landscape.Config(directions="eigen", num_points=3, batches=2, batch_size=12,
                           eigen_max_iter=120)  # fmt: skip
    res = landscape.run(model, data, cfg)
    eig = res.values["eigen"]
    cfg = landscape.Config(**{**landscape.config_dict(cfg), "weight_decay": data.weight_decay})
    h = _dense_hessian(model, landscape.make_batches(data, cfg, torch.float64), data.weight_decay)
    exact = torch.linalg.eigvalsh(h)
    vs = [torch.as_tensor(res.arrays[k], dtype=torch.float64) / eig["scale"] for k in ("d1", "d2")]
    top = exact.flip(0)
    for k, (v, lam) in enumerate(zip(vs, eig["eigenvalues"])):
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-9)
        assert float(v @ h @ v) == pytest.approx(lam, rel=1e-8)  # d·H·d = the stored value
        r = float((h @ v - lam * v).norm())
        assert r < 1e-3 * abs(lam)  # an eigenvector, to Lanczos' tolerance
        # a Rayleigh quotient with residual r is within r² / gap of the eigenvalue
        gap = float(min(abs(top[k] - top[j]) for j in range(len(top)) if j != k))
        assert abs(lam - float(top[k])) <= r**2 / gap + 1e-12, (lam, float(top[k]), r, gap)
    assert abs(float(vs[0] @ vs[1])) < 1e-9
    # the grid's unit: as long as a filter-normalised random direction
    ref = landscape.draw_directions(model, 1, "filter", 0)[0]
    assert eig["scale"] == pytest.approx(
        float(torch.cat([t.reshape(-1) for t in ref.values()]).norm())
    )
    with pytest.raises(ConfigError, match="l2 squared or none"):
        landscape.run(model, data, landscape.Config(directions="eigen", l2="official",
                                                    num_points=3, batches=1))  # fmt: skip


def test_bad_direction_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="landscape.directions must be one of random, pca"):
        landscape.Config(directions="hessian")
    with pytest.raises(ConfigError, match="eigen_max_iter"):
        landscape.Config(eigen_max_iter=1)


# ---- export ----------------------------------------------------------------------------------


def _saved(tmp_path, dims):
    run = tmp_path / f"run{dims}"
    res = synthetic(dims, "ViT")
    res.arrays["acc"] = np.full_like(res.arrays["nll"], 0.5)
    res.arrays["l2"] = np.full_like(res.arrays["nll"], 30.0)
    res.save(run / "results")
    return run, res


@pytest.mark.parametrize("dims", [1, 2])
def test_export_h5_has_the_reference_tools_keys_and_shapes(tmp_path, dims):
    h5py = pytest.importorskip("h5py")
    run, res = _saved(tmp_path, dims)
    assert main(["export", "landscape", str(run), "--format", "h5"]) == 0
    with h5py.File(run / "exports" / "landscape.h5", "r") as f:
        np.testing.assert_array_equal(f["xcoordinates"][:], res.arrays["xs"])
        if dims == 2:
            np.testing.assert_array_equal(f["ycoordinates"][:], res.arrays["ys"])
            assert f["train_loss"].shape == (7, 7)
            np.testing.assert_array_equal(f["train_loss"][:], res.arrays["nll"])
            # plot_2D.py: contour(X, Y, Z) with X, Y = meshgrid(x, y): Z[j, i] at (x_i, y_j)
            x, y = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:])
            np.testing.assert_allclose(f["train_loss"][:], 2 + x**2 + 0.5 * y**2)
        else:
            assert "ycoordinates" not in f and f["train_loss"].shape == (7,)
        assert np.all(f["train_acc"][:] == 50.0)  # percent, as the reference tool writes
        assert np.isinf(f["train_loss_l2"][()].ravel()[0])


@pytest.mark.parametrize("dims", [1, 2])
def test_export_vtp_is_a_paraview_surface(tmp_path, dims):
    run, res = _saved(tmp_path, dims)
    out = tmp_path / "s.vtp"
    assert main(["export", "landscape", str(run), "--format", "vtp", "--out", str(out),
                 "--zmax", "5"]) == 0  # fmt: skip
    root = ET.parse(out).getroot()
    assert root.tag == "VTKFile" and root.get("type") == "PolyData"
    piece = root.find("PolyData/Piece")
    n = 7 * (7 if dims == 2 else 1)
    assert int(piece.get("NumberOfPoints")) == n
    assert int(piece.get("NumberOfPolys")) == (36 if dims == 2 else 0)
    assert int(piece.get("NumberOfLines")) == (0 if dims == 2 else 1)
    pts = np.array(piece.find("Points/DataArray").text.split(), float).reshape(-1, 3)
    assert pts.shape == (n, 3) and pts[:, 2].max() <= 5  # clipped at --zmax
    z = res.arrays["nll"].ravel()
    np.testing.assert_allclose(pts[:, 2], np.minimum(z, 5))
    cells = piece.find("Polys" if dims == 2 else "Lines")
    conn = np.array(cells.find("DataArray[@Name='connectivity']").text.split(), int)
    assert conn.max() == n - 1 and len(conn) == (36 * 4 if dims == 2 else 7)
    names = [d.get("Name") for d in piece.findall("PointData/DataArray")]
    assert names == ["train_loss", "train_loss_l2", "train_acc", "l2"]


def test_export_csv_and_the_errors(tmp_path, capsys):
    run, res = _saved(tmp_path, 2)
    assert main(["export", "landscape", str(run), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO((run / "exports" / "landscape.csv").read_text())))
    assert len(rows) == 49 and float(rows[8]["x"]) == pytest.approx(res.arrays["xs"][1])
    assert float(rows[8]["train_loss"]) == pytest.approx(res.arrays["nll"][1, 1])
    capsys.readouterr()
    assert main(["export", "landscape", str(tmp_path / "none"), "--format", "csv"]) == 2
    assert main(["export", "landscape", str(tmp_path), "--format", "csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "no landscape result" in err[1]


def test_the_report_draws_a_pca_landscape_with_its_trajectory(tmp_path):
    import yaml
    from planted import write_run

    from vitscope.report import build_report

    res = synthetic(2, "")
    path = np.array([[-0.8, 0.1], [-0.4, -0.2], [-0.1, 0.05], [0.0, 0.0]])
    pca = {"explained_variance": [0.9, 0.08], "trajectory": path.tolist(),
           "checkpoints": ["init", "epoch1", "epoch2"], "scale": 3.0}  # fmt: skip
    values = {"dims": 2, "pca": pca}
    arrays = {**res.arrays, "trajectory": path}
    root = tmp_path / "study"
    root.mkdir()
    (root / "study.yaml").write_text(yaml.safe_dump({"name": "t", "description": "t"}))
    rng = np.random.default_rng(0)
    write_run(root / "runs", "resnet_tiny-f1-s0", "resnet_tiny", seed=0, rng=rng, acc=0.8,
              results=[("landscape", values, arrays)])  # fmt: skip
    write_run(root / "runs", "vit_tiny-f1-s0", "vit_tiny", seed=0, rng=rng, acc=0.7,
              results=[("landscape", {"dims": 2}, res.arrays)])  # fmt: skip
    html = build_report([root]).read_text()
    assert "plane of the training trajectory" in html
    figures = sorted(p.name for p in (root / "figures").glob("landscape_pca_*.png"))
    assert figures == ["landscape_pca_resnet_tiny-f1-s0.png"]  # the random one has none


def test_the_report_shows_a_tagged_landscape_beside_the_random_one(tmp_path):
    """A run's `landscape-pca` (saved with `analyze --tag pca`) gets its own section with
    the summary it saved; the paper's landscape section and claims keep to `landscape`."""
    import yaml
    from planted import write_run

    from vitscope.report import build_report
    from vitscope.results import Result

    res = synthetic(2, "")
    root = tmp_path / "study"
    root.mkdir()
    (root / "study.yaml").write_text(yaml.safe_dump({"name": "t", "description": "t"}))
    run = write_run(root / "runs", "resnet_tiny-f1-s0", "resnet_tiny", seed=0,
                    rng=np.random.default_rng(0), acc=0.8,
                    results=[("landscape", {"dims": 2}, res.arrays)])  # fmt: skip
    pca = {"explained_variance": [0.9, 0.08], "trajectory": [[-0.8, 0.1], [0.0, 0.0]],
           "checkpoints": ["init"], "scale": 3.0}  # fmt: skip
    meta = {"model": "resnet_tiny", "tag": "pca"}
    tagged = Result("landscape-pca", {"dims": 2, "pca": pca}, res.arrays,
                    summary={"PC1 share": 0.9}, meta=meta)  # fmt: skip
    tagged.save(run / "results")
    html = build_report([root]).read_text()
    assert 'id="other_landscape-pca"' in html and "PC1 share" in html
    assert "plane of the training trajectory" not in html  # the paper section's is random
    # a damaged tagged result is named like any other, and the report still builds
    (run / "results" / "landscape-pca.npz").write_bytes(b"not a zip")
    html = build_report([root]).read_text()
    assert "landscape-pca.npz is unreadable" in html


def test_the_flatness_claim_reads_random_directions_only():
    from dataclasses import replace
    from pathlib import Path

    from vitscope.report.claims import samples
    from vitscope.report.claims.base import Resample
    from vitscope.report.load import StudyRun

    res = synthetic(2, "")
    res.arrays["nll_batches"] = np.repeat(res.arrays["nll"][..., None], 2, axis=-1)
    res.arrays["l2"] = np.zeros_like(res.arrays["nll"])
    run = StudyRun("r", Path("r"), "s", "resnet_tiny", "d", 1.0)
    run.results["landscape"] = res
    rise = samples.landscape_rise(run, 0.5, Resample())
    assert rise is not None and rise > 0
    for kind in ("pca", "eigen"):  # the same surface, drawn along other directions
        values = {**res.values, "directions": {"kind": kind}}
        run.results["landscape"] = replace(res, values=values)
        assert samples.landscape_rise(run, 0.5, Resample()) is None
