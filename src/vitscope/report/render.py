"""One block list rendered twice: a self-contained HTML page and its Markdown twin.

:func:`render_html` inlines the CSS and every figure (base64 PNG ``data:`` URIs, no external
resources); :func:`render_markdown` links the figures saved under ``figures/``. Both walk the
same :mod:`vitscope.report.blocks`, so they agree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from urllib.parse import quote

from .blocks import Block, Heading, Plot, Table, Text
from .claims.base import FAILS, HOLDS

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
 background:#fafbfc;margin:0}
main{max-width:1240px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.8em;margin:.2em 0 .1em}h2{margin-top:2em;border-bottom:2px solid #d8dee4;
 padding-bottom:.2em}h3{margin-top:1.6em;color:#33414e}
.meta,.note{color:#5b6670;font-size:.9em}.note{font-style:italic}
nav{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:8px 16px;margin:1em 0}
nav a{margin-right:1.2em;text-decoration:none;color:#0b5cad}
code{background:#eef1f4;padding:0 .3em;border-radius:3px;font-size:.92em}
table{border-collapse:collapse;margin:1em 0;background:#fff;font-size:.86em;width:auto}
th,td{border:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}tr:nth-child(even) td{background:#f7f9fa}
#findings td:nth-child(2){min-width:13em}#findings td:nth-child(4){min-width:20em}
#findings td:nth-child(5){white-space:nowrap}
#findings td:nth-child(6),#findings td:nth-child(7){color:#5b6670;font-size:.92em;min-width:20em}
.verdict{font-weight:600;white-space:nowrap;border-radius:4px;padding:1px 6px}
.v-holds{background:#dcf5e3;color:#146c2e}.v-fails{background:#fde2e1;color:#a4161a}
.v-inconclusive{background:#eceff2;color:#4b5560}
.gallery{display:flex;flex-wrap:wrap;align-items:flex-start;gap:14px;margin:.8em 0}
figure{margin:0;background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:8px;
 max-width:100%;box-sizing:border-box}
figure img{display:block;max-width:100%;height:auto}
figure.small img{width:360px}figure.wide img{width:560px}
figcaption{font-size:.8em;color:#5b6670;max-width:560px;margin-top:4px}
figure.small figcaption{max-width:360px}
"""

# The page runs no script and loads nothing: names in it come from users, and were one ever
# left unescaped, the browser would still refuse to run it (inline styles and data: images only)
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)

# ---- HTML ------------------------------------------------------------------------------------


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _verdict_class(v: str) -> str:
    return {HOLDS: "v-holds", FAILS: "v-fails"}.get(v, "v-inconclusive")


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for j, c in enumerate(row):
            inner = _inline(c).replace("\n", "<br>")
            if j == t.verdict_col:
                inner = f'<span class="verdict {_verdict_class(c)}">{inner}</span>'
            cells.append(f"<td>{inner}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    ident = f' id="{html.escape(t.id)}"' if t.id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_plot(p: Plot) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    cls = "wide" if p.wide else "small"
    alt = html.escape(p.caption, quote=True)
    return (
        f'<figure class="{cls}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{_inline(p.caption)}</figcaption></figure>"
    )


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        ident = f' id="{html.escape(b.id)}"' if b.id else ""
        return f"<h{b.level}{ident}>{html.escape(b.text)}</h{b.level}>"
    if isinstance(b, Text):
        return f'<p class="note">{_inline(b.text)}</p>' if b.note else f"<p>{_inline(b.text)}</p>"
    if isinstance(b, Table):
        return _html_table(b)
    return f'<div class="gallery">{"".join(_html_plot(p) for p in b.plots)}</div>'


def render_html(title: str, intro: Sequence[Block], blocks: Sequence[Block]) -> str:
    """The whole page: inline CSS, every figure a ``data:`` URI, no external resource."""
    nav = "".join(
        f'<a href="#{html.escape(b.id)}">{html.escape(b.text)}</a>'
        for b in blocks
        if isinstance(b, Heading) and b.level == 2 and b.id
    )
    parts = [_html_block(b) for b in intro] + [f"<nav>{nav}</nav>"]
    parts += [_html_block(b) for b in blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n<h1>{html.escape(title)}</h1>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )


# ---- Markdown --------------------------------------------------------------------------------


def _md_text(text: str) -> str:
    """Text for Markdown: HTML in it (names come from users) is shown, never rendered, by
    viewers that pass inline HTML through; `code` spans are left as they are."""
    parts = text.split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def _md_cell(c: str) -> str:
    return _md_text(c).replace("|", "\\|").replace("\n", "<br>")


def _md_plot(p: Plot) -> str:
    alt = _md_cell(p.caption).replace("[", "\\[").replace("]", "\\]")
    return f"![{alt}]({quote(p.file)})\n*{_md_text(p.caption)}*"


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"{'#' * b.level} {_md_text(b.text)}"
    if isinstance(b, Text):
        return f"*{_md_text(b.text)}*" if b.note else _md_text(b.text)
    if isinstance(b, Table):
        lines = ["| " + " | ".join(map(_md_cell, b.header)) + " |"]
        lines.append("|" + "---|" * len(b.header))
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
        return "\n".join(lines)
    return "\n\n".join(map(_md_plot, b.plots))


def render_markdown(title: str, intro: Sequence[Block], blocks: Sequence[Block]) -> str:
    """The same blocks in Markdown; figures link to ``figures/*.png`` beside the file."""
    parts = [f"# {_md_text(title)}"] + [_md_block(b) for b in [*intro, *blocks]]
    return "\n\n".join(parts) + "\n"
