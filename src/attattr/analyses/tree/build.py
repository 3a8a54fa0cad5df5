"""Attribution trees: the paper's Algorithm 1, generalised to any depth and any special tokens.

Input: one example's attribution scores `[layers, heads, n, n]` (row i = query token, column j =
key token; information flows j -> i). Steps (docs/method.md §3, choices documented in docs/trees.md):

1. per layer, sum over heads: `S^l = sum_h Attr^l_h`                                   [layers, n, n]
2. normalise each layer by its largest entry outside the root's query row
3. keep the edges (i, j) with normalised `S^l[i, j] > threshold`
4. the top node: the non-root token with the largest row sum of the layer-summed map (max-normalised,
   diagonal, negative entries and the root row dropped); the root links to it at the last layer
5. from the second-to-last layer down to layer 0, each token not yet in the tree joins as the child
   of a token already in the tree that attends to it with a kept edge.

Token states follow the authors' code: *absent* (not in the tree), *appeared* (in the tree, no
children yet) and *fixed* (has children). A kept edge i -> j is skipped when j is fixed, when both
ends have only appeared, or when i is fixed and j has only appeared: a token has one parent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch

from ...core.errors import InputError
from ...core.result import set_tree_builder

ParentChoice = Literal["strongest", "authors"]
PARENT_CHOICES = ("strongest", "authors")

# Why a kept edge between two tokens was not used (the authors' three-state rules, plus two more).
SKIP_CHILD_FIXED = "child-fixed"
SKIP_BOTH_APPEARED = "both-appeared"
SKIP_PARENT_FIXED_CHILD_APPEARED = "parent-fixed-child-appeared"
SKIP_CHILD_IS_ROOT = "child-is-root"
SKIP_WEAKER = "weaker-than-chosen-parent"  # "strongest" only: another parent won j at this layer

ABSENT, APPEARED, FIXED = -1, 0, 1

# Kinds of tree edge (`edge_kind`): the root's link to the top node; an edge touching a special
# token ([CLS], [SEP], <s>, ...); an edge between two ordinary tokens of one segment; an edge between
# two ordinary tokens of different segments (the first text and the pair text of a sentence pair).
ROOT_EDGE, SPECIAL_EDGE, WITHIN_EDGE, CROSS_EDGE = "root", "special", "within", "cross"
EDGE_KINDS = (WITHIN_EDGE, CROSS_EDGE, SPECIAL_EDGE, ROOT_EDGE)
# what segments 0 and 1 are called when the caller does not name them (a pair's two texts)
DEFAULT_SEGMENT_NAMES = ("text", "pair text")
DECODER_SEGMENT_NAMES = ("prompt", "continuation")  # a causal LM's forced continuation is segment 1


def classify_edge(
    parent: int, child: int, *, root: int, special_mask: Sequence[bool], segment_ids: Sequence[int]
) -> str:
    """The kind of the tree edge parent -> child (the parent is the query token, reading the child).

    "root": the root's link to the top node (not an attention connection); "special": either end is
    a special token, whatever its segment (the separators sit at the segment boundary and [CLS]
    belongs to no text); "cross": two ordinary tokens of different segments; "within": two ordinary
    tokens of one segment. A single-segment input has no "cross" edge."""
    if parent == root:
        return ROOT_EDGE
    if special_mask[parent] or special_mask[child]:
        return SPECIAL_EDGE
    return CROSS_EDGE if segment_ids[parent] != segment_ids[child] else WITHIN_EDGE


def segment_name(index: int, names: Sequence[str] | None = None) -> str:
    """The display name of segment `index`: the caller's name, else "text" / "pair text"."""
    names = list(names) if names else list(DEFAULT_SEGMENT_NAMES)
    return names[index] if 0 <= index < len(names) else f"segment {index}"


@dataclass
class TreeNode:
    index: int  # token position in the input
    token: str
    layer: int | None  # model layer at which it joined (its parent edge's layer); None for the root
    parent: int | None  # token index of its parent; None for the root


@dataclass
class TreeEdge:
    parent: int  # token index i (the query token: it attends to the child)
    child: int  # token index j (the key token: information flows child -> parent)
    layer: int  # model layer of the connection
    score: float  # normalised layer score S^l[i, j]; for root -> top: the top node's row sum


@dataclass
class SkippedEdge:
    parent: int
    child: int
    layer: int
    score: float
    reason: str


@dataclass
class AttributionTree:
    tokens: list[str]
    nodes: list[TreeNode]  # in the order they joined: root, top node, then layer by layer
    edges: list[TreeEdge]  # the same order; the first is root -> top node
    root: int
    top: int | None
    threshold: float
    layers: list[int]  # model layers the scores covered, in order
    special_mask: list[bool]
    segment_ids: list[int]
    parent_choice: str = "strongest"
    normalisers: list[float | None] = field(default_factory=list)  # per layer: the max used in step 2
    skipped: list[SkippedEdge] = field(default_factory=list)  # kept edges not used, with the reason
    message: str | None = None  # set when the tree is degenerate (no edge above the threshold, ...)
    label: str | None = None  # name of the class whose output was attributed (the target)
    probability: float | None = None  # the model's probability of that class
    predicted_label: str | None = None  # the model's predicted class name
    target: int | None = None
    output: str | None = None
    output_value: float | None = None
    model_id: str | None = None
    text: str | None = None
    text_pair: str | None = None
    example_id: str | None = None
    segment_names: list[str] | None = None  # display names of segments 0, 1 (None: "text", "pair text")

    # ---- structure -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of tokens in the tree, the root included."""
        return len(self.nodes)

    @property
    def depth(self) -> int:
        """Edges on the longest root-to-leaf path (a tree of only the root and top node has depth 1)."""
        depth = {self.root: 0}
        for e in self.edges:  # edges are stored parent-before-child
            depth[e.child] = depth[e.parent] + 1
        return max(depth.values())

    def node(self, index: int) -> TreeNode | None:
        for n in self.nodes:
            if n.index == index:
                return n
        return None

    def in_tree(self, index: int) -> bool:
        return self.node(index) is not None

    def children(self, index: int) -> list[TreeEdge]:
        return [e for e in self.edges if e.parent == index]

    def is_fixed(self, index: int) -> bool:
        """The authors' 'fixed' state: the token has children."""
        return any(e.parent == index for e in self.edges)

    def attention_edges(self) -> list[TreeEdge]:
        """The tree's edges that are attention connections (all but root -> top node)."""
        return [e for e in self.edges if e.parent != self.root]

    # ---- segments (sentence pairs) -----------------------------------------------------------
    @property
    def is_pair(self) -> bool:
        """True when the input has two segments (a sentence pair, or a prompt and its continuation)."""
        return len(set(self.segment_ids)) > 1

    def edge_kind(self, edge: TreeEdge) -> str:
        """ "within", "cross", "special" or "root" (see `classify_edge`)."""
        return classify_edge(
            edge.parent,
            edge.child,
            root=self.root,
            special_mask=self.special_mask,
            segment_ids=self.segment_ids,
        )

    def segment_name(self, index: int) -> str:
        return segment_name(index, self.segment_names)

    def direction(self, edge: TreeEdge) -> str:
        """'<parent's segment> → <child's segment>', e.g. 'hypothesis → premise': the parent reads the child."""
        return f"{self.segment_name(self.segment_ids[edge.parent])} → {self.segment_name(self.segment_ids[edge.child])}"

    def cross_edges(self) -> list[TreeEdge]:
        return [e for e in self.edges if self.edge_kind(e) == CROSS_EDGE]

    # ---- export ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["nodes"] = [asdict(n) for n in self.nodes]
        out["edges"] = [asdict(e) for e in self.edges]
        out["skipped"] = [asdict(s) for s in self.skipped]
        out["size"] = self.size
        out["depth"] = self.depth
        out["edge_kinds"] = [self.edge_kind(e) for e in self.edges]  # derived: not read back
        return json.loads(json.dumps(out))  # plain values only

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> AttributionTree:
        if isinstance(data, str):
            data = json.loads(data)
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["nodes"] = [TreeNode(**n) for n in data["nodes"]]
        kwargs["edges"] = [TreeEdge(**e) for e in data["edges"]]
        kwargs["skipped"] = [SkippedEdge(**s) for s in data.get("skipped", [])]
        return cls(**kwargs)

    def to_text(self) -> str:
        """The tree as indented text: each token followed by its children (layer, score)."""
        lines = []

        def walk(index: int, prefix: str, edge: TreeEdge | None) -> None:
            label = f"{self.tokens[index]} #{index}"
            if edge is None:
                lines.append(f"{label}  (root)")
            elif edge.parent == self.root:
                lines.append(f"{prefix}← {label}  (top node, row sum {edge.score:.3g})")
            elif self.edge_kind(edge) == CROSS_EDGE:
                lines.append(
                    f"{prefix}← {label}  (layer {edge.layer}, {edge.score:.2f}; crosses {self.direction(edge)})"
                )
            else:
                lines.append(f"{prefix}← {label}  (layer {edge.layer}, {edge.score:.2f})")
            for child in self.children(index):
                walk(child.child, prefix + "    ", child)

        walk(self.root, "", None)
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz DOT text: parent -> child edges, nodes ranked by the layer they joined at."""
        lines = [
            "digraph attribution_tree {",
            "  rankdir=TB;",
            '  node [shape=box, style="rounded", fontname="Helvetica"];',
            '  edge [fontname="Helvetica", fontsize=10];',
        ]
        title = tree_title(self)
        if title:
            lines.append(f'  labelloc="t"; label="{_dot_escape(title)}";')
        for n in self.nodes:
            where = "root" if n.layer is None else f"layer {n.layer}"
            shape = ', shape=ellipse, style="filled", fillcolor="#dddddd"' if n.index == self.root else ""
            lines.append(f'  t{n.index} [label="{_dot_escape(n.token)}\\n#{n.index} · {where}"{shape}];')
        for e in self.edges:
            if e.parent == self.root:
                lines.append(f'  t{e.parent} -> t{e.child} [label="top", style=dashed];')
            else:
                width = 1.0 + 3.0 * max(
                    0.0, min(1.0, (e.score - self.threshold) / max(1e-9, 1 - self.threshold))
                )
                cross = ', color="#e67e22"' if self.edge_kind(e) == CROSS_EDGE else ""
                lines.append(
                    f'  t{e.parent} -> t{e.child} [label="L{e.layer} {e.score:.2f}", penwidth={width:.2f}{cross}];'
                )
        by_layer: dict[int, list[int]] = {}
        for n in self.nodes:
            if n.layer is not None:
                by_layer.setdefault(n.layer, []).append(n.index)
        for layer in sorted(by_layer):
            members = " ".join(f"t{i};" for i in by_layer[layer])
            lines.append(f"  {{ rank=same; {members} }}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        head = f"tree of {self.size} tokens (depth {self.depth}, threshold {self.threshold:g})"
        return head if not self.message else f"{head}: {self.message}"


def tree_title(tree: AttributionTree) -> str:
    """'prediction: positive (p = 0.93)', or the target and the prediction when they differ."""
    if tree.label is None:
        return ""
    prob = f" (p = {tree.probability:.3f})" if tree.probability is not None else ""
    if tree.output in ("logit-diff", "prob-diff"):
        return f"target: {tree.label!r}{prob} vs a foil ({tree.output} = {tree.output_value:.3g})"
    if tree.predicted_label is not None and tree.predicted_label != tree.label:
        return f"target: {tree.label}{prob}; predicted: {tree.predicted_label}"
    return f"prediction: {tree.label}{prob}"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


# ---- building -----------------------------------------------------------------------------------
def check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number in (0, 1], got {threshold!r}") from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise InputError(f"threshold must be in (0, 1], got {threshold!r}")
    return value


def layer_sums(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """`[layers, heads, n, n]` -> `[layers, n, n]` (float64); `[layers, n, n]` passes through."""
    arr = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    arr = arr.astype(np.float64)
    if arr.ndim == 4:
        arr = arr.sum(axis=1)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise InputError(
            f"scores must be [layers, heads, n, n] or [layers, n, n], got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"scores are empty (shape {tuple(arr.shape)})")
    if not np.isfinite(arr).all():
        raise InputError("scores contain NaN or infinite values")
    return arr


def normalise_layers(sums: np.ndarray, root: int) -> tuple[np.ndarray, list[float | None]]:
    """Step 2: divide each layer by its largest entry outside the root's query row.

    A layer whose largest such entry is not positive has no edge above any threshold: its
    normalised map is all zeros and its normaliser None (the authors' code divides by |max|, which
    leaves every entry negative, or by zero)."""
    norm = np.zeros_like(sums)
    normalisers: list[float | None] = []
    rows = np.ones(sums.shape[1], dtype=bool)
    rows[root] = False
    for layer in range(sums.shape[0]):
        block = sums[layer][rows]
        peak = float(block.max()) if block.size else 0.0
        if peak > 0:
            norm[layer] = sums[layer] / peak
            normalisers.append(peak)
        else:
            normalisers.append(None)
    return norm, normalisers


def top_node(sums: np.ndarray, root: int) -> tuple[int | None, np.ndarray]:
    """Step 4: (top token index, row sums `[n]`). None when the input has no token besides the root."""
    n = sums.shape[1]
    combined = sums.sum(axis=0)
    peak = float(np.abs(combined).max())
    if peak > 0:
        combined = combined / peak
    combined = combined * (1.0 - np.eye(n)) * (combined > 0)
    combined[root] = 0.0
    row_sums = combined.sum(axis=1)
    candidates = [i for i in range(n) if i != root]
    if not candidates:
        return None, row_sums
    # ties (e.g. an all-zero map) go to the lowest index
    best = max(candidates, key=lambda i: (row_sums[i], -i))
    return best, row_sums


def decoder_root(attribution) -> int:
    """A causal LM's root: the last input position, where F reads the prediction (with a forced
    continuation, the position predicting its last token)."""
    positions = (attribution.decoder or {}).get("positions") or []
    return int(max(positions)) if positions else len(attribution.tokens) - 1


def default_root(special_mask: Sequence[bool] | None, n: int) -> int:
    """The root is the input's first token when it is special ([CLS], <s>); inputs that do not start
    with a special token also use position 0 (the token the classification head reads in encoders)."""
    return 0


def build_tree_from_scores(
    scores: torch.Tensor | np.ndarray,
    tokens: Sequence[str] | None = None,
    special_mask: Sequence[bool] | None = None,
    threshold: float = 0.4,
    *,
    layers: Sequence[int] | None = None,
    segment_ids: Sequence[int] | None = None,
    root: int | None = None,
    parent_choice: ParentChoice = "strongest",
    segment_names: Sequence[str] | None = None,
) -> AttributionTree:
    """Attribution tree from raw scores.

    scores: `[layers, heads, n, n]` attribution scores or their per-layer head sums `[layers, n, n]`,
      layers in model order (the last one is the model's last layer).
    tokens / special_mask / segment_ids: per token (defaults: "t0".., position 0 special, all segment 0).
    layers: the model layer number of each score layer (default 0..L-1).
    root: the root token (default: position 0, the [CLS]/<s> token).
    parent_choice: "strongest" (default): at each layer a new token's parent is the in-tree token
      (as of the start of that layer) with the strongest kept edge to it; "authors": the authors'
      code — tokens in index order, a token that joined earlier in the same layer may already
      adopt children at that layer.
    segment_names: what to call segments 0 and 1 in drawings and text (default "text", "pair text").
    """
    tau = check_threshold(threshold)
    if parent_choice not in PARENT_CHOICES:
        raise InputError(f"parent_choice must be one of {', '.join(PARENT_CHOICES)}, got {parent_choice!r}")
    sums = layer_sums(scores)  # [L, n, n]
    num_layers, n = sums.shape[0], sums.shape[1]
    tokens = list(tokens) if tokens is not None else [f"t{i}" for i in range(n)]
    if len(tokens) != n:
        raise InputError(f"{len(tokens)} tokens for scores over {n} tokens")
    special = [bool(s) for s in special_mask] if special_mask is not None else [i == 0 for i in range(n)]
    segments = [int(s) for s in segment_ids] if segment_ids is not None else [0] * n
    if len(special) != n or len(segments) != n:
        raise InputError("special_mask and segment_ids must have one entry per token")
    layer_ids = list(layers) if layers is not None else list(range(num_layers))
    if len(layer_ids) != num_layers:
        raise InputError(f"{len(layer_ids)} layer numbers for scores over {num_layers} layers")
    if any(b - a != 1 for a, b in zip(layer_ids, layer_ids[1:], strict=False)):
        raise InputError(
            f"a tree needs attributions of consecutive layers up to the last one, got layers {layer_ids}"
        )
    root = default_root(special, n) if root is None else int(root)
    if not 0 <= root < n:
        raise InputError(f"root {root} is not a token position (0..{n - 1})")

    norm, normalisers = normalise_layers(sums, root)
    kept = norm > tau  # [L, n, n]
    kept[:, root, :] = False  # the root's row counts only through its link to the top node
    top, row_sums = top_node(sums, root)

    tree = AttributionTree(
        tokens=tokens,
        nodes=[TreeNode(root, tokens[root], None, None)],
        edges=[],
        root=root,
        top=top,
        threshold=tau,
        layers=layer_ids,
        special_mask=special,
        segment_ids=segments,
        parent_choice=parent_choice,
        normalisers=normalisers,
        segment_names=[str(x) for x in segment_names] if segment_names else None,
    )
    if top is None:
        tree.message = "the input has a single token: the tree is only the root"
        return tree

    state = np.full(n, ABSENT)
    state[root] = FIXED  # the root has its child (the top node) and can never be a child itself
    state[top] = APPEARED
    tree.nodes.append(TreeNode(top, tokens[top], layer_ids[-1], root))
    tree.edges.append(TreeEdge(root, top, layer_ids[-1], float(row_sums[top])))

    grow = _grow_strongest if parent_choice == "strongest" else _grow_authors
    for layer in range(num_layers - 2, -1, -1):
        grow(tree, layer, layer_ids[layer], norm[layer], kept[layer], state)

    if len(tree.edges) == 1:
        tree.message = _no_edge_message(tree, norm, root, top)
    elif row_sums[top] <= 0:
        tree.message = "no positive attribution between tokens: the top node was chosen arbitrarily"
    return tree


def _join(tree: AttributionTree, parent: int, child: int, layer_id: int, score: float, state) -> None:
    state[parent] = FIXED
    state[child] = APPEARED
    tree.nodes.append(TreeNode(child, tree.tokens[child], layer_id, parent))
    tree.edges.append(TreeEdge(parent, child, layer_id, score))


def _skip_reason(parent_state: int, child_state: int, child: int, root: int) -> str:
    if child == root:
        return SKIP_CHILD_IS_ROOT
    if child_state == FIXED:
        return SKIP_CHILD_FIXED
    if parent_state == APPEARED:
        return SKIP_BOTH_APPEARED
    return SKIP_PARENT_FIXED_CHILD_APPEARED


def _grow_authors(tree, layer: int, layer_id: int, norm: np.ndarray, kept: np.ndarray, state) -> None:
    """The authors' loop: parents in index order, states updated as it goes."""
    n = norm.shape[0]
    for i in range(n):
        if state[i] == ABSENT or not kept[i].any():
            continue
        for j in np.flatnonzero(kept[i]):
            if j == i:
                continue
            if state[j] == ABSENT:
                _join(tree, i, int(j), layer_id, float(norm[i, j]), state)
            else:
                reason = _skip_reason(state[i], state[j], int(j), tree.root)
                tree.skipped.append(SkippedEdge(i, int(j), layer_id, float(norm[i, j]), reason))


def _grow_strongest(tree, layer: int, layer_id: int, norm: np.ndarray, kept: np.ndarray, state) -> None:
    """Parents are the tokens in the tree when the layer starts; each absent token reached by kept
    edges joins under the strongest of them (ties: the lowest index)."""
    start = state.copy()  # joins are applied after all candidates were read
    cand = kept & (start != ABSENT)[:, None]  # [n (parent i), n (child j)]
    np.fill_diagonal(cand, False)
    joins = []
    for j in np.flatnonzero(cand.any(axis=0)):
        rows = np.flatnonzero(cand[:, j])
        best = int(rows[np.argmax(norm[rows, j])]) if start[j] == ABSENT else -1  # argmax: first on ties
        for i in rows:
            if i == best:
                joins.append((best, int(j)))
                continue
            reason = SKIP_WEAKER if best >= 0 else _skip_reason(start[i], start[j], int(j), tree.root)
            tree.skipped.append(SkippedEdge(int(i), int(j), layer_id, float(norm[i, j]), reason))
    for i, j in joins:
        _join(tree, i, j, layer_id, float(norm[i, j]), state)


def _no_edge_message(tree: AttributionTree, norm: np.ndarray, root: int, top: int) -> str:
    tau = tree.threshold
    if norm.shape[0] < 2:
        return "the scores cover a single layer: the tree is the root and the top node"
    below = norm[:-1, top].copy()  # the top node's row in the layers below the last
    below[:, [top, root]] = -math.inf
    layer, j = np.unravel_index(int(np.argmax(below)), below.shape)
    best = float(below[layer, j])
    hint = (
        f"; the top node's strongest connection below the last layer scores {best:.3f} "
        f"(layer {tree.layers[layer]}, to {tree.tokens[j]!r})"
        if math.isfinite(best)
        else ""
    )
    return (
        f"no attention connection from the top node scores above the threshold {tau:g}, so the tree "
        f"is only the root and the top node{hint}; a lower --threshold gives a larger tree"
    )


def build_tree(
    attribution,
    threshold: float = 0.4,
    *,
    parent_choice: ParentChoice = "strongest",
    segment_names: Sequence[str] | None = None,
) -> AttributionTree:
    """The attribution tree of an `Attribution` (called by `Attribution.tree()`).

    The root is the input's first token for classifiers ([CLS], <s>); for a causal LM it is the
    predicting position, the last input token: the last prompt token for next-token and contrastive
    objectives, the position that predicts the last target token for a forced continuation
    (docs/decoders.md). Information flows only from earlier to later tokens there.
    segment_names: names of a pair's two texts (e.g. premise, hypothesis); a causal LM's segments
    are the prompt and the forced continuation."""
    a = attribution
    decoder = getattr(a, "decoder", None)
    tree = build_tree_from_scores(
        a.scores,
        a.tokens,
        a.special_mask,
        threshold,
        layers=a.layers,
        segment_ids=a.segment_ids,
        root=decoder_root(a) if decoder is not None else None,
        parent_choice=parent_choice,
        segment_names=segment_names,
    )
    if decoder is not None and not segment_names:
        tree.segment_names = list(DECODER_SEGMENT_NAMES)
        tree.label = (decoder.get("target") or {}).get("text")
        tree.probability = decoder.get("target_probability")
        top = decoder.get("top") or []
        tree.predicted_label = top[0]["text"] if top else None
    else:
        tree.label = a.label_name(a.target)
        if a.probabilities and 0 <= a.target < len(a.probabilities):
            tree.probability = float(a.probabilities[a.target])
        tree.predicted_label = a.label_name(a.predicted)
    tree.target = int(a.target)
    tree.output = a.output
    tree.output_value = float(a.output_value)
    tree.model_id = a.model_id
    tree.text = a.text
    tree.text_pair = a.text_pair
    tree.example_id = a.example_id
    return tree


set_tree_builder(build_tree)  # `Attribution.tree()` (core cannot import this layer)
