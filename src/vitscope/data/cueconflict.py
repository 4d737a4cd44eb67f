"""Cue-conflict images: a shape of one class with the texture of another (Geirhos et al., ICLR
2019, "ImageNet-trained CNNs are biased towards texture"), read from a folder.

The release's layout (``stimuli/style-transfer-preprocessed-512`` of the texture-vs-shape
repository) is one folder per shape class, each image named ``<shape><n>-<texture><m>.png``::

    cue-conflict/airplane/airplane1-bicycle2.png
    cue-conflict/airplane/airplane1-bird3.png
    cue-conflict/bear/bear4-clock1.png
    ...

A flat folder of such files is read too. The trailing digits of each half are the image
numbers of the shape and the texture source and are dropped; the class names are compared in
lower case. An image whose shape and texture class agree carries no conflict and is kept
(the analysis leaves it out of the shape bias). Nothing is downloaded: the user points
``cueconflict.source`` at the folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .datasets import IMG_EXTENSIONS
from .download import _oneline

_HALF = re.compile(r"^(?P<name>.*?[^\d])\d*$")  # a class name, then the image number


@dataclass(frozen=True)
class CueImage:
    """One cue-conflict image: its file, its shape class and its texture class."""

    path: Path
    shape: str
    texture: str


def parse_name(stem: str) -> tuple[str, str] | None:
    """``"airplane1-bicycle2"`` -> ``("airplane", "bicycle")``; None when the stem is not
    ``<shape><n>-<texture><m>`` (exactly one ``-``, a name before each number)."""
    halves = stem.split("-")
    if len(halves) != 2:
        return None
    names = [_HALF.match(h.strip()) for h in halves]
    if any(m is None for m in names):
        return None
    shape, texture = (m.group("name").strip().lower() for m in names)  # type: ignore[union-attr]
    return (shape, texture) if shape and texture else None


def scan(root: str | Path) -> list[CueImage]:
    """Every cue-conflict image under ``root`` (``root/<shape>/<file>`` or ``root/<file>``),
    sorted by path. One-line :class:`~vitscope.errors.DatasetError` for a missing or empty
    folder, a file not named ``<shape><n>-<texture><m>``, or a file in the wrong shape
    folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"cue-conflict folder {root} does not exist")
    found: list[CueImage] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth > 1 and filenames:
            raise DatasetError(
                f"{here} is {depth} folders below {root}: cue-conflict images lie in "
                f"{root}/<shape>/ or in {root} itself"
            )
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMG_EXTENSIONS:
                continue
            path = here / name
            got = parse_name(Path(name).stem)
            if got is None:
                raise DatasetError(
                    f"cue-conflict image {path} is not named <shape><n>-<texture><m> "
                    "(e.g. airplane1-bicycle2.png)"
                )
            if depth == 1 and got[0] != here.name.lower():
                raise DatasetError(
                    f"cue-conflict image {path} has shape {got[0]!r} but lies in the "
                    f"{here.name!r} folder"
                )
            found.append(CueImage(path, *got))
    if not found:
        raise DatasetError(
            f"cue-conflict folder {root} holds no images ({', '.join(IMG_EXTENSIONS)})"
        )
    return found


def categories(images: list[CueImage]) -> list[str]:
    """The sorted class names that occur as a shape or a texture."""
    return sorted({c for im in images for c in (im.shape, im.texture)})


def read(images: list[CueImage], channels: int, height: int, width: int) -> torch.Tensor:
    """uint8 ``(N, channels, height, width)``: each image converted to grey (1 channel) or
    RGB (3), cropped to the target's aspect ratio about its centre and resized (bicubic,
    antialiased) as the model's test images are."""
    from PIL import Image, ImageOps

    if channels not in (1, 3):
        raise DatasetError(f"cue-conflict images can be read with 1 or 3 channels, not {channels}")
    out = np.empty((len(images), height, width, channels), dtype=np.uint8)
    for i, im in enumerate(images):
        try:
            with Image.open(im.path) as pic:
                pic = pic.convert("L" if channels == 1 else "RGB")
                pic = ImageOps.fit(pic, (width, height), method=Image.Resampling.BICUBIC)
                out[i] = np.asarray(pic, dtype=np.uint8).reshape(height, width, channels)
        except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError, ...
            raise DatasetError(
                f"cannot read image {im.path} ({_oneline(e)}); fix or remove it"
            ) from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


__all__ = ["CueImage", "categories", "parse_name", "read", "scan"]
