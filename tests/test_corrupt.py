"""Damaged state: each torn or damaged file is detected, named in one line, and recovered
(fall back to the previous checkpoint, drop the torn line, compute the item again) or refused
with the fix; never a traceback, never a silently wrong result."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, assert_same_training, train_command

from vitscope.analyses.store import PartialStore
from vitscope.cli import main
from vitscope.errors import VitscopeError
from vitscope.io import LOCK_NAME, append_jsonl, read_jsonl
from vitscope.report import load

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(root: Path, out: Path) -> int:
    return main(train_command(root, out, epochs=1)[3:])  # warm-up + 1 epoch, in process


def _tear(path: Path) -> None:
    """Keep the first half of a file (what a crash mid-write on a non-atomic path leaves)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def trained(folder_data, tmp_path_factory) -> Path:
    """One uninterrupted run (2 epochs): the reference every damaged copy must come back to."""
    out = tmp_path_factory.mktemp("corrupt") / "ref"
    assert _train(folder_data, out) == 0
    assert (out / "checkpoints" / "last.prev.pt").is_file()  # the epoch before last.pt
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    other = tmp_path / "copy"
    shutil.copytree(run, other)
    (other / ".vitscope.lock").unlink(missing_ok=True)
    return other


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def test_a_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "train_lo')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    append_jsonl(path, {"epoch": 3})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'
    path.write_text('{"epoch": 1')  # torn first line: nothing kept, nothing swallowed
    append_jsonl(path, {"epoch": 1})
    assert read_jsonl(path) == [{"epoch": 1}]


@pytest.mark.parametrize("bad", ['{"epoch": 2, "tr', "[1, 2]", "\x00\x00\x00"])
def test_a_damaged_whole_line_is_refused_naming_file_and_line(tmp_path, bad):
    path = tmp_path / "m.jsonl"
    path.write_text(f'{{"epoch": 1}}\n{bad}\n{{"epoch": 3}}\n')
    with pytest.raises(VitscopeError, match=r"m\.jsonl line 2 is not a JSON object"):
        read_jsonl(path)


def test_resume_refuses_damaged_metrics_with_the_line(trained, tmp_path, folder_data, capsys):
    other = _copy(trained, tmp_path)
    rows = (other / "metrics.jsonl").read_text().splitlines()
    (other / "metrics.jsonl").write_text(f"{rows[0]}\ngarbage\n{rows[1]}\n")
    assert _train(folder_data, other) == 2
    assert "metrics.jsonl line 2 is not a JSON object" in _one_line(capsys)
    (other / "metrics.jsonl").write_text(f'{rows[0]}\n{{"loss": 1}}\n')
    assert _train(folder_data, other) == 2
    assert "row 2 has no integer 'epoch'" in _one_line(capsys)


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_a_torn_last_pt_falls_back_to_the_epoch_before_and_ends_equal(
    trained, tmp_path, folder_data
):
    other = _copy(trained, tmp_path)
    _tear(other / "checkpoints" / "last.pt")
    (other / "checkpoints" / "preempt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with open(other / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a torn line of an epoch never finished
    with pytest.warns(UserWarning) as caught:
        assert _train(folder_data, other) == 0
    said = [str(w.message) for w in caught]
    assert any("last.pt is unreadable" in s and "resuming from last.prev.pt (epoch 1)" in s
               for s in said), said  # fmt: skip
    assert any("preempt.pt is unreadable" in s for s in said), said
    assert_same_training(trained, other, epochs=2)  # epoch 2 trained again, bit for bit
    assert not (other / "checkpoints" / "preempt.pt").exists()


def test_a_missing_last_pt_resumes_from_the_one_before(trained, tmp_path, folder_data):
    other = _copy(trained, tmp_path)  # killed between the rename and the new last.pt
    (other / "checkpoints" / "last.pt").unlink()
    with pytest.warns(UserWarning, match="last.pt is missing; resuming from last.prev.pt"):
        assert _train(folder_data, other) == 0
    assert_same_training(trained, other, epochs=2)


def test_no_readable_checkpoint_left_is_refused_with_the_fix(
    trained, tmp_path, folder_data, capsys
):
    other = _copy(trained, tmp_path)
    _tear(other / "checkpoints" / "last.pt")
    _tear(other / "checkpoints" / "last.prev.pt")
    assert _train(folder_data, other) == 2
    line = _one_line(capsys)
    assert "last.pt is unreadable" in line and "last.prev.pt is unreadable" in line
    assert "delete both" in line
    (other / "checkpoints" / "last.prev.pt").unlink()

    def files() -> dict:  # but the lock, whose holder line (with the second) every call writes
        return {p: p.read_bytes() for p in other.rglob("*") if p.is_file() and p.name != LOCK_NAME}

    before = files()
    assert _train(folder_data, other) == 2
    assert "no last.prev.pt to fall back to" in _one_line(capsys)
    assert files() == before  # the refusal wrote nothing, changed nothing


# ---------------------------------------------------------------------------------------------
# results


ONLY = "fourier,landscape"


def _analyze(run: Path, capsys) -> str:
    sets = [a for s in SMALL for a in ("--set", s)]
    assert main(["analyze", str(run), "--only", ONLY, *sets]) == 0
    return capsys.readouterr().out


def _values(run: Path, name: str) -> dict:
    body = json.loads((run / "results" / f"{name}.json").read_text())
    drop = {"seconds", "seconds_per_point"}  # timings
    return {k: v for k, v in body["values"].items() if k not in drop}


def test_a_damaged_or_incomplete_result_is_named_and_computed_again(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    _analyze(run, capsys)
    ref = {n: _values(run, n) for n in ONLY.split(",")}
    assert "skipped" in _analyze(run, capsys)  # whole results are kept

    body = json.loads((run / "results" / "fourier.json").read_text())
    del body["values"]["high_freq"]
    (run / "results" / "fourier.json").write_text(json.dumps(body))
    _tear(run / "results" / "landscape.json")
    # the report refuses to read them, with the fix
    study_run = load.load_run(run, "s", "copy")
    assert study_run.status("fourier").startswith("unreadable: ")
    assert "lacks high_freq" in study_run.status("fourier")
    assert f"vitscope analyze {run} --only fourier" in study_run.status("fourier")
    assert "corrupt" in study_run.status("landscape")

    out = _analyze(run, capsys)
    assert "fourier: " in out and "lacks high_freq" in out and "computing it again" in out
    assert "landscape: " in out and "is corrupt; computing it again" in out
    for name, values in ref.items():
        assert _values(run, name) == values, name  # the same numbers, bit for bit
    study_run = load.load_run(run, "s", "copy")
    assert study_run.status("fourier") == study_run.status("landscape") == "ok"


def test_a_torn_arrays_file_of_a_partial_store_is_rewritten_and_items_kept(tmp_path):
    key = {"config": {"seed": 1}}
    made = {"d": np.arange(5.0)}
    store = PartialStore(tmp_path, "toy")
    store.resume(key, lambda: made)
    store.add(0, {"v": 1.0})
    store.add(1, {"v": 2.0})
    _tear(tmp_path / "toy.partial.npz")
    with pytest.warns(UserWarning, match="toy.partial.npz is missing or unreadable"):
        records, arrays = PartialStore(tmp_path, "toy").resume(key, lambda: made)
    assert records == {0: {"v": 1.0}, 1: {"v": 2.0}}
    np.testing.assert_array_equal(arrays["d"], made["d"])
    (tmp_path / "toy.partial.npz").unlink()
    with pytest.warns(UserWarning, match="missing or unreadable"):
        records, _ = PartialStore(tmp_path, "toy").resume(key, lambda: made)
    assert len(records) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole files again: nothing to say
        PartialStore(tmp_path, "toy").resume(key, lambda: made)
