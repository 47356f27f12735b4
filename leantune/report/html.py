"""Small HTML building blocks for the run report: one self-contained page (CSS inline, images base64).

Every text that comes from data (example texts, labels, paths, config values) goes through `esc`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
       border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eef7ee; } b.nondefault { color: #1a5fb4; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers as a reader wants them: 4 significant digits for floats, integers as they are."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<style>{_CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n<p class="sub">{subtitle}</p>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def section(heading: str, *parts: str) -> str:
    return f"<h2>{esc(heading)}</h2>\n" + "\n".join(p for p in parts if p)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], highlight: int | None = None, raw: bool = False
) -> str:
    """A table; numeric cells right-aligned. `highlight`: index of a row to mark. `raw`: cells are HTML already."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{fmt(c)}</td>'
            if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{c if raw else esc(fmt(c))}</td>"
            for c in row
        )
        mark = ' class="best"' if i == highlight else ""
        body.append(f"<tr{mark}>{cells}</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def image(out_dir: Path, name: str, data: bytes, alt: str) -> str:
    """Write `data` as OUT/name and embed it (base64), so the page needs no other file."""
    (out_dir / name).write_bytes(data)
    return f'<p><img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></p>'
