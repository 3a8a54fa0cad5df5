"""How the engine's work is cut into forward/backward passes that fit a memory budget.

The work of an attribution is a set of *rows*: one row is one example's copy forked at a target
layer l with its attention scaled by alpha (a gradient row, which lives with its activations
through layers l..L-1 until the backward pass), or the same without gradients (a forward row, for
F(alpha * A^l) alone). Rows of one layer form a *group*; a pass takes at most one chunk of each
layer's group, in layer order (a staircase: copies for a higher layer are forked from the clean
rows when the pass reaches that layer). `plan_rows` packs chunks into passes until the next would
exceed the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import InputError
from .hooks import key_value_heads, model_num_heads

DEFAULT_BUDGET_FRACTION = 0.35
# On a CPU, bigger passes than this gained nothing when measured and were 15-30 % slower on short
# inputs (their activations no longer stay in cache and come from fresh pages): exact mode on 8 RT
# sentences took 0.95 s per example with a 2 GiB budget against 1.3 s with 7 GiB.
CPU_BUDGET_CAP = 2 << 30
GPU_BUDGET_FRACTION = 0.6  # of the device's free memory, measured when the attribution starts


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of layer `layer`'s group."""

    layer: int
    start: int
    stop: int


def plan_rows(
    rows_per_layer: Sequence[tuple[int, int]],
    *,
    num_layers: int,
    batch: int,
    per_row_layer: int,
    budget: int,
    granule: int = 1,
    per_row: int = 0,
) -> list[list[Chunk]]:
    """Passes of gradient rows under `budget` bytes.

    rows_per_layer: (layer, number of rows) in increasing layer order.
    A row forked at layer l costs (L - l) * per_row_layer + per_row (`per_row`: what the objective
    needs once per row, a causal LM's logits at the positions F reads); the batch's clean rows cost
    batch * (L * per_row_layer + per_row) in every pass. A layer's rows are cut into chunks of whole
    granules (a granule = one node for every example of a regular rule), as many as fit beside the
    clean rows, at least one granule. A pass holds at most one chunk per layer.
    """
    clean_cost = batch * (num_layers * per_row_layer + per_row)
    passes: list[list[Chunk]] = []
    current: list[Chunk] = []
    used = clean_cost
    for layer, count in rows_per_layer:
        if count <= 0:
            continue
        granule_cost = granule * ((num_layers - layer) * per_row_layer + per_row)
        per_chunk = max(1, int((budget - clean_cost) // max(granule_cost, 1))) * granule
        for start in range(0, count, per_chunk):
            stop = min(count, start + per_chunk)
            cost = (stop - start) * ((num_layers - layer) * per_row_layer + per_row)
            if current and (used + cost > budget or current[-1].layer == layer):
                passes.append(current)
                current, used = [], clean_cost
            current.append(Chunk(layer, start, stop))
            used += cost
    if current:
        passes.append(current)
    return passes


def plan_forward_rows(
    count: int, *, batch: int, per_row_layer: int, budget: int, per_row: int = 0
) -> list[tuple[int, int]]:
    """Row ranges of forward-only rows (no gradients) per pass: nothing is kept for a backward
    pass, so a row costs about two layers' activations while it runs, whatever its depth, and
    what the objective needs once per row (`per_row`)."""
    per_row = 2 * per_row_layer + per_row
    room = max(1, int((budget - batch * per_row) // max(per_row, 1)))
    return [(start, min(count, start + room)) for start in range(0, count, room)]


def plan_passes(
    layers: Sequence[int],
    num_alphas: int,
    num_layers: int,
    batch: int,
    seq_len: int,
    model,
    budget: int,
    dtype: torch.dtype | None,
    per_row: int = 0,
) -> list[list[tuple[int, int, int]]]:
    """The passes of a fixed rule with `num_alphas` nodes, as (layer, k0, k1) node ranges: every
    example of the batch at nodes k0..k1-1 of `layer` (rows node-major, example-minor)."""
    plan = plan_rows(
        [(layer, num_alphas * batch) for layer in layers],
        num_layers=num_layers,
        batch=batch,
        per_row_layer=activation_bytes(model, seq_len, dtype),
        budget=budget,
        granule=batch,
        per_row=per_row,
    )
    return [[(c.layer, c.start // batch, c.stop // batch) for c in chunks] for chunks in plan]


def activation_bytes(model, seq_len: int, dtype: torch.dtype | None) -> int:
    """Rough bytes kept for the backward pass per batch row per layer (hidden states, FFN, attention).

    The projections count by their own widths: queries heads * head_dim, keys and values
    kv_heads * head_dim each, and under grouped-query attention the keys and values repeated for
    every query head (kept for the backward pass); without it this is 14 hidden-sized vectors per
    token, as before. The attention matrices are per query head."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", 768)
    ffn = getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", 4 * hidden)
    heads = model_num_heads(model)
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    kv_heads = key_value_heads(model)
    repeated = 2 * heads * head_dim if kv_heads < heads else 0
    width = 11 * hidden + heads * head_dim + 2 * kv_heads * head_dim + repeated
    floats = seq_len * (width + 4 * ffn) + 5 * heads * seq_len * seq_len
    return int(floats * 4 * (1.25 if dtype == torch.bfloat16 else 1.0))


def default_memory_budget(device: torch.device | str) -> int:
    """A safe fraction of the memory that is free now: the GPU's own (`torch.cuda.mem_get_info`
    of that device), or CPU RAM up to CPU_BUDGET_CAP."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_FRACTION)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info.get("MemAvailable", 8 << 30)
    except OSError:
        available = 8 << 30
    return min(int(available * DEFAULT_BUDGET_FRACTION), CPU_BUDGET_CAP)


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """A torch device the machine has, or InputError naming what is missing (one line)."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if resolved.index is not None and not 0 <= resolved.index < count:
            raise InputError(f"device {device!r}: this machine has {count} CUDA device(s)")
    elif resolved.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    return resolved
