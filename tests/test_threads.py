"""CPU threading (vitscope.threads) and progress output that suits a log (vitscope.progress)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vitscope.errors import ConfigError
from vitscope.progress import bar_disable
from vitscope.threads import (
    RECORD,
    SPINCOUNT,
    _cpu_times,
    available_cores,
    configure,
    free_cores,
    free_from,
    parse_threads,
    recorded,
)


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


STAT = """cpu  {sum}
cpu0 {a} 0 {b} {c} 0 0 0 0 0 0
cpu1 10 {n} 10 {d} 5 0 0 0 0 0
intr 1 2 3
"""


def _stat(tmp_path, name, a, b, c, d, n=0):
    path = tmp_path / name
    path.write_text(STAT.format(sum="1 2 3 4", a=a, b=b, c=c, d=d, n=n))
    return str(path)


def test_free_cores_count_what_others_leave_idle_niced_work_included(tmp_path):
    # cpu0: 90 of 100 jiffies busy (user + system); cpu1: idle but for 10 of 100 niced ones
    before = _cpu_times(_stat(tmp_path, "a", 100, 100, 100, 100), {0, 1})
    after = _cpu_times(_stat(tmp_path, "b", 160, 130, 110, 190, n=10), {0, 1})
    assert before == {0: (200, 300), 1: (20, 125)}
    assert after[0] == (290, 400) and after[1] == (20, 225)
    assert free_from(before, after) == pytest.approx(0.1 + 1.0)  # nice time is free time
    assert free_from(after, after) == 2.0  # no time passed: nothing seen busy
    assert _cpu_times(_stat(tmp_path, "c", 1, 1, 1, 1), {1}).keys() == {1}  # affinity only
    assert free_cores(0.01, str(tmp_path / "missing")) is None


def test_free_cores_sees_a_busy_process_beside_it():
    if available_cores() < 2:
        pytest.skip("needs 2 cores")
    idle = free_cores(0.3)
    assert 1 <= idle <= available_cores()
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"])
            for _ in range(available_cores() - 1)]  # fmt: skip
    try:
        __import__("time").sleep(0.5)
        assert free_cores(0.5) == 1  # every core but one is taken
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_a_folder_keeps_the_thread_count_of_its_first_writer(tmp_path):
    import torch

    from vitscope.io import writer_lock

    run = tmp_path / "run"
    n = torch.get_num_threads()
    with writer_lock(run):
        (run / "x").write_text("1")
    assert recorded(run) == n and (run / RECORD).read_text() == f"{n}\n"
    (run / RECORD).write_text("3\n")  # a later writer keeps the first count
    with writer_lock(run):
        pass
    assert recorded(run) == 3
    env: dict[str, str] = {}
    configure(environ=env, folder=run, measure=True)  # the record wins over a measurement
    assert env["OMP_NUM_THREADS"] == "3"
    env = {}
    configure(2, environ=env, folder=run)  # an explicit count wins over the record
    assert env["OMP_NUM_THREADS"] == "2"
    (run / RECORD).write_text("garbage")
    assert recorded(run) is None and recorded(tmp_path / "none") is None and recorded(None) is None
    with writer_lock(tmp_path / "failed"):  # created, nothing written: removed again
        pass
    assert not (tmp_path / "failed").exists()


def test_the_cli_records_the_threads_a_run_started_with_and_resumes_with_them(tmp_path):
    """A run started beside a busy process trains with 1 thread on 2 cores and records it;
    resumed on an idle machine it still uses 1 (bit-identical reductions)."""
    if available_cores() < 2:
        pytest.skip("needs 2 cores")
    code = ("import sys; from vitscope.cli import main; main(sys.argv[1:]); "
            "import torch; print(torch.get_num_threads())")  # torch loads inside main  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "VITSCOPE_THREADS")}
    run = tmp_path / "run"
    argv = ["train", "--model", "resnet_tiny", "--fraction", "0.002", "--epochs", "1",
            "--set", "train.warmup_epochs=0", "--no-progress", "--out", str(run)]  # fmt: skip
    hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        __import__("time").sleep(0.5)
        out = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    assert out[-1] == "1" and recorded(run) == 1
    out = subprocess.run([sys.executable, "-c", code, "train", "--resume", str(run)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out[-1] == "1"


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
