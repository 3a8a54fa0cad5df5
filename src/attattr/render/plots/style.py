"""Shared figure style and saving, so every figure looks alike and lands as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from ...core import files

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

SEQUENTIAL = "Blues"
DIVERGING = "RdBu_r"  # signed attribution scores: red positive, blue negative, white zero


def paper_style() -> None:
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 200,
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.fonttype": "none",  # keep text as text in SVG
        }
    )


def save_figure(fig, path: str | Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Save `fig` as path.<fmt> for each format; returns the written paths and closes the figure.

    Each file is written atomically (`attattr.core.files`): a kill never leaves half a figure."""
    path = Path(path)
    written = []
    try:
        for fmt in formats:
            target = path.with_suffix(f".{fmt}")
            files.write_atomic(target, lambda f, fmt=fmt: fig.savefig(f, format=fmt, bbox_inches="tight"))
            written.append(target)
    finally:
        plt.close(fig)
    return written


paper_style()
