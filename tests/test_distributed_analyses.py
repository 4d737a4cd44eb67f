"""Analyses sharded over two torchrun ranks (gloo, CPU) equal the single-process result.

Each test launches ``tests/dist_scripts/analysis_worker.py`` under ``torchrun`` (two ranks)
and compares what every rank returned with the same analysis run here, in one process. The
kill tests make rank 1 exit hard mid-analysis, restart the job (two ranks, and one) and check
that the restarted job computes exactly the items the killed one had not saved, each once.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vitscope.analyses import Result, landscape

WORKER_PATH = Path(__file__).parent / "dist_scripts" / "analysis_worker.py"
_spec = importlib.util.spec_from_file_location("analysis_worker", WORKER_PATH)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

ALL = ["landscape", "hessian", "noise", "lesion", "fourier", "variance", "overfitting"]
TIMING = {"seconds", "seconds_total", "seconds_per_point", "resumed_batches"}

pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, out: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """The worker on ``nproc`` ranks (torchrun), or as a plain process for ``nproc=1``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VITSCOPE_DIST_TIMEOUT_MIN": "2"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
        cmd += [f"--master-port={free_port()}"]
    cmd += [str(WORKER_PATH), str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference() -> dict[str, Result]:
    """Every analysis in this process, unsharded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = worker.make_model()
        return {name: worker.run(name, model) for name in ALL}
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """Every analysis on two ranks, directly and through ``study.analyze_model``."""
    root = tmp_path_factory.mktemp("sharded")
    launch(
        2,
        root / "out",
        f"--analyses={','.join(ALL)}",
        f"--workdir={root / 'work'}",
        f"--study={root / 'study'}",
    )
    return root


def assert_close(a, b, path: str = "") -> None:
    """JSON-like values equal, floats within 1e-9 relative (NaN equal NaN), timings ignored."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            if k not in TIMING:
                assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is b, path
        elif not (math.isnan(a) and math.isnan(b)):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def assert_same_result(got: Result, want: Result) -> None:
    assert_close(json.loads(json.dumps(got.values)), json.loads(json.dumps(want.values)))
    assert got.arrays.keys() == want.arrays.keys()
    for k, a in want.arrays.items():
        if k != "seconds":
            np.testing.assert_allclose(got.arrays[k], a, rtol=1e-9, atol=1e-12, err_msg=k)


def ledger(out: Path, analysis: str, rank: int | str = "*") -> list[str]:
    """Items computed by one rank (or every rank) of a launch, one entry per computation."""
    items = []
    for path in sorted(out.glob(f"items.rank{rank}.txt")):
        for line in path.read_text().splitlines():
            name, _, item = line.partition(" ")
            if name == analysis:
                items.append(item)
    return items


# ------------------------------------------------------------------ sharded == single process


@pytest.mark.parametrize("name", ALL)
def test_every_rank_returns_the_single_process_result(name, sharded, reference):
    for rank in (0, 1):
        assert_same_result(Result.load(sharded / "out" / f"rank{rank}", name), reference[name])


def test_pca_eigen_and_interpolated_landscapes_shard_like_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    for root in (two, one):
        worker.write_directions_runs(root)
    launch(2, tmp_path / "out", f"--directions={two}")
    model, data = worker.make_model(), worker.train_data()
    for kind in worker.DIRECTIONS:
        cfg = worker.directions_config(kind, one)
        work = one / kind / "results"
        want = landscape.ANALYSIS.execute(model, data, cfg, workdir=work)
        for rank in (0, 1):
            got = Result.load(tmp_path / "out" / f"rank{rank}" / kind, "landscape")
            if kind == "interpolate":  # the far end's file is in another folder
                for r in (got, want):
                    r.values["interpolate"]["file"] = r.values["interpolate"]["endpoint"] = None
            assert_same_result(got, want)
        assert (two / kind / "results" / "landscape.partial.npz").is_file(), kind


@pytest.mark.parametrize("name, total", [("landscape", 25), ("hessian", 5)])
def test_each_item_is_computed_once_by_one_rank(name, total, sharded):
    mine = [ledger(sharded / "out", name, rank) for rank in (0, 1)]
    assert mine[0] and mine[1]  # both ranks worked
    assert not set(mine[0]) & set(mine[1])
    counts = Counter(mine[0] + mine[1])  # twice each: the direct run, then the study's
    assert len(counts) == total and set(counts.values()) == {2}


def test_study_writes_results_and_figures_on_rank_zero_only(sharded, reference):
    results = sharded / "study" / "results"
    for name in ALL:
        got = Result.load(results, name)
        assert_same_result(got, reference[name])
    assert not list(results.glob("*.partial.*"))  # superseded by the results
    assert (sharded / "study" / "figures" / "landscape_contour.png").is_file()
    assert (sharded / "out" / "log.rank1.txt").read_text() == ""
    assert len((sharded / "out" / "log.rank0.txt").read_text().splitlines()) == len(ALL)
    # the direct runs' resume files: rank 0's own file, rank 1's log
    work = sharded / "work"
    assert (work / "landscape.partial.npz").is_file()  # the directions
    assert (work / "landscape.partial.json").is_file()  # rank 0's points
    assert (work / "landscape.partial.rank1.jsonl").is_file()
    assert (work / "hessian.partial.rank1.jsonl").is_file()


def test_a_foreign_model_shards_like_our_own(tmp_path):
    """A model without vitscope_blocks (generic decomposition, ForeignModel) on two ranks:
    every rank returns the single-process result, lesion and Hessian included."""
    names = ["fourier", "lesion", "hessian"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = worker.make_foreign()
        assert [b.kind for b in model.vitscope_blocks()] == [
            "stem", "conv", "conv", "pool", "msa", "msa", "head"
        ]  # fmt: skip
        want = {name: worker.run(name, model) for name in names}
    finally:
        torch.set_num_threads(n)
    launch(2, tmp_path / "out", f"--analyses={','.join(names)}", "--foreign",
           f"--workdir={tmp_path / 'work'}")  # fmt: skip
    for name in names:
        for rank in (0, 1):
            assert_same_result(Result.load(tmp_path / "out" / f"rank{rank}", name), want[name])


# ------------------------------------------------------------------ a rank dies, the job restarts


def saved_items(work: Path, name: str) -> list[str]:
    """Items in the resume files (rank 0's file and every rank log), read by hand."""
    own = work / f"{name}.partial.json"  # absent if rank 0 was killed in its first item
    items = [json.loads(k) for k in json.loads(own.read_text())["items"]] if own.is_file() else []
    items += [row["item"] for row in _log_rows(work, f"{name}.partial")]
    if name == "landscape":
        xs, ys = landscape.grid_axes(worker.CONFIGS[name])
        return [f"{float(xs[i])!r} {float(ys[j])!r}" for j, i in items]
    return [str(i) for i in items]


def _log_rows(work: Path, stem: str) -> list[dict]:
    rows = []
    for path in sorted(work.glob(f"{stem}.rank*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@pytest.mark.parametrize("name, total", [("landscape", 25), ("hessian", 5)])
def test_killed_rank_then_restart_completes_each_item_once(name, total, tmp_path, reference):
    killed = tmp_path / "killed"
    proc = launch(
        2,
        killed / "out",
        f"--analyses={name}",
        f"--workdir={killed / 'work'}",
        "--die-rank=1",
        "--die-after=1",
        ok=False,
    )
    assert proc.returncode != 0 and (killed / "out" / "died.rank1").is_file(), proc.stderr
    stem = "landscape.partial" if name == "landscape" else "hessian.partial"
    assert len(_log_rows(killed / "work", stem)) == 1  # rank 1 saved its one finished item
    saved = saved_items(killed / "work", name)
    assert len(saved) == len(set(saved)) < total

    for world in (2, 1):
        run = tmp_path / f"restart{world}"
        shutil.copytree(killed / "work", run / "work")
        launch(world, run / "out", f"--analyses={name}", f"--workdir={run / 'work'}")
        again = ledger(run / "out", name)
        assert len(again) == len(set(again)), "an item was computed twice"
        assert not set(again) & set(saved), "a saved item was computed again"
        assert len(again) + len(saved) == total, "an item was lost"
        for rank in range(world):
            result = Result.load(run / "out" / f"rank{rank}", name)
            assert_same_result(result, reference[name])
        if name == "hessian":
            assert result.values["resumed_batches"] == len(saved)
