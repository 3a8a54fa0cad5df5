"""Attention vs attribution heatmaps (the paper's Figure 1) and the layers x heads importance grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ...core.result import Attribution
from .style import DIVERGING, SEQUENTIAL, save_figure


def _token_labels(attr: Attribution) -> list[str]:
    return [f"{t}" for t in attr.tokens]


def attention_vs_attribution(attr: Attribution, layer: int, head: int, path: str | Path) -> list[Path]:
    """Side by side: the head's attention probabilities and its (signed) attribution scores."""
    pos = attr.layers.index(layer)
    att = attr.attentions[pos, head].numpy()
    sc = attr.scores[pos, head].numpy()
    n = len(attr.tokens)
    labels = _token_labels(attr)
    size = max(4.0, min(0.28 * n + 1.5, 16.0))
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size), constrained_layout=True)
    limit = float(np.abs(sc).max()) or 1.0
    panels = [
        (axes[0], att, SEQUENTIAL, 0.0, float(att.max()) or 1.0, "attention score"),
        (axes[1], sc, DIVERGING, -limit, limit, "attribution score"),
    ]
    for ax, data, cmap, vmin, vmax, title in panels:
        im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
        ax.set_title(f"{title} (layer {layer}, head {head})")
        ticks = np.arange(n)
        fs = 8 if n <= 30 else 6 if n <= 60 else 4
        ax.set_xticks(ticks, labels, rotation=90, fontsize=fs)
        ax.set_yticks(ticks, labels, fontsize=fs)
        ax.set_xlabel("key token (attended to)")
        ax.set_ylabel("query token (attending)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if attr.decoder is not None:  # a causal LM: the top next token (probabilities are the top k)
        top = (attr.decoder.get("top") or [{"text": "?", "prob": float("nan")}])[0]
        fig.suptitle(f"top next token: {top['text']!r} (p = {top['prob']:.3f})")
    else:
        pred = attr.label_name(attr.predicted)
        fig.suptitle(f"prediction: {pred} (p = {attr.probabilities[attr.predicted]:.3f})")
    return save_figure(fig, path)


def importance_grid(attr: Attribution, path: str | Path) -> list[Path]:
    """Layers x heads grid of max-pooled attribution (head importance), annotated."""
    imp = attr.head_importance().numpy()
    n_layers, n_heads = imp.shape
    fig, ax = plt.subplots(figsize=(0.55 * n_heads + 2, 0.45 * n_layers + 1.5), constrained_layout=True)
    im = ax.imshow(imp, cmap=SEQUENTIAL, aspect="auto")
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
    ax.set_yticks(range(n_layers), [str(x) for x in attr.layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    top = float(np.abs(imp).max()) or 1.0
    # annotate in a common power of ten so small scores stay readable
    exponent = int(np.floor(np.log10(top)))
    scale = 10.0**-exponent
    unit = f" (values x 1e{exponent})" if exponent else ""
    ax.set_title(f"head importance: max attribution score{unit}")
    for i in range(n_layers):
        for j in range(n_heads):
            ax.text(
                j,
                i,
                f"{imp[i, j] * scale:.1f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if imp[i, j] > 0.6 * top else "black",
            )
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path)
