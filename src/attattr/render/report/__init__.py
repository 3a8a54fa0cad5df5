"""The HTML report: one self-contained file that opens anywhere, offline.

    from attattr.render.report import Section, write_report
    write_report("out/", attribution=attr)                 # -> out/report.html
    write_report("runs/heads.html", sections=[Section("Pruning", "...", images=["curve.png"])])

What it shows (docs/report.md): the input with the prediction and class probabilities; a clickable
layers x heads grid coloured by head importance; the selected head's attention and attribution
heatmaps side by side (canvas, hover values); the attribution tree; the completeness table; the top
attributed connections; and any extra sections a dataset command adds (text, images, tables).

Everything is inline: the CSS, a small plain script, and the data as JSON in a
`<script type="application/json" id="report-data">` block. A Content-Security-Policy forbids the
page from loading anything. Tensors are stored per head as base64 float16 of the values divided by
the head's largest magnitude (the scale is kept as a float), so every value keeps ~3 significant
digits relative to its head's peak: about 2 x 2 bytes per (layer, head, query, key) entry.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.errors import AttattrError, InputError
from ...core.result import Attribution

__all__ = ["REPORT_FILE", "Section", "render_report", "write_report"]

REPORT_FILE = "report.html"
TOP_EDGES = 15
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

Table = Sequence[Mapping[str, Any]]


@dataclass
class Section:
    """A block of a dataset command's results.

    title: the section heading.
    text: paragraphs; a string is split at blank lines. Light markup: `code`, **bold**, *italic*,
      lines starting with "- " form a list, a paragraph starting with "### " is a sub-heading.
    images: PNG/JPEG/GIF files (embedded as data URIs), SVG files or SVG text (inlined).
    tables: each a list of row dicts (columns in first-seen order), or a (caption, rows) pair.
    """

    title: str
    text: str | Sequence[str] = ""
    images: Sequence[str | Path] = ()
    tables: Sequence[Table | tuple[str, Table]] = ()
    id: str | None = None  # the HTML anchor; derived from the title when None
    notes: list[str] = field(default_factory=list)  # small print under the section


def write_report(
    path: str | Path,
    *,
    attribution: Attribution | None = None,
    tree: Any = None,
    sections: Sequence[Section] = (),
    title: str | None = None,
) -> Path:
    """Write the report and return its path.

    path: a file ending in .html/.htm, or a directory (created) that receives `report.html`.
    attribution: one example's attribution (input, prediction, head grid, heatmaps, tables).
    tree: an `AttributionTree`, its `to_json()` dict, SVG text or a path to an .svg/.json file;
      None builds the tree from `attribution` (default threshold) when it can; False leaves it out.
    sections: extra blocks (dataset commands).
    """
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        target = path
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        if path.exists() and not path.is_dir():
            raise InputError(f"report path {path} is a file; give a directory or a .html file name")
        path.mkdir(parents=True, exist_ok=True)
        target = path / REPORT_FILE
    text = render_report(attribution=attribution, tree=tree, sections=sections, title=title)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def render_report(
    *,
    attribution: Attribution | None = None,
    tree: Any = None,
    sections: Sequence[Section] = (),
    title: str | None = None,
) -> str:
    """The report as one HTML string (see `write_report`)."""
    from ..plots.style import DIVERGING, SEQUENTIAL  # matplotlib: only when a report is made

    if title is None:
        title = "attattr report"
        if attribution is not None and attribution.text:
            snippet = attribution.text if len(attribution.text) <= 60 else attribution.text[:57] + "..."
            title = f"attattr: {snippet}"

    data: dict[str, Any] = {"cmaps": {"seq": _cmap_anchors(SEQUENTIAL), "div": _cmap_anchors(DIVERGING)}}
    body: list[str] = []
    nav: list[tuple[str, str]] = []

    if attribution is not None:
        _check_attribution(attribution)
        data["attribution"] = _attribution_payload(attribution)
        body.append(_input_section(attribution))
        body.append(_heads_section(attribution, data["attribution"], SEQUENTIAL))
        nav += [("input", "Input"), ("heads", "Heads")]

    tree_svg, tree_payload, tree_note = _resolve_tree(tree, attribution)
    if tree is not False and (attribution is not None or tree is not None):
        data["tree"] = tree_payload
        body.append(_tree_section(tree_svg, tree_payload, tree_note))
        nav.append(("tree", "Tree"))

    if attribution is not None:
        body.append(_completeness_section(attribution))
        body.append(_edges_section(attribution))
        nav += [("completeness", "Completeness"), ("edges", "Top connections")]

    used_ids = {key for key, _ in nav}
    for i, section in enumerate(sections):
        anchor = _anchor(section.id or section.title, used_ids, i)
        body.append(_extra_section(section, anchor, i))
        nav.append((anchor, section.title))

    if not body:
        body.append('<section><p class="note">This report is empty: nothing was given to show.</p></section>')

    from ... import __version__

    parts = {
        "title": _esc(title),
        "css": _asset("report.css"),
        "js": _asset("report.js"),
        "data": _json_for_script(data),
        "header": _header(title, attribution),
        "nav": "".join(f'<a href="#{_esc(k)}">{_esc(v)}</a>' for k, v in nav),
        "body": "\n".join(body),
        "version": _esc(__version__),
    }
    # one pass: text substituted in is never scanned for placeholders again
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("template.html"))


# ---- data --------------------------------------------------------------------------------------
def _check_attribution(a: Attribution) -> None:
    n = len(a.tokens)
    shape = tuple(a.scores.shape)
    if a.scores.dim() != 4 or shape[2:] != (n, n) or shape[0] != len(a.layers):
        raise InputError(
            f"attribution scores have shape {shape}, expected [{len(a.layers)}, heads, {n}, {n}]"
        )
    if tuple(a.attentions.shape) != shape:
        raise InputError(f"attentions have shape {tuple(a.attentions.shape)}, scores {shape}")


def encode_heads(t: torch.Tensor) -> tuple[list[float], list[str]]:
    """`[layers, heads, n, n]` -> (scale per head, base64 little-endian float16 of values / scale).

    Heads are flattened layer-major (index = layer position * heads + head); each head's n*n values
    are row-major (query row, key column). Non-finite values are stored as 0."""
    arr = t.detach().to(torch.float32).cpu().numpy()
    layers, heads, n, _ = arr.shape
    flat = np.nan_to_num(arr.reshape(layers * heads, n * n), nan=0.0, posinf=0.0, neginf=0.0)
    scales = np.abs(flat).max(axis=1) if flat.size else np.zeros(layers * heads, dtype=np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    half = (flat / safe[:, None]).astype("<f2")
    return [float(s) for s in scales], [base64.b64encode(row.tobytes()).decode("ascii") for row in half]


def decode_heads(scales: Sequence[float], data: Sequence[str], n: int) -> np.ndarray:
    """The inverse of `encode_heads`: `[layers * heads, n * n]` float64 (what the page computes)."""
    rows = [
        np.frombuffer(base64.b64decode(s), dtype="<f2").astype(np.float64) * sc
        for s, sc in zip(data, scales, strict=True)
    ]
    return np.stack(rows) if rows else np.zeros((0, n * n))


def _attribution_payload(a: Attribution) -> dict[str, Any]:
    importance = a.head_importance().to(torch.float64)
    imp = torch.nan_to_num(importance, nan=0.0)
    flat_best = int(torch.argmax(imp).item()) if imp.numel() else 0
    heads = int(a.scores.shape[1])
    attn_scales, attn_data = encode_heads(a.attentions)
    attr_scales, attr_data = encode_heads(a.scores)
    return {
        "tokens": list(a.tokens),
        "special": [bool(s) for s in a.special_mask],
        "segments": [int(s) for s in a.segment_ids],
        "layers": [int(x) for x in a.layers],
        "heads": heads,
        "n": len(a.tokens),
        "importance": [[_round(v) for v in row] for row in importance.tolist()],
        "initial": [a.layers[flat_best // heads], flat_best % heads] if heads else [0, 0],
        "attention": {"scales": attn_scales, "data": attn_data, "max": max(attn_scales, default=0.0)},
        "attribution": {"scales": attr_scales, "data": attr_data, "max": max(attr_scales, default=0.0)},
    }


def _round(v: float, digits: int = 6) -> float | None:
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _cmap_anchors(name: str, count: int = 17) -> list[str]:
    from matplotlib import colormaps

    cmap = colormaps[name]
    return [_hex(cmap(i / (count - 1))) for i in range(count)]


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def _json_for_script(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can end it or open a comment."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


# ---- tree --------------------------------------------------------------------------------------
def _resolve_tree(tree: Any, attribution: Attribution | None) -> tuple[str | None, dict | None, str | None]:
    """(inline SVG, drawable JSON, note). At most one of SVG/JSON is set; the note explains gaps."""
    if tree is False:
        return None, None, None
    if tree is None:
        if attribution is None:
            return None, None, None
        try:
            tree = attribution.tree()
        except (ImportError, AttattrError, ValueError) as exc:
            return None, None, f"No attribution tree: {exc}"
    if isinstance(tree, Path) or (isinstance(tree, str) and not tree.lstrip().startswith(("<", "{"))):
        p = Path(tree)
        if not p.is_file():
            raise InputError(f"tree file not found: {p}")
        tree = p.read_text(encoding="utf-8")
    if isinstance(tree, str):
        if tree.lstrip().startswith("<"):
            return _clean_svg(tree, "tree"), None, None
        try:
            tree = json.loads(tree)
        except json.JSONDecodeError as exc:
            raise InputError(f"tree is neither SVG nor JSON: {exc}") from None
    if hasattr(tree, "to_json"):
        tree = tree.to_json()
    if not isinstance(tree, Mapping):
        raise InputError(f"cannot draw a tree from {type(tree).__name__}")
    try:
        payload = _tree_payload(tree, attribution)
    except (KeyError, TypeError, ValueError) as exc:
        return None, None, f"The attribution tree could not be drawn: malformed tree data ({exc})"
    return None, payload, payload.get("message")


def _tree_payload(tree: Mapping[str, Any], attribution: Attribution | None) -> dict[str, Any]:
    """Normalise `AttributionTree.to_json()` to what the page draws."""
    tokens = list(tree.get("tokens") or (attribution.tokens if attribution is not None else []))
    nodes = [
        (int(nd["index"]), None if nd.get("layer") is None else int(nd["layer"])) for nd in tree["nodes"]
    ]
    edges = [(int(e["parent"]), int(e["child"]), int(e["layer"]), float(e["score"])) for e in tree["edges"]]
    n = len(tokens)
    for idx, _ in nodes:
        if not 0 <= idx < n:
            raise ValueError(f"node {idx} is not a token position (0..{n - 1})")
    known = {idx for idx, _ in nodes}
    for p, c, _, _ in edges:
        if p not in known or c not in known:
            raise ValueError(f"edge {p} -> {c} joins a token that is not a node")
    layers = tree.get("layers") or (attribution.layers if attribution is not None else None)
    if not layers:
        layers = sorted({layer for _, _, layer, _ in edges}) or [0]
    special = tree.get("special_mask") or (
        attribution.special_mask if attribution is not None else [False] * n
    )
    return {
        "tokens": tokens,
        "special": [bool(s) for s in special],
        "nodes": [[i, layer] for i, layer in nodes],
        "edges": [[p, c, layer, _round(s, 4)] for p, c, layer, s in edges],
        "root": int(tree.get("root", nodes[0][0] if nodes else 0)),
        "layers": [int(x) for x in layers],
        "threshold": tree.get("threshold"),
        "message": tree.get("message"),
    }


_SVG_DROP = [
    re.compile(r"<\?xml.*?\?>", re.S),
    re.compile(r"<!DOCTYPE.*?>", re.S | re.I),
    re.compile(r"<metadata>.*?</metadata>", re.S),
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r'\sxmlns(:\w+)?="[^"]*"'),  # namespace URIs: the HTML parser knows inline SVG
]


def _clean_svg(svg: str, prefix: str) -> str:
    """Inline-ready SVG: no prolog/doctype/metadata, and ids prefixed so several figures can share a page."""
    for pattern in _SVG_DROP:
        svg = pattern.sub("", svg)
    if re.search(r"""(?:href|src)\s*=\s*["']?\s*(?!#|data:)[a-z]+:""", svg, re.I):
        raise InputError("SVG image refers to an external resource; the report must be self-contained")
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    svg = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', svg)
    return svg.strip()


# ---- sections ----------------------------------------------------------------------------------
def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float | np.floating):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if v != 0 else "0"
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return _fmt(v.item())
    return str(v)


def _header(title: str, a: Attribution | None) -> str:
    out = [f"<h1>{_esc(title)}</h1>"]
    if a is not None:
        bits = [
            f"model <code>{_esc(a.model_id)}</code>",
            f"{len(a.tokens)} tokens",
            f"{len(a.layers)} layers &times; {int(a.scores.shape[1])} heads",
            f"integration: {_esc(a.rule)}, {a.steps} steps",
        ]
        if a.example_id is not None:
            bits.insert(0, f"example <code>{_esc(a.example_id)}</code>")
        out.append(f'<p class="meta">{" · ".join(bits)}</p>')
    return "\n".join(out)


def _input_section(a: Attribution) -> str:
    chips = []
    for i, tok in enumerate(a.tokens):
        cls = ["tok"]
        if a.special_mask[i]:
            cls.append("special")
        if a.segment_ids[i]:
            cls.append("seg1")
        chips.append(f'<span class="{" ".join(cls)}" data-index="{i}" title="#{i}">{_esc(tok)}</span>')
    texts = [f'<p class="text"><span class="lbl">text</span> {_esc(a.text)}</p>']
    if a.text_pair is not None:
        texts.append(f'<p class="text"><span class="lbl">pair</span> {_esc(a.text_pair)}</p>')
    if a.truncated:
        texts.append('<p class="note warn">The input was truncated to the model\'s maximum length.</p>')
    rows = []
    probs = list(a.probabilities)
    for c, p in enumerate(probs):
        marks = []
        if c == a.predicted:
            marks.append('<span class="badge pred">predicted</span>')
        if c == a.target:
            marks.append('<span class="badge target">attributed</span>')
        if a.label is not None and c == a.label:
            marks.append('<span class="badge gold">gold</span>')
        width = max(0.0, min(1.0, float(p))) * 100
        rows.append(
            f'<tr data-class="{c}"><td class="cls">{_esc(a.label_name(c))}</td>'
            f'<td class="bar"><div style="width:{width:.1f}%"></div></td>'
            f'<td class="num">{float(p):.4f}</td><td>{" ".join(marks)}</td></tr>'
        )
    output_name = {"prob": "probability", "logit": "logit", "logprob": "log-probability"}.get(
        a.output, a.output
    )
    return f"""<section id="input">
<h2>Input and prediction</h2>
{"".join(texts)}
<div id="tokens" class="tokens">{"".join(chips)}</div>
<table class="probs"><thead><tr><th>class</th><th colspan="2">probability</th><th></th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p class="explain">Attributed output F: the {output_name} of class <b>{_esc(a.label_name(a.target))}</b>
(F = {_fmt(float(a.output_value))}). Scores are integrated gradients of F over each head's attention
matrix: positive (red) connections raise F, negative (blue) ones lower it.</p>
</section>"""


def _heads_section(a: Attribution, payload: Mapping[str, Any], cmap_name: str) -> str:
    from matplotlib import colormaps

    cmap = colormaps[cmap_name]
    imp = np.array([[np.nan if v is None else v for v in row] for row in payload["importance"]], dtype=float)
    finite = imp[np.isfinite(imp)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    span = hi - lo if hi > lo else 1.0
    heads = payload["heads"]
    sel = f"{payload['initial'][0]}-{payload['initial'][1]}"
    cells = ['<div class="corner">L \\ H</div>']
    cells += [f'<div class="col-label">{h}</div>' for h in range(heads)]
    for pos, layer in enumerate(a.layers):
        cells.append(f'<div class="row-label">{layer}</div>')
        for h in range(heads):
            v = imp[pos, h]
            colour = _hex(cmap((v - lo) / span)) if np.isfinite(v) else "#cccccc"
            key = f"{layer}-{h}"
            cls = "head selected" if key == sel else "head"
            cells.append(
                f'<button type="button" class="{cls}" data-layer="{layer}" data-head="{h}" '
                f'data-importance="{_fmt(v)}" style="background:{colour}" '
                f'title="layer {layer}, head {h}: importance {_fmt(v)}" '
                f'aria-label="layer {layer} head {h}"></button>'
            )
    grid = (
        f'<div id="head-grid" class="head-grid" data-selected="{sel}" '
        f'style="grid-template-columns: auto repeat({heads}, var(--cell))">{"".join(cells)}</div>'
    )
    legend = (
        f'<div class="legend"><span>{_fmt(lo)}</span><div class="ramp" data-cmap="seq"></div>'
        f"<span>{_fmt(hi)}</span></div>"
    )
    return f"""<section id="heads">
<h2>Heads</h2>
<div class="heads-top">
  <div class="grid-box">
    <p class="caption">Head importance: the largest attribution score of each head (click a head, or use the arrow
    keys).</p>
    {grid}
    {legend}
  </div>
  <div class="head-info">
    <h3 id="selected-title">Layer {payload["initial"][0]}, head {payload["initial"][1]}</h3>
    <p id="selected-stats" class="caption"></p>
    <table id="head-edges" class="small"><thead><tr><th>query → key</th><th>attribution</th><th>attention</th></tr>
    </thead><tbody></tbody></table>
  </div>
</div>
<div class="scale-choice">colour scale:
  <label><input type="radio" name="scale" value="head" checked> this head</label>
  <label><input type="radio" name="scale" value="all"> all heads</label>
</div>
<div class="maps">
  <figure class="map"><figcaption>Attention <span class="axis">rows: query token (attends) · columns: key
  token (attended to)</span></figcaption><canvas id="attn-canvas" width="10" height="10"></canvas>
  <div class="legend"><span class="lo"></span><div class="ramp" data-cmap="seq"></div><span class="hi"></span></div>
  </figure>
  <figure class="map"><figcaption>Attribution <span class="axis">red raises F, blue lowers it</span></figcaption>
  <canvas id="attr-canvas" width="10" height="10"></canvas>
  <div class="legend"><span class="lo"></span><div class="ramp" data-cmap="div"></div><span class="hi"></span></div>
  </figure>
</div>
<div id="tooltip" class="tooltip" hidden></div>
<noscript><p class="note warn">The heatmaps and the tree need JavaScript.</p></noscript>
</section>"""


def _tree_section(svg: str | None, payload: dict | None, note: str | None) -> str:
    parts = ['<section id="tree">', "<h2>Attribution tree</h2>"]
    if svg is not None or payload is not None:
        parts.append(
            '<p class="caption">How information flows to the prediction: tokens along the bottom, each node at the '
            "layer where it joined the tree, an edge from a token to the token it takes information from "
            "(line width = score). Hover an edge for its layer and score.</p>"
        )
    if note:
        parts.append(f'<p class="note" id="tree-note">{_esc(note)}</p>')
    if svg is not None:
        parts.append(f'<div class="tree-box" id="tree-box" data-source="svg">{svg}</div>')
    elif payload is not None:
        parts.append('<div class="tree-box" id="tree-box" data-source="json"></div>')
    elif not note:
        parts.append('<p class="note" id="tree-note">No attribution tree in this report.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _completeness_section(a: Attribution) -> str:
    rows = []
    for r in a.completeness_table():
        delta = r["output_delta"]
        rel = abs(r["gap"]) / abs(delta) if delta else float("nan")
        rows.append(
            f'<tr><td class="num">{r["layer"]}</td><td class="num">{_fmt(r["sum_scores"])}</td>'
            f'<td class="num">{_fmt(delta)}</td><td class="num">{_fmt(r["gap"])}</td>'
            f'<td class="num">{"" if not math.isfinite(rel) else f"{100 * rel:.2f}%"}</td></tr>'
        )
    return f"""<section id="completeness">
<h2>Completeness</h2>
<p class="caption">Integrated gradients are complete: per layer, the scores sum to F(A) − F(0·A). The gap is
the integration error of the {_esc(a.rule)} rule with {a.steps} steps; more steps shrink it.</p>
<table class="data"><thead><tr><th>layer</th><th>sum of scores</th><th>F(A) − F(0·A)</th><th>gap</th>
<th>relative gap</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
</section>"""


def _edges_section(a: Attribution) -> str:
    rows = []
    for rank, e in enumerate(a.top_edges(TOP_EDGES), 1):
        rows.append(
            f'<tr class="edge" data-layer="{e.layer}" data-head="{e.head}" data-query="{e.query}" '
            f'data-key="{e.key}" tabindex="0"><td class="num">{rank}</td><td class="num">{e.layer}</td>'
            f'<td class="num">{e.head}</td><td>{_esc(e.query_token)} <span class="idx">#{e.query}</span></td>'
            f'<td>{_esc(e.key_token)} <span class="idx">#{e.key}</span></td><td class="num">{_fmt(e.score)}</td></tr>'
        )
    return f"""<section id="edges">
<h2>Top attributed connections</h2>
<p class="caption">The largest scores over all layers and heads: the query token takes information from the key
token. Click a row to show its head.</p>
<table class="data"><thead><tr><th>#</th><th>layer</th><th>head</th><th>query</th><th>key</th><th>score</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table>
</section>"""


def _anchor(text: str, used: set[str], i: int) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or f"section-{i + 1}"
    anchor, k = base, 2
    while anchor in used:
        anchor, k = f"{base}-{k}", k + 1
    used.add(anchor)
    return anchor


def _inline(text: str) -> str:
    out = _esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", out)
    return out


_BULLET = re.compile(r"^\s*[-*] ")


def _paragraphs(text: str | Sequence[str]) -> str:
    blocks = re.split(r"\n\s*\n", text) if isinstance(text, str) else list(text)
    out = []
    for block in blocks:
        block = block.strip("\n")
        if not block.strip():
            continue
        lines = block.splitlines()
        if all(re.match(r"\s*[-*] ", ln) for ln in lines):
            items = "".join(f"<li>{_inline(_BULLET.sub('', ln))}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        elif block.startswith("### "):
            out.append(f"<h4>{_inline(block[4:].strip())}</h4>")
        else:
            out.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


def _table_html(table: Table | tuple[str, Table]) -> str:
    caption = None
    if isinstance(table, tuple) and len(table) == 2 and isinstance(table[0], str):
        caption, table = table
    rows = list(table)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            numeric = isinstance(v, int | float | np.number) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_esc(_fmt(v))}</td>' if numeric else f"<td>{_esc(_fmt(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f'<table class="data">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _image_html(image: str | Path, prefix: str) -> str:
    if isinstance(image, str) and image.lstrip().startswith("<"):
        return f'<div class="figure svg">{_clean_svg(image, prefix)}</div>'
    p = Path(image)
    if not p.is_file():
        raise InputError(f"report image not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".svg":
        return f'<div class="figure svg">{_clean_svg(p.read_text(encoding="utf-8"), prefix)}</div>'
    if suffix not in IMAGE_TYPES:
        raise InputError(
            f"report image {p}: unsupported type {suffix or '(none)'} (use PNG, JPEG, GIF or SVG)"
        )
    encoded = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<div class="figure"><img alt="{_esc(p.stem)}" src="data:{IMAGE_TYPES[suffix]};base64,{encoded}"></div>'


def _extra_section(section: Section, anchor: str, index: int) -> str:
    parts = [f'<section id="{_esc(anchor)}" class="extra">', f"<h2>{_esc(section.title)}</h2>"]
    if section.text:
        parts.append(_paragraphs(section.text))
    for k, image in enumerate(section.images):
        parts.append(_image_html(image, f"s{index}i{k}"))
    for table in section.tables:
        parts.append(_table_html(table))
    for note in section.notes:
        parts.append(f'<p class="note">{_inline(note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)
