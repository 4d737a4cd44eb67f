"""vitscope: why vision transformers behave as they do (Park & Kim, ICLR 2022).

The public API, re-exported here::

    import vitscope
    cfg = vitscope.resolve(preset="cpu", overrides={"model": {"name": "vit_tiny"}})
    result = vitscope.train(cfg, "runs/vit_tiny")
    model, cfg = vitscope.load_model("runs/vit_tiny", "best")
    maps = vitscope.feature_maps(model, images)   # one (b, c, h, w) map per residual unit
    vitscope.analyze("runs/vit_tiny", only="fourier,variance")

Note: ``vitscope.train`` is the function; import submodules with ``from vitscope.train import
loop`` (``import vitscope.train.loop as loop`` resolves ``vitscope.train`` to the function).
"""

__version__ = "0.1.0"

from .config import RunConfig, resolve  # noqa: E402
from .errors import VitscopeError  # noqa: E402
from .models import Block, blocks, create_model, feature_maps, list_models  # noqa: E402
from .report import build_report  # noqa: E402
from .study import analyze, analyze_model, reproduce  # noqa: E402
from .train import evaluate_run, load_model, train  # noqa: E402

__all__ = [
    "Block",
    "analyze",
    "analyze_model",
    "build_report",
    "reproduce",
    "RunConfig",
    "VitscopeError",
    "__version__",
    "blocks",
    "create_model",
    "evaluate_run",
    "feature_maps",
    "list_models",
    "load_model",
    "resolve",
    "train",
]
