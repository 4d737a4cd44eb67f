"""Training: the paper's recipes, metrics, checkpoints that resume."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import NonFiniteLossError, evaluate, lr_at, predict, train_one_epoch
from .metrics import classification_metrics
from .trainer import (
    TrainResult,
    build_model,
    evaluate_run,
    load_data,
    load_model,
    load_split,
    read_config,
    train,
)

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "build_model",
    "classification_metrics",
    "evaluate",
    "evaluate_run",
    "load_checkpoint",
    "load_data",
    "load_model",
    "load_split",
    "lr_at",
    "predict",
    "read_config",
    "save_checkpoint",
    "train",
    "train_one_epoch",
]
