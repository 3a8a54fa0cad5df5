"""Integration over alpha in [0, 1] (docs/method.md §1): fixed rules as data, the nested
Gauss-Kronrod levels of the error-controlled mode, the named presets, and the one form in which a
dataset run records its integration (`integration_settings`, `integration_record`).

Fixed rules: `rule(name, m) -> (alphas, weights)`.

Error-controlled mode (`steps="auto"`): each layer's [0, 1] is covered by subintervals, each
integrated at one of two nested levels that reuse every node already computed:
  level 0: the 3-point Gauss-Legendre rule; its embedded lower-order rule is the midpoint (the
           middle node, which 3-point Gauss-Legendre contains);
  level 1: the 7-point Kronrod extension of level 0 (4 new nodes); its embedded rule is level 0.
A subinterval's error signal compares the level's result with its embedded rule (see
`attattr.core.engine`); a subinterval that misses it goes up a level, then is halved.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

RULES = ("riemann-right", "riemann-left", "riemann-mid", "trapezoid", "gauss-legendre")
AUTO = "auto"  # steps="auto": error-controlled integration
# The rule an integer `steps` uses when no rule is named: the paper's, so `steps=20` alone gives
# the paper's numbers (and every explicit call keeps the numbers it gave before the default changed).
DEFAULT_RULE = "riemann-right"
DEFAULT_STEPS = 20  # the nodes a named rule uses when `steps` is not given
# Relative error per layer that the error-controlled mode aims for. Measured (benchmarks/README.md):
# at this tolerance every layer's true error was below the paper rule's on every bench input.
DEFAULT_TOL = 1e-2
# Work cap per layer and example: at most this many subintervals (7 nodes each at level 1).
DEFAULT_MAX_SUBINTERVALS = 32


def rule(name: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes alpha_k and weights w_k with  integral_0^1 f(a) da  ~=  sum_k w_k f(alpha_k).

    Returned as float64 arrays of length `steps` (the trapezoid rule uses steps + 1 nodes
    for `steps` intervals).
    """
    if not isinstance(steps, int | np.integer) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    m = int(steps)
    if name == "riemann-right":
        alphas = np.arange(1, m + 1, dtype=np.float64) / m
        weights = np.full(m, 1.0 / m)
    elif name == "riemann-left":
        alphas = np.arange(0, m, dtype=np.float64) / m
        weights = np.full(m, 1.0 / m)
    elif name == "riemann-mid":
        alphas = (np.arange(0, m, dtype=np.float64) + 0.5) / m
        weights = np.full(m, 1.0 / m)
    elif name == "trapezoid":
        alphas = np.arange(0, m + 1, dtype=np.float64) / m
        weights = np.full(m + 1, 1.0 / m)
        weights[0] = weights[-1] = 0.5 / m
    elif name == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(m)
        alphas = (x + 1.0) / 2.0
        weights = w / 2.0
    else:
        raise InputError(f"unknown integration rule {name!r}; choose one of: {', '.join(RULES)}")
    return alphas, weights


# ---- Gauss-Kronrod ------------------------------------------------------------------------------
@functools.cache
def gauss_kronrod(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (2n + 1)-point Kronrod extension of n-point Gauss-Legendre on [-1, 1]: sorted nodes, the
    Kronrod weights (exact to degree 3n + 1) and the Gauss weights on the same nodes (0 on the n + 1
    added ones). The Gauss nodes are numpy's `leggauss(n)` values, bit for bit.

    The added nodes are the roots of the Stieltjes polynomial E_{n+1}, the monic-in-P_{n+1}
    polynomial orthogonal to x^k P_n(x) for k = 0..n; the weights are interpolatory."""
    leg = np.polynomial.legendre
    x, w = leg.leggauss(3 * n + 4)  # exact for the degree-(3n + 1) products below

    def basis(j: int, at: np.ndarray) -> np.ndarray:
        return leg.legval(at, [0.0] * j + [1.0])

    p_n = basis(n, x)
    lhs = np.array([[np.sum(w * p_n * x**k * basis(j, x)) for j in range(n + 1)] for k in range(n + 1)])
    rhs = -np.array([np.sum(w * p_n * x**k * basis(n + 1, x)) for k in range(n + 1)])
    coefficients = np.concatenate([np.linalg.solve(lhs, rhs), [1.0]])
    added = np.sort(leg.legroots(coefficients).real)
    gauss, gauss_weights = leg.leggauss(n)
    nodes = np.concatenate([gauss, added])
    order = np.argsort(nodes)
    nodes = nodes[order]
    vandermonde = np.stack([basis(j, nodes) for j in range(len(nodes))])
    moments = np.zeros(len(nodes))
    moments[0] = 2.0
    kronrod_weights = np.linalg.solve(vandermonde, moments)
    embedded = np.concatenate([gauss_weights, np.zeros(n + 1)])[order]
    return nodes, kronrod_weights, embedded


@dataclass(frozen=True)
class Level:
    """One level of the error-controlled rule on [-1, 1]: its nodes (those of the level below
    first, in the same order, then the new ones), the weights of its result and of its embedded
    lower-order rule on the same nodes."""

    nodes: np.ndarray
    weights: np.ndarray
    embedded: np.ndarray
    new: int  # nodes added to those of the level below

    def on(self, a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nodes and both weight vectors mapped to [a, b]."""
        half = (b - a) / 2.0
        return a + half * (self.nodes + 1.0), half * self.weights, half * self.embedded


@functools.cache
def adaptive_levels() -> tuple[Level, ...]:
    """Level 0: 3-point Gauss-Legendre with the midpoint as embedded rule; level 1: its 7-point
    Kronrod extension with 3-point Gauss-Legendre as embedded rule. Level 1 lists level 0's nodes
    first, so that a subinterval going up a level computes only the 4 new nodes."""
    g3, w3 = np.polynomial.legendre.leggauss(3)
    mid = np.array([0.0, 1.0, 0.0]) * 2.0  # the midpoint rule on [-1, 1]: the middle node, weight 2
    level0 = Level(g3, w3, mid, new=3)
    nodes, kronrod, gauss = gauss_kronrod(3)
    old = [int(np.argmin(np.abs(nodes - x))) for x in g3]
    rest = [i for i in range(len(nodes)) if i not in old]
    order = old + rest
    level1 = Level(nodes[order], kronrod[order], gauss[order], new=len(rest))
    return (level0, level1)


# ---- presets ------------------------------------------------------------------------------------
# What each named preset fixes, per analysis. "example" is a single example (explain, tree, the
# API's default); "triggers" mining; "pruning" the dataset head importance of the pruning protocol.
def _fixed(rule_name: str, steps: int, target: str) -> dict[str, object]:
    return {"rule": rule_name, "steps": steps, "dtype": "float32", "output": "prob", "target": target}


PRESETS: dict[str, dict[str, dict[str, object]]] = {
    # The paper (Hao et al., AAAI 2021): right Riemann sum, m = 20, fp32, the predicted class's
    # probability; the pruning importance uses the gold label (docs/method.md §2).
    "paper": {
        "example": _fixed("riemann-right", 20, "predicted"),
        "triggers": _fixed("riemann-right", 20, "predicted"),
        "pruning": _fixed("riemann-right", 20, "gold"),
    },
    # The authors' released code: left Riemann sum (alpha = k/m, k = 0..m-1, the alpha = 0 point
    # included), m = 64 for single examples and triggers, m = 20 for the pruning importance.
    "authors": {
        "example": _fixed("riemann-left", 64, "predicted"),
        "triggers": _fixed("riemann-left", 64, "predicted"),
        "pruning": _fixed("riemann-left", 20, "gold"),
    },
}
ANALYSES = ("example", "triggers", "pruning")


def preset_options(name: str, analysis: str = "example") -> dict[str, object]:
    """The settings a preset fixes for one analysis: rule, steps, dtype, output, target."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if analysis not in ANALYSES:
        raise InputError(f"unknown analysis {analysis!r} for a preset; choose one of: {', '.join(ANALYSES)}")
    return dict(PRESETS[name][analysis])


def check_tol(tol: object) -> float:
    """A tolerance strictly between 0 and 1 (a relative error), or InputError."""
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating) or not 0 < float(tol) < 1:
        raise InputError(f"tol must be a number between 0 and 1 (exclusive), got {tol!r}")
    return float(tol)


# ---- the settings of a dataset run --------------------------------------------------------------
def integration_settings(
    *,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    dtype: object = None,
    preset: str | None = None,
    fast: bool = False,
    analysis: str = "example",
) -> dict[str, object]:
    """The integration a dataset analysis runs, in the one form its run file records and passes on
    to the engine, so that equal settings given differently name the same run file.

    `attattr.attribute` reads the same options through this function (`engine.resolve_integration`),
    so they mean the same everywhere: neither steps nor rule, or steps="auto": the error-controlled
    mode to `tol` (default DEFAULT_TOL); steps=N alone: DEFAULT_RULE with N nodes; a rule alone:
    that rule with DEFAULT_STEPS nodes; `fast`: steps="auto" with dtype "auto";
    `preset`: the rule, steps and dtype `preset_options(preset, analysis)` fixes for this analysis
    (the caller keeps its own target and output).

    Returns {"steps": N, "rule": name, "dtype": d} for a fixed rule and {"steps": "auto",
    "rule": "gauss-legendre", "tol": t, "dtype": d} for the error-controlled mode (its Gauss-Kronrod
    levels are built on 3-point Gauss-Legendre); d is None for float32 (the default), else
    "bfloat16" or "auto". InputError (one line) on a bad or contradictory combination."""
    dtype = _dtype_setting(dtype)
    if preset is not None:
        if fast:
            raise InputError(f"preset {preset!r} and fast contradict each other; give one")
        fixed = preset_options(preset, analysis)
        fixed_dtype = _dtype_setting(fixed["dtype"])
        given = {
            "rule": (rule, fixed["rule"]),
            "steps": (steps, fixed["steps"]),
            "dtype": (dtype, fixed_dtype),
        }
        for name, (value, wanted) in given.items():
            if value is not None and value != wanted:
                raise InputError(
                    f"preset {preset!r} fixes {name}={fixed[name]!r}; it contradicts {name}={value!r} "
                    "(drop one of them)"
                )
        if tol is not None:
            raise InputError(f"preset {preset!r} is a fixed rule; tol applies to steps='auto' only")
        return {"steps": int(fixed["steps"]), "rule": fixed["rule"], "dtype": fixed_dtype}
    if fast:
        if steps not in (None, AUTO) or rule not in (None, "gauss-legendre"):
            raise InputError("fast means steps='auto'; it takes no fixed rule or step count")
        steps, dtype = AUTO, "auto" if dtype is None else dtype
    if rule is not None and rule not in RULES:
        raise InputError(f"unknown integration rule {rule!r}; choose one of: {', '.join(RULES)}")
    if steps is None:
        steps = AUTO if rule is None else DEFAULT_STEPS
    if isinstance(steps, str) and steps != AUTO:
        raise InputError(f"steps must be an integer >= 1 or 'auto', got {steps!r}")
    if steps == AUTO:
        if rule not in (None, "gauss-legendre"):
            raise InputError(
                f"steps='auto' integrates with adaptive Gauss-Kronrod; it takes no rule {rule!r} "
                "(give an integer steps for a fixed rule)"
            )
        tol = DEFAULT_TOL if tol is None else check_tol(tol)
        return {"steps": AUTO, "rule": "gauss-legendre", "tol": tol, "dtype": dtype}
    if tol is not None:
        raise InputError(f"tol applies to steps='auto'; with steps={steps!r} the rule is fixed")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    return {"steps": int(steps), "rule": DEFAULT_RULE if rule is None else rule, "dtype": dtype}


def _dtype_setting(dtype: object) -> str | None:
    """A dtype option as a run records it: None for float32, else "bfloat16" or "auto"."""
    # a torch.dtype prints as "torch.<name>"; a string is taken as written
    name = dtype if dtype is None or isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name in (None, "float32", "fp32"):
        return None
    if name in ("bfloat16", "bf16"):
        return "bfloat16"
    if name == "auto":
        return "auto"
    raise InputError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or auto")


def integration_record(attr: object) -> dict[str, list[int]] | None:
    """What a dataset run keeps of one attribution's integration (its `Attribution.integration`
    records): the layers, the nodes each used and the layers that missed tol within the budget.
    None for a fixed rule, whose nodes per layer are its steps."""
    records = getattr(attr, "integration", None) or []
    if getattr(attr, "tol", None) is None or not records:
        return None
    return {
        "layers": [int(r["layer"]) for r in records],
        "nodes": [int(r["nodes"]) for r in records],
        "unconverged": [int(r["layer"]) for r in records if r.get("converged") is False],
    }


def summarise_integration(records: Sequence[Mapping[str, Any]], tol: float | None) -> dict[str, Any] | None:
    """Over a run's example records (each with the "integration" of `integration_record`): tol,
    the mean and largest nodes per layer, and the examples whose layers missed tol. None when no
    record has one (a fixed rule, or records of an older run)."""
    kept = [(r.get("id"), r["integration"]) for r in records if r.get("integration")]
    if not kept:
        return None
    per_layer: dict[int, list[int]] = {}
    missed = []
    for example_id, rec in kept:
        for layer, nodes in zip(rec["layers"], rec["nodes"], strict=True):
            per_layer.setdefault(layer, []).append(nodes)
        if rec["unconverged"]:
            missed.append({"id": example_id, "layers": list(rec["unconverged"])})
    layers = sorted(per_layer)
    return {
        "tol": tol,
        "examples": len(kept),
        "layers": layers,
        "mean_nodes": [float(np.mean(per_layer[k])) for k in layers],
        "max_nodes": [int(max(per_layer[k])) for k in layers],
        "unconverged": missed,
    }
