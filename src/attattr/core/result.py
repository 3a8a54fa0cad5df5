"""Attribution: one example's attribution tensors with everything needed to read them.

Shapes: `scores` and `attentions` are float32 tensors `[layers, heads, query, key]`
(row i = query token, column j = key token; token i attends to j, information flows j -> i).
Only the layers listed in `layers` are present, in that order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from . import files
from .errors import ResultFileError

TENSORS_FILE = "attributions.safetensors"
META_FILE = "meta.json"
CHECKSUM_KEY = "tensors_sha256"  # in meta.json: the SHA-256 of the tensor file it belongs to


class Edge(NamedTuple):
    """One attributed attention connection: query token attends to key token in (layer, head)."""

    layer: int
    head: int
    query: int
    key: int
    query_token: str
    key_token: str
    score: float


@dataclass
class Attribution:
    scores: torch.Tensor  # [layers, heads, n, n] float32, signed
    attentions: torch.Tensor  # [layers, heads, n, n] float32, rows sum to 1
    tokens: list[str]
    token_ids: list[int]
    segment_ids: list[int]  # 0 for the first text, 1 for the pair text
    special_mask: list[bool]  # True for [CLS]/[SEP]/<s>/... tokens
    layers: list[int]  # the model layers present in `scores`, in order
    target: int  # class index whose output F was attributed
    target_mode: str  # "predicted", "gold" or "index"
    output: str  # "prob", "logit" or "logprob"
    output_value: float  # F(A): the output with every layer's attention intact
    baseline_values: list[float]  # per layer in `layers`: F(0 * A^l)
    score_sums: list[float]  # per layer in `layers`: sum over heads, i, j of scores
    probabilities: list[float]  # the model's class probabilities for the input
    predicted: int
    rule: str
    steps: int
    model_id: str
    text: str = ""
    text_pair: str | None = None
    label: int | None = None  # gold label when known
    label_names: list[str] | None = None
    example_id: str | None = None
    dtype: str = "float32"
    truncated: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    # Causal LMs (docs/decoders.md): what F reads -- objective, output, target and foil tokens, the
    # positions read (the first is the predicting position), the prompt's length, the top next
    # tokens with their probabilities. None for classifiers.
    decoder: dict[str, Any] | None = None
    # How each layer was integrated (docs/method.md §1), per layer in `layers`: {"layer", "nodes"
    # (gradient evaluations), "subintervals", "dtype", "error_estimate" (relative; None for a fixed
    # rule, or where the scores are all zero), "converged" (estimate within `tol`; None for a fixed
    # rule)}. Files saved before these fields existed load with None.
    tol: float | None = None  # the error-controlled mode's tolerance; None for a fixed rule
    integration: list[dict[str, Any]] | None = None

    # ---- derived quantities -------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def completeness_gaps(self) -> torch.Tensor:
        """Per layer: sum of scores minus (F(A) - F(0*A^l)); the integration error made visible."""
        sums = torch.tensor(self.score_sums, dtype=torch.float64)
        deltas = torch.tensor([self.output_value - b for b in self.baseline_values], dtype=torch.float64)
        return sums - deltas

    def completeness_table(self) -> list[dict[str, float]]:
        gaps = self.completeness_gaps().tolist()
        return [
            {
                "layer": layer,
                "sum_scores": s,
                "output_delta": self.output_value - b,
                "gap": g,
            }
            for layer, s, b, g in zip(self.layers, self.score_sums, self.baseline_values, gaps, strict=True)
        ]

    def unconverged_layers(self) -> list[int]:
        """The layers whose error estimate missed `tol` within the work budget."""
        return [r["layer"] for r in self.integration or [] if r.get("converged") is False]

    def head_importance(self) -> torch.Tensor:
        """`[layers, heads]`: max over (i, j) of each head's attribution (max pooling, as the paper)."""
        return self.scores.flatten(2).amax(dim=2)

    def top_edges(self, k: int = 10, *, layer: int | None = None, head: int | None = None) -> list[Edge]:
        """The k largest attribution entries over all (or the given) layers and heads."""
        scores = self.scores
        layer_idx = list(range(scores.shape[0]))
        if layer is not None:
            if layer not in self.layers:
                raise ValueError(f"layer {layer} not in this attribution (layers {self.layers})")
            pos = self.layers.index(layer)
            scores, layer_idx = scores[pos : pos + 1], [pos]
        head_offset = 0
        if head is not None:
            scores, head_offset = scores[:, head : head + 1], head
        flat = scores.flatten()
        k = min(k, flat.numel())
        values, idx = torch.topk(flat, k)
        _, h_n, n, _ = scores.shape
        edges = []
        for v, i in zip(values.tolist(), idx.tolist(), strict=True):
            li, rest = divmod(i, h_n * n * n)
            h, rest = divmod(rest, n * n)
            q, key = divmod(rest, n)
            edges.append(
                Edge(
                    self.layers[layer_idx[li]],
                    h + head_offset,
                    q,
                    key,
                    self.tokens[q],
                    self.tokens[key],
                    v,
                )
            )
        return edges

    def label_name(self, index: int) -> str:
        if self.label_names and 0 <= index < len(self.label_names):
            return self.label_names[index]
        return str(index)

    def tree(self, threshold: float = 0.4, **options: Any):
        """The attribution tree of this example (the paper's Algorithm 1); options go to `build_tree`.

        The builder lives in `attattr.analyses.tree` (a layer above this one) and registers itself
        when the package is imported (`set_tree_builder`)."""
        if _tree_builder is None:
            raise RuntimeError("no tree builder registered: import attattr.analyses.tree first")
        return _tree_builder(self, threshold=threshold, **options)

    # ---- files ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("scores", "attentions")}
        meta["shape"] = list(self.scores.shape)
        meta["completeness"] = self.completeness_table()
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write `attributions.safetensors` and `meta.json` into directory `path` (created).

        A path ending in `.safetensors` writes that file and its metadata beside it (`.json`).
        The pair is written as a unit: the tensors first, then the metadata, which carries the
        SHA-256 of the tensor file (each file atomic: temp file, then rename). A kill between the
        two leaves a pair that `load` refuses, never a silent mismatch. Returns the tensors file.
        """
        tensors_path, meta_path = _paths(Path(path), create=True)
        data = save_tensors(
            {
                "scores": self.scores.detach().to(torch.float32).contiguous().cpu(),
                "attentions": self.attentions.detach().to(torch.float32).contiguous().cpu(),
            }
        )
        files.write_bytes(tensors_path, data)
        meta = self.meta()
        meta[CHECKSUM_KEY] = hashlib.sha256(data).hexdigest()
        files.write_json(meta_path, meta)
        return tensors_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Attribution:
        """Read a saved attribution, refusing a corrupt, mismatched or malformed pair (ResultFileError).

        Files saved before the checksum existed (no `tensors_sha256` in meta.json) still load;
        for them only the tensor shapes are checked against the metadata."""
        tensors_path, meta_path = _paths(Path(path), create=False)
        for p in (tensors_path, meta_path):
            if not p.is_file():
                raise ResultFileError(f"attribution file not found: {p}")
        try:
            data = tensors_path.read_bytes()
            tensors = load_tensors(data)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ResultFileError(f"cannot read {tensors_path}: corrupt or truncated ({exc})") from None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultFileError(f"cannot read {meta_path}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ResultFileError(f"{meta_path}: not an attattr attribution (a JSON {type(meta).__name__})")
        expected_sum = meta.get(CHECKSUM_KEY)
        if expected_sum is not None and expected_sum != hashlib.sha256(data).hexdigest():
            raise ResultFileError(
                f"{tensors_path} does not match the checksum in {meta_path.name}: the tensors were changed "
                "after saving, or the two files come from different saves (an interrupted save); save again"
            )
        names = {f.name for f in fields(cls)} - {"scores", "attentions"}
        required = {f.name for f in fields(cls) if f.default is f.default_factory is _MISSING} - {
            "scores",
            "attentions",
        }
        missing = sorted((required - set(meta)) | ({"scores", "attentions"} - set(tensors)))
        if missing:
            raise ResultFileError(
                f"{meta_path.parent}: not an attattr attribution (missing {', '.join(missing)})"
            )
        for name in sorted(names & set(meta)):
            if not _META_TYPES[name][0](meta[name]):
                raise ResultFileError(
                    f"{meta_path}: field {name!r} must be {_META_TYPES[name][1]}, got {_shown(meta[name])}"
                )
        attr = cls(
            scores=tensors["scores"],
            attentions=tensors["attentions"],
            **{k: v for k, v in meta.items() if k in names},
        )
        n = len(attr.tokens)
        expected = (len(attr.layers), attr.scores.shape[1] if attr.scores.dim() == 4 else -1, n, n)
        if tuple(attr.scores.shape) != expected or attr.attentions.shape != attr.scores.shape:
            raise ResultFileError(
                f"{tensors_path}: tensor shape {tuple(attr.scores.shape)} does not match "
                f"{len(attr.layers)} layers and {n} tokens in {meta_path.name}"
            )
        per_token = {
            "token_ids": attr.token_ids,
            "segment_ids": attr.segment_ids,
            "special_mask": attr.special_mask,
        }
        for name, values in per_token.items():
            if len(values) != n:
                raise ResultFileError(f"{meta_path}: {name} has {len(values)} entries for {n} tokens")
        per_layer = {"baseline_values": attr.baseline_values, "score_sums": attr.score_sums}
        if attr.integration is not None:
            per_layer["integration"] = attr.integration
        for name, values in per_layer.items():
            if len(values) != len(attr.layers):
                raise ResultFileError(
                    f"{meta_path}: {name} has {len(values)} entries for {len(attr.layers)} layers"
                )
        return attr

    def to_json(self) -> dict[str, Any]:
        """Summary for `--json` output (no full tensors)."""
        meta = self.meta()
        meta["head_importance"] = self.head_importance().tolist()
        meta["top_edges"] = [e._asdict() for e in self.top_edges(10)]
        return meta


_tree_builder: Callable[..., Any] | None = None


def set_tree_builder(build: Callable[..., Any]) -> None:
    """Register `build(attribution, threshold=..., **options)` as what `Attribution.tree` calls."""
    global _tree_builder
    _tree_builder = build


_MISSING = fields(Attribution)[0].default  # dataclasses.MISSING, without importing the private name


def _paths(path: Path, *, create: bool) -> tuple[Path, Path]:
    if path.suffix == ".safetensors":
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path / TENSORS_FILE, path / META_FILE


# ---- metadata types: a hand-edited or foreign meta.json is refused with the field's name ---------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


_META_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tokens": (_list_of(_is_str), "a list of strings"),
    "token_ids": (_list_of(_is_int), "a list of integers"),
    "segment_ids": (_list_of(_is_int), "a list of integers"),
    "special_mask": (_list_of(_is_bool), "a list of true/false"),
    "layers": (_list_of(_is_int), "a list of integers"),
    "target": (_is_int, "an integer"),
    "target_mode": (_is_str, "a string"),
    "output": (_is_str, "a string"),
    "output_value": (_is_number, "a number"),
    "baseline_values": (_list_of(_is_number), "a list of numbers"),
    "score_sums": (_list_of(_is_number), "a list of numbers"),
    "probabilities": (_list_of(_is_number), "a list of numbers"),
    "predicted": (_is_int, "an integer"),
    "rule": (_is_str, "a string"),
    "steps": (_is_int, "an integer"),
    "model_id": (_is_str, "a string"),
    "text": (_is_str, "a string"),
    "text_pair": (_optional(_is_str), "a string or null"),
    "label": (_optional(_is_int), "an integer or null"),
    "label_names": (_optional(_list_of(_is_str)), "a list of strings or null"),
    "example_id": (_optional(lambda v: _is_str(v) or _is_int(v)), "a string, an integer or null"),
    "dtype": (_is_str, "a string"),
    "truncated": (_is_bool, "true or false"),
    "versions": (
        lambda v: isinstance(v, dict) and all(_is_str(x) for x in v.values()),
        "an object of strings",
    ),
    "decoder": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "tol": (_optional(_is_number), "a number or null"),
    "integration": (
        _optional(_list_of(lambda v: _is_integration_record(v))),
        "null or a list of per-layer records (layer, nodes, subintervals, dtype, error_estimate, converged)",
    ),
}


def _is_integration_record(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and _is_int(v.get("layer"))
        and _is_int(v.get("nodes"))
        and _is_int(v.get("subintervals"))
        and _is_str(v.get("dtype"))
        and _optional(_is_number)(v.get("error_estimate"))
        and _optional(_is_bool)(v.get("converged"))
    )


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
