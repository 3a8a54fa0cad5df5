"""The HTML report: self-contained, its embedded data round-trips, sections and trees render."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attattr.core.errors import InputError  # noqa: E402
from attattr.core.result import Attribution  # noqa: E402
from attattr.render.report import REPORT_FILE, Section, render_report, write_report  # noqa: E402

WORDS = "the film was a gorgeous witty and deeply moving piece of work with great acting".split()
NASTY = '</script><script>alert("x")</script>'  # a token that must not end the data block


def make_attribution(
    n: int = 12, layers: int = 3, heads: int = 4, seed: int = 0, layer_ids=None
) -> Attribution:
    """A hand-built attribution: softmax attentions, signed scores with a wide dynamic range."""
    g = torch.Generator().manual_seed(seed)
    tokens = ["[CLS]"] + [WORDS[i % len(WORDS)] for i in range(n - 2)] + ["[SEP]"]
    att = torch.softmax(torch.randn(layers, heads, n, n, generator=g) * 2, dim=-1)
    scores = torch.randn(layers, heads, n, n, generator=g) * att * 0.1
    scores[0, 0] *= 1e-4  # a head of tiny values: stored relative to its own scale
    sums = scores.sum(dim=(1, 2, 3)).tolist()
    return Attribution(
        scores=scores,
        attentions=att,
        tokens=tokens,
        token_ids=list(range(n)),
        segment_ids=[0] * n,
        special_mask=[t in ("[CLS]", "[SEP]") for t in tokens],
        layers=list(layer_ids if layer_ids is not None else range(layers)),
        target=1,
        target_mode="predicted",
        output="prob",
        output_value=0.9,
        baseline_values=[0.9 - 1.01 * s for s in sums],
        score_sums=sums,
        probabilities=[0.1, 0.9],
        predicted=1,
        rule="riemann-right",
        steps=20,
        model_id="tiny-test",
        text=" ".join(tokens[1:-1]),
        label=1,
        label_names=["negative", "positive"],
    )


def make_pair_attribution(n: int = 12, split: int = 6, **kwargs) -> Attribution:
    """A sentence pair: [CLS] text [SEP] | pair text [SEP], segment 1 from position `split` on."""
    a = make_attribution(n=n, **kwargs)
    a.tokens[split - 1] = "[SEP]"
    a.special_mask = [t in ("[CLS]", "[SEP]") for t in a.tokens]
    a.segment_ids = [0] * split + [1] * (n - split)
    a.text, a.text_pair = " ".join(a.tokens[1 : split - 1]), " ".join(a.tokens[split:-1])
    return a


def page_body(page: str) -> str:
    """The page's HTML between <main> and </main>: no CSS, script or data."""
    return page.split("<main>", 1)[1].split("</main>", 1)[0]


def report_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def decode(b64: str, scale: float) -> np.ndarray:
    """Independent of the module: little-endian float16 bytes times the head's scale."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f2").astype(np.float64) * scale


def png_file(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [2, 0, 1])
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def svg_text() -> str:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.bar([0, 1], [1, 2])
    from io import StringIO

    buf = StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()


RESOURCE_PATTERNS = [
    r"""\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:|//|ftp:)""",
    r"""url\(\s*["']?\s*(?:https?:|//)""",
    r"@import",
    r"<link\b",
    r"<iframe\b",
    r"<script[^>]*\bsrc\s*=",
    r"\bfetch\(",
    r"XMLHttpRequest",
]


def test_report_is_self_contained(tmp_path):
    a = make_attribution()
    svg = svg_text()
    assert "http://www.w3.org" in svg  # matplotlib writes a DOCTYPE and namespaces: they must go
    section = Section("Figures", "Two figures.", images=[png_file(tmp_path / "a.png"), svg])
    page = write_report(tmp_path / "out", attribution=a, sections=[section]).read_text()
    for pattern in RESOURCE_PATTERNS:
        assert not re.search(pattern, page, re.I), pattern
    # the only URL-like text is the SVG namespace the script passes to createElementNS
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page  # the browser itself refuses any load
    assert page.count("<script") == 2  # the data block and the script: nothing else
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate element ids"


def test_embedded_data_round_trips(tmp_path):
    a = make_attribution(n=10, layers=2, heads=3, layer_ids=[4, 5])
    a.tokens[3] = NASTY
    path = write_report(tmp_path / "r.html", attribution=a)
    assert path == tmp_path / "r.html"
    page = path.read_text()
    assert page.count("<script") == 2 and NASTY not in page  # escaped everywhere
    data = report_data(page)["attribution"]
    assert data["tokens"] == a.tokens
    assert data["layers"] == [4, 5] and data["heads"] == 3 and data["n"] == 10
    for kind, tensor in (("attention", a.attentions), ("attribution", a.scores)):
        block = data[kind]
        assert len(block["data"]) == 6
        for pos in range(2):
            for h in range(3):
                idx = pos * 3 + h
                true = tensor[pos, h].double().numpy().ravel()
                got = decode(block["data"][idx], block["scales"][idx])
                peak = np.abs(true).max()
                assert block["scales"][idx] == pytest.approx(peak, rel=1e-6)
                # float16 keeps 11 significant bits of value / peak
                np.testing.assert_allclose(got, true, rtol=0, atol=peak * 2.0**-11)
        assert block["max"] == pytest.approx(tensor.abs().max().item(), rel=1e-6)
    # the tiny head keeps its precision relative to its own scale
    tiny = decode(data["attribution"]["data"][0], data["attribution"]["scales"][0])
    true0 = a.scores[0, 0].double().numpy().ravel()
    big = np.abs(true0) > 0.1 * np.abs(true0).max()
    np.testing.assert_allclose(tiny[big], true0[big], rtol=2.0**-10)
    importance = a.scores.flatten(2).amax(2)
    np.testing.assert_allclose(np.array(data["importance"]), importance.numpy(), rtol=1e-5)
    flat = int(importance.argmax())
    assert data["initial"] == [[4, 5][flat // 3], flat % 3]
    assert f'data-selected="{data["initial"][0]}-{data["initial"][1]}"' in page


def test_grid_buttons_and_tables(tmp_path):
    a = make_attribution(n=8, layers=3, heads=4)
    page = render_report(attribution=a)
    cells = re.findall(r'<button type="button" class="head[^"]*" data-layer="(\d+)" data-head="(\d+)"', page)
    assert sorted((int(x), int(y)) for x, y in cells) == [(layer, h) for layer in range(3) for h in range(4)]
    assert 'id="attn-canvas"' in page and 'id="attr-canvas"' in page
    # completeness rows carry the attribution's own numbers
    for row in a.completeness_table():
        assert f"{row['sum_scores']:.4g}" in page and f"{row['gap']:.4g}" in page
    edges = re.findall(
        r'<tr class="edge" data-layer="(\d+)" data-head="(\d+)" data-query="(\d+)" data-key="(\d+)"', page
    )
    assert [tuple(map(int, e)) for e in edges] == [(e.layer, e.head, e.query, e.key) for e in a.top_edges(15)]
    assert "positive" in page and "0.9000" in page  # the prediction and its probability


def test_sections_render(tmp_path):
    png = png_file(tmp_path / "curve.png")
    svg_path = tmp_path / "fig.svg"
    svg_path.write_text(svg_text())
    rows = [{"k": 1, "accuracy": 0.91234, "note": "<b>kept</b>"}, {"k": 2, "accuracy": 0.5, "extra": None}]
    sections = [
        Section(
            "Pruning curve",
            "First **bold** and `code` paragraph.\n\n- one\n- two *three*\n\n### Sub heading",
            images=[png, svg_path],
            tables=[rows, ("Caption here", [{"a": "x"}])],
        ),
        Section("Pruning curve", ["Second section with the same title."]),
    ]
    page = write_report(tmp_path, sections=sections, title="Heads <run>").read_text()
    assert (tmp_path / REPORT_FILE).is_file()
    assert "<title>Heads &lt;run&gt;</title>" in page
    assert "<b>bold</b>" in page and "<code>code</code>" in page
    assert "<ul><li>one</li><li>two <i>three</i></li></ul>" in page and "<h4>Sub heading</h4>" in page
    encoded = base64.b64encode(png.read_bytes()).decode()
    assert f'src="data:image/png;base64,{encoded}"' in page
    assert "<!DOCTYPE svg" not in page and "<?xml" not in page and "<metadata" not in page
    assert page.count("<svg") == 1 and 'id="s0i1-' in page  # the SVG file, inlined, ids prefixed
    # tables: columns in first-seen order, values formatted, text escaped
    table = re.search(r'<table class="data"><thead><tr>(.*?)</tr></thead><tbody>(.*?)</tbody>', page, re.S)
    assert re.findall(r"<th>(.*?)</th>", table.group(1)) == ["k", "accuracy", "note", "extra"]
    assert '<td class="num">0.9123</td>' in table.group(2) and "&lt;b&gt;kept&lt;/b&gt;" in table.group(2)
    assert "<caption>Caption here</caption>" in page
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == ["pruning-curve", "pruning-curve-2"]
    assert 'id="head-grid"' not in page and '"attribution"' not in report_data(page)


def test_tree_from_attribution_and_given(tmp_path):
    a = make_attribution(n=10, layers=3, heads=2)
    tree = a.tree(threshold=0.3)
    assert len(tree.edges) > 1
    for given in (tree, tree.to_json(), json.dumps(tree.to_json())):
        page = render_report(attribution=a, tree=given)
        payload = report_data(page)["tree"]
        assert payload["nodes"] == [[nd.index, nd.layer] for nd in tree.nodes]
        assert payload["edges"] == [
            [e.parent, e.child, e.layer, pytest.approx(e.score, rel=1e-3)] for e in tree.edges
        ]
        assert payload["root"] == tree.root and payload["threshold"] == 0.3 and 'data-source="json"' in page
    # the default tree is the attribution's own (threshold 0.4)
    auto = report_data(render_report(attribution=a))["tree"]
    assert auto["nodes"] == [[nd.index, nd.layer] for nd in a.tree().nodes]
    # a tree alone, without an attribution
    alone = report_data(render_report(tree=tree))
    assert "attribution" not in alone and alone["tree"]["tokens"] == a.tokens


def test_tree_as_svg(tmp_path):
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect id="r" width="5" height="5" fill="url(#g)"/></svg>'
    page = render_report(attribution=make_attribution(), tree=svg)
    assert 'data-source="svg"' in page and 'id="tree-r"' in page and 'fill="url(#tree-g)"' in page
    assert report_data(page)["tree"] is None


def test_missing_tree_is_handled():
    # layers 0 and 2 only: no tree can be built, the report says why and keeps everything else
    a = make_attribution(layers=2, layer_ids=[0, 2])
    page = render_report(attribution=a)
    note = re.search(r'<p class="note" id="tree-note">(.*?)</p>', page).group(1)
    assert note.startswith("No attribution tree:") and "consecutive layers" in html.unescape(note)
    assert 'id="tree-box"' not in page and 'id="head-grid"' in page and report_data(page)["tree"] is None
    # tree=False leaves the section out
    page = render_report(attribution=make_attribution(), tree=False)
    assert '<section id="tree">' not in page and "tree" not in report_data(page)
    # malformed tree data: a note, not a crash
    page = render_report(attribution=make_attribution(), tree={"nodes": [{"index": 99}], "edges": []})
    assert "could not be drawn" in page and 'id="head-grid"' in page


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="report image not found"):
        render_report(sections=[Section("x", images=[tmp_path / "missing.png"])])
    (tmp_path / "a.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="unsupported type .bmp"):
        render_report(sections=[Section("x", images=[tmp_path / "a.bmp"])])
    with pytest.raises(InputError, match="external resource"):
        render_report(
            sections=[Section("x", images=['<svg><image href="https://example.org/x.png"/></svg>'])]
        )
    a = make_attribution()
    a.attentions = a.attentions[:, :, :5]
    with pytest.raises(InputError, match="attentions have shape"):
        render_report(attribution=a)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_report(tmp_path / "file", sections=[Section("x")])
    with pytest.raises(InputError, match="tree file not found"):
        render_report(tree="no/such/tree.svg")


def test_empty_report_says_so():
    page = render_report()
    assert "nothing was given" in page and report_data(page)["cmaps"]["div"][0].startswith("#")


def test_size_is_about_four_bytes_per_entry():
    a = make_attribution(n=40, layers=2, heads=3)
    entries = a.scores.numel()
    page = render_report(attribution=a, tree=False)
    # two float16 tensors in base64: 2 * 2 * 4/3 bytes per entry, plus a fixed overhead (CSS, JS, tables)
    assert 2 * 2 * 4 / 3 * entries < len(page) < 2 * 2 * 4 / 3 * entries + 60_000


def test_modules_by_job_share_only_public_names():
    """The report is split into page / payload / markup; no module reaches into another's private
    names (in render/ and cli/), and the package re-exports the public ones."""
    import ast

    import attattr.render.report as report
    from attattr.render.report import markup, page, payload

    assert report.write_report is page.write_report and report.encode_heads is payload.encode_heads
    assert report.Section is page.Section and report.IMAGE_TYPES is markup.IMAGE_TYPES
    root = Path(report.__file__).parents[2]  # src/attattr
    crossing = []
    for folder in ("render", "cli"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("attattr")
                ):
                    crossing += [
                        f"{path.relative_to(root)}:{node.lineno} {a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    assert not crossing


def test_write_report_is_atomic_and_follows_the_umask(tmp_path):
    import os

    mask = os.umask(0o077)
    try:
        path = write_report(tmp_path / "r", sections=[Section("x", "text")])
    finally:
        os.umask(mask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert [p.name for p in path.parent.iterdir()] == [REPORT_FILE]  # no temporary file left


def test_pair_shows_two_segments(tmp_path):
    a = make_pair_attribution(n=12, split=6, seed=1)
    page = write_report(tmp_path, attribution=a).read_text()
    body = page_body(page)
    # a legend naming the two segments, in the tree module's default names
    legend = re.search(r'<div class="seg-legend" id="seg-legend">(.*?)</div>', body).group(1)
    assert legend == '<span class="seg-key seg0">text</span><span class="seg-key seg1">pair text</span>'
    assert '<span class="lbl seg0">text</span>' in body and '<span class="lbl seg1">pair text</span>' in body
    # every chip carries its segment; one separator, right before the first pair-text token
    chips = re.findall(r'<span class="(tok[^"]*)" data-index="(\d+)"', body)
    assert [int(i) for _, i in chips] == list(range(12))
    for cls, i in chips:
        want = ["tok"] + (["special"] if a.special_mask[int(i)] else []) + [f"seg{a.segment_ids[int(i)]}"]
        assert cls.split() == want, (i, cls)
    assert 'class="tok seg1"' in body and 'class="tok special seg1"' in body  # what the SNLI test reads
    seps = re.findall(r'<span class="seg-sep"[^>]*data-before="(\d+)"[^>]*></span>', body)
    assert seps == ["6"]
    tokens_html = re.search(r'<div id="tokens" class="tokens pair">(.*?)</div>', body).group(1)
    assert tokens_html.index('class="seg-sep"') < tokens_html.index('data-index="6"')
    assert tokens_html.index('data-index="5"') < tokens_html.index('class="seg-sep"')
    # the maps are told the segments and names; the heatmap legend repeats the names
    data = report_data(page)
    assert data["attribution"]["segments"] == a.segment_ids
    assert data["attribution"]["segment_names"] == ["text", "pair text"]
    assert 'id="maps-seg-legend"' in body
    # the tree: segments, names and each edge's kind, the tree module's own classification
    tree = a.tree(threshold=0.4)
    t = data["tree"]
    assert t["segments"] == a.segment_ids and t["segment_names"] == ["text", "pair text"]
    assert t["kinds"] == [tree.edge_kind(e) for e in tree.edges]
    assert "lie apart on their own bands" in body


def test_pair_tree_kinds_include_cross_edges():
    a = make_pair_attribution(n=12, split=6, seed=1)
    tree = a.tree(threshold=0.05)  # a low threshold: a large tree with edges across the segments
    kinds = report_data(render_report(attribution=a, tree=tree))["tree"]["kinds"]
    # independent of the tree module: both ends ordinary tokens of different segments
    want = []
    for e in tree.edges:
        if e.parent == tree.root:
            want.append("root")
        elif a.special_mask[e.parent] or a.special_mask[e.child]:
            want.append("special")
        else:
            want.append("cross" if a.segment_ids[e.parent] != a.segment_ids[e.child] else "within")
    assert kinds == want and "cross" in kinds


def test_pair_segment_names_from_caller_or_tree():
    a = make_pair_attribution()
    page = render_report(attribution=a, segment_names=["premise", "hypothesis"])
    body = page_body(page)
    assert '<span class="seg-key seg0">premise</span><span class="seg-key seg1">hypothesis</span>' in body
    assert '<span class="lbl seg1">hypothesis</span>' in body and 'title="premise | hypothesis"' in body
    data = report_data(page)
    assert data["attribution"]["segment_names"] == data["tree"]["segment_names"] == ["premise", "hypothesis"]
    # a tree that names its segments names them on the whole page
    tree = a.tree()
    tree.segment_names = ["premise", "hypothesis"]
    assert '<span class="lbl seg0">premise</span>' in page_body(render_report(attribution=a, tree=tree))
    # names are escaped
    body = page_body(render_report(attribution=a, segment_names=["<p>", "q&a"]))
    assert '<span class="seg-key seg0">&lt;p&gt;</span>' in body and "q&amp;a" in body
    for bad in (["one"], ["a", ""], ["a", "b", "c"]):
        with pytest.raises(InputError, match="segment names must be two non-empty names"):
            render_report(attribution=a, segment_names=bad)


def test_single_segment_report_has_no_segment_marks():
    a = make_attribution(n=10)
    page = render_report(attribution=a, segment_names=["premise", "hypothesis"])
    body = page_body(page)
    for mark in ("seg-legend", "seg-sep", "seg0", "seg1", "tokens pair", "lie apart", "premise"):
        assert mark not in body, mark
    assert '<div id="tokens" class="tokens">' in body and '<span class="lbl">text</span>' in body
    # the tree still carries its (single) segment, so the page draws it as before
    assert set(report_data(page)["tree"]["segments"]) == {0}
