"""Rows of the one benchmark table (``benchmarks/bench_all.py``, ``make bench``).

Every benchmark that takes ``--json PATH`` writes a list of rows there:

* ``benchmark``: what is compared (e.g. ``training vs bare loop``);
* ``case``: the model or setting, and what the ratio is of;
* ``ratio``: vitscope's figure against a reference measured in the same run;
* ``goal`` and ``better`` (``higher`` / ``lower``): the target the ratio is held to, or
  ``None`` where there is none (the row is then for scale only);
* ``detail``: the raw numbers behind the ratio.
"""

from __future__ import annotations

import json
from pathlib import Path


def row(benchmark: str, case: str, ratio: float, goal: float | None = None,
        better: str = "higher", detail: str = "") -> dict:  # fmt: skip
    return {"benchmark": benchmark, "case": case, "ratio": float(ratio), "goal": goal,
            "better": better, "detail": detail}  # fmt: skip


def write(path: str | None, rows: list[dict]) -> None:
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))


def verdict(r: dict) -> str:
    if r.get("goal") is None:
        return ""
    ok = r["ratio"] >= r["goal"] if r["better"] == "higher" else r["ratio"] <= r["goal"]
    sign = ">=" if r["better"] == "higher" else "<="
    return f"{sign} {r['goal']:g}: {'met' if ok else 'MISSED'}"


def format_table(rows: list[dict]) -> str:
    head = ("benchmark", "case", "ratio", "goal", "detail")
    cells = [(r["benchmark"], r["case"], f"{r['ratio']:.2f}", verdict(r), r.get("detail", ""))
             for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(head)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    return "\n".join(lines)
