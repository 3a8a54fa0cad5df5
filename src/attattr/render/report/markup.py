"""Text to HTML for the report: escaping, number formatting, a light Markdown, tables, images, SVG.

The Markdown is deliberately small: `code`, **bold**, *italic*, paragraphs split at blank lines,
lines starting with "- " (or "* ") form a list, a paragraph starting with "### " is a sub-heading.
Images are embedded (PNG/JPEG/GIF as data URIs, SVG inlined and cleaned) so the page loads nothing.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import InputError

__all__ = [
    "IMAGE_TYPES",
    "Table",
    "anchor",
    "clean_svg",
    "escape",
    "format_value",
    "image_html",
    "inline",
    "paragraphs",
    "table_html",
]

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

Table = Sequence[Mapping[str, Any]]


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def format_value(v: Any) -> str:
    """A table cell's text: floats to 4 significant digits, None as empty, one-element tensors unwrapped."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float | np.floating):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if v != 0 else "0"
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return format_value(v.item())
    return str(v)


def anchor(text: str, used: set[str], i: int) -> str:
    """A unique HTML id from a heading (`used` collects the ids taken so far)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or f"section-{i + 1}"
    name, k = base, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name


def inline(text: str) -> str:
    """Escaped text with `code`, **bold** and *italic*."""
    out = escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", out)
    return out


_BULLET = re.compile(r"^\s*[-*] ")


def paragraphs(text: str | Sequence[str]) -> str:
    """Paragraphs, lists and sub-headings; a string is split into blocks at blank lines."""
    blocks = re.split(r"\n\s*\n", text) if isinstance(text, str) else list(text)
    out = []
    for block in blocks:
        block = block.strip("\n")
        if not block.strip():
            continue
        lines = block.splitlines()
        if all(re.match(r"\s*[-*] ", ln) for ln in lines):
            items = "".join(f"<li>{inline(_BULLET.sub('', ln))}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        elif block.startswith("### "):
            out.append(f"<h4>{inline(block[4:].strip())}</h4>")
        else:
            out.append(f"<p>{inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


def table_html(table: Table | tuple[str, Table]) -> str:
    """Row dicts (or a (caption, rows) pair) as a table; columns in first-seen order."""
    caption = None
    if isinstance(table, tuple) and len(table) == 2 and isinstance(table[0], str):
        caption, table = table
    rows = list(table)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            numeric = isinstance(v, int | float | np.number) and not isinstance(v, bool)
            text = escape(format_value(v))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table class="data">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def image_html(image: str | Path, prefix: str) -> str:
    """An image file (PNG/JPEG/GIF/SVG) or SVG text, embedded; `prefix` keeps SVG ids unique."""
    if isinstance(image, str) and image.lstrip().startswith("<"):
        return f'<div class="figure svg">{clean_svg(image, prefix)}</div>'
    p = Path(image)
    if not p.is_file():
        raise InputError(f"report image not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".svg":
        return f'<div class="figure svg">{clean_svg(p.read_text(encoding="utf-8"), prefix)}</div>'
    if suffix not in IMAGE_TYPES:
        raise InputError(
            f"report image {p}: unsupported type {suffix or '(none)'} (use PNG, JPEG, GIF or SVG)"
        )
    encoded = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<div class="figure"><img alt="{escape(p.stem)}" src="data:{IMAGE_TYPES[suffix]};base64,{encoded}"></div>'


_SVG_DROP = [
    re.compile(r"<\?xml.*?\?>", re.S),
    re.compile(r"<!DOCTYPE.*?>", re.S | re.I),
    re.compile(r"<metadata>.*?</metadata>", re.S),
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r'\sxmlns(:\w+)?="[^"]*"'),  # namespace URIs: the HTML parser knows inline SVG
]


def clean_svg(svg: str, prefix: str) -> str:
    """Inline-ready SVG: no prolog/doctype/metadata, and ids prefixed so several figures can share a page."""
    for pattern in _SVG_DROP:
        svg = pattern.sub("", svg)
    if re.search(r"""(?:href|src)\s*=\s*["']?\s*(?!#|data:)[a-z]+:""", svg, re.I):
        raise InputError("SVG image refers to an external resource; the report must be self-contained")
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    svg = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', svg)
    return svg.strip()
