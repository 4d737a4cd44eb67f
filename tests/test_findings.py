"""The claim rules on a synthetic study with planted effects: a large planted effect holds, a
reversed one does not hold, a null one is inconclusive, for every rule; with one seed the
interval comes from resampling inside the runs, with three from the seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from planted import VIT, fourier_variance, plant, write_run

from vitscope.report import build_report, load
from vitscope.report import claims as C
from vitscope.report.claims import base as B

# the paper's rules, then those the analyses declare (corruption's check_robustness, the
# shape claim of filtered and cueconflict, shuffle's)
RULES = [c.__name__ for c in (*C.CHECKS, *C.ABLATION_CHECKS)] + [
    "check_robustness", "check_shape_reliance", "check_shuffle"]  # fmt: skip


def findings(root: Path) -> dict[str, C.Finding]:
    studies, runs = load.load_runs([root])
    return dict(zip(RULES, C.check_all(runs, load.load_ablations(studies, runs))))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    out = {}
    for sign in (1, -1, 0):
        for seeds in ((0,), (0, 1, 2)):
            out[sign, len(seeds)] = findings(plant(root / f"{sign}-{len(seeds)}", sign, seeds))
    return out


WANT = {1: C.HOLDS, -1: C.FAILS, 0: C.INCONCLUSIVE}
UNITS = {"test images": 1000, "mini-batches": 8, "cue-conflict images": 160}  # and their n


@pytest.mark.parametrize("n_seeds", [1, 3])
@pytest.mark.parametrize("sign", [1, -1, 0])
def test_every_rule_reads_the_planted_effect(planted, sign, n_seeds):
    found = planted[sign, n_seeds]
    assert len(found) == 16
    for rule, f in found.items():
        assert f.verdict == WANT[sign], (rule, f.evidence)
        assert f.measures, (rule, f.evidence)  # an estimate, not a missing-data verdict
        for m in f.measures:
            e = m.estimate
            assert e.low <= e.value <= e.high, (rule, m.text())
            if sign:  # a real effect: the interval is finite and on one side of the null
                assert math.isfinite(e.low) and math.isfinite(e.high), (rule, m.text())


@pytest.mark.parametrize("sign", [1, -1, 0])
def test_one_seed_resamples_inside_the_runs_three_seeds_resample_seeds(planted, sign):
    for rule, f in planted[sign, 1].items():
        for m in f.measures:
            if rule == "check_no_overfitting" or "ρ" in m.label:  # a correlation over runs
                assert (m.estimate.unit, m.estimate.n, m.estimate.method) == ("runs", 5, "fisher-z")
                continue
            assert m.estimate.unit in UNITS, (rule, m.estimate)
            assert m.estimate.method == "bootstrap" and not m.per_seed
            assert m.estimate.n == UNITS[m.estimate.unit], rule
    for rule, f in planted[sign, 3].items():
        for m in f.measures:
            if rule == "check_no_overfitting" or "ρ" in m.label:  # over every run of the dataset
                assert (m.estimate.unit, m.estimate.n) == ("runs", 15)
                continue
            per_seed = np.array(list(m.per_seed.values()))
            assert sorted(m.per_seed) == [0, 1, 2]
            if " / " in m.label:  # a ratio: averaged in logs
                assert (m.estimate.unit, m.estimate.n, m.estimate.method) == ("seeds", 3, "log-t")
                assert m.estimate.value == pytest.approx(np.exp(np.log(per_seed).mean()))
                continue
            assert (m.estimate.unit, m.estimate.n, m.estimate.method) == ("seeds", 3, "t"), rule
            assert m.estimate.value == pytest.approx(per_seed.mean())


def test_the_evidence_states_estimate_interval_n_and_unit(planted):
    f = planted[1, 1]["check_alternet"]
    (m,) = f.measures
    assert m.estimate.value == pytest.approx(12.0, abs=4.0)  # planted: 92% vs 80%
    assert "accuracy AlterNet - ResNet" in f.evidence and "n = 1000 test images" in f.evidence
    assert "95% bootstrap interval" in f.evidence and "claim: > 0" in f.evidence
    f3 = planted[1, 3]["check_alternet"]
    assert "n = 3 seeds" in f3.evidence and "per seed 0:" in f3.evidence
    lesion = planted[1, 1]["check_lesion"].measures[0]
    assert lesion.null == 0 and "(chance 50%)" in lesion.context


def test_the_point_estimate_is_the_plain_statistic(tmp_path):
    """The effect with no resampling is the number computed by hand from the result files."""
    root = plant(tmp_path / "s", 1, (0,))
    _, runs = load.load_runs([root])
    by = {r.name: r for r in runs}
    alt, res = by["alternet_tiny-f1-s0"], by["resnet_tiny-f1-s0"]
    m = C.check_alternet(runs).measures[0]
    assert m.estimate.value == pytest.approx(100 * (alt.best_acc - res.best_acc))
    vit = by["vit_tiny-f1-s0"].results["hessian"].arrays["eigenvalues"]
    rn = by["resnet_tiny-f1-s0"].results["hessian"].arrays["eigenvalues"]
    m = C.check_hessian_negative(runs).measures[0]
    assert m.estimate.value == pytest.approx((vit < 0).mean() - (rn < 0).mean())
    deltas = []
    for name in ("resnet_tiny-f1-s0", "vit_tiny-f1-s0", "alternet_tiny-f1-s0"):
        r = by[name].results["fourier"]
        h = r.arrays["high_freq_images"].astype(float).mean(1)
        deltas += [h[i] - h[i - 1] for i, u in enumerate(r.values["units"]) if u["kind"] == "msa"]
    assert len(deltas) == 5  # ViT 3, AlterNet 2, ResNet none
    m = C.check_msa_high_freq(runs).measures[0]
    assert m.estimate.value == pytest.approx(np.median(deltas)) and m.side == "less"


def _run(name, model, *, seed=0, correct=None, eigenvalues=None):
    """A StudyRun in memory: its best epoch's per-image correctness, a Hessian result."""
    from vitscope.analyses.base import Result

    run = load.StudyRun(name, Path(name), "s", model, "data", 1.0, seed=seed)
    if correct is not None:
        run.metrics = [{"epoch": 1, "test_acc": float(np.mean(correct))}]
        run._predictions = np.asarray(correct, bool)
    if eigenvalues is not None:
        run.results["hessian"] = Result("hessian", {"eigenvalues": eigenvalues.tolist()})
    return run


def test_bootstrap_is_seeded(tmp_path):
    root = plant(tmp_path / "a", 1, (0,))
    one, two = findings(root), findings(root)
    assert [f.to_dict() for f in one.values()] == [f.to_dict() for f in two.values()]


@pytest.mark.parametrize("case", ["accuracy, 500 test images", "hessian, 8 mini-batches"])
def test_one_seed_intervals_cover_a_null_effect_about_95_percent_of_the_time(case):
    """Seeded repeats of a study with no true effect (AlterNet and ResNet equally accurate;
    ViT's and ResNet's eigenvalues equally often negative): the 95% interval covers 0 in
    about 95% of them, with many test images and with few mini-batches alike."""
    rng = np.random.default_rng(11)
    covered, repeats = 0, 80
    for _ in range(repeats):
        if case.startswith("accuracy"):
            runs = [_run(m, m, correct=rng.random(500) < 0.8)
                    for m in ("alternet_tiny", "resnet_tiny")]  # fmt: skip
            e = C.check_alternet(runs).measures[0].estimate
        else:
            runs = [_run(m, m, eigenvalues=np.where(rng.random((8, 10)) < 0.3, -1.0, 1.0))
                    for m in ("vit_tiny", "resnet_tiny")]  # fmt: skip
            e = C.check_hessian_negative(runs).measures[0].estimate
        assert e.n == (500 if case.startswith("accuracy") else 8)
        covered += e.low <= 0 <= e.high
    assert 0.88 <= covered / repeats <= 1.0, covered


def test_without_per_image_values_the_interval_is_unbounded_and_says_why(tmp_path):
    """As for a study saved before results kept them."""
    from vitscope.analyses.base import Result

    root = plant(tmp_path / "s", 1, (0,))
    per_sample = {"high_freq_images", "variance_images", "correct", "nll_batches"}
    for run in (root / "runs").iterdir():
        (run / "predictions.npz").unlink()
        for f in (run / "results").glob("*.json"):
            r = Result.load(run / "results", f.stem)
            arrays = {k: v for k, v in r.arrays.items() if k not in per_sample}
            Result(r.name, r.values, arrays, meta=r.meta).save(run / "results")
    found = findings(root)
    alt = found["check_alternet"]
    assert alt.verdict == C.INCONCLUSIVE
    assert "no predictions.npz" in alt.evidence and "vitscope evaluate" in alt.evidence
    m = alt.measures[0]
    assert m.estimate.value == pytest.approx(12.0, abs=4.0) and m.estimate.low == -math.inf
    f = found["check_msa_high_freq"]
    assert f.verdict == C.INCONCLUSIVE and "no per-image values" in f.evidence
    assert "--only fourier --force" in f.evidence


def test_too_few_batches_give_no_bootstrap_interval(tmp_path):
    d = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for model, neg in (("vit_tiny", 0.5), ("resnet_tiny", 0.0)):
        eig = np.where(rng.random((2, 5)) < neg, -1.0, 1.0) * 5
        write_run(d, f"{model}-f1", model, seed=0, rng=rng, acc=0.8,
                  results=[("hessian", {"eigenvalues": eig.tolist()}, {})])  # fmt: skip
    _, runs = load.load_runs([tmp_path])
    f = C.check_hessian_negative(runs)
    assert f.verdict == C.INCONCLUSIVE and "only 2 mini-batches: too few" in f.evidence


def test_missing_data_is_inconclusive_with_a_reason(tmp_path):
    rng = np.random.default_rng(0)
    write_run(tmp_path / "runs", "r", "resnet_tiny", seed=0, rng=rng, acc=0.8)
    write_run(tmp_path / "runs", "v", "vit_tiny", seed=0, rng=rng, acc=0.7,
              results=fourier_variance(VIT[:3], rng, 1))  # fmt: skip
    found = findings(tmp_path)
    for rule, f in found.items():
        assert f.verdict == C.INCONCLUSIVE and f.evidence, rule
    assert "only 1 MSA unit" in found["check_msa_high_freq"].evidence
    assert "not run" in found["check_lesion"].evidence
    assert "needs runs (with metrics.jsonl) of AlterNet and ResNet" in (
        found["check_alternet"].evidence
    )
    assert "needs ≥ 4 runs" in found["check_no_overfitting"].evidence


def test_finding_verdicts_must_follow_their_measures():
    with pytest.raises(ValueError):
        C.Finding("c", "maybe", "e", "d")
    from vitscope.report.stats import Estimate

    m = B.Measure("x", Estimate(1.0, 0.5, 1.5, 10, "test images", "bootstrap"), 0.0, "greater")
    assert m.verdict == C.HOLDS
    with pytest.raises(ValueError, match="not what the measures give"):
        C.Finding("c", C.FAILS, "e", "d", "id", (m,))
    assert B.combine([m, m]) == C.HOLDS
    flipped = B.Measure("y", m.estimate, 0.0, "less")
    assert B.combine([m, flipped]) == C.INCONCLUSIVE and B.combine([flipped]) == C.FAILS


def test_three_seeds_of_the_planted_study_report_n_3_and_write_findings_json(tmp_path):
    root = plant(tmp_path / "s", 1, (0, 1, 2))
    report = build_report([root])
    doc = json.loads((root / "findings.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and doc["level"] == 0.95
    rows = doc["findings"]
    assert [r["id"] for r in rows] == [
        "msa-low-pass", "conv-high-pass", "msa-variance", "conv-variance", "hessian-negative",
        "hessian-small-data", "flat-landscape", "no-overfitting", "alternet", "noise", "lesion",
        "gap-head", "local-msa", "robustness", "shape", "shuffle",
    ]  # fmt: skip
    for r in rows:
        assert r["verdict"] == "holds" and r["evidence"] and r["rule"]
        assert r["interval"][0] <= r["estimate"] <= r["interval"][1]
        if r["id"] not in ("no-overfitting", "robustness"):  # these lead with ρ over runs
            assert (r["n"], r["unit"]) == (3, "seeds"), r["id"]
    html = report.read_text()
    assert "Estimate [95% interval]" in html and "3 seeds" in html
    assert html.count(f">{C.HOLDS}</span>") == 16
    assert "Student-t interval over the seeds" in html
    md = (root / "report.md").read_text()
    assert "| Claim | Verdict | Estimate [95% interval] | n |" in md
    # figures: the seeds of a run are one curve with a band, per-run figures once per run
    assert "could not be drawn" not in html
    assert "band = 95% t interval of the mean" in html
    assert "the lowest seed of each run shown" in html
    assert "fourier_high_freq_vit_tiny-f1-s0" in md and "vit_tiny-f1-s1.png" not in md


def test_mean_band_is_the_t_interval_over_seeds():
    from vitscope.report.spread import mean_band

    mean, low, high, n = mean_band([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan], [2.0, 3.0, 5.0]])
    half = 4.302652729749464 / np.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt 3
    np.testing.assert_allclose(mean, [2, 3, 5])
    np.testing.assert_allclose(low, [2 - half, 3 - half, 5])  # one value: no band
    np.testing.assert_allclose(high, [2 + half, 3 + half, 5])
    assert n.tolist() == [3, 3, 1]


def test_one_seed_report_says_the_intervals_are_within_run(tmp_path):
    root = plant(tmp_path / "s", 0, (0,))
    html = build_report([root]).read_text()
    assert "do not cover seed-to-seed variation" in html
    assert html.count(f">{C.INCONCLUSIVE}</span>") == 16
    assert json.loads((root / "findings.json").read_text())["seeds"] == [0]


def test_a_run_without_a_train_seed_is_seed_0(tmp_path):
    d = tmp_path / "runs" / "r"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet_tiny"}}))
    _, runs = load.load_runs([tmp_path])
    assert runs[0].seed == 0


def test_a_ratio_over_seeds_is_averaged_in_logs_so_its_interval_stays_positive():
    """Claim 7's ViT / ResNet eigenvalue ratio over three seeds: the t interval of the log
    ratios mapped back (the arithmetic t interval of 0.2, 0.9, 3.0 would reach below 0)."""
    from scipy import stats as sps

    ratios = [0.2, 0.9, 3.0]
    runs = []
    for seed, ratio in enumerate(ratios):
        runs.append(_run(f"v{seed}", "vit_tiny", seed=seed, eigenvalues=np.full((8, 4), ratio)))
        runs.append(_run(f"r{seed}", "resnet_tiny", seed=seed, eigenvalues=np.ones((8, 4))))
    f = C.check_flat_landscape(runs)
    (m,) = f.measures
    logs = np.log(ratios)
    half = sps.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert m.estimate.value == pytest.approx(math.exp(logs.mean()))
    assert m.estimate.low == pytest.approx(math.exp(logs.mean() - half)) and m.estimate.low > 0
    assert m.estimate.high == pytest.approx(math.exp(logs.mean() + half))
    assert np.mean(ratios) - sps.t.ppf(0.975, 2) * np.std(ratios, ddof=1) / math.sqrt(3) < 0
    assert f.verdict == C.INCONCLUSIVE and m.per_seed == dict(enumerate(ratios))
    assert m.estimate.method == "log-t" and "t (of the logs) interval" in m.text()
