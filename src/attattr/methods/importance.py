"""`Importance`: a dataset-level `[layers, heads]` head-importance table and its JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ResultFileError
from ..core.files import write_json
from .gates import gates_pruning

IMPORTANCE_FORMAT = "attattr-importance/1"


@dataclass
class Importance:
    """Dataset-level head importance.

    scores: `[layers, heads]` float64, higher = more important.
    secondary: optional `[layers, heads]` tie-breaker used when ordering heads.
    per_example: optional `[examples, layers, heads]` (the stored per-example tables).
    """

    scores: torch.Tensor
    method: str
    example_ids: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    secondary: torch.Tensor | None = None
    per_example: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.scores.shape[1])

    def ascending(self) -> torch.Tensor:
        """Flat head indices (layer * heads + head), least important first.

        Ties are broken by `secondary` (smaller first), then by the head index."""
        scores = self.scores.flatten().double().numpy()
        index = np.arange(scores.size)
        keys = [index]
        if self.secondary is not None:
            keys.append(self.secondary.flatten().double().numpy())
        keys.append(scores)
        return torch.from_numpy(np.lexsort(keys).astype(np.int64))

    def prune_gates(self, count: int) -> torch.Tensor:
        """`[layers, heads]` gates with the `count` least important heads at 0."""
        return gates_pruning(self.ascending()[:count], self.num_layers, self.num_heads)

    def to_dict(self, *, per_example: bool = False) -> dict[str, Any]:
        out = {
            "format": IMPORTANCE_FORMAT,
            "method": self.method,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "scores": self.scores.tolist(),
            "secondary": None if self.secondary is None else self.secondary.tolist(),
            "ranking": self.ascending().flip(0).tolist(),
            "example_ids": list(self.example_ids),
            "settings": self.settings,
        }
        if per_example and self.per_example is not None:
            out["per_example"] = self.per_example.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "importance") -> Importance:
        if not isinstance(data, dict) or data.get("format") != IMPORTANCE_FORMAT:
            raise ResultFileError(f"{source}: not an attattr head-importance file")
        try:
            scores = torch.tensor(data["scores"], dtype=torch.float64)
            secondary = data.get("secondary")
            per_example = data.get("per_example")
            if scores.dim() != 2:
                raise ValueError(f"scores must be a [layers, heads] table, got shape {tuple(scores.shape)}")
            return cls(
                scores=scores,
                method=str(data["method"]),
                example_ids=[str(x) for x in data.get("example_ids", [])],
                settings=dict(data.get("settings", {})),
                secondary=None if secondary is None else torch.tensor(secondary, dtype=torch.float64),
                per_example=None if per_example is None else torch.tensor(per_example, dtype=torch.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFileError(f"{source}: malformed head-importance file ({exc})") from None

    def save(self, path: str | Path, *, per_example: bool = True) -> Path:
        return write_json(path, self.to_dict(per_example=per_example))

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        path = Path(path)
        if not path.is_file():
            raise ResultFileError(f"importance file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultFileError(f"cannot read {path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))
