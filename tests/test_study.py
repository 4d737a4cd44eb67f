import json

import pytest
import yaml

from vitscope.cli import main
from vitscope.config import from_dict
from vitscope.errors import ConfigError, DatasetError, VitscopeError
from vitscope.report import claims as C
from vitscope.report import load as L
from vitscope.study import StudyConfig, list_studies, load_study, reproduce


@pytest.mark.parametrize("name", list_studies())
def test_every_study_preset_loads_and_resolves(name):
    study = load_study(name)
    assert study.description and study.models
    runs = study.run_configs()
    per_seed = sum(len(study.models_at(f)) for f in study.fractions)
    assert len(runs) == per_seed * max(1, len(study.seeds))
    study.analysis_sets()


def test_shipped_presets_are_the_issue_s():
    assert {"smoke", "cpu-mini", "fashion-mnist", "cifar10", "cifar100", "imagenet"} <= set(
        list_studies()
    )
    mini = load_study("cpu-mini")
    assert {"resnet_tiny", "vit_tiny", "alternet_tiny", "pit_tiny"} <= set(mini.models)
    assert min(mini.fractions) < 0.1 and {"resnet_tiny", "vit_tiny"} <= set(
        mini.models_at(min(mini.fractions))
    )


def _smoke(folder):
    data = yaml.safe_load(open(load_study.__globals__["_study_dir"]() / "smoke.yaml"))
    data["run"]["data"] = {"name": "folder", "root": str(folder)}
    data["fractions"] = [1.0]
    return from_dict(StudyConfig, data, "study")


def test_reproduce_end_to_end_then_resume_then_force(folder_data, tmp_path):
    study = _smoke(folder_data)
    out = tmp_path / "study"
    log: list[str] = []
    report = reproduce(study, out, log=log.append)
    assert report == out / "report.html" and report.is_file()
    for run in ("resnet_tiny-f1", "vit_tiny-f1"):
        for analysis in study.analyses:
            assert (out / "runs" / run / "results" / f"{analysis}.json").is_file(), (run, analysis)
        assert not list((out / "runs" / run / "results").glob("*.partial.*"))
    # a second call resumes: nothing is trained or recomputed
    again: list[str] = []
    mtime = (out / "runs" / "vit_tiny-f1" / "checkpoints" / "last.pt").stat().st_mtime_ns
    reproduce(study, out, log=again.append)
    assert (out / "runs" / "vit_tiny-f1" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    assert sum("exists, skipped" in line for line in again) == 2 * len(study.analyses)
    # the report rebuilds from saved results alone
    html = report.read_text()
    # an analysis outside the paper sections (corruption) gets its overlay and its claim row
    assert "corruption: every run (2)" in html
    assert (out / "figures" / "corruption_overlay.png").is_file()
    assert "Robustness (mean corrupted accuracy) tracks accuracy" in html
    assert "mCE vs resnet_tiny (%)" in html  # the study names a baseline
    report.unlink()
    assert main(["report", str(out)]) == 0
    assert report.read_text().count("<img") == html.count("<img")
    # --force one analysis redoes just that one
    forced: list[str] = []
    reproduce(study, out, force=["variance"], log=forced.append)
    assert sum("exists, skipped" in line for line in forced) == 2 * (len(study.analyses) - 1)
    # each call ends with where its time went: every analysis of every run the first time,
    # only the forced one the last time ("-": done by an earlier call)
    (table,) = [line for line in log if line.startswith("time (s) of this call")]
    head, *rows = table.splitlines()[1:]
    assert head.split()[:3] == ["run", "train", "load"] and len(head.split()) == 3 + len(
        study.analyses
    )
    assert [r.split()[0] for r in rows] == ["resnet_tiny-f1", "vit_tiny-f1", "report"]
    assert all(cell != "-" for r in rows[:2] for cell in r.split()[1:])
    # timings.json: the last call's numbers (the forced one: train, skipped, and one analysis)
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["steps"]) == {"resnet_tiny-f1", "vit_tiny-f1", "report"}
    assert set(timings["steps"]["vit_tiny-f1"]) == {"train", "load", "variance"}
    assert timings["seconds"] >= sum(sum(s.values()) for s in timings["steps"].values()) > 0
    (last,) = [line for line in forced if line.startswith("time (s) of this call")]
    cols = last.splitlines()[1].split()
    assert cols == ["run", "train", "load", "variance"]


def test_the_time_table_of_a_reproduce_call():
    from vitscope.study import time_table

    times = {"a-f1": {"train": 12.04, "load": 1.0, "fourier": 3.0},
             "b-f1": {"train": 0.01, "load": 1.0, "variance": 2.5},
             "buildup": {"buildup": 30.0}, "report": {"report": 0.25}}  # fmt: skip
    assert time_table(times, 50.0).splitlines() == [
        "time (s) of this call, 50 s in all:",
        "run          train       load    fourier   variance",
        "a-f1          12.0        1.0        3.0          -",
        "b-f1           0.0        1.0          -        2.5",
        "buildup       30.0",
        "report         0.2",
    ]


def test_reproduce_refuses_a_different_study_in_the_same_folder(folder_data, tmp_path):
    study = _smoke(folder_data)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.yaml").write_text(
        yaml.safe_dump({"name": "other", "models": ["resnet_tiny"]})
    )
    with pytest.raises(VitscopeError, match="different study"):
        reproduce(study, tmp_path / "s")


def test_a_study_folder_takes_new_analyses_but_not_changed_ones(tmp_path):
    from vitscope.study import _claim_folder

    base = {"name": "g", "models": ["resnet_tiny"], "analyses": {"fourier": {"num_images": 8}}}
    _claim_folder(from_dict(StudyConfig, base, "study"), tmp_path, True)
    grown = {**base, "analyses": {**base["analyses"], "corruption": {"num_images": 8}}}
    _claim_folder(from_dict(StudyConfig, grown, "study"), tmp_path, True)  # adds results only
    assert "corruption" in yaml.safe_load((tmp_path / "study.yaml").read_text())["analyses"]
    changed = {**grown, "analyses": {"fourier": {"num_images": 16}, "corruption": {}}}
    with pytest.raises(VitscopeError, match=r"analyses corruption, fourier were run with other"):
        _claim_folder(from_dict(StudyConfig, changed, "study"), tmp_path, True)
    with pytest.raises(VitscopeError, match=r"\(its models differ\)"):
        _claim_folder(
            from_dict(StudyConfig, {**grown, "models": ["vit_tiny"]}, "study"), tmp_path, True
        )


def test_cifar_preset_without_data_stops_at_its_first_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VITSCOPE_CIFAR100_URL", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(DatasetError):
        reproduce("cifar100", tmp_path / "c", log=lambda _: None)
    assert not list((tmp_path / "c").glob("runs/*/checkpoints"))
    assert main(["reproduce", "--preset", "cifar100", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "cifar" in err.lower()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"fractions": [0]}, "study.fractions"),
        ({"analyses": {"nope": {}}}, "unknown analysis 'nope'"),
        ({"model_overrides": {"vit_ti": {}}}, "not in study.models"),
        ({"models": ["resnet_tiny", "nope_tiny"]}, "unknown model"),
    ],
)
def test_bad_study_configs(change, words, tmp_path):
    data = {"name": "x", "models": ["resnet_tiny"], **change}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(VitscopeError) as e:
        load_study(str(f)).run_configs()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_list_studies_cli(capsys):
    assert main(["list", "studies"]) == 0
    assert "cpu-mini" in capsys.readouterr().out


def test_reproduce_with_ablations_and_buildup(folder_data, tmp_path):
    data = yaml.safe_load(open(load_study.__globals__["_study_dir"]() / "smoke.yaml"))
    data["run"]["data"] = {"name": "folder", "root": str(folder_data)}
    data["fractions"] = [1.0]
    data["models"] = ["vit_tiny"]
    data["analyses"] = {"hessian": data["analyses"]["hessian"]}
    data["ablations"] = {
        "vit_tiny-gap": {"model": {"name": "vit_tiny", "kwargs": {"head": "gap"}}},
        "local-k3": {"model": {"name": "vit_local_tiny", "kwargs": {"kernel": 3}}},
        "local-global": {"model": {"name": "vit_local_tiny", "kwargs": {"kernel": 0}}},
    }
    data["buildup"] = {"base": "resnet_tiny", "min_stage": 4}
    study = from_dict(StudyConfig, data, "study")
    out = tmp_path / "study"
    report = reproduce(study, out, log=lambda s: None)
    for run in ("vit_tiny-gap-f1", "local-k3-f1", "local-global-f1"):
        assert (out / "ablations" / run / "results" / "hessian.json").is_file(), run
    state = json.loads((out / "buildup" / "buildup.json").read_text())
    assert state["status"] == "done" and [s["msas"] for s in state["steps"]][:2] == [
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ]
    html = report.read_text()
    assert 'id="ablations"' in html and 'id="buildup"' in html
    assert "vit_tiny head=gap" in html and "vit_local_tiny kernel=0" in html
    _, runs = L.load_runs([out])
    assert [r.name for r in runs] == ["vit_tiny-f1"]  # ablations stay out of the main claims
    ablations = L.load_ablations([{"name": "s", "path": out}], runs)
    found = {f.claim: f for f in C.check_all(runs, ablations)}
    gap = next(f for c, f in found.items() if c.startswith("A GAP head"))
    local = next(f for c, f in found.items() if c.startswith("Local MSAs"))
    assert "vit_tiny folder 100%: negative share GAP - CLS" in gap.evidence, gap
    assert "3x3" in local.evidence and "global" in local.evidence, local
    assert gap.verdict in C.VERDICTS and local.verdict in C.VERDICTS


def test_ablation_and_buildup_config_errors():
    base = {"models": ["vit_tiny"], "analyses": {"hessian": {}}}
    with pytest.raises(ConfigError, match="ablations.x: needs model"):
        from_dict(StudyConfig, {**base, "ablations": {"x": {"model": {"kwargs": {}}}}}, "study")
    with pytest.raises(ConfigError, match="not in study.analyses"):
        bad = {"x": {"model": {"name": "vit_tiny"}, "analyses": ["lesion"]}}
        from_dict(StudyConfig, {**base, "ablations": bad}, "study")
    with pytest.raises(ConfigError, match="unknown build-up base"):
        from_dict(StudyConfig, {**base, "buildup": {"base": "vgg"}}, "study")


def test_a_study_may_grow_ablations_but_not_change_its_runs(folder_data, tmp_path):
    data = yaml.safe_load(open(load_study.__globals__["_study_dir"]() / "smoke.yaml"))
    data["run"]["data"] = {"name": "folder", "root": str(folder_data)}
    data.update(models=["vit_tiny"], fractions=[1.0], analyses={})
    out = tmp_path / "s"
    reproduce(from_dict(StudyConfig, data, "study"), out, log=lambda s: None)
    last = out / "runs" / "vit_tiny-f1" / "checkpoints" / "last.pt"
    mtime = last.stat().st_mtime_ns
    gap = {"model": {"name": "vit_tiny", "kwargs": {"head": "gap"}}}
    grown = {**data, "ablations": {"gap": gap}}
    reproduce(from_dict(StudyConfig, grown, "study"), out, log=lambda s: None)
    assert (out / "ablations" / "gap-f1" / "checkpoints" / "last.pt").is_file()
    assert last.stat().st_mtime_ns == mtime  # the main run was not retrained
    changed = {**grown, "run": {**grown["run"], "train": {"epochs": 2, "progress": False}}}
    with pytest.raises(VitscopeError, match="different study"):
        reproduce(from_dict(StudyConfig, changed, "study"), out, log=lambda s: None)


def test_study_fields_are_typed_and_checked_up_front():
    from vitscope.config import RunOverrides
    from vitscope.study import Ablation, upgrade

    base = {"models": ["vit_tiny"], "analyses": {"fourier": {}}}
    study = from_dict(StudyConfig, {**base, "run": {"train": {"epochs": 2}}}, "study")
    assert isinstance(study.run, RunOverrides) and study.run.train == {"epochs": 2}
    gap = {"model": {"name": "vit_tiny", "kwargs": {"head": "gap"}}, "fractions": [1.0]}
    study = from_dict(StudyConfig, {**base, "ablations": {"gap": gap}}, "study")
    assert isinstance(study.ablations["gap"], Ablation)
    assert study.ablations["gap"].fractions == (1.0,)
    # typos and bad values fail before anything trains, naming the field
    with pytest.raises(ConfigError, match=r"study.run: unknown config key train.epochz"):
        from_dict(StudyConfig, {**base, "run": {"train": {"epochz": 2}}}, "study")
    with pytest.raises(ConfigError, match=r"unknown config key study.fraction_overrides.0.5.trian"):
        bad = {"fractions": [0.5], "fraction_overrides": {0.5: {"trian": {}}}}
        from_dict(StudyConfig, {**base, **bad}, "study")
    with pytest.raises(ConfigError, match=r"fourier.num_images"):
        from_dict(StudyConfig, {**base, "analyses": {"fourier": {"num_images": 0}}}, "study")
    with pytest.raises(ConfigError, match=r"unknown config key fourier.num_imgs"):
        from_dict(StudyConfig, {**base, "analyses": {"fourier": {"num_imgs": 3}}}, "study")
    # study files written before `run:` (the old `train:` key) still load, to the same config
    old = upgrade({**base, "train": {"train": {"epochs": 2}}})
    assert from_dict(StudyConfig, old, "study") == from_dict(
        StudyConfig, {**base, "run": {"train": {"epochs": 2}}}, "study"
    )


def test_seeds_are_a_study_axis(folder_data, tmp_path, capsys):
    """Three seeds of the smoke study: a run per (model, fraction, seed) with its train.seed,
    and one finding per claim, each measured claim's interval over n = 3 seeds."""
    study = _smoke(folder_data)
    keep = ("fourier", "variance", "noise", "hessian")
    study = from_dict(
        StudyConfig,
        {**json.loads(json.dumps(_study_dict(study))), "seeds": [0, 1, 2],
         "analyses": {k: v for k, v in study.analyses.items() if k in keep}},
        "study",
    )  # fmt: skip
    names = list(study.run_configs())
    assert names == [f"{m}-f1-s{s}" for m in ("resnet_tiny", "vit_tiny") for s in (0, 1, 2)]
    assert [c.train.seed for c in study.run_configs().values()] == [0, 1, 2, 0, 1, 2]
    out = tmp_path / "s"
    reproduce(study, out, log=lambda _: None)
    doc = json.loads((out / "findings.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and len(doc["findings"]) == len(C.CHECKS) + 2
    measured = [f for f in doc["findings"] if f["measures"]]
    ids = {f["id"] for f in measured}
    assert {"msa-low-pass", "conv-high-pass", "msa-variance", "conv-variance"} <= ids
    for f in measured:
        for m in f["measures"]:
            if f["id"] == "no-overfitting":  # a rank correlation across all six runs
                assert (m["n"], m["unit"]) == (6, "runs")
                continue
            assert (m["n"], m["unit"], sorted(m["per_seed"])) == (3, "seeds", ["0", "1", "2"])
    # more seeds later: the three runs stay, the new seed's are added
    assert main(["reproduce", "--preset", str(out / "study.yaml"), "--out", str(out),
                 "--seeds", "0,1,2,3"]) == 0  # fmt: skip
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        [*names, "resnet_tiny-f1-s3", "vit_tiny-f1-s3"]
    )
    assert main(["reproduce", "--out", str(out), "--seeds", "0,x"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err


def _study_dict(study):
    from vitscope.config import to_dict

    return to_dict(study)


@pytest.mark.parametrize("seeds, words", [([0, 0], "lists a seed twice"), ([-1], ">= 0")])
def test_bad_seeds(seeds, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(StudyConfig, {"models": ["resnet_tiny"], "seeds": seeds}, "study")


def test_fraction_models_choose_the_models_of_a_fraction():
    data = {"models": ["resnet_tiny", "vit_tiny", "pit_tiny"], "fractions": [1.0, 0.06],
            "fraction_models": {0.06: ["vit_tiny", "resnet_tiny"]}, "seeds": [0, 1]}  # fmt: skip
    study = from_dict(StudyConfig, data, "study")
    assert list(study.run_configs()) == [
        *(f"{m}-f1-s{s}" for m in ("resnet_tiny", "vit_tiny", "pit_tiny") for s in (0, 1)),
        *(f"{m}-f0.06-s{s}" for m in ("resnet_tiny", "vit_tiny") for s in (0, 1)),
    ]
    for bad, words in (({0.5: ["vit_tiny"]}, "not in study.fractions"),
                       ({0.06: ["swin_tiny"]}, "not in study.models"),
                       ({0.06: []}, "at least one model")):  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            from_dict(StudyConfig, {**data, "fraction_models": bad}, "study")
