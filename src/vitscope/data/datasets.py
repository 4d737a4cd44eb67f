"""Image classification datasets held in memory as one uint8 tensor per split.

Registered names (``list_datasets()``):

- ``fashion-mnist``: the gzipped idx files, parsed by hand. Searched in ``root``, then
  ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``), then
  ``$VITSCOPE_CACHE/fashion-mnist``; downloaded (MD5-checked) when missing.
- ``cifar10``, ``cifar100``: the python-pickle tarballs from Toronto, extracted once.
- ``folder``: an ImageNet-style tree ``root/{train,val|test}/<class>/*.png|jpg|...``.

Where files are downloaded: into ``root`` when given, else into ``$VITSCOPE_CACHE``
(default ``~/.cache/vitscope``). Download addresses can be overridden for mirrors and tests:
``VITSCOPE_CIFAR10_URL`` / ``VITSCOPE_CIFAR10_MD5``, ``VITSCOPE_CIFAR100_URL`` /
``VITSCOPE_CIFAR100_MD5`` (an MD5 of ``none`` skips the check) and
``VITSCOPE_FASHION_MNIST_URL`` (a base URL ending in ``/``). Files found on disk are not
MD5-checked (the Debian package re-compresses the same idx data, so its ``.gz`` checksums
differ from Zalando's); they are validated when parsed instead.

Every failure a user can cause raises :class:`~vitscope.errors.DatasetError` with a one-line
message naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import LOADERS
from ..errors import ConfigError, DatasetError, VitscopeError
from ..io import atomic_write_json
from ..registry import Registry
from .download import _oneline, download_url
from .stream import FolderImages, resolve_decoder

MEMORY_LIMIT_GB = 8.0  # data.memory_limit_gb: a folder whose train split is larger streams


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the augmentation need to know about a dataset."""

    name: str  # registry key
    num_classes: int
    in_chans: int  # 1 (Fashion-MNIST) or 3
    img_size: int  # images are square: (in_chans, img_size, img_size)
    mean: tuple[float, ...]  # per-channel mean of x / 255 (normalisation constants)
    std: tuple[float, ...]  # per-channel std of x / 255
    classes: tuple[str, ...]  # class names, index = label


@dataclass
class ImageData:
    """One split of a dataset, held in memory (and movable to the training device).

    Attributes:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        info: the dataset's :class:`DatasetInfo`.
        files: for an image folder, the files the images come from (a lazy
            :class:`~vitscope.data.stream.FolderImages`, the same object as ``images`` when
            streamed): their names let other releases of the same images (ImageNet-C) line
            up with them. None for array datasets.
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    files: FolderImages | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DatasetError(
                f"{self.info.name}: images must be uint8 (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise DatasetError(
                f"{self.info.name}: labels must be int64 of shape ({len(self.images)},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> ImageData:
        """The images at ``indices`` (a tensor, array or list of ints), same info."""
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.labels.device)
        files = None if self.files is None else self.files[idx.cpu()]
        return ImageData(self.images[idx.to(self.images.device)], self.labels[idx], self.info,
                         files)  # fmt: skip

    def to(self, device: torch.device | str) -> ImageData:
        """A copy with images and labels on ``device`` (no-op if already there)."""
        return ImageData(self.images.to(device), self.labels.to(device), self.info, self.files)


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: how to describe it and how to load one split."""

    info: Callable[..., DatasetInfo]  # (root, img_size) -> DatasetInfo
    load: Callable[..., ImageData]  # (train, root, download, img_size) -> ImageData
    # load and info also take loader, memory_limit_gb, decoder and stats (folder datasets)
    streams: bool = False


DATASETS: Registry[DatasetSource] = Registry("dataset")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return DATASETS.names()


def dataset_info(
    name: str,
    root: str | None = None,
    *,
    img_size: int | None = None,
    decoder: str = "pil",
    stats: tuple | None = None,
) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``, without loading images where possible.

    Built-in datasets answer from constants. ``folder`` reads its classes from ``root/train``
    and computes mean/std from the train split in one streaming pass, once per process (and
    once per machine for folders too large for memory: kept under ``$VITSCOPE_CACHE``);
    ``stats`` (``(mean, std)``) replaces them.
    """
    src = DATASETS.get(name)
    kw = dict(root=_abs(root), img_size=_check_img_size(img_size))
    if src.streams:
        return src.info(**kw, decoder=decoder, stats=stats)
    info = src.info(**kw)
    return info if stats is None else _with_stats(info, stats)


def _with_stats(info: DatasetInfo, stats: tuple) -> DatasetInfo:
    mean, std = (tuple(float(v) for v in s) for s in stats)
    if len(mean) != info.in_chans or len(std) != info.in_chans or min(std) <= 0:
        raise ConfigError(
            f"data.mean and data.std need {info.in_chans} value(s) each for {info.name} "
            f"(std > 0), got {list(mean)} and {list(std)}"
        )
    return replace(info, mean=mean, std=std)


def load_dataset(
    name: str,
    *,
    train: bool,
    root: str | None = None,
    download: bool = True,
    img_size: int | None = None,
    loader: str = "auto",
    memory_limit_gb: float = MEMORY_LIMIT_GB,
    decoder: str = "pil",
    stats: tuple | None = None,
    crop_pct: float = 1.0,
) -> ImageData:
    """Load one split of a registered dataset (into memory, or lazily for large folders).

    Args:
        name: a name from :func:`list_datasets`.
        train: the training split if true, else the test (or ``val``) split.
        root: folder holding the dataset files (and receiving downloads); ``None`` searches
            the standard places and downloads into ``$VITSCOPE_CACHE``.
        download: fetch missing files; if false, a missing dataset raises.
        img_size: square size to resize to; ``None`` keeps the native size (28 for
            Fashion-MNIST, 32 for CIFAR) and means 32 for ``folder``.
        loader: ``memory``, ``stream`` (image folders: file names only, decoded when read)
            or ``auto`` (stream a folder whose train split exceeds ``memory_limit_gb``).
        decoder: ``pil`` or ``torchvision`` (image folders).
        stats: ``(mean, std)`` per channel to use instead of the dataset's own.
        crop_pct: image folders' test split: shorter side resized to ``img_size / crop_pct``,
            then the centre ``img_size`` crop.

    Returns:
        An :class:`ImageData` with int64 labels and uint8 images, or a lazy
        :class:`~vitscope.data.stream.FolderImages` in their place when streamed.

    Raises:
        DatasetError: files missing (with ``download=False``), truncated, corrupt, or not
            downloadable.
        VitscopeError: unknown ``name``.
    """
    src = DATASETS.get(name)
    size = _check_img_size(img_size)
    kw = dict(train=train, root=_abs(root), download=download, img_size=size)
    if loader not in LOADERS:
        raise ConfigError(f"data.loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    if src.streams:
        return src.load(**kw, loader=loader, memory_limit_gb=memory_limit_gb, decoder=decoder,
                        stats=stats, crop_pct=crop_pct)  # fmt: skip
    if loader == "stream":
        raise ConfigError(
            f"data.loader=stream is for image folders; {name} is held in memory "
            "(use data.loader=auto or memory)"
        )
    if crop_pct != 1.0:
        raise ConfigError(f"data.crop_pct is for image folders; {name} has its own size (use 1)")
    data = src.load(**kw)
    return data if stats is None else replace(data, info=_with_stats(data.info, stats))


def cache_dir() -> Path:
    """``$VITSCOPE_CACHE`` or ``~/.cache/vitscope``: where downloads go when no root is given."""
    return Path(os.environ.get("VITSCOPE_CACHE") or "~/.cache/vitscope").expanduser()


def _abs(root: str | os.PathLike | None) -> str | None:
    """Absolute form of ``root`` (``~`` expanded), so error messages name unambiguous paths."""
    return None if root is None else str(Path(root).expanduser().absolute())


def _check_img_size(img_size: int | None) -> int | None:
    if img_size is not None and (
        isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1
    ):
        raise ConfigError(f"img_size must be a positive integer or None, got {img_size!r}")
    return img_size


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 ``(N, C, H, W)`` to ``size`` (chunked for memory)."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    out = [
        F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for chunk in images.split(4096)
    ]
    return torch.cat(out)


def _with_size(info: DatasetInfo, img_size: int | None) -> DatasetInfo:
    return info if img_size is None else replace(info, img_size=img_size)


def _finish(
    images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, img_size: int | None
) -> ImageData:
    """Resize to ``img_size`` (if given) and wrap in an :class:`ImageData`."""
    return ImageData(_resize(images, img_size), labels, _with_size(info, img_size))


def _check_labels(labels: torch.Tensor, num_classes: int, path: Path, hint: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path} holds labels in [{labels.min().item()}, {labels.max().item()}], "
            f"outside [0, {num_classes - 1}]; {hint}"
        )


# --------------------------------------------------------------------------------------
# Fashion-MNIST: idx files
# --------------------------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# MD5s of Zalando's files (also torchvision's); checked on download only.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_INFO = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    in_chans=1,
    img_size=28,
    # Computed once over the 60000 training images: mean 0.286041, std 0.353024.
    mean=(0.2860,),
    std=(0.3530,),
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)

_IDX_DTYPES = {0x08: np.uint8}  # Fashion-MNIST uses only unsigned bytes


def _fix_hint(path: Path) -> str:
    """How to repair a bad file: reinstall the Debian package, or delete and re-download."""
    if FASHION_MNIST_SYSTEM_DIR in path.parents:
        return "reinstall dataset-fashion-mnist (apt-get install --reinstall dataset-fashion-mnist)"
    return "delete it and re-run to download it again"


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The (decompressed) content of ``path`` and whether the gzip stream was complete.

    Streaming zlib rather than :mod:`gzip` keeps the bytes of a truncated file, so the error
    can say how much arrived.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {_oneline(e.strerror or e)}") from None
    if path.suffix != ".gz":
        return data, True
    out, complete = [], True
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        while True:  # a .gz may hold several members
            out.append(d.decompress(data))
            if not d.eof:
                complete = False
                break
            data = d.unused_data
            if not data:
                break
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error as e:
        raise DatasetError(
            f"{path} is corrupt (not valid gzip data: {e}); {_fix_hint(path)}"
        ) from None
    return b"".join(out), complete


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (LeCun's MNIST format), gzipped or not.

    Layout: 2 zero bytes, a type code (``0x08`` = uint8), the number of dimensions ``d``,
    ``d`` big-endian uint32 sizes, then the data in C order.

    Raises:
        DatasetError: bad magic number, unsupported type, or a size mismatch (truncated file).
    """
    path = Path(path)
    raw, complete = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() or "empty file"
        raise DatasetError(
            f"{path} is not a uint8 idx file (magic number {magic}); {_fix_hint(path)}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (header cut short); {_fix_hint(path)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected or not complete:
        what = "image" if ndim == 3 else "label"
        raise DatasetError(
            f"{path} is truncated or corrupt (expected {expected} bytes of {what} data, "
            f"got {len(raw)}); {_fix_hint(path)}"
        )
    return np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=header).reshape(dims).copy()


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` (``.gz``) or its decompressed twin, whichever exists."""
    for p in (folder / name, folder / name.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _fashion_mnist_dirs(root: str | None) -> list[Path]:
    dirs = [Path(root), Path(root) / "fashion-mnist"] if root else []
    return [*dirs, FASHION_MNIST_SYSTEM_DIR, cache_dir() / "fashion-mnist"]


def _find_fashion_mnist(names: Sequence[str], root: str | None, download: bool) -> list[Path]:
    """Paths of the idx files ``names`` from the first folder that has them all."""
    dirs = _fashion_mnist_dirs(root)
    for d in dirs:
        found = [_idx_file(d, n) for n in names]
        if all(found):
            return found  # type: ignore[return-value]
    target = Path(root) if root else cache_dir() / "fashion-mnist"
    if not download:
        where = ", ".join(str(d) for d in dirs)
        raise DatasetError(
            f"fashion-mnist files {' and '.join(names)} not found in {where}; "
            "allow downloading (download=True), install dataset-fashion-mnist, "
            f"or put them in {target}"
        )
    base = os.environ.get("VITSCOPE_FASHION_MNIST_URL") or FASHION_MNIST_URL
    base = base if base.endswith("/") else base + "/"
    out = []
    for n in names:
        p = _idx_file(target, n) or download_url(base + n, target / n, md5=FASHION_MNIST_MD5.get(n))
        out.append(p)
    return out


def _load_fashion_mnist(
    *, train: bool, root: str | None, download: bool, img_size: int | None
) -> ImageData:
    split = "train" if train else "t10k"
    names = (f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz")
    img_path, lbl_path = _find_fashion_mnist(names, root, download)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{img_path} ({images.shape}) and {lbl_path} ({labels.shape}) do not match "
            f"(expected (N, 28, 28) images and N labels); {_fix_hint(img_path)}"
        )
    labels_t = torch.from_numpy(labels.astype(np.int64))
    _check_labels(labels_t, 10, lbl_path, _fix_hint(lbl_path))
    info = replace(FASHION_MNIST_INFO, img_size=images.shape[-1])
    return _finish(torch.from_numpy(images).unsqueeze(1), labels_t, info, img_size)


DATASETS.add(
    "fashion-mnist",
    DatasetSource(
        info=lambda root, img_size: _with_size(FASHION_MNIST_INFO, img_size),
        load=_load_fashion_mnist,
    ),
)


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: python-pickle tarballs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """Where an archive is downloaded from. ``VITSCOPE_<key>_URL`` / ``_MD5`` override it."""

    key: str  # environment-variable stem, e.g. "CIFAR10"
    url: str
    md5: str | None
    filename: str  # name on disk, whatever the URL

    def resolved(self) -> RemoteFile:
        """This file with the environment overrides applied (read at call time)."""
        url = os.environ.get(f"VITSCOPE_{self.key}_URL") or self.url
        md5 = os.environ.get(f"VITSCOPE_{self.key}_MD5", self.md5)
        md5 = None if md5 is None or md5.lower() in ("", "none") else md5.lower()
        return replace(self, url=url, md5=md5)


@dataclass(frozen=True)
class CifarLayout:
    """File layout of one CIFAR tarball."""

    info: DatasetInfo  # classes are replaced by the meta file's names on load
    remote: RemoteFile
    folder: str  # top-level folder inside the tarball
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    meta_file: str
    meta_key: bytes


_CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
    crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
    lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
    oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)

CIFAR = {
    "cifar10": CifarLayout(
        info=DatasetInfo(
            name="cifar10",
            num_classes=10,
            in_chans=3,
            img_size=32,
            mean=(0.4914, 0.4822, 0.4465),  # ``docs/methods/training.md#training-recipes``
            std=(0.2023, 0.1994, 0.2010),
            classes=(
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ),
        ),
        remote=RemoteFile(
            key="CIFAR10",
            url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
            filename="cifar-10-python.tar.gz",
        ),
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        meta_file="batches.meta",
        meta_key=b"label_names",
    ),
    "cifar100": CifarLayout(
        info=DatasetInfo(
            name="cifar100",
            num_classes=100,
            in_chans=3,
            img_size=32,
            mean=(0.5071, 0.4867, 0.4408),  # ``docs/methods/training.md#training-recipes``
            std=(0.2675, 0.2565, 0.2761),
            classes=_CIFAR100_CLASSES,
        ),
        remote=RemoteFile(
            key="CIFAR100",
            url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            md5="eb9058c3a382ffc7106e4002c42a8d85",
            filename="cifar-100-python.tar.gz",
        ),
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        meta_file="meta",
        meta_key=b"fine_label_names",
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a CIFAR batch cannot run code."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core."):  # pickled by numpy 1.x; numpy 2 renamed it
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy._core.") and not hasattr(np, "_core"):  # numpy < 2
            module = "numpy.core." + module.removeprefix("numpy._core.")
        return super().find_class(module, name)


def _unpickle(path: Path, hint: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing; {hint}") from None
    except Exception as e:  # unpickling can fail in many ways; all mean "corrupt file"
        raise DatasetError(f"{path} is corrupt ({_oneline(e)}); {hint}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is not a CIFAR batch (holds {type(obj).__name__}); {hint}")
    return obj


def _extract(tarball: Path, folder: str) -> Path:
    """Extract ``tarball`` next to itself, once: into a temp dir, then rename ``folder`` into place.

    A killed extraction leaves only a hidden temp dir behind, never a half-filled ``folder``.
    """
    base, target = tarball.parent, tarball.parent / folder
    hint = "delete it and re-run to download it again"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=base))
    except OSError as e:
        raise DatasetError(
            f"cannot extract {tarball}: {base} is not writable ({_oneline(e.strerror or e)}); "
            "copy the tarball to a writable data root"
        ) from None
    try:
        with tarfile.open(tarball, "r:*") as tf:
            # The "data" filter (Python >= 3.10.12) refuses absolute paths and links out of tmp.
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, **kw)
        if not (tmp / folder).is_dir():
            raise DatasetError(f"{tarball} has no {folder}/ folder inside; {hint}")
        try:
            os.rename(tmp / folder, target)
        except OSError:
            if not target.is_dir():  # another process may have finished first
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"{tarball} is truncated or corrupt ({_oneline(e)}); {hint}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_cifar(layout: CifarLayout, root: str | None, download: bool) -> Path:
    """The extracted folder: found, extracted from a tarball found, or downloaded."""
    bases = [Path(root)] if root else []
    bases.append(cache_dir())
    for b in bases:
        if (b / layout.folder).is_dir():
            return b / layout.folder
    for b in bases:
        if (b / layout.remote.filename).is_file():
            return _extract(b / layout.remote.filename, layout.folder)
    remote = layout.remote.resolved()
    target = bases[0] / remote.filename
    if not download:
        where = " or ".join(str(b) for b in bases)
        raise DatasetError(
            f"{layout.info.name} not found: no {layout.folder}/ or {remote.filename} in {where}; "
            f"allow downloading (download=True) or place {remote.filename} "
            f"from {remote.url} at {target}"
        )
    return _extract(download_url(remote.url, target, md5=remote.md5), layout.folder)


def _read_cifar_batch(
    path: Path, layout: CifarLayout, hint: str
) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path, hint)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[layout.label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(
            f"{path} is not a CIFAR batch (missing or bad key {_oneline(e)}); {hint}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DatasetError(
            f"{path} holds data {data.shape} and labels {labels.shape}, "
            f"expected (N, 3072) and (N,); {hint}"
        )
    # Rows are 1024 red, then green, then blue values, each plane row-major.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _cifar_classes(folder: Path, layout: CifarLayout, hint: str) -> tuple[str, ...]:
    path = folder / layout.meta_file
    meta = _unpickle(path, hint)
    try:
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.meta_key])
    except (KeyError, TypeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} has no readable class names ({_oneline(e)}); {hint}") from None
    if len(names) != layout.info.num_classes:
        raise DatasetError(
            f"{path} names {len(names)} classes, expected {layout.info.num_classes}; {hint}"
        )
    return names


def _cifar_loader(name: str) -> Callable[..., ImageData]:
    def load(*, train: bool, root: str | None, download: bool, img_size: int | None) -> ImageData:
        layout = CIFAR[name]
        folder = _find_cifar(layout, root, download)
        hint = f"delete {folder} (it is re-extracted from the tarball) and re-run"
        parts = [
            _read_cifar_batch(folder / f, layout, hint)
            for f in (layout.train_files if train else layout.test_files)
        ]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        _check_labels(labels, layout.info.num_classes, folder, hint)
        info = replace(layout.info, classes=_cifar_classes(folder, layout, hint))
        return _finish(images, labels, info, img_size)

    return load


for _name in CIFAR:
    DATASETS.add(
        _name,
        DatasetSource(
            info=lambda root, img_size, _n=_name: _with_size(CIFAR[_n].info, img_size),
            load=_cifar_loader(_name),
        ),
    )


# --------------------------------------------------------------------------------------
# Image folders: root/{train,val|test}/<class>/*.jpg
# --------------------------------------------------------------------------------------

FOLDER_IMG_SIZE = 32  # default: the size the paper's CIFAR models (patch 2, window 4) are built for
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_FOLDER_STATS: dict[tuple[str, int, str], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def _folder_root(root: str | None) -> Path:
    if root is None:
        raise DatasetError(
            "the folder dataset needs a root holding train/<class>/ and val/<class>/ "
            "(set data.root)"
        )
    p = Path(root).expanduser()
    if not (p / "train").is_dir():
        raise DatasetError(
            f"{p / 'train'} is not a folder; the folder dataset expects {p}/train/<class>/*.jpg"
        )
    return p


def _split_dir(root: Path, train: bool) -> Path:
    if train:
        return root / "train"
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    raise DatasetError(
        f"{root} has neither val/ nor test/; put the held-out images in {root}/val/<class>/"
    )


def _scan(split: Path) -> dict[str, list[str]]:
    """Class name -> sorted image file names, for every subfolder of ``split``
    (``os.scandir``: one directory read per class, no stat per file)."""
    out = {}
    try:
        dirs = sorted(e.name for e in os.scandir(split) if e.is_dir() and e.name[0] != ".")
        for name in dirs:
            files = sorted(
                e.name
                for e in os.scandir(split / name)
                if os.path.splitext(e.name)[1].lower() in IMG_EXTENSIONS and e.is_file()
            )
            if not files:
                raise DatasetError(
                    f"{split / name} holds no images ({', '.join(IMG_EXTENSIONS)}); "
                    "add some or remove the folder"
                )
            out[name] = files
    except OSError as e:
        raise DatasetError(f"cannot list {split}: {_oneline(e.strerror or e)}") from None
    if not out:
        raise DatasetError(f"{split} has no class folders; expected {split}/<class>/*.jpg")
    return out


class ChannelStats:
    """Per-channel mean and (unbiased) std of ``x / 255`` over uint8 batches ``(B, C, H, W)``
    fed one at a time: a 256-bin histogram per channel (``torch.bincount``), from which the
    sums of the values and their squares are exact integers at any size (Python ints), and
    no copy of a whole split (the float64 copy this replaces was 8x the images' bytes)."""

    CHUNK = 256  # images per bincount: its input is one channel's copy (256 x 224 x 224 B)

    def __init__(self) -> None:
        self.n = 0
        self.counts: torch.Tensor | None = None  # (C, 256) int64

    @property
    def sums(self) -> list[int]:
        return [sum(v * c for v, c in enumerate(row)) for row in self._rows()]

    @property
    def squares(self) -> list[int]:
        return [sum(v * v * c for v, c in enumerate(row)) for row in self._rows()]

    def _rows(self) -> list[list[int]]:
        return [] if self.counts is None else self.counts.tolist()

    def update(self, batch: torch.Tensor) -> None:
        if batch.dtype != torch.uint8 or batch.ndim != 4:
            raise DatasetError(f"channel statistics need uint8 (B, C, H, W), got {batch.dtype}")
        c = batch.shape[1]
        if self.counts is None:
            self.counts = torch.zeros(c, 256, dtype=torch.int64)
        elif len(self.counts) != c:
            raise DatasetError(f"channel statistics: {c} channels after {len(self.counts)}")
        for k in range(0, len(batch), self.CHUNK):
            part = batch[k : k + self.CHUNK].cpu()
            for ch in range(c):
                self.counts[ch] += torch.bincount(part[:, ch].reshape(-1), minlength=256)
        self.n += batch.shape[0] * batch.shape[2] * batch.shape[3]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per channel, rounded to 6 decimals."""
        if self.n < 2:
            raise DatasetError("channel statistics need at least two pixels")
        sums, squares = self.sums, self.squares
        mean = [s / (255 * self.n) for s in sums]
        # (Q - S^2 / n) / (n - 1), exact in integers up to the final division
        var = [(self.n * q - s * s) / (self.n * (self.n - 1)) / 255**2
               for s, q in zip(sums, squares)]  # fmt: skip
        return tuple(round(m, 6) for m in mean), tuple(round(math.sqrt(v), 6) for v in var)


def _channel_stats(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``images / 255`` (:class:`ChannelStats`, one pass): a uint8
    tensor, or a lazy :class:`~vitscope.data.stream.FolderImages` decoded chunk by chunk."""
    stats, chunk = ChannelStats(), ChannelStats.CHUNK
    if isinstance(images, FolderImages):  # decoded as many at a time as one update takes
        for start in range(0, len(images), chunk):
            stats.update(images[start : start + chunk].read())
    else:
        stats.update(images)  # it works through the split in chunks of ChannelStats.CHUNK
    return stats.result()


def _folder_info(root: Path, classes: Sequence[str], size: int, stats) -> DatasetInfo:
    mean, std = stats
    return DatasetInfo("folder", len(classes), 3, size, mean, std, tuple(classes))


def _folder_split(
    root: Path,
    train: bool,
    size: int,
    decoder: str,
    crop_pct: float = 1.0,
    classes: Sequence[str] | None = None,
):
    """``(lazy images, labels, classes)`` of one split: file names only, nothing decoded.
    ``crop_pct`` applies to the test split's eval view only (timm's eval transform); the test
    split takes ``classes`` (the train split's) or scans ``train/`` for them.

    The train split is in class order (training shuffles it). The test split interleaves
    the classes (the first image of every class, then the second, ...), so the first ``n``
    images an analysis reads cover the classes evenly rather than the first few of them."""
    split_dir = _split_dir(root, train)
    by_class = _scan(split_dir)
    if classes is None:
        classes = list(by_class if train else _scan(root / "train"))
    classes = list(classes)  # sorted; labels index this list in both splits
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise DatasetError(
            f"{split_dir} has class folders not in {root / 'train'}: {', '.join(unknown)}"
        )
    names, labels = [], []
    in_class_order = ((c, f) for c, files in by_class.items() for f in files)
    for c, f in in_class_order if train else _interleaved(by_class):
        names.append(os.fsencode(os.path.join(c, f)))
        labels.append(classes.index(c))
    pct = 1.0 if train else crop_pct
    images = FolderImages(str(split_dir), np.array(names, dtype=bytes), size, decoder, pct)
    return images, torch.tensor(labels, dtype=torch.int64), classes


def _interleaved(by_class: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    """Round robin over the classes (in order), each class's files in order."""
    for k in range(max(map(len, by_class.values()))):
        for c, files in by_class.items():
            if k < len(files):
                yield c, files[k]


def _stats_file(root: Path, size: int, decoder: str, images: FolderImages) -> Path:
    """Where the statistics of a streamed train split are kept between processes: keyed by
    the folder, the size, the decoder and the list of file names."""
    h = hashlib.sha256(f"{root.resolve()}|{size}|{decoder}|".encode())
    h.update(b"\0".join(images.names.tolist()))
    return cache_dir() / "folder-stats" / f"{h.hexdigest()[:24]}.json"


def _folder_stats(root: Path, size: int, decoder: str, images, streamed: bool):
    """Mean/std of the train split ``images`` (a tensor or lazy) at ``size``: from this
    process' cache, the on-disk cache (streamed splits), or one pass over the images."""
    key = (str(root.resolve()), size, decoder)
    if key in _FOLDER_STATS:
        return _FOLDER_STATS[key]
    path = _stats_file(root, size, decoder, images) if streamed else None
    if path is not None and path.is_file():
        try:
            d = json.loads(path.read_text())
            _FOLDER_STATS[key] = (tuple(d["mean"]), tuple(d["std"]))
            return _FOLDER_STATS[key]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: computed again and rewritten
    _FOLDER_STATS[key] = _channel_stats(images)
    if path is not None:
        mean, std = _FOLDER_STATS[key]
        try:
            atomic_write_json(path, {"root": key[0], "size": size, "decoder": decoder,
                                     "images": len(images), "mean": mean, "std": std})  # fmt: skip
        except (OSError, VitscopeError):
            pass  # a read-only cache costs one more pass next time, nothing else
    return _FOLDER_STATS[key]


def fits_in_memory(n: int, size: int, limit_gb: float) -> bool:
    """Whether ``n`` RGB images at ``size`` (uint8) take at most ``limit_gb`` GB."""
    return n * 3 * size * size <= limit_gb * 2**30


def _load_folder(
    *,
    train: bool,
    root: str | None,
    download: bool,
    img_size: int | None,
    loader: str = "auto",
    memory_limit_gb: float = MEMORY_LIMIT_GB,
    decoder: str = "pil",
    stats: tuple | None = None,
    crop_pct: float = 1.0,
) -> ImageData:
    """``root/train`` or ``root/val`` (or ``test``): in memory as one uint8 tensor, or streamed.

    Images are converted to RGB, their shorter side resized to ``img_size`` (bicubic,
    antialiased) and centre-cropped. The default 32 is the input the paper's CIFAR models
    (patch 2, AlterNet window 4) are built for and keeps a set in memory at 3 KB per image;
    pass 224 for ImageNet-style models (150 KB per image). ``loader`` ``memory`` decodes the
    split into memory, ``stream`` keeps file names (:class:`FolderImages`), ``auto`` streams
    when the train split would take more than ``memory_limit_gb`` GB in memory. Mean and std
    are ``stats`` if given (e.g. ImageNet's), else computed from the train split at that size
    (not ImageNet's constants), so val/test use train statistics. Test images are resized to
    ``floor(img_size / crop_pct)`` before the centre crop (ImageNet's 256 -> 224: 0.875).
    """
    r, size = _folder_root(root), img_size or FOLDER_IMG_SIZE
    dec = resolve_decoder(decoder)
    train_images, labels, classes = _folder_split(r, True, size, dec)
    images = train_images
    if not train:
        images, labels, _ = _folder_split(r, False, size, dec, crop_pct, classes)
    # auto: the train split's size decides for both splits, so they take one path
    stream = loader == "stream" or (
        loader == "auto" and not fits_in_memory(len(train_images), size, memory_limit_gb)
    )
    files = images
    if not stream:
        images = images.read()
    if stats is None:
        stats = _folder_stats(r, size, dec, images if train else train_images, streamed=stream)
    return ImageData(images, labels, _folder_info(r, classes, size, stats), files)


def _folder_dataset_info(
    root: str | None, img_size: int | None, decoder: str = "pil", stats: tuple | None = None
) -> DatasetInfo:
    r, size = _folder_root(root), img_size or FOLDER_IMG_SIZE
    dec = resolve_decoder(decoder)
    images, _, classes = _folder_split(r, True, size, dec)
    if stats is None:
        big = not fits_in_memory(len(images), size, MEMORY_LIMIT_GB)
        stats = _folder_stats(r, size, dec, images, streamed=big)
    return _folder_info(r, classes, size, stats)


DATASETS.add("folder", DatasetSource(info=_folder_dataset_info, load=_load_folder, streams=True))
