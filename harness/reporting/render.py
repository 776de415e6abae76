"""The report as a list of blocks, written out as markdown or as one self-contained HTML page (PNGs inlined)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from tabulate import tabulate

Block = tuple
"""("h", level, text) | ("p", text) | ("list", [text]) | ("table", headers, rows) | ("img", file, alt)"""


def note(text: str) -> Block:
    """An italic one-line note (e.g. why a section is empty)."""
    return ("p", f"_{text}_")


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append(f"{'#' * b[1]} {b[2]}")
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "list":
            parts.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            parts.append(tabulate(b[2], headers=b[1], tablefmt="github", disable_numparse=True))
        elif b[0] == "img":
            parts.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"<em>\1</em>", text)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    """One HTML page; each image block's PNG is read from `folder` and inlined as a data URI."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{_inline_html(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            rows = [[_inline_html(c) for c in row] for row in b[2]]
            parts.append(
                tabulate(
                    rows, headers=[html.escape(h) for h in b[1]], tablefmt="unsafehtml", disable_numparse=True
                )
            )
        elif b[0] == "img":
            data = base64.b64encode((folder / b[1]).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
