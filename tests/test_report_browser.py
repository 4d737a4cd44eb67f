"""The report in a real browser: headless Chromium (Debian package ``chromium``) loads every
figure of ``report.html``, shows the findings table, and renders a screenshot.

Chromium's own command line only (``--dump-dom``, ``--screenshot``), no Python browser
library. The screenshot is kept as ``<study>/report_screenshot.png``, and copied into
``$VITSCOPE_TEST_ARTIFACTS`` when that is set (a CI artifact folder).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import make_study  # tests/ is on sys.path (pytest's rootdir-relative import)

from vitscope.report import build_report

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian: apt-get install chromium)"
)

# Sets attributes on <body> once the page has loaded; --dump-dom then prints them.
PROBE = """<script>
addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok.length));
  document.body.setAttribute("data-finding-rows",
    String(document.querySelectorAll("#findings tbody tr").length));
});
</script>"""


def with_probe(page: str, probe: str, where: str = "</body>") -> str:
    """The page with a test script added: the report's Content-Security-Policy (no script
    runs) taken out, so that the probe can run."""
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', page)
    assert csp, "the report has no Content-Security-Policy"
    page = page.replace(csp.group(0), "")
    return page.replace(where, probe + where, 1)


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to its console (``--enable-logging=stderr``): messages, uncaught
    errors, refused scripts and resources."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    study = make_study(root / "study", +1, "browser")
    build_report(study)
    return study


def test_every_figure_loads_and_the_findings_table_is_shown(study, tmp_path):
    page = (study / "report.html").read_text()
    n_img = page.count("<img ")
    probe = tmp_path / "report_probe.html"
    probe.write_text(with_probe(page, PROBE))
    out = chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "profile")
    assert out.returncode == 0, out.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", out.stdout)
    assert body, out.stdout[:500]
    attrs = dict(re.findall(r'(data-[\w-]+)="(\d+)"', body.group(1)))
    assert int(attrs["data-images"]) == n_img > 10
    assert int(attrs["data-images-loaded"]) == n_img, "some figures did not load"
    assert int(attrs["data-finding-rows"]) >= 11
    assert 'id="findings"' in out.stdout


def test_screenshot(study, tmp_path):
    shot = study / "report_screenshot.png"
    out = chromium(
        f"--screenshot={shot}", "--window-size=1280,2000", (study / "report.html").as_uri(),
        profile=tmp_path / "profile",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100, "a blank screenshot"
    artifacts = os.environ.get("VITSCOPE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report_screenshot.png")


# Runs first in <head>: records every dialog (alert, confirm, prompt, print) and every error
# event (a script's, a resource's) as attributes of <html>, which --dump-dom prints.
LISTENER = """<script>
(function () {
  var root = document.documentElement, dialogs = 0, errors = 0;
  function dialog() { root.setAttribute("data-dialogs", String(++dialogs)); }
  window.alert = window.confirm = window.prompt = window.print = dialog;
  addEventListener("error", function () { root.setAttribute("data-errors", String(++errors)); },
                   true);
  var log = console.error;
  console.error = function () { root.setAttribute("data-errors", String(++errors));
                                log.apply(console, arguments); };
})();
</script>"""


def _heard(page: str, tmp_path: Path, name: str) -> tuple[dict, list[str], str]:
    path = tmp_path / f"{name}.html"
    path.write_text(page)
    out = chromium("--dump-dom", path.as_uri(), profile=tmp_path / f"profile-{name}")
    assert out.returncode == 0, out.stderr[-2000:]
    root = re.search(r"<html([^>]*)>", out.stdout)
    assert root, out.stdout[:500]
    attrs = dict(re.findall(r'(data-[\w-]+)="(\d+)"', root.group(1)))
    return attrs, console_lines(out.stderr), out.stdout


def test_a_report_of_hostile_names_runs_nothing(tmp_path):
    """Every name and string a user controls holds HTML and script (tests/hostile.py): the
    page shows them as text. Chromium hears no dialog, no error and no console line, both on
    the page as built (its Content-Security-Policy would refuse a script) and with that policy
    taken out (the escaping alone holds); the same listener does hear a payload left raw."""
    from hostile import SCRIPT, TAG, make_hostile_study

    study = make_hostile_study(tmp_path / "h")
    page = build_report(study).read_text()
    attrs, console, dom = _heard(page, tmp_path, "as-built")
    assert attrs == {} and console == [], (attrs, console)
    assert html.escape(TAG, quote=False) in dom and html.escape(SCRIPT, quote=False) in dom
    listened = with_probe(page, LISTENER, where="</head>")  # before the body is parsed
    attrs, console, _ = _heard(listened, tmp_path, "escaped")
    assert attrs == {} and console == [], (attrs, console)
    raw = listened.replace("</main>", TAG + "</main>")  # the positive control
    attrs, _, _ = _heard(raw, tmp_path, "raw")
    assert attrs.get("data-dialogs") == "1", attrs
