"""PartialStore: the one resume store of the resumable analyses."""

import json

import numpy as np

from vitscope.analyses.sharding import RankLog, key_digest
from vitscope.analyses.store import VERSION, PartialStore


def test_items_resume_and_other_ranks_logs_survive_a_fresh_start(tmp_path):
    key = {"config": {"seed": 0}}
    # rank 1 finished item 3, rank 0 was killed before it wrote its own file
    digest = key_digest(json.loads(json.dumps({"version": VERSION, **key})))
    RankLog(tmp_path, "toy.partial", digest).append(3, {"v": 3.0})
    RankLog(tmp_path, "toy.partial", "another key").append(4, {"v": 4.0})  # stale: ignored
    store = PartialStore(tmp_path, "toy")
    records, arrays = store.resume(key, lambda: {"d": np.arange(3.0)})
    assert records == {3: {"v": 3.0}}
    np.testing.assert_array_equal(arrays["d"], np.arange(3.0))
    assert not list(tmp_path.glob("toy.partial.rank*.jsonl"))  # merged into rank 0's file
    store.add((1, 2), {"v": 12.0})
    again, kept = PartialStore(tmp_path, "toy").resume(key, lambda: {"d": np.zeros(3)})
    assert again == {3: {"v": 3.0}, (1, 2): {"v": 12.0}}
    np.testing.assert_array_equal(kept["d"], np.arange(3.0))  # the saved arrays, not re-made
    store.clear()
    assert not list(tmp_path.glob("toy.partial.*"))
