"""A report built from hostile names (tests/hostile.py) shows them as text: nothing of them
is markup in report.html or report.md, every figure is drawn (a `$` in a name is a dollar
sign, not mathtext), and findings.json keeps the names as they are. The browser's view of
the same page: tests/test_report_browser.py."""

import html
import json
import re
import warnings
from urllib.parse import unquote

import pytest
from hostile import MATH, PAYLOADS, SCRIPT, TAG, make_hostile_study

from vitscope.analyses import get_analysis
from vitscope.report import build_report
from vitscope.report.compare import compare_runs
from vitscope.report.figures import render
from vitscope.results import Result

RAW = ("<img src=x", "<svg", "<script", "<b>")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    study = make_hostile_study(tmp_path_factory.mktemp("hostile"))
    page = build_report(study)
    return study, page.read_text(), (study / "report.md").read_text()


def test_the_page_shows_every_name_as_text(hostile):
    study, page, _ = hostile
    for raw in RAW:
        assert raw not in page.replace('<img src="data:image/png', ""), raw
    for payload in PAYLOADS:
        assert html.escape(payload, quote=False) in page or html.escape(payload) in page, payload
    assert page.count("<title>") == page.count("</title>") == 1  # the page's own
    assert "Content-Security-Policy" in page and "script-src" not in page
    assert "could not be drawn" not in page and page.count('<img src="data:') > 10


def test_markdown_shows_names_as_text_and_links_every_figure(hostile):
    study, _, md = hostile
    outside_code = "".join(md.split("`")[::2])
    for raw in (*RAW, "</title>"):
        assert raw not in outside_code, raw
    links = re.findall(r"!\[.*?(?<!\\)\]\(([^)\s]+)\)", md)
    assert len(links) > 10 and all((study / unquote(link)).is_file() for link in links), links


def test_findings_json_keeps_the_names(hostile):
    study, _, _ = hostile
    doc = json.loads((study / "findings.json").read_text())
    text = json.dumps(doc, ensure_ascii=False)
    assert SCRIPT in [s["name"] for s in doc["studies"]][0] and TAG in text


def test_figures_and_overlays_of_hostile_runs_are_drawn(hostile, tmp_path):
    study, _, _ = hostile
    runs = sorted(
        p for p in (study / "runs").iterdir() if (p / "results" / "fourier.json").is_file()
    )
    result = Result.load(runs[0] / "results", "fourier")
    assert any(MATH in u["name"] for u in result.values["units"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*figure .* failed")
        # the planted results have no feature maps (an optional key): the other figures
        specs = [f for f in get_analysis("fourier").figures if f.stem != "fourier_maps"]
        drawn = render(result, tmp_path / "figures", specs)
    assert len(drawn) == len(specs) == 2 and all(p.is_file() for p in drawn)
    out = compare_runs("fourier", runs, tmp_path / "overlay.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
