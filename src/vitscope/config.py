"""Typed configuration: frozen dataclasses, YAML presets and ``--set a.b=c`` overrides.

A run is described by one :class:`RunConfig`. It is resolved in this order, each layer
overriding the one before: dataclass defaults <- preset YAML <- user YAML <- CLI flags <-
``--set`` overrides. Every field is validated in ``__post_init__`` with a one-line
:class:`~vitscope.errors.ConfigError` that names the field.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class DataConfig:
    """Which images to train and test on."""

    name: str = "fashion-mnist"  # dataset registry key (`vitscope list datasets`)
    root: str | None = None  # folder holding the files; None searches the standard places
    fraction: float = 1.0  # class-balanced fraction of the training set kept (small-data regime)
    subset_seed: int = 0  # seed of the class-balanced subset
    img_size: int | None = None  # resize images to this size (folder datasets); None = native
    download: bool = True  # download missing files into ~/.cache/vitscope
    # image folders: memory | stream (decode in DataLoader workers) | auto (stream when the
    # train split would exceed memory_limit_gb decoded)
    loader: str = "auto"
    memory_limit_gb: float = 8.0
    workers: int | None = None  # DataLoader workers when streaming; None = cores - 1 (1..8)
    decoder: str = "pil"  # image folders: pil | torchvision (the extra)
    mean: list[float] | None = None  # per-channel mean of x / 255; None = the dataset's own
    std: list[float] | None = None  # per-channel std; set both or neither
    crop_pct: float = 1.0  # image folders' test view: resize to img_size / crop_pct, centre crop

    def __post_init__(self) -> None:
        _check(
            isinstance(self.fraction, (int, float)) and 0.0 < self.fraction <= 1.0,
            f"data.fraction must be in (0, 1], got {self.fraction!r}",
        )
        _check(
            self.img_size is None or self.img_size >= 8,
            f"data.img_size must be >= 8 or null, got {self.img_size!r}",
        )
        _check(
            self.loader in LOADERS,
            f"data.loader must be one of {', '.join(LOADERS)}, got {self.loader!r}",
        )
        _check(
            self.decoder in DECODERS,
            f"data.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}",
        )
        _check(
            isinstance(self.memory_limit_gb, (int, float)) and self.memory_limit_gb >= 0,
            f"data.memory_limit_gb must be a number >= 0, got {self.memory_limit_gb!r}",
        )
        _check(
            self.workers is None or self.workers >= 0,
            f"data.workers must be >= 0 or null, got {self.workers!r}",
        )
        _check(
            (self.mean is None) == (self.std is None),
            "data.mean and data.std go together: set both or neither",
        )
        _check(
            self.std is None or (len(self.std) > 0 and min(self.std) > 0),
            f"data.std must hold values > 0, got {self.std!r}",
        )

        _check(
            isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1,
            f"data.crop_pct must be in (0, 1], got {self.crop_pct!r}",
        )

    def stats(self) -> tuple | None:
        """``(mean, std)`` from the config, or None for the dataset's own."""
        return None if self.mean is None else (tuple(self.mean), tuple(self.std))


ERASE_MODES = ("const", "rand", "pixel")  # timm RandomErasing modes
LOADERS = ("auto", "memory", "stream")  # data.loader
DECODERS = ("pil", "torchvision")  # data.decoder
INTERPOLATIONS = ("bilinear", "bicubic", "random")  # RandomResizedCrop; random: timm's


def check_rrc(
    scale: tuple[float, ...], ratio: tuple[float, ...], interpolation: str, padding: int = 0
) -> None:
    """One-line errors for RandomResizedCrop settings (``padding``: a crop padding used too)."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(
            f"augment.rrc_scale must be (low, high) with 0 < low <= high <= 1, got {list(scale)}"
        )
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(
            f"augment.rrc_ratio must be (low, high) with 0 < low <= high, got {list(ratio)}"
        )
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"augment.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
            f"got {interpolation!r}"
        )
    if padding:
        raise ConfigError(
            "augment.rrc replaces the padded random crop: set augment.crop_padding: 0"
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentation of training images (kornia), ``docs/methods/training.md``."""

    crop_padding: int = 4  # random crop with zero padding of this many pixels; 0 disables
    rrc: bool = False  # RandomResizedCrop back to the image size (needs crop_padding 0)
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # share of the image area a crop covers
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratios, log-uniform
    interpolation: str = "bilinear"  # of the resized crop: bilinear, bicubic or random
    hflip: bool = True  # random horizontal flip with probability 0.5
    randaugment: bool = False  # RandAugment (timm 'rand-m9-n2' in the paper recipe)
    ra_n: int = 2  # RandAugment: operations per image
    ra_m: int = 9  # RandAugment: magnitude (timm scale, 10 = strongest; 'm9' in the paper)
    ra_mstd: float = 1.0  # RandAugment: std of the magnitude noise (paper: 1.0 CIFAR, 0.5 ImageNet)
    mixup_alpha: float = 0.0  # Mixup Beta(alpha, alpha); 0 disables
    cutmix_alpha: float = 0.0  # CutMix Beta(alpha, alpha); 0 disables
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    label_smoothing: float = 0.0  # label smoothing of the soft targets
    reprob: float = 0.0  # timm RandomErasing probability per image (paper ImageNet: 0.25)
    remode: str = "const"  # erased pixels: const (0 after normalising) | rand (per channel) | pixel
    recount: int = 1  # boxes erased per image

    def __post_init__(self) -> None:
        _check(0.0 <= self.reprob <= 1.0, f"augment.reprob must be in [0, 1], got {self.reprob}")
        _check(
            self.remode in ERASE_MODES,
            f"augment.remode must be one of {', '.join(ERASE_MODES)}, got {self.remode!r}",
        )
        _check(self.recount >= 1, f"augment.recount must be >= 1, got {self.recount}")
        _check(
            self.crop_padding >= 0, f"augment.crop_padding must be >= 0, got {self.crop_padding}"
        )
        _check(self.ra_n >= 0, f"augment.ra_n must be >= 0, got {self.ra_n}")
        _check(0 <= self.ra_m <= 30, f"augment.ra_m must be in [0, 30], got {self.ra_m}")
        _check(self.ra_mstd >= 0, f"augment.ra_mstd must be >= 0, got {self.ra_mstd}")
        check_rrc(
            self.rrc_scale, self.rrc_ratio, self.interpolation, self.crop_padding if self.rrc else 0
        )
        for name in ("mixup_alpha", "cutmix_alpha"):
            _check(getattr(self, name) >= 0, f"augment.{name} must be >= 0")
        for name in ("mix_prob", "switch_prob", "label_smoothing"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"augment.{name} must be in [0, 1], got {v}")


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture to build (`vitscope list models`)."""

    name: str = "resnet_tiny"  # model registry key
    drop_path: float = 0.0  # stochastic depth, linear in depth (sd * i / (depth - 1))
    kwargs: dict = field(default_factory=dict)  # other constructor overrides, e.g. {head: gap}

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.drop_path < 1.0, f"model.drop_path must be in [0, 1), got {self.drop_path}"
        )
        _check(isinstance(self.kwargs, dict), "model.kwargs must be a mapping")


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "multistep", "constant")
AMP_MODES = ("none", "bf16", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe (``docs/methods/training.md``). Warm-up epochs are extra, before the
    main epochs.

    Under ``torchrun --nproc-per-node W`` training is DistributedDataParallel and the recipe
    means the same as in one process: ``batch_size`` is the global batch (each rank takes a
    contiguous ``batch_size / W`` of every global batch, so it must divide), and ``lr`` is
    the learning rate of that global batch, never rescaled by ``W``. To keep a recipe while
    changing the batch, scale ``lr`` yourself (linear rule: ``lr * new_batch / old_batch``).
    """

    optimizer: str = "adamw"  # adamw | sgd (one parameter group, as in the paper's code)
    lr: float = 1e-3  # base learning rate
    weight_decay: float = 0.05  # decoupled (AdamW) or L2 (SGD) weight decay
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    batch_size: int = 128  # global training batch, split evenly over torchrun ranks
    eval_batch_size: int = 512  # test-time batch size
    # test metrics (and the best checkpoint) every this many epochs, and always after the
    # last; epochs between have no test_* metrics. 1: every epoch
    eval_every: int = 1
    epochs: int = 5  # main epochs (after warm-up)
    warmup_epochs: int = 0  # linear warm-up from 0, stepped per iteration, before `epochs`
    schedule: str = "cosine"  # cosine | multistep | constant, stepped per epoch
    milestones: tuple[int, ...] = ()  # multistep: epochs (after warm-up) where lr *= gamma
    gamma: float = 0.1  # multistep decay factor
    min_lr: float = 0.0  # cosine floor
    grad_clip: float | None = None  # clip the global gradient norm to this; null disables
    seed: int = 0  # seeds init, data order, augmentation and stochastic depth
    device: str = "cpu"  # cpu | cuda | cuda:N | mps
    # none | bf16 (autocast) | auto: bf16 where the device has bf16 arithmetic (a CUDA GPU
    # with bf16, an x86 CPU with AVX512-BF16 or AMX), else none (vitscope.train.loop.amp_of)
    amp: str = "none"
    compile: bool = False  # torch.compile the model for training
    channels_last: bool = False  # channels-last model and batches (speeds up convs on GPUs)
    # fused attention kernels (scaled_dot_product_attention) while training and evaluating;
    # first-order only: the analyses' Hessian-vector products always use explicit softmax
    fused_attention: bool = False
    # DDP only: SyncBatchNorm (CUDA), so BatchNorm sees the global batch as in one process;
    # off, each rank normalises with its own B/W images and rank 0's running stats are kept
    sync_bn: bool = False
    ece_bins: int = 15  # equal-width confidence bins of the ECE
    snapshot_every: int = 0  # also keep checkpoints/epochN.pt every N epochs; 0 disables
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        _check(
            self.optimizer in OPTIMIZERS,
            f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
        )
        _check(
            self.schedule in SCHEDULES,
            f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}",
        )
        _check(self.amp in AMP_MODES, f"train.amp must be one of {AMP_MODES}, got {self.amp!r}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            f"train.weight_decay must be >= 0, got {self.weight_decay}",
        )
        _check(
            math.isfinite(self.min_lr) and self.min_lr >= 0,
            f"train.min_lr must be >= 0, got {self.min_lr}",
        )
        _check(0 <= self.momentum < 1, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(
            self.eval_batch_size >= 1,
            f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}",
        )
        _check(self.eval_every >= 1, f"train.eval_every must be >= 1, got {self.eval_every}")
        _check(self.epochs >= 0, f"train.epochs must be >= 0, got {self.epochs}")
        _check(
            self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}"
        )
        _check(
            self.epochs + self.warmup_epochs >= 1, "train.epochs + train.warmup_epochs must be >= 1"
        )
        _check(
            self.grad_clip is None or self.grad_clip > 0,
            f"train.grad_clip must be > 0 or null, got {self.grad_clip}",
        )
        _check(self.ece_bins >= 1, f"train.ece_bins must be >= 1, got {self.ece_bins}")
        _check(
            self.snapshot_every >= 0,
            f"train.snapshot_every must be >= 0, got {self.snapshot_every}",
        )
        _check(0 < self.gamma <= 1, f"train.gamma must be in (0, 1], got {self.gamma}")
        _check(
            all(m >= 1 for m in self.milestones),
            f"train.milestones must be positive epochs, got {list(self.milestones)}",
        )
        _check(
            self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            f"train.device must be cpu, cuda[:N] or mps, got {self.device!r}",
        )

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class RunOverrides:
    """A partial :class:`RunConfig`: the fields one layer of a study sets, by section.

    Keys are checked against the sections' fields here (a typo raises with its path and the
    valid keys); values are checked when a run's config is resolved.
    """

    data: dict = field(default_factory=dict)  # DataConfig fields
    augment: dict = field(default_factory=dict)  # AugmentConfig fields
    model: dict = field(default_factory=dict)  # ModelConfig fields
    train: dict = field(default_factory=dict)  # TrainConfig fields

    def __post_init__(self) -> None:
        for section, cls in _SECTIONS.items():
            given = getattr(self, section)
            _check(isinstance(given, dict), f"{section} must be a mapping, got {given!r}")
            valid = {f.name for f in fields(cls)}
            unknown = sorted(set(given) - valid)
            if unknown:
                valid_keys = ", ".join(sorted(valid))
                raise ConfigError(
                    f"unknown config key {section}.{unknown[0]}; valid keys: {valid_keys}"
                )

    def as_dict(self) -> dict:
        """The overrides as a nested mapping (empty sections left out), for :func:`merge`."""
        return {k: dict(getattr(self, k)) for k in _SECTIONS if getattr(self, k)}


_SECTIONS = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (tuples become lists), ready for YAML."""

    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def _entry(cls: type, value: Any, where: str) -> Any:
    """One value of a ``dict[K, SomeConfig]`` field; its errors name the entry."""
    if isinstance(value, cls):
        return value
    try:
        return from_dict(cls, value, where)
    except ConfigError as e:
        raise ConfigError(str(e) if where in str(e) else f"{where}: {e}") from None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated field type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        for i, option in enumerate(others):  # the first type that accepts the value
            try:
                return _coerce(value, option, where)
            except ConfigError:
                if i == len(others) - 1:
                    raise
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if origin is list:
        _check(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if tp is dict or origin is dict:
        _check(isinstance(value, dict), f"{where} must be a mapping, got {value!r}")
        if len(args) == 2 and is_dataclass(args[1]):  # dict[K, SomeConfig]
            return {
                _coerce(k, args[0], where): _entry(args[1], v, f"{where}.{k}")
                for k, v in value.items()
            }
        if len(args) == 2:  # dict[K, V]; a V that is a mapping may be left empty (null)
            empty = args[1] is dict or typing.get_origin(args[1]) is dict
            return {
                _coerce(k, args[0], f"{where} key"): (
                    {} if v is None and empty else _coerce(v, args[1], f"{where}.{k}")
                )
                for k, v in value.items()
            }
        return dict(value)
    if tp is bool:
        _check(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            f"{where} must be an integer, got {value!r}",
        )
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool) and value == value,
            f"{where} must be a number, got {value!r}",
        )  # value == value: NaN is no setting of anything
        try:
            return float(value)
        except OverflowError:  # an int past float's range
            raise ConfigError(f"{where} must be a number in float range, got {value!r}") from None
    if tp is str:
        _check(isinstance(value, str), f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys raise ConfigError."""
    data = data or {}
    _check(isinstance(data, dict), f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        key = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _entry(tp, data[f.name], key)
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ConfigError(f"{where or 'config'}: {e}") from None


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. Mappings under ``kwargs`` merge too."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=1e-3", "model.kwargs.head=gap"]`` -> nested dict; values parsed as YAML."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        _check(bool(sep) and bool(key.strip()), f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            _check(isinstance(node, dict), f"--set {key}: {p} is not a section")
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------
# YAML and presets


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with a one-line error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if data is None:
        return {}
    _check(isinstance(data, dict), f"config file {p} must hold a mapping at top level")
    return data


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _preset_dir():
    return resources.files("vitscope") / "presets"


def list_presets() -> list[str]:
    """Names of the shipped training presets (`src/vitscope/presets/*.yaml`)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _preset_dir().iterdir() if p.name.endswith(".yaml")
    )


def preset_dict(name: str) -> dict:
    """The raw mapping of a shipped preset; unknown names list the valid ones."""
    names = list_presets()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")
    data = yaml.safe_load((_preset_dir() / f"{name}.yaml").read_text()) or {}
    data.pop("description", None)
    return data


def preset_description(name: str) -> str:
    data = yaml.safe_load((_preset_dir() / f"{name}.yaml").read_text()) or {}
    return str(data.get("description", "")).strip()


def resolve(
    *,
    preset: str | None = "cpu",
    config_file: str | Path | None = None,
    overrides: dict | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Resolve a :class:`RunConfig` from a preset, a YAML file, flags and ``--set`` items."""
    data: dict = preset_dict(preset) if preset else {}
    if config_file is not None:
        data = merge(data, load_yaml(config_file))
    if overrides:
        data = merge(data, overrides)
    if sets:
        data = merge(data, parse_overrides(sets))
    return from_dict(RunConfig, data)


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "dump_yaml",
    "from_dict",
    "list_presets",
    "load_yaml",
    "merge",
    "parse_overrides",
    "preset_dict",
    "replace",
    "resolve",
    "to_dict",
]
