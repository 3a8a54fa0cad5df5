"""Figures for attribution trees: one tree, and the dataset analyses of `attattr.analyses.tree.stats`.

Tree drawing: tokens along the bottom in input order; each tree node sits above its token at the
height of the layer where it joined (the root on top); edges go from parent down to child, their
width and colour by the normalised score; tokens left out of the tree are faded. A sentence pair's
two segments sit apart, each on a light band named after it, and edges between ordinary tokens of
different segments (`AttributionTree.edge_kind` == "cross") are drawn in their own colour, one per
direction (parent segment → child segment: the parent reads the child).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.patches import FancyArrowPatch
from matplotlib.ticker import MaxNLocator

from ...analyses.tree.build import CROSS_EDGE, AttributionTree, segment_name, tree_title
from .style import SEQUENTIAL, save_figure

FADED = "#b0b0b0"
ROOT_COLOUR = "#444444"
TOP_COLOUR = "#c0392b"
METHOD_COLOURS = {
    "attribution": "#c0392b",
    "attention": "#2471a3",
    "random": "#7f8c8d",
    "attribution-nonroot": "#e67e22",
    "attention-nonroot": "#5dade2",
}
# sentence pairs: a light band behind each segment, the space between two segments (in token widths)
# and the colours of cross-segment edges by direction (segment 1 reads 0, segment 0 reads 1)
SEGMENT_BANDS = ("#eef3f9", "#fbf1e4")
SEGMENT_LABEL_COLOURS = ("#2e5d8a", "#9a5b13")
SEGMENT_GAP = 0.8
CROSS_COLOURS = {(1, 0): "#e67e22", (0, 1): "#8e44ad"}
CROSS_OTHER = "#16a085"  # any other pair of segments
# edge kinds of the within/cross split (bars of `plot_segment_split`)
KIND_COLOURS = {"within": "#2471a3", "cross": "#e67e22", "special": "#b0b0b0"}


def _short(token: str, limit: int = 14) -> str:
    return token if len(token) <= limit else token[: limit - 1] + "…"


def _x_positions(tree: AttributionTree) -> list[float]:
    """Each token's x: its index, plus a gap after every segment change (a single segment: the index)."""
    xs, shift = [], 0.0
    for i in range(len(tree.tokens)):
        if i and tree.segment_ids[i] != tree.segment_ids[i - 1]:
            shift += SEGMENT_GAP
        xs.append(i + shift if shift else i)
    return xs


def _segment_runs(tree: AttributionTree) -> list[tuple[int, int, int]]:
    """(segment id, first token, last token) of each run of equal segment ids, in input order."""
    runs: list[tuple[int, int, int]] = []
    for i, seg in enumerate(tree.segment_ids):
        if runs and runs[-1][0] == seg:
            runs[-1] = (seg, runs[-1][1], i)
        else:
            runs.append((seg, i, i))
    return runs


def cross_colour(tree: AttributionTree, parent: int, child: int) -> str:
    key = (tree.segment_ids[parent], tree.segment_ids[child])
    return CROSS_COLOURS.get(key, CROSS_OTHER)


def draw_tree(
    tree: AttributionTree,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    segment_names: Sequence[str] | None = None,
):
    """Draw `tree`; with `path` (no extension) write path.png and path.svg. Returns the figure
    (closed after saving when `path` is given).

    segment_names: what to call a pair's two segments on their bands and in the legend (default:
    the tree's own `segment_names`, else "text" and "pair text")."""
    n = len(tree.tokens)
    num_layers = len(tree.layers)
    pair = tree.is_pair
    names = list(segment_names) if segment_names else tree.segment_names
    xs = _x_positions(tree)
    span = xs[-1] + 1 if n else 0  # the width of the token row, in token widths
    longest = max((len(_short(t)) for t in tree.tokens), default=1)
    width = min(40.0, max(6.0, 0.36 * span + 2.0))
    # rotate the token labels when the longest would not fit the space of one token (8 pt ≈ 0.075 in/char)
    rotate = longest * 0.075 > 0.9 * (width - 2.0) / max(n, 1)
    label_height = 0.075 * longest if rotate else 0.3
    height = max(3.2, 0.42 * (num_layers + 1) + 1.2) + label_height
    if pair:
        height += 0.3  # the segment names above the bands
    fig, ax = plt.subplots(figsize=(width, height))

    root_y = num_layers  # the root above the last layer
    top_y = root_y + (1.0 if pair else 0.6)
    y_of_layer = {layer: pos for pos, layer in enumerate(tree.layers)}
    ypos: dict[int, float] = {}
    for node in tree.nodes:
        ypos[node.index] = root_y if node.layer is None else y_of_layer[node.layer]

    # layer guide lines
    for pos in range(num_layers + 1):
        ax.axhline(pos, color="#eeeeee", lw=0.8, zorder=0)
    if pair:
        # sentence pairs: a named band behind each segment, the two apart
        for seg, first, last in _segment_runs(tree):
            band = SEGMENT_BANDS[seg % len(SEGMENT_BANDS)]
            left, right = xs[first] - 0.45, xs[last] + 0.45
            ax.axvspan(left, right, color=band, lw=0, zorder=-1)
            ax.text(
                (left + right) / 2,
                top_y - 0.05,
                segment_name(seg, names),
                ha="center",
                va="top",
                fontsize=8,
                fontstyle="italic",
                color=SEGMENT_LABEL_COLOURS[seg % len(SEGMENT_LABEL_COLOURS)],
                zorder=1,
            )

    # thin guides from each node down to its token, so a reader can follow a node to its word
    for idx, y in ypos.items():
        ax.plot([xs[idx], xs[idx]], [-0.6, y], color="#d6d6d6", lw=0.6, zorder=1)

    # edges: colour and width by score (threshold .. 1); cross-segment edges in their own colour
    cmap = plt.get_cmap(SEQUENTIAL)
    norm = mcolors.Normalize(vmin=tree.threshold, vmax=1.0)
    directions: dict[tuple[int, int], str] = {}  # the cross-edge directions drawn, for the legend
    for e in tree.edges:
        x0, y0, x1, y1 = xs[e.parent], ypos[e.parent], xs[e.child], ypos[e.child]
        if e.parent == tree.root:
            colour, lw, style = ROOT_COLOUR, 1.4, (0, (4, 2))
        else:
            strength = min(1.0, max(0.0, norm(e.score)))
            colour, lw, style = cmap(0.35 + 0.65 * strength), 1.0 + 2.6 * strength, "solid"
            if pair and tree.edge_kind(e) == CROSS_EDGE:
                colour = cross_colour(tree, e.parent, e.child)
                directions[(tree.segment_ids[e.parent], tree.segment_ids[e.child])] = colour
        rad = 0.35 if y0 == y1 else 0.0  # same-layer edges (parent_choice="authors") as arcs
        arrow = FancyArrowPatch(
            (x0, y0),
            (x1, y1),
            arrowstyle="-|>",
            mutation_scale=8,
            lw=lw,
            color=colour,
            linestyle=style,
            shrinkA=6,
            shrinkB=6,
            connectionstyle=f"arc3,rad={rad}",
            zorder=2,
        )
        ax.add_patch(arrow)

    # nodes
    for node in tree.nodes:
        idx, y = node.index, ypos[node.index]
        if idx == tree.root:
            face, edge = ROOT_COLOUR, ROOT_COLOUR
        elif idx == tree.top:
            face, edge = TOP_COLOUR, TOP_COLOUR
        else:
            face, edge = "white", "#1f4e79"
        ax.scatter([xs[idx]], [y], s=70, c=[face], edgecolors=[edge], linewidths=1.4, zorder=4)
        ax.annotate(
            _short(node.token, 12),
            (xs[idx], y),
            xytext=(4, 5),
            textcoords="offset points",
            fontsize=7,
            rotation=25,
            color="#1b1b1b",
            bbox=dict(boxstyle="round,pad=0.08", fc="white", ec="none", alpha=0.85),
            zorder=5,
        )
    # each node's parent-edge score beside the node (one edge per node: labels never pile up)
    for e in tree.edges:
        if e.parent != tree.root:
            ax.annotate(
                f"{e.score:.2f}",
                (xs[e.child], ypos[e.child]),
                xytext=(5, -9),
                textcoords="offset points",
                fontsize=6,
                color="#1f4e79",
                zorder=5,
            )
    handles = [
        plt.Line2D([], [], marker="o", ls="", ms=7, mfc=ROOT_COLOUR, mec=ROOT_COLOUR, label="root"),
        plt.Line2D([], [], marker="o", ls="", ms=7, mfc=TOP_COLOUR, mec=TOP_COLOUR, label="top node"),
        plt.Line2D([], [], marker="o", ls="", ms=7, mfc="white", mec="#1f4e79", label="joined at this layer"),
    ]
    crossing = [
        plt.Line2D(
            [],
            [],
            color=colour,
            lw=2.2,
            label=f"crosses segments: {segment_name(p, names)} → {segment_name(c, names)}",
        )
        for (p, c), colour in sorted(directions.items(), reverse=True)  # segment 1 reads 0 first
    ]
    ncol = 3
    if crossing:
        # one row when it fits (7.5 pt text ≈ 0.06 in/char, plus the marker and spacing), else the
        # node entries on the first row and the edge entries under them (legends fill column by column)
        needed = sum(0.06 * len(h.get_label()) + 0.55 for h in handles + crossing)
        if needed < 0.85 * width:
            handles, ncol = handles + crossing, len(handles) + len(crossing)
        else:
            handles = [h for c, node in enumerate(handles) for h in [node, *crossing[c : c + 1]]]
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=ncol,
        frameon=False,
        fontsize=7.5,
        borderaxespad=0.2,
    )
    legend_rows = -(-len(handles) // ncol)

    # token labels along the bottom: tree members dark, the others faded
    members = {node.index for node in tree.nodes}
    ax.set_xticks(xs)
    labels = ax.set_xticklabels(
        [_short(t) for t in tree.tokens],
        rotation=60 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=8,
    )
    for i, label in enumerate(labels):
        if i in members:
            label.set_color("black")
            label.set_fontweight("bold")
        else:
            label.set_color(FADED)
        if tree.special_mask[i]:
            label.set_fontstyle("italic")
    ax.tick_params(axis="x", length=0, pad=3)

    ax.set_yticks(list(range(num_layers)) + [root_y])
    ax.set_yticklabels([f"layer {layer}" for layer in tree.layers] + ["root"], fontsize=7.5)
    ax.tick_params(axis="y", length=0)
    ax.set_xlim(-0.7, span - 0.3)
    ax.set_ylim(-0.6, top_y)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)

    heading = title if title is not None else tree_title(tree)
    sub = f"attribution tree, threshold {tree.threshold:g}: {tree.size} of {n} tokens, depth {tree.depth}"
    if tree.model_id:
        sub += f" · {_short_model(tree.model_id)}"
    if directions:
        sub += "\nan edge parent → child: the parent (query) reads the child (key)"
    pad = 22 + 11 * (legend_rows - 1)
    ax.set_title(f"{heading}\n{sub}" if heading else sub, loc="left", fontsize=9.5, pad=pad)
    if tree.message:
        ax.text(
            0.99,
            0.5,
            _wrap(tree.message, int(width * 7)),
            transform=ax.transAxes,
            fontsize=7.5,
            color="#444444",
            ha="right",
            va="center",
            bbox=dict(boxstyle="round,pad=0.4", fc="#fafafa", ec="#cccccc"),
            zorder=6,
        )

    if tree.attention_edges() and tree.threshold < 1.0:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
        bar = fig.colorbar(sm, ax=ax, fraction=0.02 if width > 10 else 0.035, pad=0.01)
        bar.set_label("normalised score", fontsize=7.5)
        bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _short_model(model_id: str) -> str:
    """A model directory's last two path parts (a recipe name or hub id is shown whole)."""
    parts = Path(model_id).parts
    return model_id if len(model_id) <= 40 or len(parts) <= 2 else "…/" + "/".join(parts[-2:])


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, max(36, width)))


# ---- dataset analyses ------------------------------------------------------------------------------
def plot_size_depth(sizes: Sequence[int], depths: Sequence[int], path: str | Path | None = None, *, title=""):
    """Histograms of tree size (tokens in the tree) and depth over a dataset."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, values, name in ((axes[0], sizes, "tree size (tokens)"), (axes[1], depths, "tree depth (edges)")):
        values = np.asarray(values, dtype=int)
        if values.size:
            bins = np.arange(values.min(), values.max() + 2) - 0.5
            ax.hist(values, bins=bins, color="#2471a3", edgecolor="white")
            ax.axvline(values.mean(), color="#c0392b", lw=1.2, label=f"mean {values.mean():.2f}")
            ax.legend(frameon=False, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(name)
        ax.set_ylabel("examples")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_receptive_field(
    per_layer: Sequence[dict[str, Any]], path: str | Path | None = None, *, title="", reference=None
):
    """Mean token distance |i - j| of tree edges per layer (bars), edge counts annotated;
    `reference` (e.g. the mean distance of random token pairs) as a dashed line."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(per_layer) + 2), 3))
    layers = [r["layer"] for r in per_layer]
    means = [r["mean_distance"] if r["mean_distance"] is not None else 0.0 for r in per_layer]
    errs = [r.get("sem") or 0.0 for r in per_layer]
    ax.bar(layers, means, yerr=errs, color="#2471a3", capsize=2)
    for layer, m, e, r in zip(layers, means, errs, per_layer, strict=True):
        ax.text(layer, m + e, f"n={r['edges']}", ha="center", va="bottom", fontsize=7, color="#555555")
    top = max([m + e for m, e in zip(means, errs, strict=True)] + [reference or 0.0])
    ax.set_ylim(0, top * 1.15 + 0.5)
    if reference is not None:
        ax.axhline(reference, color="#c0392b", lw=1, ls="--", label=f"random token pairs ({reference:.1f})")
        ax.legend(frameon=False, fontsize=7.5, loc="upper left")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean |i − j| of tree edges")
    ax.set_title(title or "receptive field of attribution-tree edges", fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_faithfulness(curves: dict[str, Any], path: str | Path | None = None, *, title="", relative=False):
    """Mean drop of the output F against the number k of zeroed attention connections.

    curves: {"k": [...], "methods": {name: {"mean_drop": [...], "sem_drop": [...], ...}}}."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = np.asarray(curves["k"])
    key = "mean_relative_drop" if relative else "mean_drop"
    for name, c in curves["methods"].items():
        mean = np.asarray(c[key], dtype=float)
        sem = np.asarray(c.get("sem_relative_drop" if relative else "sem_drop", [0] * len(ks)), dtype=float)
        colour = METHOD_COLOURS.get(name)
        style = "--" if name.endswith("nonroot") else "-"
        label = name.replace("-nonroot", ", outside the root row")
        ax.plot(ks, mean, marker="o", ms=3.5, label=label, color=colour, ls=style)
        ax.fill_between(ks, mean - sem, mean + sem, color=colour, alpha=0.15, lw=0)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("attention connections zeroed (k)")
    ax.set_ylabel("mean relative drop of F" if relative else "mean drop of F")
    ax.axhline(0, color="#999999", lw=0.6)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title or "edge faithfulness", fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_segment_split(
    split: dict[str, Any],
    path: str | Path | None = None,
    *,
    title: str = "",
    segment_names: Sequence[str] | None = None,
):
    """Tree edges of sentence pairs per layer: stacked counts of within-segment, cross-segment and
    special-token edges (left), and the mean token distance |i - j| of each kind (right).

    split: the `segments` entry of a tree-stats summary (`attattr.analyses.tree.stats.segment_split`)."""
    rows = split["per_layer"]
    layers = np.arange(len(rows))
    first, second = segment_name(0, segment_names), segment_name(1, segment_names)
    labels = {
        "within": "within a segment",
        "cross": f"cross-segment ({second} → {first}: {split['cross_direction']['pair_reads_text']}, "
        f"{first} → {second}: {split['cross_direction']['text_reads_pair']})",
        "special": "touching a special token",
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(rows) + 4), 3.3))
    bottom = np.zeros(len(rows))
    for kind in ("within", "cross", "special"):
        counts = np.asarray([r[kind] for r in rows], dtype=float)
        left.bar(layers, counts, bottom=bottom, color=KIND_COLOURS[kind], label=labels[kind], width=0.7)
        bottom += counts
    left.set_xticks(layers)
    left.set_xticklabels([str(r["layer"]) for r in rows])
    left.set_xlabel("layer")
    left.set_ylabel("tree edges")
    left.legend(frameon=False, fontsize=7, loc="upper left")
    left.set_ylim(0, max(bottom.max(), 1) * 1.45)
    left.set_title("edges by kind", fontsize=9)

    width = 0.38
    for offset, kind in ((-width / 2, "within"), (width / 2, "cross")):
        means = [r["mean_distance"][kind] for r in rows]
        heights = [m if m is not None else 0.0 for m in means]
        right.bar(layers + offset, heights, width=width, color=KIND_COLOURS[kind], label=kind)
    right.set_xticks(layers)
    right.set_xticklabels([str(r["layer"]) for r in rows])
    right.set_xlabel("layer")
    right.set_ylabel("mean |i − j|")
    right.legend(frameon=False, fontsize=7, loc="upper left")
    right.set_title("receptive field by kind", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
