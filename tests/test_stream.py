"""Streamed image folders: lazy splits, worker-decoded training crops, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.config import resolve
from vitscope.data import load_dataset
from vitscope.data.augment import rrc_box, rrc_boxes_from
from vitscope.data.datasets import ChannelStats
from vitscope.data.stream import Crop, FolderImages, train_batches, train_view
from vitscope.errors import ConfigError, DatasetError, VitscopeError
from vitscope.io import read_jsonl
from vitscope.train import load_checkpoint, train
from vitscope.train.loop import batch_indices


def _cli(*args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "vitscope", *args], env=env, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")


def _jpeg_folder(root, n_train=12, n_val=4, seed=0):
    """Three classes of JPEGs of varied, non-square sizes (so crops come from originals)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(36, 90, 2))
                img = rng.normal(0, 30, (h, w, 3)) + np.array([50 + 70 * c, 120, 210 - 70 * c])
                img[:, : w // 3] += 40 * (c - 1)
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return _jpeg_folder(tmp_path_factory.mktemp("jpegs"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    from vitscope.data import datasets

    monkeypatch.setattr(datasets, "_FOLDER_STATS", {})


def _load(root, train, **kw):
    return load_dataset("folder", train=train, root=str(root), img_size=32, decoder="pil", **kw)


def test_a_streamed_split_reads_the_same_pixels_as_the_in_memory_one(jpegs):
    mem = _load(jpegs, True, loader="memory")
    lazy = _load(jpegs, True, loader="stream")
    assert isinstance(lazy.images, FolderImages) and isinstance(mem.images, torch.Tensor)
    assert lazy.images.shape == mem.images.shape == (36, 3, 32, 32)
    assert torch.equal(lazy.labels, mem.labels)
    assert lazy.info == mem.info  # same classes and the same (exact) channel statistics
    view = lazy.images[5:9]
    assert isinstance(view, FolderImages) and len(view) == 4  # indexing decodes nothing
    assert torch.equal(view.read(), mem.images[5:9])
    idx = torch.tensor([30, 2, 17])
    assert torch.equal(lazy.images[idx].read(threads=1), mem.images[idx])
    assert torch.equal(lazy.subset(idx).images.read(), mem.subset(idx).images)


def test_streamed_statistics_are_one_exact_pass_and_kept_on_disk(jpegs, tmp_path):
    lazy = _load(jpegs, True, loader="stream")
    ref = ChannelStats()
    ref.update(lazy.images.read())
    assert (lazy.info.mean, lazy.info.std) == ref.result()
    (saved,) = (tmp_path / "cache" / "folder-stats").glob("*.json")
    d = json.loads(saved.read_text())
    assert d["images"] == 36 and tuple(d["mean"]) == lazy.info.mean
    given = _load(jpegs, False, loader="stream", stats=((0.5, 0.4, 0.3), (0.2, 0.2, 0.2)))
    assert given.info.mean == (0.5, 0.4, 0.3) and given.info.std == (0.2, 0.2, 0.2)


def test_auto_streams_by_size_and_in_memory_datasets_refuse_to_stream(jpegs):
    assert isinstance(_load(jpegs, True).images, torch.Tensor)  # 36 tiny images: in memory
    assert isinstance(_load(jpegs, True, memory_limit_gb=0).images, FolderImages)
    with pytest.raises(ConfigError, match="data.loader=stream is for image folders"):
        load_dataset("fashion-mnist", train=False, loader="stream")
    with pytest.raises(ConfigError, match="data.loader must be"):
        _load(jpegs, True, loader="disk")
    with pytest.raises(ConfigError, match="data.mean and data.std go together"):
        resolve(preset="cpu", overrides={"data": {"mean": [0.5]}})


def test_a_training_crop_is_cut_from_the_original_and_fixed_by_its_seed(jpegs):
    path = str(next((jpegs / "train" / "c0").glob("*.jpg")))
    crop = Crop(rrc=True, scale=(0.08, 1.0), interpolation="random")
    a, b = train_view(path, 24, 7, crop), train_view(path, 24, 7, crop)
    assert a.dtype == torch.uint8 and a.shape == (3, 24, 24) and torch.equal(a, b)
    assert not torch.equal(a, train_view(path, 24, 8, crop))
    # scale 1 and the image's own ratio: the box is the whole image, resized (PIL,
    # antialiased) to 24 x 24
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
    whole = Crop(rrc=True, scale=(1.0, 1.0), ratio=(w / h, w / h), hflip=False)
    ref = np.array(im.resize((24, 24), Image.BILINEAR))
    assert torch.equal(train_view(path, 24, 3, whole), torch.from_numpy(ref).permute(2, 0, 1))
    # no crop: the eval view, mirrored for about half of the seeds
    plain = FolderImages(str(jpegs / "train"), np.array([b"c0/" + path.split("/")[-1].encode()]),
                         24).read()[0]  # fmt: skip
    views = [train_view(path, 24, s, Crop(rrc=False)) for s in range(40)]
    flips = sum(torch.equal(v, plain.flip(-1)) for v in views)
    assert all(torch.equal(v, plain) or torch.equal(v, plain.flip(-1)) for v in views)
    assert 8 <= flips <= 32


@pytest.mark.parametrize("h,w", [(50, 70), (30, 200), (200, 30), (64, 64)])
def test_the_one_image_box_is_the_batched_rule(h, w):
    g = torch.Generator().manual_seed(h * w)
    n, scale, ratio = 400, (0.08, 1.0), (3 / 4, 4 / 3)
    ua, ur, uo = (torch.rand(n, k, dtype=torch.float64, generator=g) for k in (10, 10, 2))
    ua[:50] = 1.0  # areas of the whole image: with a ratio off 1 no try fits, the fallback
    batched = rrc_boxes_from(h, w, scale, ratio, ua, ur, uo).tolist()
    one = [list(rrc_box(h, w, scale, ratio, [*a, *r, *o]))
           for a, r, o in zip(ua.tolist(), ur.tolist(), uo.tolist())]  # fmt: skip
    assert one == batched
    assert all(0 <= t and 0 <= l and t + bh <= h and l + bw <= w for t, l, bh, bw in one)


def test_worker_batches_do_not_depend_on_workers_or_ranks(jpegs):
    data = _load(jpegs, True, loader="stream")
    g = torch.Generator().manual_seed(11)
    batches = list(batch_indices(len(data), 10, generator=g, min_size=4))
    crop = Crop(rrc=True, interpolation="random")

    def run(**kw):
        return list(train_batches(data.images, data.labels, batches, crop=crop, seed=1, epoch=2,
                                  **kw))  # fmt: skip

    one, two = run(workers=0), run(workers=2)
    assert [n for n, _, _ in one] == [len(b) for b in batches]
    for (_, xa, ya), (_, xb, yb), b in zip(one, two, batches):
        assert xa.dtype == torch.uint8 and xa.shape == (len(b), 3, 32, 32)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ya, data.labels[b])
    r0, r1 = run(workers=1, world=2, rank=0), run(workers=0, world=2, rank=1)
    for (_, x, y), (_, x0, y0), (_, x1, y1) in zip(one, r0, r1):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    other_epoch = list(train_batches(data.images, data.labels, batches[:1], crop=crop, seed=1,
                                     epoch=3, workers=0))  # fmt: skip
    assert not torch.equal(other_epoch[0][1], one[0][1])  # each epoch its own crops


def test_a_corrupt_file_in_a_streamed_epoch_is_one_line(tmp_path):
    root = _jpeg_folder(tmp_path / "data", n_train=4, n_val=2)
    (root / "train" / "c1" / "2.jpg").write_bytes(b"not a jpeg")
    data = load_dataset("folder", train=True, root=str(root), img_size=32, loader="stream",
                        stats=((0.5,) * 3, (0.25,) * 3))  # fmt: skip
    batches = [torch.arange(12)]
    with pytest.raises(DatasetError) as e:
        list(train_batches(data.images, data.labels, batches, crop=Crop(), seed=0, epoch=0,
                           workers=1))  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and "c1/2.jpg" in msg and "fix or remove it" in msg


def _cfg(root, workers=0, loader="stream"):
    t = {"epochs": 2, "warmup_epochs": 0, "batch_size": 12, "progress": False}
    return resolve(
        preset="cpu",
        overrides={
            "model": {"name": "resnet_tiny"},
            "data": {
                "name": "folder",
                "root": str(root),
                "loader": loader,
                "workers": workers,
                "decoder": "pil",
            },  # fmt: skip
            "augment": {"crop_padding": 0, "rrc": True, "rrc_scale": [0.35, 1.0]},
            "train": t,
        },
    )


def test_streamed_training_learns_and_any_worker_count_gives_the_same_weights(jpegs, tmp_path):
    a = train(_cfg(jpegs, 0), tmp_path / "a")
    train(_cfg(jpegs, 2), tmp_path / "b")
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.last["test_acc"] > 0.5  # three colours: learnable in two epochs
    # the same folder in memory is another run (crops of the stored images), refused there
    with pytest.raises(VitscopeError, match="different config"):
        train(_cfg(jpegs, 0, loader="memory"), tmp_path / "a")


def _stream_args(root, out):
    return [
        "train", "--model", "resnet_tiny", "--data", "folder", "--data-root", str(root),
        "--epochs", "5", "--set", "train.batch_size=12", "--set", "train.warmup_epochs=1",
        "--set", "data.loader=stream", "--set", "data.workers=1", "--set", "data.decoder=pil",
        "--set", "augment.crop_padding=0", "--set", "augment.rrc=true",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip


def test_kill_9_in_a_streamed_epoch_resumes_to_the_same_weights(tmp_path):
    root = _jpeg_folder(tmp_path / "data", n_train=40, n_val=4, seed=1)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    env_cache = {"VITSCOPE_CACHE": str(tmp_path / "cache")}
    assert _cli(*_stream_args(root, ref), env_extra=env_cache).wait(timeout=300) == 0
    proc = _cli(*_stream_args(root, killed), stdout=subprocess.DEVNULL, env_extra=env_cache)
    deadline = time.time() + 120
    while len(read_jsonl(killed / "metrics.jsonl")) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # inside the next epoch, its workers decoding
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"]
    print(f"killed after {done} epochs")
    assert done < 6, "the run finished before it could be killed"  # 1 warm-up + 5 epochs
    resume = ["train", "--resume", str(killed), "--no-progress"]
    assert _cli(*resume, env_extra=env_cache).wait(timeout=300) == 0
    a = load_checkpoint(ref / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.tv
def test_the_torchvision_decoder_matches_pillow_to_resampling_round_off(jpegs):
    pytest.importorskip("torchvision")  # VITSCOPE_REQUIRE_EXTRAS turns a skip into a failure
    pil = _load(jpegs, False, loader="stream").images
    tv = load_dataset("folder", train=False, root=str(jpegs), img_size=32, loader="stream",
                      decoder="torchvision").images  # fmt: skip
    a, b = pil.read().float(), tv.read().float()
    assert a.shape == b.shape == (12, 3, 32, 32)
    assert (a - b).abs().mean() < 2.0  # grey levels, of 255: two resamplers, one image
    path = tv.path(0)
    crop = Crop(rrc=True, interpolation="random")
    x = train_view(path, 24, 5, crop, "torchvision")
    assert x.dtype == torch.uint8 and x.shape == (3, 24, 24)
    assert torch.equal(x, train_view(path, 24, 5, crop, "torchvision"))
    # the same seed draws the same box and flip: the two crops show the same region
    assert (x.float() - train_view(path, 24, 5, crop, "pil").float()).abs().mean() < 6.0


def test_the_analyses_decode_a_streamed_test_split_once_when_their_images_fit(jpegs):
    from vitscope.run_analyses import test_data_of

    cfg = _cfg(jpegs)
    split = _load(jpegs, False, loader="stream")
    data = test_data_of(split, cfg, ["fourier", "noise"], ["fourier.num_images=5",
                        "noise.num_images=7"], "cpu")  # fmt: skip
    assert isinstance(data.images, torch.Tensor) and len(data) == 7  # the most either reads
    assert torch.equal(data.images, split.images[:7].read())
    assert torch.equal(data.labels, split.labels[:7])
    small = resolve(preset="cpu", overrides={"data": {"name": "folder", "root": str(jpegs),
                                                      "memory_limit_gb": 0}})  # fmt: skip
    lazy = test_data_of(split, small, ["fourier"], [], "cpu")
    assert isinstance(lazy.images, FolderImages) and len(lazy) == 12
    x, y = next(lazy.batches(4))
    assert (
        x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and torch.equal(y, split.labels[:4])
    )


def test_crop_pct_cuts_the_test_views_border_like_timms_eval(jpegs):
    lazy = _load(jpegs, False, loader="stream", crop_pct=0.875)
    mem = _load(jpegs, False, loader="memory", crop_pct=0.875)
    train_view_ = _load(jpegs, True, loader="stream", crop_pct=0.875).images[:1].read()
    assert torch.equal(train_view_, _load(jpegs, True, loader="stream").images[:1].read())
    path = lazy.images.path(0)
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = 36 / min(w, h)  # floor(32 / 0.875) = 36, then the centre 32
        nw, nh = max(36, round(w * s)), max(36, round(h * s))
        ref = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - 32) // 2, (nh - 32) // 2
        ref = np.array(ref.crop((left, top, left + 32, top + 32)))
    assert torch.equal(lazy.images[:1].read()[0], torch.from_numpy(ref).permute(2, 0, 1))
    assert torch.equal(mem.images, lazy.images.read())
    with pytest.raises(ConfigError, match="data.crop_pct is for image folders"):
        load_dataset("fashion-mnist", train=False, crop_pct=0.875)
    with pytest.raises(ConfigError, match=r"data.crop_pct must be in \(0, 1\]"):
        resolve(preset="cpu", overrides={"data": {"crop_pct": 1.5}})
