"""Cross-model correlation of head importance (docs/method.md §2c, the paper's Fig. 4)."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np

from ...core.errors import InputError
from ...methods import Importance


def correlate(importances: dict[str, Importance]) -> dict[str, Any]:
    """Pearson and Spearman correlation of the flattened `[layers, heads]` importances, per pair.

    Returns {"names", "pairs": [{"a", "b", "pearson", "pearson_p", "spearman", "spearman_p", "x", "y"}],
    "pearson": matrix, "spearman": matrix}."""
    from scipy.stats import pearsonr, spearmanr

    names = list(importances)
    if len(names) < 2:
        raise InputError("correlation needs the importance of at least two models")
    shapes = {tuple(imp.scores.shape) for imp in importances.values()}
    if len(shapes) != 1:
        raise InputError(f"importances have different shapes {sorted(shapes)}; they must share an encoder")
    flat = {n: importances[n].scores.flatten().double().numpy() for n in names}
    pearson = np.eye(len(names))
    spearman = np.eye(len(names))
    pairs = []
    for (ia, a), (ib, b) in combinations(enumerate(names), 2):
        r, rp = pearsonr(flat[a], flat[b])
        rho, sp = spearmanr(flat[a], flat[b])
        pearson[ia, ib] = pearson[ib, ia] = r
        spearman[ia, ib] = spearman[ib, ia] = rho
        pairs.append(
            {
                "a": a,
                "b": b,
                "pearson": _finite(r),
                "pearson_p": _finite(rp),
                "spearman": _finite(rho),
                "spearman_p": _finite(sp),
                "x": flat[a].tolist(),
                "y": flat[b].tolist(),
            }
        )
    return {
        "kind": "correlation",
        "names": names,
        "pairs": pairs,
        "pearson": [[_finite(v) for v in row] for row in pearson.tolist()],
        "spearman": [[_finite(v) for v in row] for row in spearman.tolist()],
    }


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
