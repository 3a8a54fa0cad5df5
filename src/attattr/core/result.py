"""Attribution: one example's attribution tensors with everything needed to read them.

Shapes: `scores` and `attentions` are float32 tensors `[layers, heads, query, key]`
(row i = query token, column j = key token; token i attends to j, information flows j -> i).
Only the layers listed in `layers` are present, in that order.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ResultFileError

TENSORS_FILE = "attributions.safetensors"
META_FILE = "meta.json"


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

    def tree(self, threshold: float = 0.4, **options):
        """The attribution tree of this example (the paper's Algorithm 1); options go to `build_tree`."""
        from ..analyses.tree.build import build_tree

        return build_tree(self, threshold=threshold, **options)

    # ---- files ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("scores", "attentions")}
        meta["shape"] = list(self.scores.shape)
        meta["completeness"] = self.completeness_table()
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write `attributions.safetensors` and `meta.json` into directory `path` (created).

        A path ending in `.safetensors` writes that file and its metadata beside it (`.json`).
        Both files are written atomically (temp file, then rename). Returns the tensors file.
        """
        tensors_path, meta_path = _paths(Path(path), create=True)
        tensors = {
            "scores": self.scores.detach().to(torch.float32).contiguous().cpu(),
            "attentions": self.attentions.detach().to(torch.float32).contiguous().cpu(),
        }
        _atomic_write(tensors_path, lambda p: save_file(tensors, str(p)))
        meta_text = json.dumps(self.meta(), indent=1)
        _atomic_write(meta_path, lambda p: Path(p).write_text(meta_text))
        return tensors_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Attribution:
        tensors_path, meta_path = _paths(Path(path), create=False)
        for p in (tensors_path, meta_path):
            if not p.is_file():
                raise ResultFileError(f"attribution file not found: {p}")
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ResultFileError(f"cannot read {tensors_path}: corrupt or truncated ({exc})") from None
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultFileError(f"cannot read {meta_path}: not valid JSON ({exc})") from None
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
        return attr

    def to_json(self) -> dict[str, Any]:
        """Summary for `--json` output (no full tensors)."""
        meta = self.meta()
        meta["head_importance"] = self.head_importance().tolist()
        meta["top_edges"] = [e._asdict() for e in self.top_edges(10)]
        return meta


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


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonable(obj: Any) -> Any:
    """Turn tensors / numpy values / dataclasses into plain JSON values."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
