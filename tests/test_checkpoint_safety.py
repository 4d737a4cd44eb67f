"""Checkpoints are read as data, never as code: weights-only loads, safetensors, refusals."""

import pathlib
import random

import numpy as np
import pytest
import torch

from vitscope.cli import main
from vitscope.errors import VitscopeError
from vitscope.models import create_model
from vitscope.train.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_safetensors,
    set_rng_state,
)


class Evil:
    """A pickle that writes a file when it is loaded (what a malicious checkpoint does)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Evil(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(VitscopeError, match="refused: its pickle names Python objects") as e:
        load_checkpoint(evil)
    assert "pathlib" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_a_malicious_user_checkpoint_is_refused_from_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    torch.save({"model": Evil(marker)}, tmp_path / "evil.pt")
    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\ndef build():\n    return nn.Linear(4, 2)\n")
    args = ["analyze", "--model-file", f"{src}:build", "--checkpoint", str(tmp_path / "evil.pt")]
    assert main([*args, "--data", "fashion-mnist", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "refused" in err and err.count("\n") == 1
    assert not marker.exists()


def test_vitscope_checkpoints_hold_only_weights_only_types(tmp_path):
    model = create_model("resnet_tiny", num_classes=10, in_chans=1, img_size=28)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt, epoch=3, best={})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    ckpt = torch.load(path, weights_only=True)  # plain torch, no allow-list
    assert ckpt["epoch"] == 3 and set(ckpt["model"]) == set(model.state_dict())


def test_the_rng_state_round_trips_exactly():
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    state = rng_state()
    a = (np.random.rand(3), random.random(), torch.rand(2))
    set_rng_state(state)
    b = (np.random.rand(3), random.random(), torch.rand(2))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and torch.equal(a[2], b[2])
    # an older checkpoint's numpy state (a uint32 array) still restores
    old = {**state, "numpy": np.random.get_state()}
    c = np.random.rand(2)
    set_rng_state(old)
    np.testing.assert_array_equal(np.random.rand(2), c)


def test_safetensors_weights_round_trip_and_load_into_a_user_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, in_chans=1, img_size=28)
    path = save_safetensors(model.state_dict(), tmp_path / "w.safetensors")
    state = load_checkpoint(path)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VitscopeError, match="not a readable .safetensors file"):
        load_checkpoint(tmp_path / "bad.safetensors")
