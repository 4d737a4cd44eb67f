"""Training: the paper's recipes, metrics, checkpoints that resume.

Names load on first use (PEP 562), so importing this package loads no torch.
"""

from __future__ import annotations

from .._lazy import exports

_EXPORTS = {
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "load_safetensors": ".checkpoint",
    "save_safetensors": ".checkpoint",
    "NonFiniteLossError": ".loop",
    "evaluate": ".loop",
    "lr_at": ".loop",
    "predict": ".loop",
    "train_one_epoch": ".loop",
    "classification_metrics": ".metrics",
    "TrainResult": ".trainer",
    "build_model": ".trainer",
    "evaluate_run": ".trainer",
    "load_data": ".trainer",
    "load_model": ".trainer",
    "load_split": ".trainer",
    "read_config": ".trainer",
    "train": ".trainer",
}


__getattr__ = exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
