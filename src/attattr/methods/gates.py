"""Head gates: `[layers, heads]` (one set for every example) or `[examples, layers, heads]`
multipliers of the attention probabilities (`AttentionHook(head_gates=...)`); 0 prunes a head."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gates_pruning(pruned: torch.Tensor | Sequence[int], num_layers: int, num_heads: int) -> torch.Tensor:
    """`[layers, heads]` float32 gates: 0 for the flat head indices (layer * heads + head) in `pruned`."""
    gates = torch.ones(num_layers * num_heads)
    index = torch.as_tensor(pruned, dtype=torch.long)
    if index.numel():
        gates[index] = 0.0
    return gates.view(num_layers, num_heads)


def per_example_gates(scores: torch.Tensor, count: int, *, largest: bool = False) -> torch.Tensor:
    """Per-example pruning. scores: `[examples, layers, heads]` (each example's own importance).

    Returns `[examples, layers, heads]` gates with each example's `count` smallest (or largest)
    heads at 0. Ties go to the lower head index."""
    e, num_layers, num_heads = scores.shape
    flat = scores.reshape(e, -1).double()
    order = torch.argsort(-flat if largest else flat, dim=1, stable=True)  # [examples, layers * heads]
    gates = torch.ones(e, num_layers * num_heads)
    if count > 0:
        gates.scatter_(1, order[:, :count], 0.0)
    return gates.view(e, num_layers, num_heads)


def mask_key(gates: torch.Tensor) -> str:
    """A short id for a set of pruned heads (hex of the 0/1 mask); the same set, the same key."""
    bits = "".join("0" if g != 0 else "1" for g in gates.flatten().tolist())
    return f"{len(bits)}:{int(bits, 2):x}"
