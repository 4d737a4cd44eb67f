"""Foreign models by library and name, with local weights, ready for the analyses.

``load_foreign("timm", "deit_tiny_patch16_224", weights=..., model_kwargs=..., img_size=...)``
builds the architecture with random weights (nothing is fetched from a hub), loads the
weights file safely (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read as data only), and
wraps it as a :class:`~.core.ForeignModel` with the model's own input size and normalisation:
timm's ``pretrained_cfg``, Hugging Face's ``preprocessor_config.json``, torchvision's
ImageNet statistics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VitscopeError
from .core import ForeignModel

SOURCES = ("timm", "torchvision", "hf")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise VitscopeError(
            f"{module} is not installed ({e}); install the extra: pip install 'vitscope[{extra}]'"
        ) from None


def state_dict_of(path: str | Path) -> dict:
    """The model weights in a local file: ``.safetensors``, or a torch file read as data
    only (a pickle that would run code is refused). Checkpoints that hold the weights under
    ``model``, ``state_dict``, ``model_state_dict`` or ``module`` are unwrapped."""
    from ..train.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise VitscopeError(f"weights file {path} holds no state dict")
    return state


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load ``path`` into ``model`` strictly; a mismatch names the first keys that differ."""
    load_state(model, state_dict_of(path), path, what)


def load_state(model: nn.Module, state: Mapping, path: str | Path, what: str) -> None:
    """Load the state dict ``state`` (read from ``path``) into ``model`` strictly (a
    DataParallel/DDP ``module.`` prefix is dropped); a mismatch names the first keys that
    differ."""
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape mismatch
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise VitscopeError(f"weights {path} do not fit {what}: {lines[-1]}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:3]}")
    if problems:
        raise VitscopeError(f"weights {path} do not fit {what}: {'; '.join(problems)}")


def _timm(name: str, kwargs: dict, img_size: int | None) -> tuple[nn.Module, dict]:
    timm = _need("timm", "timm")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise VitscopeError(f"timm has no model {name!r}; similar: {', '.join(close) or 'none'}")
    kw = dict(kwargs)
    if img_size is not None:
        kw.setdefault("img_size", img_size)
    try:
        model = timm.create_model(name, pretrained=False, **kw)
    except TypeError as e:
        if "img_size" not in str(e) or "img_size" in kwargs:
            raise VitscopeError(f"timm {name}: {e}") from None
        kw.pop("img_size")  # a convnet: any input size works
        model = timm.create_model(name, pretrained=False, **kw)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = img_size or (cfg.get("input_size") or (3, 224, 224))[-1]
    return model, {"mean": cfg.get("mean"), "std": cfg.get("std"), "img_size": size}


def _torchvision(name: str, kwargs: dict, img_size: int | None) -> tuple[nn.Module, dict]:
    _need("torchvision", "torchvision")
    from torchvision import models as tvm

    if name not in tvm.list_models():
        close = [n for n in tvm.list_models() if name.split("_")[0] in n][:8]
        raise VitscopeError(
            f"torchvision has no model {name!r}; similar: {', '.join(close) or 'none'}"
        )
    kw = dict(kwargs)
    if img_size is not None and name.startswith("vit_"):
        kw.setdefault("image_size", img_size)  # position embeddings are sized by it
    try:
        model = tvm.get_model(name, weights=None, **kw)
    except (TypeError, ValueError) as e:
        raise VitscopeError(f"torchvision {name}: {e}") from None
    size = img_size or getattr(model, "image_size", None) or 224
    return model, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "img_size": size}


def _hf(
    target: str, kwargs: dict, img_size: int | None, weights: str | Path | None = None
) -> tuple[nn.Module, dict]:
    transformers = _need("transformers", "hf")
    path = Path(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VitscopeError(f"{path} has no config.json (a Hugging Face model folder)")
        config_file, folder = path / "config.json", path
    elif path.is_file():
        config_file, folder = path, path.parent
    else:
        raise VitscopeError(
            f"--hf {target}: no such folder or config file (models are not fetched from a hub)"
        )
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise VitscopeError(f"{config_file} is not a readable JSON config ({e})") from None
    model_type = raw.pop("model_type", None)
    if not model_type:
        raise VitscopeError(f"{config_file} names no model_type")
    over = dict(kwargs)
    if "num_classes" in over:
        over["num_labels"] = over.pop("num_classes")
    if "in_chans" in over:
        over["num_channels"] = over.pop("in_chans")
    if img_size is not None:
        over.setdefault("image_size", img_size)
    if "num_labels" in over:  # the label maps follow the number of labels
        raw.pop("id2label", None)
        raw.pop("label2id", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **{**raw, **over})
        model = transformers.AutoModelForImageClassification.from_config(config)
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise VitscopeError(f"Hugging Face model {target}: {first}") from None
    default = ("model.safetensors", "pytorch_model.bin")
    weights = weights or next((folder / f for f in default if (folder / f).is_file()), None)
    if weights is not None:
        model = _hf_pretrained(transformers, config, Path(weights), target)
    pre = {}
    pre_file = folder / "preprocessor_config.json"
    if pre_file.is_file():
        try:
            pre = json.loads(pre_file.read_text())
        except (OSError, ValueError) as e:
            raise VitscopeError(f"{pre_file} is not readable JSON ({e})") from None
    size = img_size or _hf_size(pre) or getattr(config, "image_size", None) or 224
    info = {"mean": pre.get("image_mean"), "std": pre.get("image_std"), "img_size": size}
    info["weights"] = str(weights) if weights is not None else None
    return model, info


def _hf_pretrained(transformers, config, weights: Path, target: str) -> nn.Module:
    """``from_pretrained`` on a folder holding ``config`` and ``weights`` (linked): transformers
    maps the names a checkpoint was saved with to its current modules. The file is read as
    data first (a pickle that would run code is refused before transformers sees it), and
    weights that leave keys missing, unused or of another shape are refused."""
    import os
    import tempfile

    state_dict_of(weights)  # refuses unsafe or unreadable files with one line
    transformers.utils.logging.disable_progress_bar()  # one line per command, not a bar
    name = "model.safetensors" if weights.suffix == ".safetensors" else "pytorch_model.bin"
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        os.symlink(weights.resolve(), Path(tmp) / name)
        try:
            model, report = transformers.AutoModelForImageClassification.from_pretrained(
                tmp, config=config, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0]
            raise VitscopeError(f"weights {weights} do not fit {target}: {first}") from None
    problems = [
        f"{what} {list(report.get(key) or [])[:3]}"
        for key, what in (
            ("missing_keys", "missing"),
            ("unexpected_keys", "unexpected"),
            ("mismatched_keys", "of another shape"),
        )  # fmt: skip
        if report.get(key)
    ]
    if problems:
        raise VitscopeError(f"weights {weights} do not fit {target}: {'; '.join(problems)}")
    return model


def _hf_size(pre: Mapping) -> int | None:
    size = pre.get("crop_size") or pre.get("size")
    if isinstance(size, Mapping):
        size = size.get("height") or size.get("shortest_edge")
    return int(size) if size else None


def load_foreign(
    source: str,
    name: str,
    *,
    weights: str | Path | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    spec: Mapping | None = None,
) -> ForeignModel:
    """A timm, torchvision or Hugging Face model, wrapped for the analyses.

    Args:
        source: ``timm``, ``torchvision`` or ``hf``.
        name: the library's model name (``deit_tiny_patch16_224``, ``resnet50``); for ``hf``
            a local folder (``config.json``, optional ``preprocessor_config.json`` and
            ``model.safetensors``) or a ``config.json`` file.
        weights: a local weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``); ``hf``
            folders load their own ``model.safetensors``/``pytorch_model.bin`` by default.
            Without weights the model keeps its random initialisation.
        model_kwargs: constructor arguments (``num_classes``, ``img_size``, ``in_chans``, ...).
        img_size: the model's input side; inputs of another size are resized to it.
        mean, std: the model's input normalisation, overriding what its config says.
        spec: kind -> module-name patterns, instead of the curated rule.

    Raises:
        VitscopeError: unknown source or name, a missing extra, unreadable or unfitting
            weights, or a file that would run code.
    """
    if source not in SOURCES:
        raise VitscopeError(f"unknown model source {source!r}; valid: {', '.join(SOURCES)}")
    kwargs = dict(model_kwargs or {})
    if source == "hf":  # transformers loads (and renames) the weights itself
        model, info = _hf(name, kwargs, img_size, weights)
    else:
        model, info = (_timm if source == "timm" else _torchvision)(name, kwargs, img_size)
        if weights:
            load_weights(model, weights, f"{source} {name}")
    model.eval()
    return ForeignModel(
        model,
        name=f"{source}:{name}" if source != "hf" else f"hf:{Path(name).name}",
        source=source,
        img_size=int(info["img_size"]),
        in_chans=kwargs.get("in_chans"),
        mean=mean if mean is not None else info.get("mean"),
        std=std if std is not None else info.get("std"),
        spec=spec,
    )


__all__ = ["SOURCES", "load_foreign", "load_weights", "state_dict_of"]
