"""The analysis plug-in contract: a third-party analysis in its own package, run from the CLI,
found through ``--plugin``, ``VITSCOPE_PLUGINS`` and the ``vitscope.analyses`` entry-point
group, shown in the report's generic section; and the torch-free reading layer."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vitscope.cli import main
from vitscope.errors import VitscopeError

PLUGIN = '''
"""A toy third-party analysis: mean softmax entropy over test images."""
from dataclasses import dataclass

import torch

from vitscope.analyses import Analysis, Context, EvalData, FigureSpec
from vitscope.results import Result


@dataclass(frozen=True)
class Config:
    num_images: int = 32
    batch_size: int = 16
    device: str = "cpu"


class Keys:
    MEAN = "mean_entropy"
    PER_IMAGE = "entropy"


@torch.no_grad()
def run(model, data: EvalData, cfg: Config, ctx: Context) -> Result:
    values = []
    for x, _ in data.batches(cfg.batch_size, cfg.device, limit=cfg.num_images):
        p = model(x).softmax(1)
        values += (-(p * p.clamp_min(1e-12).log()).sum(1)).tolist()
    return Result(
        "entropy",
        values={Keys.MEAN: sum(values) / len(values), Keys.PER_IMAGE: values},
        config={"num_images": cfg.num_images},
    )


def draw(result, fig):
    ax = fig.subplots()
    ax.hist(result.values[Keys.PER_IMAGE], bins=10)
    ax.set_xlabel("entropy")


def compare(results, fig):
    ax = fig.subplots()
    ax.bar(range(len(results)), [r.values[Keys.MEAN] for r in results])


ANALYSIS = Analysis(
    name="entropy",
    config=Config,
    run=run,
    split="test",
    figures=(FigureSpec("entropy_hist", draw),),
    summary=lambda r: {"mean entropy (nats)": r.values[Keys.MEAN]},
    compare=compare,
    keys=Keys,
    description="Mean softmax entropy on test images (a test plug-in)",
)
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch) -> Path:
    """``toyplug/entropy.py`` in a folder on ``sys.path`` (as an installed package would be)."""
    root = tmp_path / "site"
    (root / "toyplug").mkdir(parents=True)
    (root / "toyplug" / "__init__.py").write_text("")
    (root / "toyplug" / "entropy.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "toyplug" or m.startswith("toyplug.")]:
        monkeypatch.delitem(sys.modules, name)  # another test's copy, in another tmp folder
    from vitscope.analyses import registry

    registry.analyses()  # the built-ins; the plug-ins registered here are forgotten after
    monkeypatch.setattr(registry, "_ANALYSES", dict(registry._ANALYSES))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    return root


@pytest.fixture
def trained_run(folder_data, tmp_path) -> Path:
    run = tmp_path / "study" / "runs" / "resnet_tiny"
    args = ["train", "--data", "folder", "--data-root", str(folder_data), "--epochs", "1"]
    args += ["--model", "resnet_tiny", "--set", "train.batch_size=16", "--no-progress"]
    assert main([*args, "--out", str(run)]) == 0
    return run


def test_a_plugin_runs_from_the_cli_and_shows_in_the_report(plugin_dir, trained_run, capsys):
    plug = ["--plugin", "toyplug.entropy"]
    assert main(["list", "analyses", *plug]) == 0
    assert "entropy" in capsys.readouterr().out
    assert main(["analyze", str(trained_run), "--only", "entropy", *plug]) == 0
    body = json.loads((trained_run / "results" / "entropy.json").read_text())
    mean = body["values"]["mean_entropy"]
    assert 0 < mean < 2.31  # at most log(10) nats for 10 classes
    assert body["summary"] == {"mean entropy (nats)": mean}
    assert body["figures"] == ["entropy_hist.png"]
    assert (trained_run / "figures" / "entropy_hist.png").stat().st_size > 1000
    out = trained_run.parent.parent / "cmp.png"
    assert main(["compare", "entropy", str(trained_run), "--out", str(out), *plug]) == 0
    assert out.stat().st_size > 1000

    study = trained_run.parent.parent
    assert main(["report", str(study), *plug]) == 0
    md = (study / "report.md").read_text()
    assert "## Other analyses" in md and "### entropy" in md
    assert "mean entropy (nats)" in md and f"{mean:.3f}" in md
    html = (study / "report.html").read_text()
    assert 'id="other_entropy"' in html and "data:image/png;base64," in html
    assert list((study / "figures").glob("entropy_*.png"))


def test_the_report_needs_no_plugin_to_show_its_results(plugin_dir, trained_run):
    """The generic section reads the saved summary and figures: no plug-in import needed."""
    assert (
        main(["analyze", str(trained_run), "--only", "entropy", "--plugin", "toyplug.entropy"]) == 0
    )
    code = (
        "import sys; from vitscope.report import build_report; "
        f"build_report([{str(trained_run.parent.parent)!r}]); "
        "assert 'toyplug' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert "### entropy" in (trained_run.parent.parent / "report.md").read_text()


def _vitscope(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitscope", *args], capture_output=True, text=True, env=env
    )


def test_entry_points_and_the_environment_register_plugins(plugin_dir):
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    assert "entropy" not in _vitscope(["list", "analyses"], env).stdout
    # an installed distribution declaring the entry point (what pip writes for a plug-in)
    dist = plugin_dir / "toyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vitscope.analyses]\nentropy = toyplug.entropy\n")
    listed = _vitscope(["list", "analyses"], env)
    assert listed.returncode == 0 and "entropy" in listed.stdout, listed.stderr
    (dist / "entry_points.txt").unlink()
    env["VITSCOPE_PLUGINS"] = "toyplug.entropy"
    assert "entropy" in _vitscope(["list", "analyses"], env).stdout


def test_bad_plugins_are_one_line_errors(plugin_dir, capsys):
    assert main(["list", "analyses", "--plugin", "no_such_module_xyz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: plug-in 'no_such_module_xyz': cannot import") and "\n" not in err
    (plugin_dir / "toyplug" / "empty.py").write_text("X = 1\n")
    assert main(["list", "analyses", "--plugin", "toyplug.empty"]) == 2
    assert "defines no ANALYSIS" in capsys.readouterr().err
    (plugin_dir / "toyplug" / "dup.py").write_text(
        "from vitscope.analyses import fourier, Analysis\n"
        "ANALYSIS = Analysis(name='fourier', config=fourier.Config, run=fourier.run)\n"
    )
    assert main(["list", "analyses", "--plugin", "toyplug.dup"]) == 2
    err = capsys.readouterr().err
    assert "two analyses are named 'fourier'" in err and "vitscope.analyses.fourier" in err
    # a broken installed plug-in warns and is skipped; vitscope still works
    dist = plugin_dir / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vitscope.analyses]\nbad = toyplug.empty\n")
    out = _vitscope(["list", "analyses"], {**os.environ, "PYTHONPATH": str(plugin_dir)})
    assert out.returncode == 0 and "fourier" in out.stdout
    assert "warning: plug-in 'bad' of broken" in out.stderr and "skipped" in out.stderr


def test_the_reading_layer_loads_no_torch_and_import_has_no_side_effects():
    code = textwrap.dedent(
        """
        import os, sys
        os.umask(0o027)
        import vitscope, vitscope.results, vitscope.report, vitscope.report.load
        import vitscope.report.claims, vitscope.report.blocks, vitscope.report.render
        import vitscope.report.build, vitscope.report.compare, vitscope.analyses.spec
        assert "torch" not in sys.modules, "torch was imported"
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        assert os.umask(0o022) == 0o027, "the umask changed"
        import matplotlib
        assert matplotlib.rcParams["backend"] == "module://inline-test"
        """
    )
    env = {**os.environ, "MPLBACKEND": "module://inline-test"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_study_names_its_plugins_and_reproduce_runs_them(plugin_dir, folder_data, tmp_path):
    from vitscope.config import from_dict
    from vitscope.study import StudyConfig, reproduce

    data = {
        "name": "plug",
        "models": ["resnet_tiny"],
        "run": {
            "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "progress": False},
            "data": {"name": "folder", "root": str(folder_data)},
        },
        "analyses": {"entropy": {"num_images": 16}, "variance": {"num_images": 16}},
        "plugins": ["toyplug.entropy"],
    }
    report = reproduce(from_dict(StudyConfig, data, "study"), tmp_path / "s", log=lambda s: None)
    results = tmp_path / "s" / "runs" / "resnet_tiny-f1" / "results"
    assert (results / "entropy.json").is_file() and (results / "variance.json").is_file()
    md = report.with_suffix(".md").read_text()
    assert "### entropy" in md and "mean entropy (nats)" in md
    assert "plugins:\n- toyplug.entropy" in (tmp_path / "s" / "study.yaml").read_text()


def test_declared_claims_are_callables_or_references_imported_when_asked():
    from vitscope.analyses import noise
    from vitscope.analyses.spec import Analysis

    with pytest.raises(VitscopeError, match="claims must be callables"):
        Analysis(name="x", config=noise.Config, run=noise.run, claims=(3,))
    ref = "vitscope.report.claims.corruption:check_robustness"
    a = Analysis(name="x", config=noise.Config, run=noise.run, claims=[ref])
    assert a.claims == (ref,) and a.claim_rules()[0].__name__ == "check_robustness"
    bad = Analysis(name="x", config=noise.Config, run=noise.run, claims=("nope.mod:rule",))
    with pytest.raises(VitscopeError, match="cannot load 'nope.mod:rule'"):
        bad.claim_rules()
