"""SIGTERM / SIGINT stop training and analyses at a safe point; the same command continues."""

import copy
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import assert_same_training, train_command

from vitscope import preempt
from vitscope.analyses import landscape
from vitscope.config import TrainConfig
from vitscope.data import BatchAugment
from vitscope.io import read_jsonl
from vitscope.models import create_model
from vitscope.train import load_checkpoint, loop
from vitscope.train.checkpoint import rng_state, set_rng_state

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_signal_left():
    preempt.reset()
    yield
    preempt.reset()


@pytest.fixture
def handler():
    """vitscope's handlers for SIGTERM and SIGINT in this process, restored afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    with preempt.installed():
        assert signal.getsignal(signal.SIGTERM) is preempt._handler
        yield
    assert signal.getsignal(signal.SIGTERM) is before and not preempt.requested()


def _epoch_setup():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, in_chans=1, img_size=28)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (80, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (80,), generator=g)
    aug = BatchAugment(mean=(0.5,), std=(0.5,), num_classes=10, crop_padding=2, hflip=True)
    cfg = TrainConfig(batch_size=16, epochs=1, progress=False)
    return model, opt, images, labels, aug, cfg


def _run_epoch(model, opt, images, labels, aug, cfg, resume=None):
    return loop.train_one_epoch(model, images, labels, augment=aug, optimizer=opt, cfg=cfg,
                                epoch=0, generator=torch.Generator().manual_seed(7),
                                resume=resume)  # fmt: skip


def test_an_epoch_stopped_by_a_signal_and_resumed_equals_an_uninterrupted_one(monkeypatch):
    model, opt, images, labels, aug, cfg = _epoch_setup()
    torch.manual_seed(3)
    ref = _run_epoch(model, opt, images, labels, aug, cfg)
    ref_state = copy.deepcopy(model.state_dict())

    model, opt, images, labels, aug, cfg = _epoch_setup()
    torch.manual_seed(3)
    asked = iter([False, False, True])  # the signal arrives during step 3 of 5
    monkeypatch.setattr(preempt, "requested", lambda: next(asked, True))
    stopped = _run_epoch(model, opt, images, labels, aug, cfg)
    assert stopped["stopped_at"] == 3 and set(stopped) == {"stopped_at", "sums", "seconds"}
    assert stopped["sums"][3] == 48  # images seen so far
    # a new process: the saved state is all it has (model, optimizer, RNG, the partial sums)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), rng_state(), stopped))
    model, opt, images, labels, aug, cfg = _epoch_setup()
    torch.manual_seed(12345)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    set_rng_state(saved[2])
    monkeypatch.setattr(preempt, "requested", lambda: False)
    resumed = _run_epoch(model, opt, images, labels, aug, cfg, resume=saved[3])
    for k, v in ref_state.items():
        assert torch.equal(model.state_dict()[k], v), k
    for k in ("train_loss", "train_nll", "train_acc", "images", "amp"):
        assert resumed[k] == ref[k], k
    assert resumed["seconds"] >= stopped["seconds"]


def test_a_signal_after_the_last_step_just_ends_the_epoch(monkeypatch):
    model, opt, images, labels, aug, cfg = _epoch_setup()
    asked = iter([False] * 4 + [True])
    monkeypatch.setattr(preempt, "requested", lambda: next(asked, True))
    stats = _run_epoch(model, opt, images, labels, aug, cfg)
    assert "stopped_at" not in stats and stats["images"] == 80


def test_check_raises_only_after_a_signal_and_a_second_signal_interrupts(handler):
    preempt.check("nothing")  # no signal: no-op
    os.kill(os.getpid(), signal.SIGTERM)
    assert preempt.requested() and preempt.signal_name() == "SIGTERM"
    with pytest.raises(preempt.Preempted, match="SIGTERM received; stopped after step 3"):
        preempt.check("step 3")
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # (the handler runs between bytecodes)


def test_sigterm_during_the_landscape_grid_saves_the_point_and_resume_equals(
    tmp_path, monkeypatch, handler
):
    from test_landscape import SMALL, make_data, make_model

    model, data = make_model("mlp"), make_data()
    cfg = landscape.Config(**SMALL)
    full = landscape.ANALYSIS.execute(model, data, cfg, workdir=tmp_path / "full")
    real, calls, resuming = landscape.evaluate_point, [], False

    def signalled(*args, **kw):
        calls.append(1)
        if len(calls) == 4 and not resuming:  # SIGTERM while the 4th point is evaluated
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(landscape, "evaluate_point", signalled)
    work = tmp_path / "stopped"
    with pytest.raises(preempt.Preempted, match=r"landscape item \[1, 0\]"):
        landscape.ANALYSIS.execute(model, data, cfg, workdir=work)
    assert len(calls) == 4  # it stopped right after the point in progress, which is saved
    preempt.reset()
    calls.clear()
    resuming = True
    resumed = landscape.ANALYSIS.execute(model, data, cfg, workdir=work)
    assert len(calls) == 9 - 4
    for k in ("loss", "nll", "acc", "l2", "d1", "d2"):
        np.testing.assert_array_equal(resumed.arrays[k], full.arrays[k], err_msg=k)


def _train_cmd(root, out):
    return train_command(root, out, epochs=3, batch_size=8)


def test_sigterm_during_training_exits_within_a_step_and_the_same_command_continues(
    folder_data_large, tmp_path
):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    assert subprocess.run(_train_cmd(folder_data_large, ref), env=env).returncode == 0

    proc = subprocess.Popen(_train_cmd(folder_data_large, stopped), env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while len(read_jsonl(stopped / "metrics.jsonl")) < 1 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # inside epoch 2 (15 steps of 8 images)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    waited = time.perf_counter() - t0
    assert proc.returncode == preempt.EXIT_PREEMPTED, err
    (line,) = err.strip().splitlines()
    assert line.startswith("stopped: SIGTERM received; stopped after step ")
    assert line.endswith("run the same command again to continue") and "preempt.pt" in line
    assert waited < 5  # one step is milliseconds; the rest is saving and exiting
    part = load_checkpoint(stopped / "checkpoints" / "preempt.pt")
    assert 0 < part["partial"]["stopped_at"] < 15

    assert subprocess.run(_train_cmd(folder_data_large, stopped), env=env).returncode == 0
    assert not (stopped / "checkpoints" / "preempt.pt").exists()
    assert_same_training(ref, stopped, epochs=4)
