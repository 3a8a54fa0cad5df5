"""Bar chart of the trigger attack: per pattern and gold class, accuracy before, after the trigger,
and after the random-token control (mean over seeds, error bar = std over seeds)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt

from .style import save_figure

if TYPE_CHECKING:
    from ...analyses.triggers import AttackReport

COLORS = {"before": "#9e9e9e", "trigger": "#c62828", "control": "#1565c0"}


def plot_attack(report: AttackReport, path: str | Path, *, columns: int = 3) -> list[Path]:
    """One panel per attacked pattern; writes `path`.png and `path`.svg and returns the paths."""
    results = report.results
    if not results:
        raise ValueError("the attack report has no patterns to plot")
    cols = min(columns, len(results))
    rows = math.ceil(len(results) / cols)
    n_classes = len(report.classes)
    width = max(2.6, 0.9 * n_classes + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 2.6 * rows), squeeze=False, sharey=True)
    bar = 0.26
    for k, r in enumerate(results):
        ax = axes[k // cols][k % cols]
        xs = range(n_classes)
        before = [c.before for c in r.per_class]
        after = [c.after for c in r.per_class]
        ctrl = [c.control_mean for c in r.per_class]
        err = [c.control_std for c in r.per_class]
        ax.bar([x - bar for x in xs], before, bar, color=COLORS["before"], label="before")
        ax.bar(list(xs), after, bar, color=COLORS["trigger"], label="trigger")
        ax.bar(
            [x + bar for x in xs], ctrl, bar, yerr=err, capsize=2, color=COLORS["control"], label="control"
        )
        for x, c in zip(xs, r.per_class, strict=True):
            if c.adversarial:
                ax.text(x, min(1.02, c.before + 0.04), "*", ha="center", va="bottom", fontsize=11)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(report.classes, fontsize=8)
        ax.set_ylim(0, 1.1)
        trigger = " ".join(r.trigger)
        if len(trigger) > 28:
            trigger = trigger[:27] + "…"
        ax.set_title(f"#{r.rank} “{trigger}” (from {r.source_name})", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("accuracy")
    for k in range(len(results), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.04, 1, 0.92))
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.text(
        0.5,
        0.0,
        "gold class of the evaluation examples; error bars: control std over seeds; "
        "* = the trigger's drop beats the random-token control",
        ha="center",
        fontsize=7,
    )
    return save_figure(fig, path)
