import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import assert_same_training, train_command

from vitscope.config import resolve
from vitscope.errors import VitscopeError
from vitscope.io import read_jsonl
from vitscope.train import (
    NonFiniteLossError,
    evaluate_run,
    load_checkpoint,
    load_model,
    loop,
    train,
)


def _cfg(root, **train):
    t = {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "progress": False, **train}
    return resolve(
        preset="cpu",
        overrides={
            "model": {"name": "resnet_tiny"},
            "data": {"name": "folder", "root": str(root)},
            "train": t,
        },
    )


def test_train_writes_a_complete_run_directory(folder_data, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(folder_data, epochs=3), out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["phase"] == "warmup" and rows[-1]["phase"] == "main"
    for key in (
        "train_loss",
        "train_nll",
        "test_acc",
        "test_nll",
        "test_ece",
        "test_brier",
        "images_per_s",
    ):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in rows), key
    for name in ("init", "warmup", "best", "last"):
        assert (out / "checkpoints" / f"{name}.pt").is_file(), name
    assert load_checkpoint(out / "checkpoints" / "warmup.pt")["epoch"] == 1
    assert (out / "config.yaml").is_file() and (out / "provenance.json").is_file()
    # three colour-coded classes are easy: the model must learn them
    assert result.best["acc"] >= 0.9
    # the best epoch's per-image predictions, which the report resamples
    with np.load(out / "predictions.npz", allow_pickle=False) as npz:
        pred, label, epoch = npz["pred"], npz["label"], int(npz["epoch"])
    assert epoch == result.best["epoch"]
    assert (pred == label).mean() == pytest.approx(result.best["acc"])
    (out / "predictions.npz").unlink()
    # the best checkpoint reproduces its recorded accuracy, and its predictions
    assert evaluate_run(out, "best")["acc"] == pytest.approx(result.best["acc"])
    with np.load(out / "predictions.npz", allow_pickle=False) as npz:
        assert np.array_equal(npz["pred"], pred) and int(npz["epoch"]) == epoch
    model, cfg = load_model(out, "last")
    assert not model.training and cfg.model.name == "resnet_tiny"


def test_same_config_resumes_instead_of_retraining(folder_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(folder_data), out)
    before = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    result = train(_cfg(folder_data), out)  # finished run: nothing to do
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    assert result.last["epoch"] == 3
    with pytest.raises(VitscopeError, match="different config"):
        train(_cfg(folder_data, epochs=5, seed=3), out)


def test_subset_indices_are_saved(folder_data, tmp_path):
    cfg = resolve(
        preset="cpu",
        overrides={
            "data": {"name": "folder", "root": str(folder_data), "fraction": 0.25},
            "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "progress": False},
        },
    )
    train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "subset_indices.json").read_text())
    assert saved["fraction"] == 0.25 and len(saved["indices"]) == 30  # 10 of each 40-image class


def test_nan_loss_stops_and_keeps_last_good_checkpoint(folder_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = loop.soft_cross_entropy
    steps_per_epoch = 120 // 16 + 1

    def poisoned(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] > steps_per_epoch + 2 else loss

    monkeypatch.setattr(loop, "soft_cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="became nan at epoch 2"):
        train(_cfg(folder_data), out)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(read_jsonl(out / "metrics.jsonl")) == 1


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitscope", *args], env=env, **kw)


def _train_args(root, out):
    return train_command(root, out, epochs=6)[3:]  # the arguments after python -m vitscope


def test_kill_9_and_resume_gives_the_same_final_weights(folder_data_large, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _cli(*_train_args(folder_data_large, ref)).wait(timeout=300) == 0

    proc = _cli(*_train_args(folder_data_large, killed), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(read_jsonl(killed / "metrics.jsonl")) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # land somewhere inside the next epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"]
    assert done < 7, "the run finished before it could be killed"

    assert _cli("train", "--resume", str(killed), "--no-progress").wait(timeout=300) == 0
    assert_same_training(ref, killed, epochs=7)


def test_bf16_autocast_trains_on_cpu(folder_data, tmp_path):
    result = train(_cfg(folder_data, epochs=1, warmup_epochs=0, amp="bf16"), tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["train_loss"]))
    assert 0.0 <= result.last["test_acc"] <= 1.0


def test_amp_auto_is_bf16_only_where_the_cpu_has_bf16_arithmetic(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert loop.amp_of(cpu, "auto") == "none" and not loop.native_bf16(cpu)
    assert isinstance(loop.autocast(cpu, "auto"), contextlib.nullcontext)
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(loop, "_cpu_flags", lambda f=flag: frozenset({"avx2", f}))
        assert loop.amp_of(cpu, "auto") == "bf16"
        assert isinstance(loop.autocast(cpu, "auto"), torch.autocast)
    # explicit modes are kept whatever the CPU
    assert loop.amp_of(cpu, "none") == "none" and loop.amp_of("cpu", "bf16") == "bf16"
    assert loop.amp_of("meta", "auto") == "none"  # a device without a rule: float32


def test_the_cpu_flags_are_read_from_proc_cpuinfo():
    flags = loop._cpu_flags()
    if not os.path.exists("/proc/cpuinfo"):
        assert flags == frozenset()
        return
    line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    assert flags == frozenset(line.split(":", 1)[1].split()) and "fpu" in flags


@pytest.mark.parametrize("native", [False, True])
def test_amp_auto_trains_and_records_the_arithmetic_it_used(
    folder_data, tmp_path, monkeypatch, native
):
    flags = frozenset({"avx512_bf16"} if native else {"avx2"})
    monkeypatch.setattr(loop, "_cpu_flags", lambda: flags)
    cfg = _cfg(folder_data, epochs=1, warmup_epochs=0)
    assert cfg.train.amp == "auto"  # the cpu preset's; resolved per epoch, stored as asked
    train(cfg, tmp_path / "run")
    (row,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert row["amp"] == ("bf16" if native else "none")


@pytest.mark.parametrize("fused", [False, True])
def test_fused_attention_option_routes_training_through_sdpa(
    folder_data, tmp_path, monkeypatch, fused
):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    cfg = _cfg(folder_data, epochs=1, warmup_epochs=0, fused_attention=fused)
    cfg = resolve(preset=None, overrides={**_as_dict(cfg), "model": {"name": "vit_tiny"}})
    train(cfg, tmp_path / "run")
    assert bool(calls) == fused
    from vitscope.models.layers import _FUSED_ATTENTION

    assert _FUSED_ATTENTION is False  # switched off again after training


def _as_dict(cfg):
    from vitscope.config import to_dict

    return to_dict(cfg)


def test_eval_every_tests_every_nth_epoch_and_the_last(folder_data, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(folder_data, epochs=4, eval_every=2), out)  # 5 epochs in all
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows if "test_acc" in r] == [2, 4, 5]
    assert all("train_loss" in r for r in rows) and len(rows) == 5
    assert result.best["epoch"] in (2, 4, 5) and result.last["epoch"] == 5
    with np.load(out / "predictions.npz", allow_pickle=False) as npz:
        assert int(npz["epoch"]) == result.best["epoch"]
    # the report reads the best over the tested epochs
    from vitscope.report.load import load_run

    run = load_run(out, "s", "r")
    assert run.best_acc == pytest.approx(result.best["acc"])
    assert run.best_epoch == result.best["epoch"]
    assert not isinstance(run.correct(), str)
