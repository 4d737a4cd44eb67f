"""DDP training under ``torchrun --nproc-per-node 2`` on CPU (gloo), against one process.

Each test launches the real CLI, so these are the commands a user types; runs are shared
through module fixtures to keep the file to a few torchrun launches.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from vitscope.io import read_jsonl
from vitscope.train import load_checkpoint, train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

#: one-process semantics hold exactly without augmentation randomness (and BN-free ViT)
PLAIN = ["augment.crop_padding=0", "augment.hflip=false"]
#: augmentation and stochastic depth draw per-rank random numbers: resume must restore them
RANDOM = ["augment.crop_padding=2", "augment.hflip=true", "model.drop_path=0.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(args: list[str], nproc: int | None) -> list[str]:
    if nproc is None:
        return [sys.executable, "-m", "vitscope", *args]
    launch = ["--nproc-per-node", str(nproc), "--master-port", str(_free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "vitscope", *args]


def _start(args: list[str], nproc: int | None = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        _command(args, nproc), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(args: list[str], nproc: int | None = 2) -> tuple[int, str, str]:
    proc = _start(args, nproc)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def _train_args(root, out, sets, batch_size=16) -> list[str]:
    sets = [
        f"train.batch_size={batch_size}",
        "train.warmup_epochs=1",
        "train.optimizer=sgd",
        "train.lr=0.05",
        "data.fraction=0.975",  # 117 images: the last batch of 5 splits 3 + 2 over two ranks
        "train.amp=none",  # float32 (the cpu preset's auto is bf16 here): the comparisons are
        *sets,  # of one process with two at float32 round-off
    ]
    return [
        "train",
        "--model",
        "vit_tiny",
        "--data",
        "folder",
        "--data-root",
        str(root),
        "--epochs",
        "2",
        "--no-progress",
        "--out",
        str(out),
        *(a for s in sets for a in ("--set", s)),
    ]


def _weights(run_dir) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def ddp_random(folder_data, tmp_path_factory):
    """An uninterrupted two-rank run with per-rank randomness, and its stdout."""
    out = tmp_path_factory.mktemp("ddp") / "random"
    rc, stdout, stderr = _run(_train_args(folder_data, out, RANDOM))
    assert rc == 0, stderr
    return out, stdout


def _one_and_two_ranks(root, tmp_path, sets) -> tuple[list, list]:
    """Train with one process and with two ranks; assert equal weights; the metric rows."""
    one, two = tmp_path / "one", tmp_path / "two"
    rc, _, err = _run(_train_args(root, one, sets), nproc=None)
    assert rc == 0, err
    rc, _, err = _run(_train_args(root, two, sets))
    assert rc == 0, err
    a, b = _weights(one), _weights(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    return read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")


def test_ddp_matches_one_process_with_the_same_global_batch(folder_data, tmp_path):
    rows_a, rows_b = _one_and_two_ranks(folder_data, tmp_path, PLAIN)
    assert len(rows_a) == len(rows_b) == 3
    for ra, rb in zip(rows_a, rows_b):  # metrics are global: reduced and gathered over ranks
        for key in ("train_loss", "train_acc", "test_acc", "test_nll", "lr_end"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5), key


#: a streamed folder: crop and flip in DataLoader workers, seeded per image, not per rank
STREAMED = ["data.loader=stream", "data.workers=1", "augment.crop_padding=0", "augment.rrc=true",
            "augment.hflip=true", "augment.rrc_scale=[0.5, 1.0]"]  # fmt: skip


def test_streamed_ddp_matches_one_process_crops_and_all(folder_data, tmp_path):
    """Each rank decodes its slice of every global batch; the crops are drawn per image, so
    even with RandomResizedCrop and flips two ranks train what one process trains."""
    rows_a, rows_b = _one_and_two_ranks(folder_data, tmp_path, STREAMED)
    assert len(rows_a) == len(rows_b) == 3
    for ra, rb in zip(rows_a, rows_b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)


def test_only_rank_0_writes_and_prints(ddp_random):
    out, stdout = ddp_random
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert stdout.count("test accuracy") == 1 and stdout.count("run: ") == 1
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.pt", "init.pt", "last.prev.pt", "last.pt", "warmup.pt"]  # no temps
    assert len(load_checkpoint(out / "checkpoints" / "last.pt")["rng_ranks"]) == 2


def test_stopped_ddp_run_resumes_to_the_same_weights(ddp_random, folder_data, tmp_path):
    ref, _ = ddp_random
    out = tmp_path / "stopped"
    proc = _start(_train_args(folder_data, out, RANDOM))
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").is_file() and time.time() < deadline:
        time.sleep(0.005)  # last.pt appears (atomically) once epoch 1 is complete
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    done = load_checkpoint(out / "checkpoints" / "last.pt")["epoch"]
    assert done < 3, "the run finished before it could be stopped"
    other = tmp_path / "one_process"
    shutil.copytree(out, other)

    rc, _, err = _run(["train", "--resume", str(out), "--no-progress"])
    assert rc == 0, err
    a, b = _weights(ref), _weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = ("images_per_s", "train_seconds")

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert strip(read_jsonl(ref / "metrics.jsonl")) == strip(read_jsonl(out / "metrics.jsonl"))

    # another world size resumes too, with fresh per-rank augmentation streams and a warning
    with pytest.warns(UserWarning, match="saved by 2 process"):
        result = train(None, other, resume=True)
    assert result.last["epoch"] == 3


def test_global_batch_must_divide_over_ranks(folder_data, tmp_path):
    rc, _, err = _run(_train_args(folder_data, tmp_path / "run", PLAIN, batch_size=15))
    assert rc != 0
    # every rank finds it; torchrun may stop rank 0 before it prints, so any rank's line counts
    said = "train.batch_size=15 is the global batch and must be divisible by the 2 processes"
    assert re.search(r"^error( \(rank \d\))?: " + re.escape(said), err, re.M), err
    assert "/vitscope/" not in err  # a message, not a traceback (torchrun adds its own)


@pytest.mark.parametrize("model", ["vit_tiny", "resnet_tiny"])
def test_channels_last_trains_a_vit_and_a_cnn(folder_data, tmp_path, model):
    from vitscope.config import resolve

    train_cfg = {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "progress": False}
    cfg = resolve(
        preset="cpu",
        overrides={
            "model": {"name": model},
            "data": {"name": "folder", "root": str(folder_data), "fraction": 0.25},
            "train": {**train_cfg, "channels_last": True},
        },
    )
    result = train(cfg, tmp_path / "run")
    assert torch.isfinite(torch.tensor(result.last["train_loss"]))


def test_buildup_runs_unchanged_under_torchrun(folder_data, tmp_path):
    """The build-up search under 2 ranks: every candidate trains with DDP, rank 0 writes."""
    args = ["buildup", "--base", "resnet_tiny", "--data", "folder", "--data-root",
            str(folder_data), "--epochs", "0", "--warmup-epochs", "1", "--min-stage", "4",
            "--no-progress", "--set", "train.batch_size=16",
            "--out", str(tmp_path / "bu")]  # fmt: skip
    code, out, err = _run(args)
    assert code == 0, err
    assert out.count("best: ") == 1  # printed once, by rank 0
    state = json.loads((tmp_path / "bu" / "buildup.json").read_text())
    assert [s["msas"] for s in state["steps"]] == [[0, 0, 0, 0], [0, 0, 0, 1]]
    for step in state["steps"]:
        rows = (tmp_path / "bu" / step["run"] / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 1  # one epoch, written once
