"""vitscope: why vision transformers behave as they do (Park & Kim, ICLR 2022).

The public API, re-exported here::

    import vitscope
    cfg = vitscope.resolve(preset="cpu", overrides={"model": {"name": "vit_tiny"}})
    result = vitscope.train(cfg, "runs/vit_tiny")
    model, cfg = vitscope.load_model("runs/vit_tiny", "best")
    maps = vitscope.feature_maps(model, images)   # one (b, c, h, w) map per residual unit
    vitscope.analyze("runs/vit_tiny", only="fourier,variance")

    deit = vitscope.load_foreign("timm", "deit_tiny_patch16_224", weights="deit.safetensors")
    vitscope.analyze_foreign(deit, "runs/deit", data="cifar10")  # every analysis, a run dir

Names are loaded on first use (PEP 562), so ``import vitscope.report`` or
``import vitscope.results`` loads no torch. ``vitscope.train`` is the function; import the
package's modules with ``from vitscope.train import loop``.
"""

from __future__ import annotations

from typing import Any

from . import train as _train_package  # torch-free itself: its names load lazily
from ._lazy import exports
from .errors import VitscopeError

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": ".config",
    "resolve": ".config",
    "Block": ".models",
    "blocks": ".models",
    "create_model": ".models",
    "feature_maps": ".models",
    "list_models": ".models",
    "ForeignModel": ".foreign",
    "describe": ".foreign",
    "load_foreign": ".foreign",
    "wrap": ".foreign",
    "build_report": ".report",
    "analyze": ".run_analyses",
    "analyze_foreign": ".run_analyses",
    "analyze_model": ".run_analyses",
    "reproduce": ".study",
    "evaluate_run": ".train",
    "load_model": ".train",
    "Result": ".results",
}


__getattr__ = exports(__name__, _EXPORTS)


def train(cfg: Any, run_dir: Any, **kwargs: Any) -> Any:
    """Train a model into ``run_dir``; see :func:`vitscope.train.trainer.train`."""
    from .train.trainer import train as _train

    return _train(cfg, run_dir, **kwargs)


del _train_package  # the attribute ``train`` is the function above

__all__ = ["VitscopeError", "__version__", "train", *sorted(_EXPORTS)]
