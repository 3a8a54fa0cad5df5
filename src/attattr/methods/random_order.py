"""random: seeded uniform numbers, a baseline order that needs no examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Method, Record, register_method
from .importance import Importance


def _merge(
    records: Sequence[Record], *, num_layers: int, num_heads: int, settings: dict[str, Any]
) -> Importance:
    seed = int(settings.get("seed", 0))
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(num_layers, num_heads, generator=generator, dtype=torch.float64)
    return Importance(scores, "random", [], {**settings, "seed": seed})


register_method(Method("random", None, _merge, needs_labels=False, summary="seeded uniform numbers"))
