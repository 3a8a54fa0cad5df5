"""The report's data: what the page's script reads from the `report-data` JSON block.

Tensors are stored per head as base64 float16 of the values divided by the head's largest
magnitude (the scale is kept as a float), so every value keeps ~3 significant digits relative to
its head's peak: about 2 x 2 bytes per (layer, head, query, key) entry. Trees are normalised to
nodes and edges the page draws.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...analyses.tree.build import (
    DECODER_SEGMENT_NAMES,
    DEFAULT_SEGMENT_NAMES,
    build_tree,
    classify_edge,
)
from ...core.errors import AttattrError, InputError
from ...core.result import Attribution
from .markup import clean_svg

__all__ = [
    "attribution_payload",
    "check_attribution",
    "cmap_anchors",
    "decode_heads",
    "encode_heads",
    "hex_colour",
    "json_for_script",
    "resolve_tree",
    "round_significant",
    "resolve_segment_names",
    "segment_starts",
    "tree_payload",
]


def check_attribution(a: Attribution) -> None:
    """Refuse an attribution whose tensors do not match its tokens and layers."""
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


def resolve_segment_names(
    given: Sequence[str] | None, tree: Mapping[str, Any] | None, a: Attribution | None
) -> list[str]:
    """What the page calls segments 0 and 1: the caller's names, else the tree's own, else
    "prompt" / "continuation" for a causal LM, else "text" / "pair text" (as the tree drawings)."""
    if given is not None:
        names = [str(x).strip() for x in given]
        if len(names) != 2 or not all(names):
            raise InputError(f"segment names must be two non-empty names, got {list(given)!r}")
        return names
    from_tree = (tree or {}).get("segment_names")
    if from_tree:
        return [str(x) for x in from_tree]
    if a is not None and a.decoder is not None:
        return list(DECODER_SEGMENT_NAMES)
    return list(DEFAULT_SEGMENT_NAMES)


def segment_starts(segments: Sequence[int]) -> list[int]:
    """Positions where a new segment begins (empty for a single segment)."""
    return [i for i in range(1, len(segments)) if segments[i] != segments[i - 1]]


def attribution_payload(a: Attribution, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Tokens, the head-importance grid `[layers, heads]`, and both tensors encoded per head.

    names: what segments 0 and 1 are called (a sentence pair's two texts)."""
    importance = a.head_importance().to(torch.float64)  # [layers, heads]
    imp = torch.nan_to_num(importance, nan=0.0)
    flat_best = int(torch.argmax(imp).item()) if imp.numel() else 0
    heads = int(a.scores.shape[1])
    attn_scales, attn_data = encode_heads(a.attentions)
    attr_scales, attr_data = encode_heads(a.scores)
    return {
        "tokens": list(a.tokens),
        "special": [bool(s) for s in a.special_mask],
        "segments": [int(s) for s in a.segment_ids],
        "segment_names": list(names or DEFAULT_SEGMENT_NAMES),
        "layers": [int(x) for x in a.layers],
        "heads": heads,
        "n": len(a.tokens),
        "importance": [[round_significant(v) for v in row] for row in importance.tolist()],
        "initial": [a.layers[flat_best // heads], flat_best % heads] if heads else [0, 0],
        "attention": {"scales": attn_scales, "data": attn_data, "max": max(attn_scales, default=0.0)},
        "attribution": {"scales": attr_scales, "data": attr_data, "max": max(attr_scales, default=0.0)},
    }


def round_significant(v: float, digits: int = 6) -> float | None:
    """`v` to `digits` significant digits; None for NaN and infinities (JSON has neither)."""
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def cmap_anchors(name: str, count: int = 17) -> list[str]:
    """`count` evenly spaced colours of a matplotlib colour map, as #rrggbb (the page interpolates)."""
    from matplotlib import colormaps

    cmap = colormaps[name]
    return [hex_colour(cmap(i / (count - 1))) for i in range(count)]


def hex_colour(rgba: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def json_for_script(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can end it or open a comment."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---- tree --------------------------------------------------------------------------------------
def resolve_tree(
    tree: Any, attribution: Attribution | None, names: Sequence[str] | None = None
) -> tuple[str | None, dict | None, str | None]:
    """(inline SVG, drawable JSON, note). At most one of SVG/JSON is set; the note explains gaps.

    tree: an `AttributionTree`, its `to_json()` dict, SVG or JSON text, a path to an .svg/.json
    file, None (built from `attribution` when there is one) or False (no tree).
    names: segment names given to a tree built here."""
    if tree is False:
        return None, None, None
    if tree is None:
        if attribution is None:
            return None, None, None
        try:
            tree = build_tree(attribution, segment_names=names)
        except (ImportError, AttattrError, ValueError) as exc:
            return None, None, f"No attribution tree: {exc}"
    if isinstance(tree, Path) or (isinstance(tree, str) and not tree.lstrip().startswith(("<", "{"))):
        p = Path(tree)
        if not p.is_file():
            raise InputError(f"tree file not found: {p}")
        tree = p.read_text(encoding="utf-8")
    if isinstance(tree, str):
        if tree.lstrip().startswith("<"):
            return clean_svg(tree, "tree"), None, None
        try:
            tree = json.loads(tree)
        except json.JSONDecodeError as exc:
            raise InputError(f"tree is neither SVG nor JSON: {exc}") from None
    if hasattr(tree, "to_json"):
        tree = tree.to_json()
    if not isinstance(tree, Mapping):
        raise InputError(f"cannot draw a tree from {type(tree).__name__}")
    try:
        payload = tree_payload(tree, attribution)
    except (KeyError, TypeError, ValueError) as exc:
        return None, None, f"The attribution tree could not be drawn: malformed tree data ({exc})"
    return None, payload, payload.get("message")


def tree_payload(tree: Mapping[str, Any], attribution: Attribution | None) -> dict[str, Any]:
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
    segments = tree.get("segment_ids") or (attribution.segment_ids if attribution is not None else [0] * n)
    if len(special) != n or len(segments) != n:
        raise ValueError(f"special_mask and segment_ids need one entry per token ({n})")
    root = int(tree.get("root", nodes[0][0] if nodes else 0))
    # one definition of an edge's kind (within / cross / special / root): the tree module's
    kinds = [
        classify_edge(p, c, root=root, special_mask=special, segment_ids=segments) for p, c, _, _ in edges
    ]
    return {
        "tokens": tokens,
        "special": [bool(s) for s in special],
        "nodes": [[i, layer] for i, layer in nodes],
        "edges": [[p, c, layer, round_significant(s, 4)] for p, c, layer, s in edges],
        "kinds": kinds,
        "segments": [int(s) for s in segments],
        "segment_names": tree.get("segment_names"),
        "root": root,
        "layers": [int(x) for x in layers],
        "threshold": tree.get("threshold"),
        "message": tree.get("message"),
    }
