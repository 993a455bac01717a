"""``report/index.html``: the whole report on one page a person opens in a browser.

One self-contained file (styles inline, figures embedded as PNG data, no script, no
server, no network), so it can be mailed, attached to a review or opened from a
cluster's scratch folder: the error table, the comparisons with their verdicts, the
published numbers and claims where the suite has them, and every figure. It is built
from the same Markdown the report writes (``table.md``, ``summary.md``), so the page
and the files never disagree.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1b1b1b; margin: 0 auto;
       max-width: 1180px; padding: 1.5em 2em 4em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #334; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccd; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13.5px;
        font-variant-numeric: tabular-nums; display: block; overflow-x: auto; }
th, td { border: 1px solid #d4d6dd; padding: .25em .6em; white-space: nowrap; }
th { background: #eef0f5; }
tr:nth-child(even) td { background: #f8f9fb; }
code { background: #f1f2f5; padding: 0 .25em; border-radius: 3px; }
nav { background: #f4f5f8; padding: .5em 1em; border-radius: 6px; }
nav a { margin-right: 1.2em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e2e8; }
figcaption { color: #555; font-size: 13px; }
"""


def _html(text: str) -> str:
    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(path.name)
    return (
        f'<figure id="{html.escape(path.stem)}"><img alt="{name}" '
        f'src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'
    )


def render_page(suite: str, table_md: str, summary_md: str, figures: list[Path]) -> str:
    """The page's HTML: the table first (what a reader came for), then the summary's
    sections, then the figures, with a bar of links to each part."""
    # the summary's first heading is the page's title; its list of figure files is
    # replaced by the figures themselves
    summary_md = re.sub(r"\A# [^\n]*\n", "", summary_md)
    summary_md = re.sub(r"\n## Figures\n(?:\n|- `[^`]*`\n)*", "\n", summary_md + "\n")
    pngs = [p for p in figures if p.suffix == ".png" and p.is_file()]
    sections = re.findall(r"^## (.+)$", summary_md, flags=re.MULTILINE)
    links = ['<a href="#errors">Error table</a>']
    links += [f'<a href="#{_anchor(title)}">{html.escape(title)}</a>' for title in sections]
    if pngs:
        links.append('<a href="#figures">Figures</a>')
    body = _html(summary_md)
    for title in sections:  # anchors for the bar of links
        body = body.replace(
            f"<h2>{html.escape(title, quote=False)}</h2>",
            f'<h2 id="{_anchor(title)}">{html.escape(title, quote=False)}</h2>',
            1,
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(suite)}: report</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(suite)}: report</h1>",
        f"<nav>{''.join(links)}</nav>",
        '<h2 id="errors">Error table</h2>',
        _html(table_md),
        body,
    ]
    if pngs:
        parts += ['<h2 id="figures">Figures</h2>', *(_figure(p) for p in pngs)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
