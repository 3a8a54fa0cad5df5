"""Figures for head importance: heatmap, effectiveness (Fig. 2), pruning (Fig. 3), correlation (Fig. 4)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .style import SEQUENTIAL, save_figure

METHOD_STYLE = {
    "attattr": {"color": "#1f5fa8", "label": "attribution (AttAttr)"},
    "taylor": {"color": "#c0392b", "label": "Taylor expansion"},
    "accuracy-diff": {"color": "#e6a100", "label": "accuracy difference"},
    "attention": {"color": "#2e8b57", "label": "attention (max weight)"},
    "random": {"color": "#7f7f7f", "label": "random"},
}
METHOD_TITLES = {
    "attattr": "attribution (max over i, j; gold label)",
    "attention": "max attention weight",
    "taylor": "Taylor |dL/dξ| (layer-normalised)",
    "accuracy-diff": "accuracy drop when pruned alone",
    "random": "random",
}


# how a causal LM's metric is named on an axis
METRIC_LABELS = {
    "logit-diff": "logit difference (target - foil)",
    "prob-diff": "probability difference (target - foil)",
    "logprob": "target log-probability",
    "prob": "target probability",
    "logit": "target logit",
}


def plot_importance(importance, path: str | Path, *, title: str | None = None) -> list[Path]:
    """Heatmap of a `[layers, heads]` importance, one annotated cell per head (layer 0 at the bottom)."""
    scores = importance.scores.double().numpy()
    num_layers, num_heads = scores.shape
    width = max(4.0, 0.55 * num_heads + 1.6)
    height = max(2.4, 0.45 * num_layers + 1.2)
    fig, ax = plt.subplots(figsize=(width, height))
    signed = scores.min() < 0
    limit = float(np.abs(scores).max()) or 1.0
    image = ax.imshow(
        scores,
        cmap="RdBu_r" if signed else SEQUENTIAL,
        vmin=-limit if signed else 0.0,
        vmax=limit,
        origin="lower",
        aspect="auto",
    )
    digits = 2 if limit >= 0.095 else 3
    for layer in range(num_layers):
        for head in range(num_heads):
            value = scores[layer, head]
            dark = abs(value) > 0.6 * limit
            text = f"{value:.{digits}f}"
            ax.text(
                head,
                layer,
                text[1:] if text.startswith("-") and float(text) == 0 else text,
                ha="center",
                va="center",
                fontsize=6.5 if num_heads > 8 else 8,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(num_heads))
    ax.set_yticks(range(num_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    method = importance.method
    examples = len(importance.example_ids)
    default = f"Head importance: {METHOD_TITLES.get(method, method)}"
    if examples:
        default += f", mean over {examples} examples"
    ax.set_title(title or default)
    ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02)
    return save_figure(fig, path)


def plot_effectiveness(result: dict[str, Any], path: str | Path, *, title: str | None = None) -> list[Path]:
    """Fig. 2: accuracy and mean gold-label probability against the number of heads pruned per example."""
    counts = result["counts"]
    curves = result["curves"]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), sharex=True)
    lines = {
        "attattr-smallest": ("attattr", "-", "attribution, smallest first"),
        "attattr-largest": ("attattr", "--", "attribution, largest first"),
        "attention-smallest": ("attention", "-", "attention, smallest first"),
        "attention-largest": ("attention", "--", "attention, largest first"),
    }
    # a causal LM's prompts are scored by their metric (logit difference, ...) instead
    name = (result.get("settings") or {}).get("metric")
    second = (
        ("metric", f"mean {METRIC_LABELS.get(name, name)}")
        if name
        else ("probability", "mean gold-label probability")
    )
    for ax, metric, ylabel in ((axes[0], "accuracy", "accuracy"), (axes[1], *second)):
        for curve, (method, dash, label) in lines.items():
            ax.plot(
                counts,
                curves[curve][metric],
                dash,
                color=METHOD_STYLE[method]["color"],
                marker="o",
                markersize=2.5,
                linewidth=1.6,
                label=label,
            )
        ax.set_xlabel("heads pruned per example")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, result["total_heads"])
        if metric != "metric":
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.axhline(0.0, color="0.5", linewidth=0.6)
        ax.grid(alpha=0.3, linewidth=0.5)
    axes[0].legend(loc="lower left", frameon=False, fontsize=8)
    n = result.get("examples")
    fig.suptitle(title or f"Pruning each example's heads by its own importance ({n} examples)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pruning(result: dict[str, Any], path: str | Path, *, title: str | None = None) -> list[Path]:
    """Fig. 3: evaluation accuracy against the fraction of heads pruned, least important first."""
    x = 100 * np.asarray(result["fractions"])
    metric = result.get("metric")  # a causal LM: a second panel with the mean metric
    panels = [("accuracy", "accuracy")]
    if metric:
        panels.append(("metric", f"mean {METRIC_LABELS.get(metric, metric)}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.8), squeeze=False)
    order = ["attattr", "taylor", "accuracy-diff", "attention", "random"]
    methods = result["methods"]
    names = [m for m in order if m in methods] + [m for m in methods if m not in order]
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        for name in names:
            values = methods[name]
            style = METHOD_STYLE.get(name, {"color": None, "label": name})
            acc = np.asarray(values[key])
            if name == "random" and f"{key}_std" in values:
                std = np.asarray(values[f"{key}_std"])
                seeds = len(values.get("seeds", []))
                ax.fill_between(x, acc - std, acc + std, color=style["color"], alpha=0.2, linewidth=0)
                ax.plot(
                    x,
                    acc,
                    ":",
                    color=style["color"],
                    linewidth=1.6,
                    label=f"random (mean ± sd, {seeds} seeds)",
                )
            else:
                ax.plot(
                    x,
                    acc,
                    "-",
                    color=style["color"],
                    marker="o",
                    markersize=3,
                    linewidth=1.6,
                    label=style["label"],
                )
        ax.set_xlabel("heads pruned (%), least important first")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 100)
        ax.set_xticks(np.arange(0, 101, 10))
        ax.grid(alpha=0.3, linewidth=0.5)
        if key == "metric":
            ax.axhline(0.0, color="0.5", linewidth=0.6)
    axes[0][0].legend(loc="lower left", frameon=False, fontsize=8)
    heading = (
        title or f"Pruning heads by dataset importance (evaluated on {result['eval_examples']} examples)"
    )
    if len(panels) > 1:
        fig.suptitle(heading)
    else:
        axes[0][0].set_title(heading)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_correlation_pairs(
    result: dict[str, Any], path: str | Path, *, title: str | None = None
) -> list[Path]:
    """Fig. 4: one scatter per pair of models (one point per head), Pearson r and Spearman rho in the title."""
    pairs = result["pairs"]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows), squeeze=False)
    for ax, pair in zip(axes.flat, pairs, strict=False):
        x, y = np.asarray(pair["x"]), np.asarray(pair["y"])
        ax.scatter(x, y, s=14, alpha=0.75, color="#1f5fa8", edgecolors="none")
        if np.ptp(x) > 0:  # least-squares line, as a guide to the eye
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, slope * xs + intercept, color="#c0392b", linewidth=1, alpha=0.8)
        ax.set_xlabel(f"{pair['a']} importance")
        ax.set_ylabel(f"{pair['b']} importance")
        r = pair["pearson"]
        rho = pair["spearman"]
        ax.set_title(f"r = {_fmt(r)}, ρ = {_fmt(rho)}")
        ax.grid(alpha=0.3, linewidth=0.5)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.set_visible(False)
    fig.suptitle(title or "Head importance across models (one point per head)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_correlation_matrix(
    result: dict[str, Any], path: str | Path, *, title: str | None = None
) -> list[Path]:
    """Pearson and Spearman correlation matrices side by side, annotated."""
    names = result["names"]
    k = len(names)
    size = max(2.8, 0.9 * k + 1.4)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 0.2, size * 0.95), layout="constrained")
    for ax, key, label in ((axes[0], "pearson", "Pearson r"), (axes[1], "spearman", "Spearman ρ")):
        matrix = np.array([[np.nan if v is None else v for v in row] for row in result[key]], dtype=float)
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
        for i in range(k):
            for j in range(k):
                v = matrix[i, j]
                ax.text(
                    j,
                    i,
                    _fmt(v),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if abs(v) > 0.6 else "black",
                )
        ax.set_xticks(range(k), names, rotation=30, ha="right")
        ax.set_yticks(range(k), names if key == "pearson" else [""] * k)
        ax.set_title(label)
        ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=list(axes), fraction=0.04, pad=0.02)
    fig.suptitle(title or "Correlation of head importance between models")
    return save_figure(fig, path)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    text = f"{v:.2f}"
    return text[1:] if text == "-0.00" else text
