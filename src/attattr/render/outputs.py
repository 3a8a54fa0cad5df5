"""The files of one explained example, as `attattr explain --out` and `attattr tree --out` write them.

Every file goes through `attattr.core.files` (atomic, umask permissions); the attribution pair is
written as a unit by `Attribution.save`.
"""

from __future__ import annotations

from pathlib import Path

from ..analyses.tree.build import AttributionTree
from ..core import files
from ..core.result import META_FILE, Attribution
from .plots.heatmaps import attention_vs_attribution, importance_grid
from .plots.style import save_figure
from .plots.tree import draw_tree
from .report import write_report

TOP_HEADS = 3  # heads drawn as attention-vs-attribution figures


def write_explanation(attr: Attribution, out: Path, *, segment_names: list[str] | None = None) -> list[Path]:
    """Tensors + metadata, the importance grid, attention-vs-attribution for the top heads, the report
    (a pair's two texts named `segment_names`, e.g. premise and hypothesis)."""
    out = Path(out)
    written = [attr.save(out), out / META_FILE]
    written += importance_grid(attr, out / "heads")
    imp = attr.head_importance()  # [layers, heads]
    for flat in imp.flatten().topk(min(TOP_HEADS, imp.numel())).indices.tolist():
        pos, head = divmod(flat, imp.shape[1])
        layer = attr.layers[pos]
        written += attention_vs_attribution(attr, layer, head, out / f"head_L{layer}_H{head}")
    # the report builds the tree itself and explains in the page when it cannot
    written.append(write_report(out, attribution=attr, segment_names=segment_names))
    return written


def write_tree(
    tree: AttributionTree, attr: Attribution, out: Path, *, save_attribution: bool = True
) -> list[Path]:
    """The tree's drawing (PNG, SVG), JSON and DOT, the attribution it was built from, the report."""
    out = Path(out)
    written = save_figure(draw_tree(tree), out / "tree")
    written.append(files.write_json(out / "tree.json", tree.to_json()))
    written.append(files.write_text(out / "tree.dot", tree.to_dot()))
    if save_attribution:
        written.append(attr.save(out))
    written.append(write_report(out, attribution=attr, tree=tree))
    return written
