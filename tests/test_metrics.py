import math

import numpy as np
import pytest
import torch

from vitscope.config import TrainConfig
from vitscope.train.loop import lr_at
from vitscope.train.metrics import classification_metrics


def _reference(logits, targets, n_bins):
    """Slow, obvious numpy versions of the four metrics."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(targets)
    acc = float((p.argmax(1) == targets).mean())
    nll = float(-np.log(p[np.arange(n), targets]).mean())
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    edges = np.linspace(0, 1, n_bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == targets[m]).mean() - conf[m].mean())
    onehot = np.eye(p.shape[1])[targets]
    brier = float(((onehot - p) ** 2).sum(1).mean())
    return acc, nll, ece, brier


@pytest.mark.parametrize("n_bins", [10, 15])
def test_metrics_match_numpy_reference(n_bins):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 7, generator=g) * 3
    targets = torch.randint(0, 7, (2000,), generator=g)
    m = classification_metrics(logits, targets, n_bins=n_bins)
    acc, nll, ece, brier = _reference(logits.numpy(), targets.numpy(), n_bins)
    assert m["acc"] == pytest.approx(acc, abs=1e-6)
    assert m["nll"] == pytest.approx(nll, rel=1e-5)
    assert m["ece"] == pytest.approx(ece, abs=1e-5)
    assert m["brier"] == pytest.approx(brier, rel=1e-5)
    assert m["ece_bins"] == n_bins


def test_perfectly_calibrated_confident_predictions():
    targets = torch.arange(10) % 3
    logits = torch.nn.functional.one_hot(targets, 3).float() * 50
    m = classification_metrics(logits, targets)
    assert m["acc"] == 1.0 and m["ece"] < 1e-6 and m["brier"] < 1e-6 and m["nll"] < 1e-6


def test_lr_schedule_follows_the_paper_recipe():
    cfg = TrainConfig(lr=1.0, warmup_epochs=2, epochs=4, schedule="cosine")
    steps = 10
    # warm-up: linear from 0, per iteration, across both warm-up epochs
    assert lr_at(cfg, 0, 0, steps) == 0.0
    assert lr_at(cfg, 0, 5, steps) == pytest.approx(0.25)
    assert lr_at(cfg, 1, 9, steps) == pytest.approx(19 / 20)
    # cosine over the main epochs, stepped per epoch
    assert lr_at(cfg, 2, 0, steps) == pytest.approx(1.0)
    assert lr_at(cfg, 2, 7, steps) == pytest.approx(1.0)
    assert lr_at(cfg, 4, 0, steps) == pytest.approx(0.5)
    assert lr_at(cfg, 5, 0, steps) == pytest.approx((1 + math.cos(math.pi * 3 / 4)) / 2)
    ms = TrainConfig(
        lr=0.1,
        epochs=200,
        warmup_epochs=1,
        schedule="multistep",
        milestones=(60, 120, 160),
        gamma=0.2,
    )
    assert lr_at(ms, 1 + 59, 0, steps) == pytest.approx(0.1)
    assert lr_at(ms, 1 + 60, 0, steps) == pytest.approx(0.02)
    assert lr_at(ms, 1 + 170, 0, steps) == pytest.approx(0.1 * 0.2**3)
