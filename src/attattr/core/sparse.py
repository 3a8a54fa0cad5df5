"""Sparse attributions: the top-k connections of each head, for inputs where the dense
`[layers, heads, query, key]` tensors would be large (a 30-layer, 9-head decoder on 512 tokens:
283 MB per tensor in float32).

Head importance (max pooling) and the top connections overall are exact from any k >= 1: the
largest entry of a head is among its top k. What a sparse result cannot give back is anything that
sums over a head's whole matrix: completeness per head and the attribution tree (they need the dense
tensors, or `Attribution.completeness_table`, which is kept as computed).

    sparse = SparseAttribution.from_attribution(attr, k=32, heads=[(23, 3), (29, 1)])
    sparse.save("out/")                         # attributions-sparse.safetensors + meta-sparse.json
    SparseAttribution.load("out/").head_importance()
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from . import files
from .errors import InputError, ResultFileError
from .result import Attribution, Edge

TENSORS_FILE = "attributions-sparse.safetensors"
META_FILE = "meta-sparse.json"
FORMAT = "attattr-sparse/1"


@dataclass
class SparseAttribution:
    """The k largest attribution entries of each kept head, with their attention weights.

    query, key: `[layers, heads, k]` token positions; scores, attentions: `[layers, heads, k]`
    float32, largest score first. `heads` lists the kept (layer, head) pairs in the model's
    numbering, layer-major; the tensors' first two dimensions index `layers` and the heads kept
    per layer (`head_ids`). `meta` is the dense attribution's metadata (tokens, F, completeness...)."""

    layers: list[int]
    head_ids: list[int]
    query: torch.Tensor
    key: torch.Tensor
    scores: torch.Tensor
    attentions: torch.Tensor
    k: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return list(self.meta.get("tokens", []))

    @classmethod
    def from_attribution(
        cls,
        attr: Attribution,
        k: int,
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
    ) -> SparseAttribution:
        """Keep the top-k entries of each head of `layers` (model numbering; default all of the
        attribution's) and `heads` (head indices; default all)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        layers = list(attr.layers) if layers is None else [int(x) for x in layers]
        missing = [x for x in layers if x not in attr.layers]
        if missing or not layers:
            raise InputError(
                f"layers {missing or '(none)'} are not in this attribution (layers {attr.layers})"
            )
        num_heads = int(attr.scores.shape[1])
        heads = list(range(num_heads)) if heads is None else [int(h) for h in heads]
        if not heads or any(not 0 <= h < num_heads for h in heads):
            raise InputError(f"heads must lie within 0..{num_heads - 1}, got {heads}")
        pos = [attr.layers.index(x) for x in layers]
        scores = attr.scores[pos][:, heads].flatten(2)  # [layers, heads, n * n]
        attentions = attr.attentions[pos][:, heads].flatten(2)
        n = len(attr.tokens)
        k = min(k, n * n)
        values, index = scores.topk(k, dim=2)  # [layers, heads, k]
        meta = attr.meta()
        meta.pop("shape", None)
        return cls(
            layers=layers,
            head_ids=heads,
            query=torch.div(index, n, rounding_mode="floor").to(torch.int32),
            key=(index % n).to(torch.int32),
            scores=values.float().contiguous(),
            attentions=attentions.gather(2, index).float().contiguous(),
            k=k,
            meta=meta,
        )

    def head_importance(self) -> torch.Tensor:
        """`[layers, heads kept]`: each head's largest attribution (exact: the first of its top k)."""
        return self.scores[:, :, 0]

    def top_edges(self, count: int = 10) -> list[Edge]:
        """The `count` largest kept entries over all kept heads (exact for count <= k)."""
        flat = self.scores.flatten()
        values, index = flat.topk(min(count, flat.numel()))
        per_layer = len(self.head_ids) * self.k
        tokens = self.tokens
        edges = []
        for v, i in zip(values.tolist(), index.tolist(), strict=True):
            li, rest = divmod(i, per_layer)
            hi, j = divmod(rest, self.k)
            q, key = int(self.query[li, hi, j]), int(self.key[li, hi, j])
            edges.append(Edge(self.layers[li], self.head_ids[hi], q, key, tokens[q], tokens[key], v))
        return edges

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.query, self.key, self.scores, self.attentions))

    # ---- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `attributions-sparse.safetensors` and `meta-sparse.json` (with the tensors' sha256)
        into `folder`; returns the tensor file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = save_tensors(
            {"query": self.query, "key": self.key, "scores": self.scores, "attentions": self.attentions}
        )
        path = files.write_bytes(folder / TENSORS_FILE, data)
        files.write_json(
            folder / META_FILE,
            {
                "format": FORMAT,
                "layers": self.layers,
                "head_ids": self.head_ids,
                "k": self.k,
                "tensors_sha256": hashlib.sha256(data).hexdigest(),
                "attribution": self.meta,
            },
        )
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SparseAttribution:
        folder = Path(folder)
        tensors_path, meta_path = folder / TENSORS_FILE, folder / META_FILE
        for p in (tensors_path, meta_path):
            if not p.is_file():
                raise ResultFileError(f"sparse attribution file not found: {p}")
        data = tensors_path.read_bytes()
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_tensors(data)
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, ValueError) as exc:
            raise ResultFileError(f"cannot read the sparse attribution in {folder}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ResultFileError(f"{meta_path}: not an attattr sparse attribution")
        if meta.get("tensors_sha256") != hashlib.sha256(data).hexdigest():
            raise ResultFileError(f"{tensors_path} does not match the checksum in {meta_path.name}")
        shape = (len(meta["layers"]), len(meta["head_ids"]), meta["k"])
        if any(tuple(tensors[name].shape) != shape for name in ("query", "key", "scores", "attentions")):
            raise ResultFileError(f"{tensors_path}: tensor shapes do not match {shape}")
        return cls(
            layers=list(meta["layers"]),
            head_ids=list(meta["head_ids"]),
            query=tensors["query"],
            key=tensors["key"],
            scores=tensors["scores"],
            attentions=tensors["attentions"],
            k=int(meta["k"]),
            meta=dict(meta.get("attribution") or {}),
        )
