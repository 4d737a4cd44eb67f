"""A study whose every name and string comes from a hostile user: HTML and script in the
study's folder and name, run folders, model and dataset names, model kwargs (an ablation's
label), unit names of a foreign model; Markdown and matplotlib mathtext syntax too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from test_report import make_study  # tests/ is on sys.path

# no "/" in the ones that name folders
TAG = "<img src=x onerror=alert(1)>"
ATTR = "'\"><svg onload=alert(2)>"
SCRIPT = "</title><script>alert(3)</script>"
MATH = "$\\x^$ 100% $a_{"  # unbalanced mathtext, a percent sign
MARKDOWN = "a|b](javascript:alert(4)) `x` *y* <b>"
PAYLOADS = (TAG, ATTR, SCRIPT, MATH, MARKDOWN)
# what a page must never contain: each payload's markup, unescaped
MARKUP = ("<img src=x", "<svg", "<script", "onerror=alert", "onload=alert", "<b>")


def make_hostile_study(root: Path) -> Path:
    study = make_study(root / f"study {TAG}", +1, "hostile")
    (study / "study.yaml").write_text(yaml.safe_dump({
        "name": f"{SCRIPT} {ATTR}", "description": f"{TAG} {MATH} {MARKDOWN}",
    }))  # fmt: skip
    for i, run in enumerate(sorted((study / "runs").iterdir())):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["model"]["name"] += [TAG, ATTR, MATH, "", MARKDOWN][i % 5]
        cfg["data"]["name"] += SCRIPT if i % 2 else MATH
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        for name in ("fourier.json", "variance.json"):  # a foreign model's unit names
            path = run / "results" / name
            if path.is_file():
                doc = json.loads(path.read_text())
                for j, unit in enumerate(doc["values"]["units"]):
                    unit["name"] = f"{unit['name']}{PAYLOADS[j % len(PAYLOADS)]}"
                path.write_text(json.dumps(doc))
        run.rename(run.parent / f"{run.name} {[TAG, ATTR, MATH.replace('/', ''), 'x', 'y'][i % 5]}")
    # an ablation whose label is built from hostile model kwargs
    source = next(p for p in (study / "runs").iterdir() if p.name.startswith("vit_tiny-f1"))
    ablation = study / "ablations" / f"gap {ATTR}"
    shutil.copytree(source, ablation)
    cfg = yaml.safe_load((ablation / "config.yaml").read_text())
    cfg["model"]["kwargs"] = {"head": TAG, SCRIPT: MATH}
    (ablation / "config.yaml").write_text(yaml.safe_dump(cfg))
    return study
