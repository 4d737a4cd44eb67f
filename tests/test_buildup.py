"""The AlterNet build-up search: its three rules on a scripted trainer, resume, and one real run."""

from __future__ import annotations

import json

import pytest

from vitscope.buildup import (
    BuildupConfig,
    buildup,
    candidate_config,
    layout_text,
    stage_depths,
)
from vitscope.cli import main
from vitscope.config import resolve
from vitscope.errors import ConfigError, VitscopeError
from vitscope.models import create_model
from vitscope.models.alternet import MSABlock

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted:
    """A fake trainer: accuracy by layout, and a log of what it was asked to train."""

    def __init__(self, accs: dict[tuple, float], fail_after: int | None = None):
        self.accs, self.fail_after, self.calls = accs, fail_after, []

    def __call__(self, cfg, run_dir):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        msas = tuple(cfg.model.kwargs["msas"])
        self.calls.append(msas)
        assert run_dir.name == "msas-" + "-".join(map(str, msas))
        return {"acc": self.accs[msas], "nll": 1.0 - self.accs[msas], "params": 1}


def _path(state):
    return [(tuple(s["msas"]), s["label"], s["kept"]) for s in state["steps"]]


def test_tiny_base_rules_fall_back_to_earlier_stages(tmp_path):
    # resnet_tiny: 2 blocks per stage, so each stage holds at most one MSA
    assert stage_depths("resnet_tiny") == (2, 2, 2, 2)
    accs = {
        (0, 0, 0, 0): 0.80,
        (0, 0, 0, 1): 0.82,  # rule 1: the last stage's last block -> kept
        (0, 0, 1, 1): 0.81,  # c4 is full, so c3; no gain -> rejected
        (0, 1, 0, 1): 0.83,  # rule 2: the end of the stage before -> kept
        (1, 1, 0, 1): 0.79,  # c2 full; c1 -> rejected; nothing earlier: stop
    }
    fake = Scripted(accs)
    state = buildup(BuildupConfig(base="resnet_tiny"), tmp_path, trainer=fake, log=lambda s: None)
    assert _path(state) == [
        ((0, 0, 0, 0), "base", True),
        ((0, 0, 0, 1), "+c4", True),
        ((0, 0, 1, 1), "+c3", False),
        ((0, 1, 0, 1), "+c2", True),
        ((1, 1, 0, 1), "+c1", False),
    ]
    assert fake.calls == list(accs)  # each candidate trained once, in this order
    assert state["status"] == "done" and state["best"]["msas"] == [0, 1, 0, 1]
    assert (tmp_path / "buildup.png").stat().st_size > 1000
    best = resolve(preset=None, config_file=tmp_path / "best.yaml")
    assert best.model.name == "alternet_tiny" and list(best.model.kwargs["msas"]) == [0, 1, 0, 1]


def test_paper_base_reaches_alter_resnet50(tmp_path):
    # the paper's CIFAR-100 build-up (``docs/methods/alternet.md``), with its accuracies
    assert stage_depths("resnet50") == (3, 4, 6, 4)
    accs = {
        (0, 0, 0, 0): 82.48,
        (0, 0, 0, 1): 83.45,
        (0, 0, 0, 2): 83.66,  # c4 holds two MSAs (C M C M), then it is full
        (0, 0, 1, 2): 83.77,
        (0, 0, 2, 2): 83.52,  # several MSAs in c3 hurt -> rejected
        (0, 1, 1, 2): 84.02,  # the end of c2 helps
        (0, 2, 1, 2): 83.39,
        (1, 1, 1, 2): 83.80,
    }
    fake = Scripted({k: v / 100 for k, v in accs.items()})
    state = buildup(BuildupConfig(base="resnet50"), tmp_path, trainer=fake, log=lambda s: None)
    assert [tuple(s["msas"]) for s in state["steps"]] == list(accs)
    kept = [s["kept"] for s in state["steps"]]
    assert kept == [True, True, True, True, False, True, False, False]
    assert state["best"]["msas"] == [0, 1, 1, 2]
    assert state["best"]["layout"] == "c1=CCC c2=CCCM c3=CCCCCM c4=CMCM"  # Fig 3/11's model


def test_max_msas_and_min_gain_stop_the_search(tmp_path):
    accs = {(0, 0, 0, 0): 0.5, (0, 0, 0, 1): 0.6, (0, 0, 1, 1): 0.7}
    fake = Scripted(accs)
    state = buildup(BuildupConfig(max_msas=1), tmp_path / "a", trainer=fake, log=lambda s: None)
    assert [tuple(s["msas"]) for s in state["steps"]] == [(0, 0, 0, 0), (0, 0, 0, 1)]
    # a gain below min_gain does not keep the MSA
    accs = {(0, 0, 0, 0): 0.5, (0, 0, 0, 1): 0.505, (0, 0, 1, 0): 0.49, (0, 1, 0, 0): 0.4,
            (1, 0, 0, 0): 0.3}  # fmt: skip
    cfg = BuildupConfig(min_gain=0.01)
    state = buildup(cfg, tmp_path / "b", trainer=Scripted(accs), log=lambda s: None)
    assert [s["kept"] for s in state["steps"]] == [True, False, False, False, False]
    assert state["best"]["msas"] == [0, 0, 0, 0]
    accs = {(0, 0, 0, 0): 0.5, (0, 0, 0, 1): 0.4, (0, 0, 1, 0): 0.3}
    cfg = BuildupConfig(min_stage=3)
    state = buildup(cfg, tmp_path / "c", trainer=Scripted(accs), log=lambda s: None)
    assert [tuple(s["msas"]) for s in state["steps"]] == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0)]


def test_killed_search_resumes_without_retraining(tmp_path):
    accs = {
        (0, 0, 0, 0): 0.80,
        (0, 0, 0, 1): 0.82,
        (0, 0, 1, 1): 0.81,
        (0, 1, 0, 1): 0.83,
        (1, 1, 0, 1): 0.79,
    }
    full = buildup(BuildupConfig(), tmp_path / "full", trainer=Scripted(accs), log=lambda s: None)
    killed = Scripted(accs, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        buildup(BuildupConfig(), tmp_path / "cut", trainer=killed, log=lambda s: None)
    saved = json.loads((tmp_path / "cut" / "buildup.json").read_text())
    assert saved["status"] == "running" and len(saved["steps"]) == 3
    again = Scripted(accs)
    state = buildup(BuildupConfig(), tmp_path / "cut", trainer=again, log=lambda s: None)
    assert again.calls == [(0, 1, 0, 1), (1, 1, 0, 1)]  # only the candidates not yet recorded
    assert _path(state) == _path(full)
    # a finished search run again trains nothing
    idle = Scripted(accs)
    buildup(BuildupConfig(), tmp_path / "cut", trainer=idle, log=lambda s: None)
    assert idle.calls == []


def test_later_stages_get_more_heads_and_wider_msas():
    cfg = candidate_config(BuildupConfig(base="resnet_tiny"), [0, 1, 1, 1])
    model = create_model(cfg.model.name, num_classes=10, in_chans=1, **cfg.model.kwargs)
    msas = [b for stage in model.stages for b in stage if isinstance(b, MSABlock)]
    assert len(msas) == 3
    heads = [m.branch[2].attn.heads for m in msas]
    widths = [m.branch[0].out_channels for m in msas]
    assert heads == sorted(heads) and len(set(heads)) == 3
    assert widths == sorted(widths) and len(set(widths)) == 3
    assert layout_text([0, 1, 1, 1], (2, 2, 2, 2)) == "c1=CC c2=CM c3=CM c4=CM"


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="unknown build-up base 'vgg'"):
        BuildupConfig(base="vgg")
    with pytest.raises(ConfigError, match="max_msas"):
        BuildupConfig(max_msas=0)
    (tmp_path / "buildup.json").write_text("{not json")
    with pytest.raises(VitscopeError, match="corrupt"):
        buildup(BuildupConfig(), tmp_path, trainer=Scripted({}), log=lambda s: None)
    other = tmp_path / "other"
    buildup(BuildupConfig(max_msas=1), other, trainer=Scripted({(0, 0, 0, 0): 0.5,
            (0, 0, 0, 1): 0.4, (0, 0, 1, 0): 0.3, (0, 1, 0, 0): 0.2, (1, 0, 0, 0): 0.1}),
            log=lambda s: None)  # fmt: skip
    with pytest.raises(VitscopeError, match="holds a build-up of 'resnet_tiny'"):
        buildup(BuildupConfig(base="resnet18"), other, trainer=Scripted({}), log=lambda s: None)


def test_cli_buildup_trains_real_candidates(folder_data, tmp_path, capsys):
    out = tmp_path / "bu"
    args = ["buildup", "--base", "resnet_tiny", "--data", "folder", "--data-root",
            str(folder_data), "--epochs", "0", "--warmup-epochs", "1", "--min-stage", "4",
            "--set", "train.batch_size=30", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    state = json.loads((out / "buildup.json").read_text())
    assert [s["msas"] for s in state["steps"]] == [[0, 0, 0, 0], [0, 0, 0, 1]]
    for step in state["steps"]:
        run = out / step["run"]
        assert (run / "checkpoints" / "best.pt").is_file()
        assert 0 <= step["acc"] <= 1 and step["params"] > 0
    assert "best" in capsys.readouterr().out
    # a rerun resumes to nothing: same state, no new epochs
    mtime = (out / "runs" / "msas-0-0-0-1" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "msas-0-0-0-1" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    assert main(["buildup", "--base", "nope", "--out", str(out)]) == 2
