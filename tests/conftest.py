"""Shared fixtures: tiny image-folder datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230)]


def write_folder_dataset(
    root: Path, n_train: int, n_val: int, size: int = 32, seed: int = 0
) -> Path:
    """``root/{train,val}/<class>/*.png``: three classes told apart by colour and a stripe."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, colour in enumerate(COLOURS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(0, 25, (size, size, 3)) + np.array(colour)
                img[:, c * size // 3 : (c + 1) * size // 3] += 40  # class-specific stripe
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("folder"), n_train=40, n_val=10)


@pytest.fixture(scope="session")
def folder_data_large(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("folder_large"), n_train=120, n_val=10)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores two threads cost up to 10x.

    Modules that want it say ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hvp_vs_central_differences(loss_fn, params) -> float:
    """Relative error of autograd's Hessian-vector product (double backward) against central
    differences of the gradient, along a random direction (float64 parameters expected)."""

    def grads(create_graph=False):
        return torch.autograd.grad(loss_fn(), params, create_graph=create_graph)

    v = [torch.randn_like(p) for p in params]
    g = grads(create_graph=True)
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    eps = 1e-5  # central differences: error O(eps^2) against float64 round-off O(1e-16 / eps)
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.add_(eps * vi)
    g_plus = grads()
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.sub_(2 * eps * vi)
    g_minus = grads()
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.add_(eps * vi)  # back to the original point
    fd = torch.cat([(a - b).flatten() / (2 * eps) for a, b in zip(g_plus, g_minus)])
    hv = torch.cat([h.flatten() for h in hv])
    assert torch.isfinite(hv).all()
    return float((hv - fd).norm() / hv.norm())


@pytest.fixture
def hvp_error():
    """``hvp_error(loss_fn, params)``: see :func:`_hvp_vs_central_differences`."""
    return _hvp_vs_central_differences


def require(module: str):
    """Import an optional extra for a test. Where ``VITSCOPE_REQUIRE_EXTRAS`` names it
    (comma-separated; ``make test`` names each extra in the environment that has it) a
    missing extra fails the test module instead of skipping it, so CI cannot pass without
    running it."""
    import importlib
    import os

    required = {m.strip() for m in os.environ.get("VITSCOPE_REQUIRE_EXTRAS", "").split(",")}
    if module in required:
        return importlib.import_module(module)
    return pytest.importorskip(module)


# --set items that make every analysis quick (foreign-model CLI tests)
SMALL = [
    "fourier.num_images=8", "fourier.batch_size=4", "variance.num_images=8",
    "variance.batch_size=4", "noise.frequencies=[0.2,0.8]", "noise.num_images=8",
    "lesion.num_images=8", "overfitting.batches=1", "overfitting.batch_size=8",
    "landscape.dims=1", "landscape.num_points=3", "landscape.batches=1",
    "landscape.batch_size=8", "hessian.batches=1", "hessian.batch_size=8", "hessian.top_k=2",
    "hessian.max_iter=12", "hessian.density_batches=0", "hessian.trace_batches=0",
    "corruption.num_images=8", "corruption.severities=[1,5]",
]  # fmt: skip


def assert_same_training(ref: Path, other: Path, epochs: int) -> None:
    """Two run directories trained to the same end: ``epochs`` epochs in ``last.pt``, equal
    weights bit for bit, and equal ``metrics.jsonl`` lines but for the timings."""
    from vitscope.io import read_jsonl
    from vitscope.train import load_checkpoint

    a = load_checkpoint(ref / "checkpoints" / "last.pt")
    b = load_checkpoint(other / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = ("images_per_s", "train_seconds")

    def rows(run: Path) -> list[dict]:
        lines = read_jsonl(run / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in timing} for r in lines]

    assert rows(ref) == rows(other)


def train_command(root: Path, out: Path, epochs: int, batch_size: int = 16) -> list[str]:
    """``python -m vitscope train`` of resnet_tiny on the folder data set at ``root``: the
    command line the CLI tests run (1 warm-up epoch from the cpu preset, then ``epochs``)."""
    import sys

    return [sys.executable, "-m", "vitscope", "train", "--model", "resnet_tiny", "--data",
            "folder", "--data-root", str(root), "--epochs", str(epochs), "--set",
            f"train.batch_size={batch_size}", "--no-progress", "--out", str(out)]  # fmt: skip
