"""Classification metrics of a set of predictions: accuracy, NLL, ECE, Brier
(``docs/methods/training.md``).

All take logits ``(N, K)`` and integer targets ``(N,)``. NLL is averaged per *sample* (the
paper's code averages per batch; the two differ only by the ragged last batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return multiclass_accuracy(logits, targets, num_classes=logits.shape[1], average="micro").item()


def nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood ``-log p(y|x)`` in nats."""
    return F.cross_entropy(logits.float(), targets).item()


def ece(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: ``sum_b n_b/N |acc_b - conf_b|`` over equal-width bins.

    Guo et al. (2017), "On Calibration of Modern Neural Networks"; confidence = max softmax.
    """
    probs = logits.float().softmax(-1)
    return multiclass_calibration_error(
        probs, targets, num_classes=logits.shape[1], n_bins=n_bins, norm="l1"
    ).item()


def brier(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-class Brier score ``mean_n sum_k (onehot_k - p_k)^2`` (Brier, 1950)."""
    probs = logits.float().softmax(-1)
    onehot = F.one_hot(targets, probs.shape[1]).to(probs.dtype)
    return (onehot - probs).pow(2).sum(1).mean().item()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> dict:
    """All four metrics as a dict: ``acc``, ``nll``, ``ece``, ``brier`` (plus ``ece_bins``)."""
    logits = logits.detach().float().cpu()
    targets = targets.detach().cpu()
    return {
        "acc": accuracy(logits, targets),
        "nll": nll(logits, targets),
        "ece": ece(logits, targets, n_bins),
        "ece_bins": n_bins,
        "brier": brier(logits, targets),
    }
