"""Pictures of results (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryodomain.io.atomic import atomic_output  # noqa: E402


def image_panel(
    path: str | Path,
    rows: Sequence[np.ndarray],
    row_labels: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> None:
    """Write a grid of grey-scale images, one row per image set.

    Args:
        path: output PNG.
        rows: each ``(n, H, W)``; all rows have the same ``n``.
        row_labels: one label per row, shown on the left.
        titles: one title per column.
        suptitle: figure title.
    """
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.6 * n_rows + 0.4), squeeze=False)
    for r, images in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            # origin="lower": row index = y grows upwards, as in RELION and ChimeraX views.
            ax.imshow(images[c], cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None and r == 0:
                ax.set_title(titles[c], fontsize=7)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def particle_grid(path: str | Path, images: np.ndarray, titles: Sequence[str] | None = None, suptitle: str | None = None) -> None:
    """Write up to 16 particle images ``(n, H, W)`` as a near-square grid PNG."""
    images = images[:16]
    n_cols = min(len(images), 4 if len(images) > 8 else len(images))
    n_rows = math.ceil(len(images) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols, 2.0 * n_rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(images):
            ax.imshow(images[i], cmap="gray", origin="lower")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
