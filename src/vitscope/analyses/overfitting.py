"""Training NLL on augmented data, the quantity of the paper's overfitting plot (Fig 1b;
``docs/methods/overfitting.md``).

The paper's claim: a weak inductive bias does not make ViTs overfit; test error and training
NLL rise together, so ViT's trouble is optimisation, not overfitting. This module measures
the training side for one model: the NLL (soft-target cross-entropy with the run's Mixup /
CutMix / smoothing) of the trained model in eval mode over augmented training batches, the
same operator as the landscape's centre point. The study puts it next to each run's test
error and data fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import distributed as dist_utils
from ..data.augment import soft_cross_entropy
from ..errors import ConfigError
from ..results import Result, config_dict
from .base import TrainData, eval_mode
from .keys import OverfittingKeys as Keys
from .sharding import sum_over_ranks
from .spec import Analysis, Context


@dataclass(frozen=True)
class Config:
    """Training-NLL settings."""

    batches: int = 8  # augmented training batches averaged over
    batch_size: int = 256  # images per batch
    seed: int = 0  # which batches and which augmentation draws
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        if self.batches < 1 or self.batch_size < 1:
            raise ConfigError("overfitting.batches and overfitting.batch_size must be >= 1")


@torch.no_grad()
def run(
    model: torch.nn.Module, data: TrainData, cfg: Config = Config(), ctx: Context = Context()
) -> Result:
    """Mean NLL and accuracy (vs the argmax of the soft targets) on augmented training data.

    Under torchrun the batches are sharded over the ranks and the sums added up.

    Returns:
        Result ``overfitting``: ``values.train_nll``, ``values.train_acc``, ``values.images``.
    """
    nll_sum = correct = seen = 0.0
    with eval_mode(model):
        for i in dist_utils.shard(range(cfg.batches)):
            x, t = data.batch(i, cfg.batch_size, seed=cfg.seed, device=cfg.device)
            logits = model(x).float()
            nll_sum += soft_cross_entropy(logits, t).item() * len(x)
            correct += (logits.argmax(1) == t.argmax(1)).sum().item()
            seen += len(x)
    nll_sum, correct, seen = sum_over_ranks([nll_sum, correct, seen])
    return Result(
        "overfitting",
        values={
            Keys.TRAIN_NLL: nll_sum / seen,
            Keys.TRAIN_ACC: correct / seen,
            Keys.IMAGES: int(seen),
            Keys.TRANSFORM: data.transform,
        },
        config=config_dict(cfg),
    )


ANALYSIS = Analysis(
    name="overfitting",
    config=Config,
    run=run,
    split="train",
    summary=lambda r: {
        "train NLL": r.values[Keys.TRAIN_NLL],
        "train acc": r.values[Keys.TRAIN_ACC],
    },
    keys=Keys,
    description="Training NLL on augmented data, beside the test error (Fig 1b)",
    order=50,
)
