"""The HTML report: one self-contained file that opens anywhere, offline.

    from attattr.render.report import Section, write_report
    write_report("out/", attribution=attr)                 # -> out/report.html
    write_report("runs/heads.html", sections=[Section("Pruning", "...", images=["curve.png"])])

Everything is inline: the CSS, a small plain script, and the data as JSON in a
`<script type="application/json" id="report-data">` block. A Content-Security-Policy forbids the
page from loading anything.

Modules: `page` (the sections and the page, `write_report`), `payload` (the data the page's
script reads: tensors encoded per head, the tree), `markup` (escaping, a light Markdown, tables,
images and SVG cleaning).
"""

from .markup import IMAGE_TYPES, Table
from .page import REPORT_FILE, TOP_EDGES, Section, render_report, write_report
from .payload import decode_heads, encode_heads

__all__ = [
    "IMAGE_TYPES",
    "REPORT_FILE",
    "TOP_EDGES",
    "Section",
    "Table",
    "decode_heads",
    "encode_heads",
    "render_report",
    "write_report",
]
