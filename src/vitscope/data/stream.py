"""Image folders too large for memory: lazy image arrays, decoding in DataLoader workers.

A streamed split holds file names, never pixels. :class:`FolderImages` stands where an
in-memory split's uint8 tensor stands: it has a ``shape``, indexing it gives another lazy
view, and :func:`read_images` decodes a view (threads in this process; Pillow releases the
GIL while it decodes and resizes) into the uint8 ``(B, 3, S, S)`` tensor the in-memory path
would have held: shorter side resized to ``S`` (bicubic, antialiased), centre crop.

Training decodes in ``torch.utils.data.DataLoader`` workers instead (:func:`train_batches`):
each image is cropped from the decoded original by RandomResizedCrop (the box drawn by
:func:`~vitscope.data.augment.rrc_box`) and flipped there, so only ``S x S`` crops cross
the process boundary; RandAugment, normalisation and Mixup/CutMix run on the whole batch on
the training device as for in-memory data. The random numbers of image ``i`` in epoch ``e``
come from a generator seeded by ``(seed, e, i)`` alone, so the crops do not depend on the
number of workers, their scheduling, the world size or a resume: a run killed mid-epoch
repeats that epoch from ``last.pt`` bit for bit. The epoch's order and its global batches
are the in-memory path's (:func:`~vitscope.train.loop.batch_indices`), and under torchrun
rank ``r`` loads the ``r``-th slice of every global batch, like the in-memory path (a
``DistributedSampler`` would shard the data set per rank and lose the one-process batches).

Decoders: ``pil`` (Pillow, always there; the default) or ``torchvision``
(``torchvision.io.decode_image`` and its tensor ``resized_crop``; the extra; its image
decoders are deprecated since torchvision 0.29 in favour of TorchCodec, so it is never chosen
for you). The two agree to within resampling round-off, not bit for bit, so the decoder is
part of a run's identity.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..config import DECODERS
from ..errors import ConfigError, DatasetError
from ..threads import available_cores
from .augment import rrc_box
from .download import _oneline

TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


def default_workers() -> int:
    """DataLoader workers when ``data.workers`` is unset: one core left to the training loop."""
    return max(1, min(8, available_cores() - 1))


@lru_cache(maxsize=1)
def _has_torchvision() -> bool:
    try:
        with warnings.catch_warnings():  # 0.29 warns that its decoders are deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            import torchvision.io  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def resolve_decoder(name: str) -> str:
    """A configured ``data.decoder``, checked (torchvision must import)."""
    if name not in DECODERS:
        raise ConfigError(f"data.decoder must be one of {', '.join(DECODERS)}, got {name!r}")
    if name == "torchvision":
        if not _has_torchvision():
            raise ConfigError(
                "data.decoder=torchvision needs torchvision: pip install 'vitscope[timm]' "
                "(or use data.decoder=pil)"
            )
        # chosen knowingly: its per-call deprecation warning (0.29) would flood the log
        warnings.filterwarnings("ignore", TV_DEPRECATION, DeprecationWarning)
    return name


# --------------------------------------------------------------------------------------
# decoding one image
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """The CPU side of the training transform: RandomResizedCrop (else the eval view) + flip."""

    rrc: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"  # bilinear | bicubic | random (one per image)
    hflip: bool = True


def _fail(path: str, e: BaseException) -> DatasetError:
    return DatasetError(f"cannot read image {path} ({_oneline(e)}); fix or remove it")


def _open_pil(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def eval_view(path: str, size: int, decoder: str = "pil", crop_pct: float = 1.0) -> torch.Tensor:
    """uint8 ``(3, size, size)``: shorter side resized to ``floor(size / crop_pct)`` (bicubic,
    antialiased), then the centre crop (timm's eval transform; ImageNet's 256 -> 224 is
    ``crop_pct`` 0.875). The in-memory folder path stores exactly this (``pil``)."""
    scaled = size if crop_pct >= 1 else math.floor(size / crop_pct)
    try:
        if decoder == "torchvision":
            return _tv_eval_tensor(_tv_decode(path), size, scaled)
        from PIL import Image

        with _open_pil(path) as im:
            w, h = im.size
            nw, nh = _scaled_size(w, h, scaled)
            # Bicubic with PIL's support scaled to the reduction factor, i.e. antialiased.
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    except DatasetError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError, ...
        raise _fail(path, e) from None


def _scaled_size(w: int, h: int, scaled: int) -> tuple[int, int]:
    """``(w, h)`` with the shorter side at ``scaled`` (the longer rounded)."""
    s = scaled / min(w, h)
    return max(scaled, round(w * s)), max(scaled, round(h * s))


def train_view(path: str, size: int, seed: int, crop: Crop, decoder: str = "pil") -> torch.Tensor:
    """uint8 ``(3, size, size)``: the training crop of one image, drawn from ``seed`` alone.

    The box is :func:`~vitscope.data.augment.rrc_box` on the decoded original (torchvision's
    ``RandomResizedCrop.get_params``), resized to ``size`` (antialiased); then a flip with
    probability 0.5. Without ``crop.rrc`` the image is the eval view, flipped. The random
    numbers: 22 for the box, one for a random interpolation, one for the flip, in that order,
    from ``random.Random(seed)``.
    """
    g = random.Random(seed)
    u = [g.random() for _ in range(22)] if crop.rrc else []
    try:
        if not crop.rrc:
            img = eval_view(path, size, decoder)
        elif decoder == "torchvision":
            img = _tv_decode(path)
            box = rrc_box(img.shape[1], img.shape[2], crop.scale, crop.ratio, u)
            img = _tv_resized_crop(img, box, size, _mode(crop, g))
        else:
            from PIL import Image

            with _open_pil(path) as im:
                w, h = im.size
                t, l, ch, cw = rrc_box(h, w, crop.scale, crop.ratio, u)
                mode = _mode(crop, g)
                resample = Image.Resampling.BICUBIC if mode == "bicubic" else Image.BILINEAR
                im = im.resize((size, size), resample, box=(l, t, l + cw, t + ch))
                img = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types for a bad file
        raise _fail(path, e) from None
    if crop.hflip and g.random() < 0.5:
        img = img.flip(-1)
    return img.contiguous()


def _mode(crop: Crop, g: random.Random) -> str:
    if crop.interpolation != "random":
        return crop.interpolation
    return "bicubic" if g.random() < 0.5 else "bilinear"


def _tv_decode(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def _tv_resized_crop(img: torch.Tensor, box, size: int, mode: str) -> torch.Tensor:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    t, l, h, w = box
    interp = InterpolationMode.BICUBIC if mode == "bicubic" else InterpolationMode.BILINEAR
    return TF.resized_crop(img, t, l, h, w, [size, size], interpolation=interp, antialias=True)


def _tv_eval_tensor(img: torch.Tensor, size: int, scaled: int) -> torch.Tensor:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    nw, nh = _scaled_size(w, h, scaled)  # the Pillow path's (torchvision's truncates)
    img = TF.resize(img, [nh, nw], interpolation=InterpolationMode.BICUBIC, antialias=True)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img[:, top : top + size, left : left + size]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s crop in ``epoch`` (a 63-bit mix of the three)."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


# --------------------------------------------------------------------------------------
# lazy arrays
# --------------------------------------------------------------------------------------


class FolderImages:
    """A lazy uint8 ``(N, 3, size, size)`` array of image files (the eval view of each).

    Indexing with a slice, an int tensor/array or a list gives another lazy view (no
    decoding); :func:`read_images` decodes. File names are kept as one numpy byte array
    relative to ``root``, so a million images cost tens of MB and fork cheaply to workers.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(
        self, root: str, names: np.ndarray, size: int, decoder: str = "pil", crop_pct: float = 1.0
    ) -> None:
        self.root, self.names, self.size, self.decoder = str(root), names, int(size), decoder
        self.crop_pct = float(crop_pct)  # of the eval view (timm's; 1: no border cut)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.names), 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index) -> FolderImages:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return FolderImages(self.root, self.names[index], self.size, self.decoder, self.crop_pct)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.names[i].decode())

    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self))]

    def read(self, threads: int | None = None) -> torch.Tensor:
        """Decode every image of this view (eval view), in a pool of threads."""
        return self._decode(self._view, self.paths(), threads)

    def _view(self, path: str) -> torch.Tensor:
        return eval_view(path, self.size, self.decoder, self.crop_pct)

    def read_train(self, seeds: Sequence[int], crop: Crop, threads: int | None = None):
        """The training crops of this view's images, image ``k`` drawn from ``seeds[k]``."""
        if len(seeds) != len(self):
            raise ValueError(f"{len(seeds)} seeds for {len(self)} images")

        def view(item: tuple[str, int]) -> torch.Tensor:
            return train_view(item[0], self.size, item[1], crop, self.decoder)

        return self._decode(view, list(zip(self.paths(), seeds)), threads)

    def _decode(self, fn, items: list, threads: int | None) -> torch.Tensor:
        """``fn`` over ``items`` (Pillow releases the GIL: threads decode in parallel), stacked."""
        if not items:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        threads = threads or min(8, available_cores())
        if threads == 1 or len(items) == 1:
            return torch.stack([fn(it) for it in items])
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return torch.stack(list(pool.map(fn, items)))

    def __repr__(self) -> str:
        return f"FolderImages({self.root!r}, {len(self)} images, {self.size}x{self.size})"


def read_images(images) -> torch.Tensor:
    """A uint8 tensor from an in-memory split's images (as they are) or a lazy view (decoded)."""
    return images.read() if isinstance(images, FolderImages) else images


def is_streamed(images) -> bool:
    return isinstance(images, FolderImages)


# --------------------------------------------------------------------------------------
# training batches from DataLoader workers
# --------------------------------------------------------------------------------------


class _Crops(torch.utils.data.Dataset):
    """``dataset[(i, seed)]`` is image ``i``'s training crop drawn from ``seed``, and its label.

    A file that cannot be decoded comes back as its one-line message, so the main process
    raises it as a :class:`DatasetError` (a worker's exception would arrive with its traceback
    pasted into the message)."""

    def __init__(self, images: FolderImages, labels: np.ndarray, crop: Crop) -> None:
        self.images, self.labels, self.crop = images, labels, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        i, seed = item
        try:
            x = train_view(self.images.path(i), self.images.size, seed, self.crop,
                           self.images.decoder)  # fmt: skip
        except DatasetError as e:
            return str(e)
        return x, int(self.labels[i])


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | str:
    for it in items:
        if isinstance(it, str):
            return it
    # default_collate stacks into shared memory in a worker: no copy on the way out
    return torch.utils.data.default_collate(items)


def train_batches(
    images: FolderImages,
    labels: torch.Tensor,
    batches: Sequence[torch.Tensor],
    *,
    crop: Crop,
    seed: int,
    epoch: int,
    world: int = 1,
    rank: int = 0,
    device: torch.device | str = "cpu",
    workers: int | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(global batch size, uint8 crops, labels)`` of this rank's slice of each global batch
    in ``batches`` (index tensors), decoded by ``workers`` DataLoader processes (0: here),
    pinned and copied without blocking when ``device`` is CUDA."""
    device = torch.device(device)
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {workers}")
    sampler = [
        [(i, sample_seed(seed, epoch, i)) for i in b.tensor_split(world)[rank].tolist()]
        for b in batches
    ]
    loader = torch.utils.data.DataLoader(
        _Crops(images, labels.cpu().numpy(), crop),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    for b, out in zip(batches, loader):
        if isinstance(out, str):
            raise DatasetError(out)
        x, y = out
        yield len(b), x.to(device, non_blocking=True), y.to(device, non_blocking=True)
