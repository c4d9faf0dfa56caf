"""The HTML page of ``supersub report``: what it shows, as plain data, and one self-contained rendering of it.

Self-contained means the file is the whole report: charts and thumbnails are ``data:`` URIs, the CSS is inline
and there is no script, font or link to fetch, so it opens offline, attaches to an e-mail and never phones
home. jinja2 renders it with autoescaping on, so a class name such as ``<b>&co`` shows as typed.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from PIL import Image, UnidentifiedImageError


@dataclass
class Chart:
    """One embedded PNG with a heading and a sentence saying what to read in it."""

    title: str
    png: bytes
    caption: str = ""
    wide: bool = False  # a whole row of the page (a large confusion matrix); otherwise two charts share a row

    @property
    def uri(self) -> str:
        return data_uri(self.png, "image/png")


@dataclass
class Table:
    """A table of text cells; ``keys`` (same shape as ``rows``) name the metric behind a cell, "" for none."""

    columns: list[str]
    rows: list[list[str]]
    keys: list[list[str]] = field(default_factory=list)
    caption: str = ""
    folded: str = ""  # non-empty: the table is folded away behind this line (a long reference, not a first read)


@dataclass
class Tile:
    """One thumbnail of an image grid: the image, its name, the truth and the prediction (with probability)."""

    uri: str
    name: str
    truth: str
    predicted: str
    correct: bool
    truth_label: str = "true"  # what the two lines under the image are called (a contact sheet has no truth)
    predicted_label: str = "pred"


@dataclass
class Grid:
    title: str
    description: str
    tiles: list[Tile]


@dataclass
class Section:
    """A titled part of the page: paragraphs, tables, charts, grids and preformatted text, in that order."""

    anchor: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    grids: list[Grid] = field(default_factory=list)
    pre: str = ""


@dataclass
class Page:
    title: str
    subtitle: str
    missing: list[str]
    sections: list[Section]


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def thumbnail_jpeg(path: Path, size: int = 128) -> bytes:
    """A JPEG thumbnail (longest side <= ``size``, never enlarged); b"" when the file is unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError):
        return b""
    return buf.getvalue()


def thumbnail_uri(path: Path, size: int = 128) -> str:
    """:func:`thumbnail_jpeg` as a data URI; "" when the file is unreadable."""
    jpeg = thumbnail_jpeg(path, size)
    return data_uri(jpeg, "image/jpeg") if jpeg else ""


def render_page(page: Page) -> str:
    """The page as one HTML document (UTF-8 text)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.tests["number"] = _is_number
    return env.from_string(_TEMPLATE).render(page=page)


def _is_number(text: object) -> bool:
    """Numbers are right-aligned in a table, words left-aligned."""
    try:
        float(str(text))
    except ValueError:
        return str(text) == "n/a"
    return True


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page.title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 16px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d1d9; word-break: break-all; }
nav { padding: 8px 28px; background: #eaeef2; border-bottom: 1px solid #d0d7de; }
nav a { margin-right: 16px; color: #0969da; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #d0d7de; padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.missing { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 16px; margin: 16px 0; }
table { border-collapse: collapse; margin: 8px 0 4px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; max-width: 520px;
         overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f6f8fa; }
caption { caption-side: bottom; text-align: left; color: #57606a; font-size: 12px; padding-top: 4px; }
.tables, .charts { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
figure { margin: 8px 0; flex: 0 1 calc(50% - 16px); min-width: 320px; }
figure.wide { flex-basis: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figure.wide img { max-width: 100%; }
figcaption { color: #57606a; font-size: 12px; }
details { margin: 8px 0; flex-basis: 100%; }
summary { cursor: pointer; color: #0969da; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 10px; overflow: auto; max-height: 480px;
      font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.tile { border: 2px solid #cf222e; border-radius: 6px; padding: 4px; font-size: 11px; background: #fff; }
.tile.ok { border-color: #1a7f37; }
.tile img { width: 128px; height: 128px; object-fit: contain; display: block; margin: 0 auto 4px;
            image-rendering: auto; background: #eaeef2; }
.tile div { overflow-wrap: anywhere; }
.tile .lab { color: #57606a; }
</style>
</head>
<body>
<header>
<h1>{{ page.title }}</h1>
<p>{{ page.subtitle }}</p>
</header>
<nav>
{% for s in page.sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}
</nav>
<main>
{% if page.missing %}
<div class="missing" id="missing"><strong>Not in this report:</strong>
<ul>{% for m in page.missing %}<li>{{ m }}</li>{% endfor %}</ul></div>
{% endif %}
{% for s in page.sections %}
<section id="{{ s.anchor }}">
<h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if s.tables %}<div class="tables">{% endif %}
{% for t in s.tables %}
{% if t.folded %}<details><summary>{{ t.folded }}</summary>{% endif %}
<table>
{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}
{% set i = loop.index0 %}
<tr>{% for cell in row %}{% set key = t.keys[i][loop.index0] if t.keys else "" %}<td{% if cell is number %} class="num"{% endif %}{% if key %} data-metric="{{ key }}"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% if t.folded %}</details>{% endif %}
{% endfor %}
{% if s.tables %}</div>{% endif %}
{% if s.charts %}<div class="charts">{% endif %}
{% for c in s.charts %}
<figure{% if c.wide %} class="wide"{% endif %}><h3>{{ c.title }}</h3><img src="{{ c.uri }}" alt="{{ c.title }}">{% if c.caption %}<figcaption>{{ c.caption }}</figcaption>{% endif %}</figure>
{% endfor %}
{% if s.charts %}</div>{% endif %}
{% for g in s.grids %}
<h3>{{ g.title }}</h3>
<p>{{ g.description }}</p>
<div class="grid">
{% for t in g.tiles %}
<div class="tile{% if t.correct %} ok{% endif %}" title="{{ t.name }}&#10;{{ t.truth_label }}: {{ t.truth }}&#10;{{ t.predicted_label }}: {{ t.predicted }}">
<img src="{{ t.uri }}" alt="{{ t.name }}">
<div>{{ t.name }}</div>
<div><span class="lab">{{ t.truth_label }}</span> {{ t.truth }}</div>
<div><span class="lab">{{ t.predicted_label }}</span> {{ t.predicted }}</div>
</div>
{% endfor %}
</div>
{% endfor %}
{% if s.pre %}<pre>{{ s.pre }}</pre>{% endif %}
</section>
{% endfor %}
</main>
</body>
</html>
"""
