"""FLOP counts of the work an attribution actually needs, from the model's shape.

Per example of n tokens (hidden d, FFN width f, L layers, C classes), one multiply-add = 2 FLOPs:
  layer forward     8nd^2 (Q, K, V, O) + 4ndf (FFN) + 4n^2 d (QK^T and A.V)
  layer backward    the same with the gradient of the inputs only (no weight gradients), and both
                    operands of QK^T and A.V: 8nd^2 + 4ndf + 8n^2 d
  target layer l    its scaled copies need only A.V (V is that of the clean row), O and the FFN:
                    2nd^2 + 4ndf + 2n^2 d forward, the same backward (down to alpha*A, not to V)
  pooler + head     2d^2 + 2dC per row, forward and backward
One clean forward pass, then per (target layer l, node): layer l, layers l+1..L-1 and the head,
forward and backward. Softmax, GELU and LayerNorm are not counted (they are not matrix products).
Work a particular implementation repeats (the paper's full passes per copy) is not credited.
"""

from __future__ import annotations

from collections.abc import Sequence


def model_shape(model) -> dict[str, int]:
    cfg = model.config
    return {
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "ffn": cfg.intermediate_size,
        "classes": cfg.num_labels,
    }


def _per_layer(nodes: int | Sequence[int], layers: int) -> list[int]:
    """Nodes per layer: the same count for every layer, or one count per layer (error control)."""
    return [int(nodes)] * layers if isinstance(nodes, int | float) else [int(x) for x in nodes]


def attribution_flops(shape: dict[str, int], n: int, nodes: int | Sequence[int]) -> float:
    """FLOPs needed for one example of n tokens and `nodes` integration nodes (one count, or one per
    layer), all layers."""
    L, d, f, c = shape["layers"], shape["hidden"], shape["ffn"], shape["classes"]
    fwd = 8 * n * d * d + 4 * n * d * f + 4 * n * n * d
    bwd = 8 * n * d * d + 4 * n * d * f + 8 * n * n * d
    target = 2 * n * d * d + 4 * n * d * f + 2 * n * n * d
    head = 2 * d * d + 2 * d * c
    total = L * fwd + head
    for layer, count in enumerate(_per_layer(nodes, L)):
        above = L - 1 - layer
        total += count * (2 * target + above * (fwd + bwd) + 2 * head)
    return float(total)


def matmul_flops(size: int) -> float:
    return 2.0 * size**3


def _layer_costs(shape: dict[str, int], n: int) -> tuple[float, float, float]:
    d, f = shape["hidden"], shape["ffn"]
    fwd = 8 * n * d * d + 4 * n * d * f + 4 * n * n * d
    bwd = 8 * n * d * d + 4 * n * d * f + 8 * n * n * d
    return float(fwd), float(bwd), float(2 * d * d + 2 * d * shape["classes"])


def paper_executed_flops(shape: dict[str, int], n: int, steps: int) -> float:
    """Matrix-product FLOPs the paper's algorithm executes: per target layer one clean pass and the
    `steps` copies through all L layers, then back down to the target layer."""
    L = shape["layers"]
    fwd, bwd, head = _layer_costs(shape, n)
    total = 0.0
    for layer in range(L):
        total += L * fwd + head  # reading A^l
        total += steps * (L * fwd + head + (L - layer) * bwd + head)
    return total


def engine_executed_flops(
    shape: dict[str, int], n: int, nodes: int | Sequence[int], subintervals: Sequence[int] | None = None
) -> float:
    """Matrix-product FLOPs attattr's engine executes for one example in one staircase pass: a
    reference pass (clean rows, and the alpha = 0 rows of every target layer for the completeness
    baselines), then clean rows up to the last target and `nodes` copies per target layer (one
    count, or one per layer), forward and back (the copies run their target layer in full); with
    error control, one forward row per new subinterval end (its F). The clean rows of later
    refinement rounds are not counted."""
    L = shape["layers"]
    fwd, bwd, head = _layer_costs(shape, n)
    total = L * fwd + head + sum((L - layer) * fwd + head for layer in range(L))  # reference pass
    total += (L - 1) * (fwd + bwd)  # clean rows through the staircase
    total += sum(
        count * ((L - layer) * (fwd + bwd) + 2 * head) for layer, count in enumerate(_per_layer(nodes, L))
    )
    for layer, parts in enumerate(subintervals or []):
        total += (parts - 1) * ((L - layer) * fwd + head)
    return total
