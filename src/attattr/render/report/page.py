"""The report page: the HTML of each section, assembled into the template with the inline assets.

What it shows (docs/report.md): the input with the prediction and class probabilities; a clickable
layers x heads grid coloured by head importance; the selected head's attention and attribution
heatmaps side by side (canvas, hover values); the attribution tree; the completeness table; the top
attributed connections; and any extra sections a dataset command adds (text, images, tables).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ...core import files
from ...core.errors import InputError
from ...core.result import Attribution
from ...version import __version__
from .markup import Table, anchor, escape, format_value, image_html, inline, paragraphs, table_html
from .payload import (
    attribution_payload,
    check_attribution,
    cmap_anchors,
    hex_colour,
    json_for_script,
    resolve_segment_names,
    resolve_tree,
    segment_starts,
)

__all__ = ["REPORT_FILE", "TOP_EDGES", "Section", "render_report", "write_report"]

REPORT_FILE = "report.html"
TOP_EDGES = 15


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
    segment_names: Sequence[str] | None = None,
) -> Path:
    """Write the report and return its path.

    path: a file ending in .html/.htm, or a directory (created) that receives `report.html`.
    attribution: one example's attribution (input, prediction, head grid, heatmaps, tables).
    tree: an `AttributionTree`, its `to_json()` dict, SVG text or a path to an .svg/.json file;
      None builds the tree from `attribution` (default threshold) when it can; False leaves it out.
    sections: extra blocks (dataset commands).
    segment_names: what to call a sentence pair's two texts (e.g. premise, hypothesis); default the
      tree's names, else "text" and "pair text" ("prompt" and "continuation" for a causal LM).
    """
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        target = path
    else:
        if path.exists() and not path.is_dir():
            raise InputError(f"report path {path} is a file; give a directory or a .html file name")
        target = path / REPORT_FILE
    text = render_report(
        attribution=attribution, tree=tree, sections=sections, title=title, segment_names=segment_names
    )
    return files.write_text(target, text)


def render_report(
    *,
    attribution: Attribution | None = None,
    tree: Any = None,
    sections: Sequence[Section] = (),
    title: str | None = None,
    segment_names: Sequence[str] | None = None,
) -> str:
    """The report as one HTML string (see `write_report`)."""
    from ..plots.style import DIVERGING, SEQUENTIAL  # matplotlib: only when a report is made

    if title is None:
        title = "attattr report"
        if attribution is not None and attribution.text:
            snippet = attribution.text if len(attribution.text) <= 60 else attribution.text[:57] + "..."
            title = f"attattr: {snippet}"

    data: dict[str, Any] = {"cmaps": {"seq": cmap_anchors(SEQUENTIAL), "div": cmap_anchors(DIVERGING)}}
    body: list[str] = []
    nav: list[tuple[str, str]] = []

    if attribution is not None:
        check_attribution(attribution)
    if segment_names is not None:
        segment_names = resolve_segment_names(segment_names, None, attribution)  # checked before any work
    tree_svg, tree_data, tree_note = resolve_tree(tree, attribution, segment_names)
    # one pair of names for the chips, the maps and the tree
    names = resolve_segment_names(segment_names, tree_data, attribution)
    if tree_data is not None:
        tree_data["segment_names"] = names

    if attribution is not None:
        data["attribution"] = attribution_payload(attribution, names)
        body.append(_input_section(attribution, names))
        body.append(_heads_section(attribution, data["attribution"], SEQUENTIAL, names))
        nav += [("input", "Input"), ("heads", "Heads")]

    if tree is not False and (attribution is not None or tree is not None):
        data["tree"] = tree_data
        body.append(_tree_section(tree_svg, tree_data, tree_note))
        nav.append(("tree", "Tree"))

    if attribution is not None:
        body.append(_completeness_section(attribution))
        body.append(_edges_section(attribution))
        nav += [("completeness", "Completeness"), ("edges", "Top connections")]

    used_ids = {key for key, _ in nav}
    for i, section in enumerate(sections):
        name = anchor(section.id or section.title, used_ids, i)
        body.append(_extra_section(section, name, i))
        nav.append((name, section.title))

    if not body:
        body.append('<section><p class="note">This report is empty: nothing was given to show.</p></section>')

    parts = {
        "title": escape(title),
        "css": _asset("report.css"),
        "js": _asset("report.js"),
        "data": json_for_script(data),
        "header": _header(title, attribution),
        "nav": "".join(f'<a href="#{escape(k)}">{escape(v)}</a>' for k, v in nav),
        "body": "\n".join(body),
        "version": escape(__version__),
    }
    # one pass: text substituted in is never scanned for placeholders again
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("template.html"))


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


# ---- sections ----------------------------------------------------------------------------------
def _header(title: str, a: Attribution | None) -> str:
    out = [f"<h1>{escape(title)}</h1>"]
    if a is not None:
        bits = [
            f"model <code>{escape(a.model_id)}</code>",
            f"{len(a.tokens)} tokens",
            f"{len(a.layers)} layers &times; {int(a.scores.shape[1])} heads",
            f"integration: {escape(a.rule)}, {a.steps} steps"
            if a.tol is None
            else f"integration: error-controlled to tol {a.tol:g}, at most {a.steps} nodes per layer",
        ]
        if a.example_id is not None:
            bits.insert(0, f"example <code>{escape(a.example_id)}</code>")
        out.append(f'<p class="meta">{" · ".join(bits)}</p>')
    return "\n".join(out)


def _segment_legend(names: Sequence[str], element_id: str) -> str:
    """Swatches naming a pair's two segments, in their colours."""
    keys = "".join(f'<span class="seg-key seg{k}">{escape(name)}</span>' for k, name in enumerate(names[:2]))
    return f'<div class="seg-legend" id="{element_id}">{keys}</div>'


def _input_section(a: Attribution, names: Sequence[str]) -> str:
    segments = [int(s) for s in a.segment_ids]
    starts = set(segment_starts(segments))
    pair = bool(starts)
    chips = []
    for i, tok in enumerate(a.tokens):
        cls = ["tok"]
        if a.special_mask[i]:
            cls.append("special")
        if pair:
            cls.append(f"seg{segments[i]}")
        if i in starts:
            before, after = _name(names, segments[i - 1]), _name(names, segments[i])
            chips.append(
                f'<span class="seg-sep" role="separator" data-before="{i}" '
                f'title="{escape(before)} | {escape(after)}"></span>'
            )
        chips.append(f'<span class="{" ".join(cls)}" data-index="{i}" title="#{i}">{escape(tok)}</span>')
    if pair:
        texts = [f'<p class="text"><span class="lbl seg0">{escape(names[0])}</span> {escape(a.text)}</p>']
        if a.text_pair is not None:
            texts.append(
                f'<p class="text"><span class="lbl seg1">{escape(names[1])}</span> {escape(a.text_pair)}</p>'
            )
        chips_html = (
            _segment_legend(names, "seg-legend")
            + f'<div id="tokens" class="tokens pair">{"".join(chips)}</div>'
        )
    else:
        texts = [f'<p class="text"><span class="lbl">text</span> {escape(a.text)}</p>']
        if a.text_pair is not None:
            texts.append(f'<p class="text"><span class="lbl">pair</span> {escape(a.text_pair)}</p>')
        chips_html = f'<div id="tokens" class="tokens">{"".join(chips)}</div>'

    if a.truncated:
        texts.append('<p class="note warn">The input was truncated to the model\'s maximum length.</p>')
    if a.decoder is not None:
        return _decoder_input_section(a, chips_html, texts)
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
            f'<tr data-class="{c}"><td class="cls">{escape(a.label_name(c))}</td>'
            f'<td class="bar"><div style="width:{width:.1f}%"></div></td>'
            f'<td class="num">{float(p):.4f}</td><td>{" ".join(marks)}</td></tr>'
        )
    output_name = {"prob": "probability", "logit": "logit", "logprob": "log-probability"}.get(
        a.output, a.output
    )
    return f"""<section id="input">
<h2>Input and prediction</h2>
{"".join(texts)}
{chips_html}
<table class="probs"><thead><tr><th>class</th><th colspan="2">probability</th><th></th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p class="explain">Attributed output F: the {output_name} of class <b>{escape(a.label_name(a.target))}</b>
(F = {format_value(float(a.output_value))}). Scores are integrated gradients of F over each head's attention
matrix: positive (red) connections raise F, negative (blue) ones lower it.</p>
</section>"""


def _decoder_input_section(a: Attribution, chips_html: str, texts: list[str]) -> str:
    """A causal LM's input: the prompt (forced target tokens marked), the top next tokens with their
    probabilities at the predicting position, and what F is (docs/decoders.md)."""
    from ...core.objectives import describe_decoder

    d = a.decoder
    target_ids = (
        set(d.get("target", {}).get("ids", [])[:1]) if d.get("objective") != "alternatives" else set()
    )
    foil_ids = set((d.get("foil") or {}).get("ids", [])[:1])
    rows = []
    for t in d.get("top", []):
        marks = []
        if t["id"] in target_ids:
            marks.append('<span class="badge target">target</span>')
        if t["id"] in foil_ids:
            marks.append('<span class="badge gold">foil</span>')
        width = max(0.0, min(1.0, float(t["prob"]))) * 100
        rows.append(
            f'<tr><td class="cls"><code>{escape(repr(t["text"]))}</code></td>'
            f'<td class="bar"><div style="width:{width:.1f}%"></div></td>'
            f'<td class="num">{float(t["prob"]):.4f}</td><td>{" ".join(marks)}</td></tr>'
        )
    p = d.get("predicting_position")
    where = f" after <code>{escape(a.tokens[p])}</code> (#{p})" if p is not None else ""
    shown = []
    for name in ("target", "foil"):
        prob = d.get(f"{name}_probability")
        if prob is not None:
            shown.append(f"p({name}) = {float(prob):.4f}")
    forced = len(a.tokens) - int(d.get("prompt_tokens", len(a.tokens)))
    note = (
        f" The last {forced} tokens (marked) are target tokens forced after the prompt (teacher forcing)."
        if forced
        else ""
    )
    return f"""<section id="input">
<h2>Prompt and prediction</h2>
{"".join(texts)}
{chips_html}
<table class="probs"><thead><tr><th>next token{where}</th><th colspan="2">probability</th><th></th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p class="explain">Attributed output F = {escape(describe_decoder(d, a.tokens))}
(F = {format_value(float(a.output_value))}{"; " + ", ".join(shown) if shown else ""}).{note} Attention is
causal: a token attends only to itself and earlier tokens, so the upper triangle of every map is 0.
Scores are integrated gradients of F over each head's attention matrix: positive (red) connections raise F,
negative (blue) ones lower it.</p>
</section>"""


def _name(names: Sequence[str], segment: int) -> str:
    return names[segment] if 0 <= segment < len(names) else f"segment {segment}"


def _heads_section(a: Attribution, payload: Mapping[str, Any], cmap_name: str, names: Sequence[str]) -> str:
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
            colour = hex_colour(cmap((v - lo) / span)) if np.isfinite(v) else "#cccccc"
            key = f"{layer}-{h}"
            cls = "head selected" if key == sel else "head"
            cells.append(
                f'<button type="button" class="{cls}" data-layer="{layer}" data-head="{h}" '
                f'data-importance="{format_value(v)}" style="background:{colour}" '
                f'title="layer {layer}, head {h}: importance {format_value(v)}" '
                f'aria-label="layer {layer} head {h}"></button>'
            )
    grid = (
        f'<div id="head-grid" class="head-grid" data-selected="{sel}" '
        f'style="grid-template-columns: auto repeat({heads}, var(--cell))">{"".join(cells)}</div>'
    )
    legend = (
        f'<div class="legend"><span>{format_value(lo)}</span><div class="ramp" data-cmap="seq"></div>'
        f"<span>{format_value(hi)}</span></div>"
    )
    pair_note = ""
    if segment_starts(payload["segments"]):
        pair_note = (
            '<div class="maps-pair">'
            + _segment_legend(names, "maps-seg-legend")
            + '<span class="caption">token labels in their segment\'s colour; dark lines mark where '
            "the segments meet, splitting each map into within- and cross-segment blocks</span></div>\n"
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
{pair_note}<div class="maps">
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
    if payload is not None and segment_starts(payload.get("segments") or []):
        names = payload["segment_names"]
        parts.append(
            f'<p class="caption">The two segments, {escape(names[0])} and {escape(names[1])}, lie apart on '
            "their own bands; an edge that joins ordinary tokens of different segments is drawn dashed, in a "
            "colour per direction (legend below).</p>"
        )
    if note:
        parts.append(f'<p class="note" id="tree-note">{escape(note)}</p>')
    if svg is not None:
        parts.append(f'<div class="tree-box" id="tree-box" data-source="svg">{svg}</div>')
    elif payload is not None:
        parts.append('<div class="tree-box" id="tree-box" data-source="json"></div>')
    elif not note:
        parts.append('<p class="note" id="tree-note">No attribution tree in this report.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _completeness_section(a: Attribution) -> str:
    # error-controlled: each layer's nodes, subintervals, dtype, error estimate and convergence too
    records = a.integration if a.tol is not None and a.integration else None
    rows = []
    for i, r in enumerate(a.completeness_table()):
        delta = r["output_delta"]
        rel = abs(r["gap"]) / abs(delta) if delta else float("nan")
        extra = ""
        if records:
            rec = records[i]
            estimate = "–" if rec["error_estimate"] is None else f"{rec['error_estimate']:.1e}"
            ok = "yes" if rec["converged"] else '<strong class="warn">no</strong>'
            extra = (
                f'<td class="num">{rec["nodes"]}</td><td class="num">{rec["subintervals"]}</td>'
                f'<td>{escape(rec["dtype"])}</td><td class="num">{estimate}</td><td>{ok}</td>'
            )
        rows.append(
            f'<tr><td class="num">{r["layer"]}</td><td class="num">{format_value(r["sum_scores"])}</td>'
            f'<td class="num">{format_value(delta)}</td><td class="num">{format_value(r["gap"])}</td>'
            f'<td class="num">{"" if not math.isfinite(rel) else f"{100 * rel:.2f}%"}</td>{extra}</tr>'
        )
    if records:
        caption = (
            "Integrated gradients are complete: per layer, the scores sum to F(A) − F(0·A). Each layer was "
            f"integrated to an estimated relative error of at most {a.tol:g} (error-controlled, adaptive "
            "Gauss–Kronrod): the nodes and subintervals of [0, 1] it took, and its error estimate."
        )
        head_extra = (
            "<th>nodes</th><th>subintervals</th><th>dtype</th><th>error estimate</th><th>converged</th>"
        )
        missed = a.unconverged_layers()
        if missed:
            caption += (
                f' <strong class="warn">Layer{"s" if len(missed) > 1 else ""} {", ".join(map(str, missed))} '
                f"did not reach it within the work budget: their scores are less accurate than asked.</strong>"
            )
    else:
        caption = (
            "Integrated gradients are complete: per layer, the scores sum to F(A) − F(0·A). The gap is "
            f"the integration error of the {escape(a.rule)} rule with {a.steps} steps; more steps shrink it."
        )
        head_extra = ""
    return f"""<section id="completeness">
<h2>Completeness</h2>
<p class="caption">{caption}</p>
<table class="data"><thead><tr><th>layer</th><th>sum of scores</th><th>F(A) − F(0·A)</th><th>gap</th>
<th>relative gap</th>{head_extra}</tr></thead><tbody>{"".join(rows)}</tbody></table>
</section>"""


def _edges_section(a: Attribution) -> str:
    rows = []
    for rank, e in enumerate(a.top_edges(TOP_EDGES), 1):
        rows.append(
            f'<tr class="edge" data-layer="{e.layer}" data-head="{e.head}" data-query="{e.query}" '
            f'data-key="{e.key}" tabindex="0"><td class="num">{rank}</td><td class="num">{e.layer}</td>'
            f'<td class="num">{e.head}</td><td>{escape(e.query_token)} <span class="idx">#{e.query}</span></td>'
            f'<td>{escape(e.key_token)} <span class="idx">#{e.key}</span></td><td class="num">{format_value(e.score)}</td></tr>'
        )
    return f"""<section id="edges">
<h2>Top attributed connections</h2>
<p class="caption">The largest scores over all layers and heads: the query token takes information from the key
token. Click a row to show its head.</p>
<table class="data"><thead><tr><th>#</th><th>layer</th><th>head</th><th>query</th><th>key</th><th>score</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table>
</section>"""


def _extra_section(section: Section, anchor: str, index: int) -> str:
    parts = [f'<section id="{escape(anchor)}" class="extra">', f"<h2>{escape(section.title)}</h2>"]
    if section.text:
        parts.append(paragraphs(section.text))
    for k, image in enumerate(section.images):
        parts.append(image_html(image, f"s{index}i{k}"))
    for table in section.tables:
        parts.append(table_html(table))
    for note in section.notes:
        parts.append(f'<p class="note">{inline(note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)
