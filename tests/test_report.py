"""The study report: findings from hand-written results, and build_report's files.

Fake studies are written by hand (config.yaml, metrics.jsonl, results/*.json) with numbers
chosen so that every finding holds (``sign=+1``), does not hold (``sign=-1``) or has no data.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from vitscope.analyses.base import Result
from vitscope.errors import VitscopeError
from vitscope.io import write_jsonl
from vitscope.report import build_report, load
from vitscope.report import claims as C
from vitscope.report.claims.accuracy import overfit_points, spearman
from vitscope.report.sections import read_buildup

CLAIMS = [c.__name__ for c in C.CHECKS]

# ---------------------------------------------------------------------------------------------
# fake studies


def units(kinds, stages=None, down=()):
    n = len(kinds)
    stages = stages or [0 if k == "stem" else 1 for k in kinds]
    return [
        {
            "index": i,
            "name": f"u{i}.{k}",
            "kind": k,
            "stage": s,
            "downsample": i in down,
            "depth": i / (n - 1),
        }
        for i, (k, s) in enumerate(zip(kinds, stages))
    ]


def walk(us, start, step):
    """Values along the units: each unit adds ``step(unit)`` to the previous value."""
    out = [start]
    for u in us[1:]:
        out.append(out[-1] + step(u))
    return out


def fourier_and_variance(us, sign):
    """MSAs lower (sign=+1) or raise (-1) both; Conv/MLP units do the opposite."""

    def hf(u):
        return -1.0 if u["downsample"] else sign * (-0.5 if u["kind"] == "msa" else 0.5)

    def var(u):
        return -0.2 if u["downsample"] else sign * (-0.05 if u["kind"] == "msa" else 0.1)

    high = walk(us, -3.0, hf)
    curves = [[0.0, h / 2, h] for h in high]
    return (
        ("fourier", {"units": us, "high_freq": high, "curves": curves}, {}),
        ("variance", {"units": us, "variance": walk(us, 1.0, var)}, {}),
    )


FREQS = [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]


def noise(hurt_high: bool):
    low, high = (-1.0, -8.0) if hurt_high else (-8.0, -1.0)
    delta = [low] * 3 + [-3.0] + [high] * 4
    return ("noise", {"frequencies": FREQS, "delta_acc": delta, "clean_acc": 80.0}, {})


def hessian(eigs):
    e = np.array(eigs, float)
    return ("hessian", {"eigenvalues": eigs, "largest": e.max(1).tolist()}, {"eigenvalues": e})


def landscape(k):
    """A bowl ``1 + k (x² + y²)`` on a 5x5 grid: rings 0.5 and 1.0."""
    xs = np.linspace(-1, 1, 5)
    a, b = np.meshgrid(xs, xs)
    loss = 1.0 + k * (a**2 + b**2)
    rings = [
        {"r": r, "loss": float(loss[np.maximum(abs(a), abs(b)) == r].mean())} for r in (0.5, 1.0)
    ]
    values = {"center": {"loss": 1.0, "nll": 0.5}, "rings": rings, "l2_mode": "squared"}
    arrays = {"xs": xs, "ys": xs, "loss": loss, "nll": loss / 2}
    return ("landscape", values, arrays)


def lesion(sign):
    """Swin-like: two stages of (msa, mlp, msa, mlp); the last (+1) or first (-1) MSA matters."""
    kinds = ["stem", "msa", "mlp", "msa", "mlp", "pool", "msa", "mlp", "msa", "mlp"]
    stages = [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    us = units(kinds, stages, down={5})
    first, last = (-1.0, -5.0) if sign > 0 else (-5.0, -1.0)
    delta = [None, first, -0.5, last, -0.5, None, first, -0.5, last, -0.5]
    return ("lesion", {"units": us, "delta_acc": delta, "base_acc": 80.0}, {})


def write_run(study, name, model, *, acc, fraction=1.0, train_nll=None, results=()):
    d = Path(study) / "runs" / name
    (d / "results").mkdir(parents=True)
    cfg = {"model": {"name": model}, "data": {"name": "fashion-mnist", "fraction": fraction}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [
        {"epoch": e, "test_acc": acc - 0.1 * (2 - e), "test_nll": 1.0 / e, "test_ece": 0.02,
         "train_nll": 0.8, "train_seconds": 30.0 * e, "params": 250_000}
        for e in (1, 2)
    ]  # fmt: skip
    write_jsonl(d / "metrics.jsonl", rows)
    for kind, values, arrays in results:
        Result(kind, values, arrays, meta={"model": model, "fraction": fraction}).save(
            d / "results"
        )
    if train_nll is not None:
        Result("overfitting", {"train_nll": train_nll}).save(d / "results")
    return d


RESNET = units(["stem", "conv", "conv", "conv", "conv", "conv"], down={3})
VIT = units(["stem", "msa", "mlp", "msa", "mlp", "msa", "mlp"])
ALTERNET = units(["stem", "conv", "conv", "msa", "conv", "msa"], [0, 1, 1, 1, 2, 2], {4})


def make_study(root: Path, sign: int, name: str = "study") -> Path:
    """Five runs whose numbers make every claim hold (sign=+1) or not hold (sign=-1)."""
    root.mkdir(parents=True)
    (root / "study.yaml").write_text(yaml.safe_dump({"name": name, "description": "fake"}))
    accs = {"resnet": 0.85, "alternet": 0.88 if sign > 0 else 0.80, "swin": 0.75}
    accs.update({"vit": 0.70, "vit_small": 0.50})

    def nll(acc):  # +1: training NLL rises with test error; -1: falls
        err = 100 * (1 - acc)
        return 0.1 + err / 50 if sign > 0 else 1.2 - err / 50

    if sign > 0:
        h_res = [[120, 80, 60], [100, 90, 70]]
        h_small = [[30, -40, -20], [25, -30, -10]]
    else:
        h_res = [[20, -50, -60], [15, -40, -45]]
        h_small = [[30, 20, 10], [25, 15, 5]]
    h_vit = [[40, -20, 10], [30, -25, 15]]
    write_run(
        root, "resnet_tiny-f1", "resnet_tiny", acc=accs["resnet"], train_nll=nll(accs["resnet"]),
        results=[*fourier_and_variance(RESNET, sign), noise(sign > 0), hessian(h_res),
                 landscape(10.0 if sign > 0 else 1.0)],
    )  # fmt: skip
    write_run(
        root, "vit_tiny-f1", "vit_tiny", acc=accs["vit"], train_nll=nll(accs["vit"]),
        results=[*fourier_and_variance(VIT, sign), noise(sign < 0), hessian(h_vit),
                 landscape(2.0)],
    )  # fmt: skip
    write_run(
        root, "vit_tiny-f0.1", "vit_tiny", acc=accs["vit_small"], fraction=0.1,
        train_nll=nll(accs["vit_small"]), results=[hessian(h_small)],
    )  # fmt: skip
    write_run(
        root, "alternet_tiny-f1", "alternet_tiny", acc=accs["alternet"],
        train_nll=nll(accs["alternet"]), results=[*fourier_and_variance(ALTERNET, sign)],
    )  # fmt: skip
    write_run(
        root, "swin_tiny-f1", "swin_tiny", acc=accs["swin"], train_nll=nll(accs["swin"]),
        results=[lesion(sign)],
    )  # fmt: skip
    return root


def verdicts(study_dirs) -> dict[str, C.Finding]:
    _, runs = load.load_runs([Path(d) for d in study_dirs])
    return dict(zip(CLAIMS, C.check_all(runs)))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    return make_study(root / "good", +1, "good"), make_study(root / "bad", -1, "bad")


# ---------------------------------------------------------------------------------------------
# findings


def test_a_corrupt_result_is_reported_not_fatal(tmp_path):
    d = write_run(tmp_path, "a", "vit_tiny", acc=0.8, results=fourier_and_variance(VIT, +1))
    (d / "results" / "fourier.json").write_text("{not json")
    _, runs = load.load_runs([tmp_path])
    assert runs[0].status("fourier").startswith("unreadable")
    f = C.check_msa_high_freq(runs)
    assert f.verdict == C.INCONCLUSIVE and "unreadable" in f.evidence


def test_overfitting_falls_back_to_metrics(tmp_path):
    write_run(tmp_path, "a", "vit_tiny", acc=0.8, train_nll=0.4)
    write_run(tmp_path, "b", "resnet_tiny", acc=0.9)
    _, runs = load.load_runs([tmp_path])
    pts = {p.run.name: p for p in overfit_points(runs)}
    assert pts["a"].source == "overfitting" and pts["a"].train_nll == 0.4
    assert pts["b"].source == "metrics" and pts["b"].train_nll == 0.8
    assert pts["b"].test_error == pytest.approx(10.0)


def test_families_and_spearman():
    names = ["resnet50", "vit_ti", "alternet_tiny", "pit_tiny", "swin_ti", "mixer"]
    assert [load.family(n) for n in names] == ["ResNet", "ViT", "AlterNet", "PiT", "Swin", "other"]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties share ranks
    assert spearman([1, 2, 3], [4, 4, 4]) is None


def test_runs_are_found_through_links_and_nested_folders(tmp_path, studies):
    (tmp_path / "runs" / "group").mkdir(parents=True)
    (tmp_path / "runs" / "group" / "vit").symlink_to(studies[0] / "runs" / "vit_tiny-f1")
    _, runs = load.load_runs([tmp_path])
    assert [r.name for r in runs] == ["group/vit"] and "fourier" in runs[0].results


# ---------------------------------------------------------------------------------------------
# build_report


@pytest.fixture(scope="module")
def report(studies, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    (studies[0] / "buildup").mkdir(exist_ok=True)
    steps = [{"label": "base", "num_msas": 0, "acc": 0.8248}, {"label": "c4", "msas": [0, 0, 0, 1],
             "acc": 83.45}]  # fmt: skip
    (studies[0] / "buildup" / "buildup.json").write_text(json.dumps({"steps": steps}))
    path = build_report(list(studies), out)
    return path, path.read_text(), (out / "report.md").read_text()


def test_one_self_contained_html_with_every_run_and_the_findings(report, studies):
    path, page, _ = report
    assert path.name == "report.html"
    for study in studies:
        for run in (study / "runs").iterdir():
            assert f"{study.name}/{run.name}" in page  # names clash across studies: prefixed
    assert 'id="findings"' in page and 'id="summary"' in page
    for q in ("What properties of MSAs do we need?", "Do MSAs act like Convs?",
              "How can we harmonise MSAs with Convs?", "AlterNet build-up"):  # fmt: skip
        assert q in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 20 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=\"(https?:|//|file:)", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert "could not be drawn" not in page
    # these results predate per-image values: estimates without intervals, all undecided
    assert f">{C.INCONCLUSIVE}</span>" in page and "predictions.npz" in page
    assert json.loads((path.parent / "findings.json").read_text())["findings"]


def test_markdown_has_the_tables_and_links_saved_figures(report):
    path, _, md = report
    assert "| Run | Study | Model | Dataset | Fraction |" in md
    assert "| # | Claim | Verdict | Estimate [95% interval] | n | Evidence | Rule |" in md
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert links and all((path.parent / link).is_file() for link in links)
    assert len(md.split("| ")) > 50


def test_writes_are_atomic(report):
    path, _, _ = report
    assert not [p for p in path.parent.rglob("*") if p.name.endswith(".tmp")]


def test_default_output_is_the_first_study_and_buildup_is_optional(tmp_path):
    study = make_study(tmp_path / "s", +1)
    path = build_report(study)
    assert path == study / "report.html" and (study / "report.md").is_file()
    page = path.read_text()
    assert "build-up" not in page.lower() and "not run for" in page
    small = tmp_path / "small"
    write_run(small, "r", "resnet_tiny", acc=0.8)
    other = build_report([small], tmp_path / "elsewhere" / "r.html")
    assert other.is_file() and (tmp_path / "elsewhere" / "r.md").is_file()


def test_bad_study_dirs_raise_one_line_errors(tmp_path):
    with pytest.raises(VitscopeError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(VitscopeError, match="no runs"):
        build_report(tmp_path)


def test_buildup_reads_the_steps_buildup_writes(tmp_path):
    assert read_buildup(tmp_path) is None
    (tmp_path / "buildup").mkdir()
    step = {"label": "+c4", "num_msas": 1, "acc": 0.8345, "kept": True, "msas": [0, 0, 0, 1]}
    body = {"steps": [step, {"x": 1}], "best": step}
    (tmp_path / "buildup" / "buildup.json").write_text(json.dumps(body))
    assert read_buildup(tmp_path) == [{"label": "+c4", "num_msas": 1, "acc": 83.45, "kept": True}]
    # the formats nothing writes any more are not read
    legacy = [{"name": "c4", "n_msas": 1, "test_acc": 0.8345}]
    (tmp_path / "buildup" / "buildup.json").write_text(json.dumps({"candidates": legacy}))
    assert read_buildup(tmp_path) == []


def test_report_modules_import_neither_torch_nor_models():
    import vitscope.report as pkg

    root = Path(pkg.__file__).parent
    files = ["__init__.py", "load.py", "blocks.py", "render.py", "build.py", "study_figures.py"]
    files += [f"{d}/{p.name}" for d in ("claims", "sections") for p in (root / d).glob("*.py")]
    assert "claims/base.py" in files and "sections/common.py" in files
    for name in files:
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            else:
                continue
            for m in mods:
                assert not m.startswith("torch") and "models" not in m and "train" not in m, (
                    name,
                    m,
                )
                assert "pyplot" not in m, (name, m)
