"""CPU threading (vitscope.threads) and progress output that suits a log (vitscope.progress)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vitscope.errors import ConfigError
from vitscope.progress import bar_disable
from vitscope.threads import SPINCOUNT, available_cores, configure, parse_threads


def _cgroup(tmp_path, text: str):
    (tmp_path / "cpu.max").write_text(text)
    return str(tmp_path)


def test_available_cores_is_the_affinity_capped_by_the_cgroup_quota(tmp_path):
    mask = len(os.sched_getaffinity(0))
    assert available_cores(str(tmp_path / "none")) == mask  # no cgroup files: the mask
    assert available_cores(_cgroup(tmp_path, "max 100000\n")) == mask  # no quota
    assert available_cores(_cgroup(tmp_path, "50000 100000\n")) == 1  # half a core: 1
    assert available_cores(_cgroup(tmp_path, "150000 100000\n")) == min(mask, 2)  # rounded up
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(str(v1)) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert available_cores(str(v1)) == mask


def test_configure_sets_only_what_the_user_left_unset():
    env: dict[str, str] = {}
    assert configure(environ=env) == {"GOMP_SPINCOUNT": SPINCOUNT,
                                      "OMP_NUM_THREADS": str(available_cores())}  # fmt: skip
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    assert configure(environ=env) == {} and env == {"OMP_WAIT_POLICY": "ACTIVE",
                                                    "OMP_NUM_THREADS": "7"}  # fmt: skip
    env = {"OMP_NUM_THREADS": "7"}
    configure(3, environ=env)  # an explicit --threads wins over the environment
    assert env["OMP_NUM_THREADS"] == "3" and env["GOMP_SPINCOUNT"] == SPINCOUNT
    env = {"VITSCOPE_THREADS": "2", "OMP_NUM_THREADS": "7"}
    configure(environ=env)
    assert env["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_a_one_line_error(bad, capsys):
    from vitscope.cli import main

    with pytest.raises(ConfigError, match="must be a positive integer or auto"):
        parse_threads(bad)
    assert main(["evaluate", "nowhere", "--threads", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --threads must be a positive integer") and err.count("\n") == 1
    assert parse_threads("auto") is None and parse_threads("3") == 3


def test_configured_before_torch_loads_the_count_reaches_torch():
    code = ("import os; from vitscope.threads import configure; configure(1); import torch; "
            "print(torch.get_num_threads(), os.environ['GOMP_SPINCOUNT'])")  # fmt: skip
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert out == ["1", SPINCOUNT]


def test_bars_follow_tqdm_unless_switched_off(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bar_disable(True) is None  # tqdm decides: a bar on a terminal, none in a log
    assert bar_disable(False) is True
    for off in ("1", "true", "yes"):
        monkeypatch.setenv("TQDM_DISABLE", off)
        assert bar_disable(True) is True
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert bar_disable(True) is None


def test_training_into_a_log_prints_the_epoch_lines_and_no_bars(folder_data, tmp_path):
    """stdout/stderr to pipes, as under SLURM or CI: no bar redraws, one line per epoch."""
    cmd = [sys.executable, "-m", "vitscope", "train", "--model", "resnet_tiny", "--data",
           "folder", "--data-root", str(folder_data), "--epochs", "1", "--out",
           str(tmp_path / "r"), "--threads", "1", "--set", "train.warmup_epochs=1"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    log = p.stdout + p.stderr
    assert "img/s]" not in log and "\r" not in log  # no tqdm bar
    assert [line.split()[:2] for line in log.splitlines() if line.startswith("epoch ")] == [
        ["epoch", "1/2"],
        ["epoch", "2/2"],
    ]
