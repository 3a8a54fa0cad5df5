"""Integration rules over alpha in [0, 1], as data: rule(name, m) -> (alphas, weights)."""

from __future__ import annotations

import numpy as np

from .errors import InputError

RULES = ("riemann-right", "riemann-left", "riemann-mid", "trapezoid", "gauss-legendre")
DEFAULT_RULE = "riemann-right"  # the paper's rule (m = 20), so results compare with the paper
DEFAULT_STEPS = 20


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
