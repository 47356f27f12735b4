"""Small HTML building blocks for the run report: one self-contained page (CSS inline, images base64).

The page and its parts are jinja2 templates with autoescaping: every text from data (example texts, labels,
paths, config values) is escaped by the template; `esc` is for the few HTML fragments pages.py builds.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment
from markupsafe import Markup, escape

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


def esc(value: Any) -> Markup:
    """Text from data as HTML-safe markup (for the few HTML fragments pages.py builds itself)."""
    return escape(str(value))


def fmt(value: Any) -> str:
    """Numbers as a reader wants them: 4 significant digits for floats, integers as they are."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


# The page and its parts are jinja2 templates with autoescaping on: every value from data is escaped by the
# template; only the parts built as HTML (sections, images, a subtitle with <b>) come in as Markup.
_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_PAGE = _ENV.from_string(
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>'
    '<style>{{ css }}</style></head>\n<body>\n<h1>{{ title }}</h1>\n<p class="sub">{{ subtitle }}</p>\n'
    "{{ sections | join('\\n') }}\n</body></html>\n"
)
_SECTION = _ENV.from_string("<h2>{{ heading }}</h2>\n{{ parts | join('\\n') }}")
_NOTE = _ENV.from_string('<p class="note">{{ text }}</p>')
_TABLE = _ENV.from_string(
    "<table><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr>\n"
    '{% for row in rows %}<tr{% if loop.index0 == highlight %} class="best"{% endif %}>'
    '{% for num, cell in row %}{% if num %}<td class="num">{{ cell }}</td>{% else %}<td>{{ cell }}</td>{% endif %}'
    "{% endfor %}</tr>{% if not loop.last %}\n{% endif %}{% endfor %}</table>"
)
_IMAGE = _ENV.from_string('<p><img alt="{{ alt }}" src="data:image/png;base64,{{ data }}"></p>')


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """The whole page. `subtitle` and `sections` are HTML (built by these functions); `title` is text."""
    return _PAGE.render(
        title=title, css=Markup(_CSS), subtitle=Markup(subtitle), sections=[Markup(x) for x in sections]
    )


def section(heading: str, *parts: str) -> str:
    return _SECTION.render(heading=heading, parts=[Markup(p) for p in parts if p])


def note(text: str) -> str:
    return _NOTE.render(text=text)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], highlight: int | None = None, raw: bool = False
) -> str:
    """A table; numeric cells right-aligned. `highlight`: index of a row to mark. `raw`: cells are HTML already."""
    cells = [
        [
            (True, fmt(c))
            if isinstance(c, (int, float)) and not isinstance(c, bool)
            else (False, Markup(c) if raw else fmt(c))
            for c in row
        ]
        for row in rows
    ]
    return _TABLE.render(headers=headers, rows=cells, highlight=highlight)


def image(out_dir: Path, name: str, data: bytes, alt: str) -> str:
    """Write `data` as OUT/name and embed it (base64), so the page needs no other file."""
    (out_dir / name).write_bytes(data)
    return _IMAGE.render(alt=alt, data=base64.b64encode(data).decode())
