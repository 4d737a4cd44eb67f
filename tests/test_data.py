"""Dataset loaders (idx, CIFAR pickle tarballs, image folders) and class-balanced subsets.

Every loader is exercised on small files written into ``tmp_path``; the real Fashion-MNIST
is read from the Debian package when it is installed.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vitscope.data import (
    ImageData,
    balanced_subset,
    dataset_info,
    list_datasets,
    load_dataset,
    read_idx,
)
from vitscope.data import datasets as ds
from vitscope.errors import ConfigError, DatasetError, VitscopeError


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes ~/.cache/vitscope."""
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))


def _one_line_error(exc: pytest.ExceptionInfo, *must_contain: object) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in must_contain:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------------------
# writers for tiny test files
# --------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """LeCun idx encoding of a uint8 array."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


def cifar_tarball(kind: str = "cifar10", n_per_batch: int = 20, seed: int = 0) -> bytes:
    """A CIFAR-shaped ``.tar.gz`` (few images per batch) with the real file layout."""
    rng = np.random.default_rng(seed)
    k = 10 if kind == "cifar10" else 100
    if kind == "cifar10":
        folder, label_key = "cifar-10-batches-py", b"labels"
        batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta = ("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(k)]})
    else:
        folder, label_key = "cifar-100-python", b"fine_labels"
        batches = ["train", "test"]
        meta = ("meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(k)]})
    files = {meta[0]: pickle.dumps(meta[1])}
    for name in batches:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, k, n_per_batch)]
        batch = {b"data": data, label_key: labels, b"batch_label": name.encode()}
        if kind == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        files[name] = pickle.dumps(batch, protocol=2)  # the real files are Python 2 pickles
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# registry and ImageData
# --------------------------------------------------------------------------------------


def test_registry_lists_datasets_and_rejects_unknown_names():
    assert {"fashion-mnist", "cifar10", "cifar100", "folder"} <= set(list_datasets())
    with pytest.raises(VitscopeError) as e:
        load_dataset("mnist-typo", train=True)
    _one_line_error(e, "mnist-typo", "cifar10")


def test_dataset_info_static():
    info = dataset_info("cifar100")
    assert (info.num_classes, info.in_chans, info.img_size) == (100, 3, 32)
    assert info.mean == (0.5071, 0.4867, 0.4408) and info.std == (0.2675, 0.2565, 0.2761)
    assert len(info.classes) == 100 and info.classes[0] == "apple"
    fm = dataset_info("fashion-mnist", img_size=32)
    assert (fm.in_chans, fm.img_size, fm.mean, fm.std) == (1, 32, (0.2860,), (0.3530,))
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)


def test_image_data_subset_and_validation():
    info = dataset_info("cifar10")
    data = ImageData(torch.zeros(5, 3, 32, 32, dtype=torch.uint8), torch.arange(5), info)
    sub = data.subset([4, 1])
    assert len(sub) == 2 and sub.labels.tolist() == [4, 1] and sub.info is info
    with pytest.raises(DatasetError):
        ImageData(torch.zeros(5, 3, 32, 32), torch.arange(5), info)  # float images


# --------------------------------------------------------------------------------------
# idx / Fashion-MNIST
# --------------------------------------------------------------------------------------


def test_read_idx_roundtrip_gz_and_plain(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)


def test_fashion_mnist_from_root(tmp_path):
    write_fashion_mnist(tmp_path / "fm", n_train=30, n_test=20)
    tr = load_dataset("fashion-mnist", train=True, root=str(tmp_path / "fm"), download=False)
    te = load_dataset("fashion-mnist", train=False, root=str(tmp_path / "fm"), download=False)
    assert tr.images.shape == (30, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert te.images.shape == (20, 1, 28, 28) and te.labels.dtype == torch.int64
    assert tr.labels.tolist() == [i % 10 for i in range(30)]
    assert tr.info.classes[0] == "T-shirt/top" and tr.info.classes[9] == "Ankle boot"
    resized = load_dataset("fashion-mnist", train=False, root=str(tmp_path / "fm"), img_size=32)
    assert resized.images.shape == (20, 1, 32, 32) and resized.info.img_size == 32


def test_truncated_gz_names_path_and_fix(tmp_path):
    write_fashion_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:500])  # cut the gzip stream
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist", train=True, root=str(tmp_path), download=False)
    _one_line_error(e, p, "truncated", "delete it")


def test_short_idx_payload_reports_expected_bytes(tmp_path):
    # A complete gzip stream whose idx header promises 60000 images but holds 1000 bytes.
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28)
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(DatasetError) as e:
        read_idx(p)
    _one_line_error(e, p, "expected 47040016 bytes of image data, got 1016")


def test_bad_magic_and_not_gzip(tmp_path):
    (tmp_path / "bad.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DatasetError) as e:
        read_idx(tmp_path / "bad.gz")
    _one_line_error(e, tmp_path / "bad.gz", "corrupt")
    (tmp_path / "magic").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(DatasetError) as e:
        read_idx(tmp_path / "magic")
    _one_line_error(e, tmp_path / "magic", "magic number 12340801")


def test_missing_fashion_mnist_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist", train=True, root=str(tmp_path / "empty"), download=False)
    _one_line_error(e, tmp_path / "empty", "train-images-idx3-ubyte.gz", "download=True")


REAL_FM = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (REAL_FM / "t10k-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST"
)
def test_real_fashion_mnist():
    tr = load_dataset("fashion-mnist", train=True, download=False)
    te = load_dataset("fashion-mnist", train=False, download=False)
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.labels.bincount().tolist() == [6000] * 10
    assert te.labels.bincount().tolist() == [1000] * 10
    x = tr.images.double() / 255  # the stored constants are these statistics, rounded
    assert abs(x.mean().item() - 0.2860) < 5e-5 and abs(x.std().item() - 0.3530) < 5e-5


# --------------------------------------------------------------------------------------
# CIFAR tarballs
# --------------------------------------------------------------------------------------


def test_cifar10_from_tarball_extracts_once(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball("cifar10", n_per_batch=20))
    tr = load_dataset("cifar10", train=True, root=str(tmp_path), download=False)
    assert tr.images.shape == (100, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.labels.dtype == torch.int64 and int(tr.labels.max()) < 10
    assert tr.info.classes == tuple(f"class{i}" for i in range(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]  # no temp dir left behind
    (tmp_path / "cifar-10-python.tar.gz").unlink()  # the extracted folder is enough now
    te = load_dataset("cifar10", train=False, root=str(tmp_path), download=False)
    assert te.images.shape == (20, 3, 32, 32)


def test_cifar_pixel_layout(tmp_path):
    """A batch row is 1024 R, 1024 G, 1024 B values, each plane row-major."""
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball("cifar10", n_per_batch=3))
    te = load_dataset("cifar10", train=False, root=str(tmp_path))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert te.images[1, 2, 3, 4] == raw[1, 2 * 1024 + 3 * 32 + 4]


def test_cifar100_fine_labels_and_meta(tmp_path):
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(cifar_tarball("cifar100", n_per_batch=50))
    tr = load_dataset("cifar100", train=True, root=str(tmp_path), download=False)
    assert tr.images.shape == (50, 3, 32, 32) and tr.info.num_classes == 100
    assert tr.info.classes[7] == "fine7"
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes(), encoding="bytes")
    assert tr.labels.tolist() == raw[b"fine_labels"]


def test_corrupt_tarball(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(b"\x1f\x8b garbage that is not a tarball")
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", train=True, root=str(tmp_path), download=False)
    _one_line_error(e, p, "corrupt", "delete it")
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # nothing half-extracted


def test_truncated_tarball(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    full = cifar_tarball("cifar10")
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", train=True, root=str(tmp_path), download=False)
    _one_line_error(e, p)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


def test_corrupt_and_malicious_batches(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball("cifar10", n_per_batch=2))
    load_dataset("cifar10", train=False, root=str(tmp_path))
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", train=False, root=str(tmp_path))
    _one_line_error(e, batch, "corrupt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    batch.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", train=False, root=str(tmp_path))
    _one_line_error(e, batch, "refusing")


def test_missing_cifar_without_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar100", train=True, root=str(tmp_path), download=False)
    _one_line_error(e, tmp_path, "cifar-100-python.tar.gz", "download=True")


# --------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------


def _write_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("dog", "cat"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(root / "train/cat/gray.png")
    rgba = rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "train/dog/alpha.PNG")
    (root / "train/dog/notes.txt").write_text("not an image")  # ignored


def test_folder_dataset(tmp_path):
    _write_folder(tmp_path)
    tr = load_dataset("folder", train=True, root=str(tmp_path), img_size=8)
    va = load_dataset("folder", train=False, root=str(tmp_path), img_size=8)
    assert tr.info.classes == ("cat", "dog")
    assert tr.images.shape == (8, 3, 8, 8) and tr.images.dtype == torch.uint8
    assert tr.labels.tolist() == [0] * 4 + [1] * 4
    # the test split interleaves the classes: any first n images cover them evenly
    assert va.images.shape == (4, 3, 8, 8) and va.labels.tolist() == [0, 1, 0, 1]
    x = tr.images.double() / 255
    mean = x.mean((0, 2, 3))
    assert torch.allclose(torch.tensor(tr.info.mean, dtype=torch.float64), mean, atol=1e-6)
    assert va.info == tr.info == dataset_info("folder", str(tmp_path), img_size=8)
    assert load_dataset("folder", train=True, root=str(tmp_path)).images.shape[-1] == 32


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("folder", train=True, root=str(tmp_path / "nope"))
    _one_line_error(e, tmp_path / "nope")
    with pytest.raises(DatasetError):
        load_dataset("folder", train=True)  # no root at all
    _write_folder(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset("folder", train=True, root=str(tmp_path))
    _one_line_error(e, tmp_path / "train" / "empty", "no images")
    (tmp_path / "train" / "empty").rmdir()
    bad = tmp_path / "val" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError) as e:
        load_dataset("folder", train=False, root=str(tmp_path))
    _one_line_error(e, bad, "cannot read image")


# --------------------------------------------------------------------------------------
# balanced subsets
# --------------------------------------------------------------------------------------


def _labels() -> torch.Tensor:
    counts = [50, 37, 20, 100]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize("fraction", [0.06, 0.3, 0.5, 0.99])
def test_balanced_subset_counts(fraction):
    labels = _labels()
    idx = balanced_subset(labels, fraction, seed=0)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert len(set(idx.tolist())) == len(idx)
    for c in range(4):
        n_c = int((labels == c).sum())
        assert int((labels[idx] == c).sum()) == int(n_c * fraction)


def test_balanced_subset_seeding():
    labels = _labels()
    a, b = balanced_subset(labels, 0.3, seed=0), balanced_subset(labels, 0.3, seed=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, balanced_subset(labels, 0.3, seed=1))
    assert torch.equal(balanced_subset(labels, 1.0), torch.arange(len(labels)))


def test_balanced_subset_errors():
    labels = _labels()
    for bad in (0, 0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            balanced_subset(labels, bad)
    with pytest.raises(ConfigError) as e:
        balanced_subset(labels, 0.04)  # class 2 has 20 images: int(20 * 0.04) == 0
    _one_line_error(e, "class 2", "0.05")


def test_channel_statistics_stream_in_integer_sums_and_match_float64():
    from vitscope.data.datasets import ChannelStats, _channel_stats

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 9, 7), dtype=torch.uint8, generator=g)
    ref = x.transpose(0, 1).reshape(3, -1).double() / 255
    mean, std = _channel_stats(x)
    assert mean == pytest.approx(ref.mean(1).tolist(), abs=1e-6)
    assert std == pytest.approx(ref.std(1).tolist(), abs=1e-6)
    parts = ChannelStats()
    for part in (x[:1], x[1:200], x[200:]):  # any split into batches: the same numbers
        parts.update(part)
    assert parts.result() == (mean, std)
    flat = ChannelStats()
    flat.update(torch.full((3, 1, 4, 4), 255, dtype=torch.uint8))
    assert flat.result() == ((1.0,), (0.0,))
    with pytest.raises(DatasetError, match="3 channels after 1"):
        flat.update(x[:2])
    with pytest.raises(DatasetError, match="need uint8"):
        ChannelStats().update(x.float())
