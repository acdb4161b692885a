"""Pictures of results (PNG, no display needed).

Every picture is a bare :class:`matplotlib.figure.Figure`: ``savefig`` renders it with the Agg
canvas, so this module neither imports ``matplotlib.pyplot`` nor changes the global backend of a
program (a notebook, a GUI) that imports it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.colors
import numpy as np
from matplotlib.figure import Figure

from cryodomain.io.atomic import atomic_output


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
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
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
    _save(fig, path)


def particle_grid(path: str | Path, images: np.ndarray, titles: Sequence[str] | None = None, suptitle: str | None = None) -> None:
    """Write up to 16 particle images ``(n, H, W)`` as a near-square grid PNG."""
    images = images[:16]
    n_cols = min(len(images), 4)
    n_rows = math.ceil(len(images) / n_cols)
    fig = Figure(figsize=(2.0 * n_cols, 2.0 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
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
    _save(fig, path)


def _save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG atomically (a bare Figure: nothing to close, no pyplot registry)."""
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def latent_density(
    path: str | Path,
    coords: np.ndarray,
    marks: dict[str, np.ndarray] | None = None,
    axis_labels: Sequence[str] = ("PC1", "PC2"),
    title: str | None = None,
) -> None:
    """Write the density of latent points in a 2-D (or 1-D) embedding, with marked points on top.

    Args:
        path: output PNG.
        coords: ``(N, 2)`` embedding coordinates (a hexbin density), or ``(N, 1)`` (a histogram).
        marks: label -> ``(M, 2)`` (or ``(M, 1)``) points drawn as a connected path of markers,
            e.g. a PC traversal or the k-means centres (whose points are numbered from 0).
        axis_labels: names of the two axes.
        title: figure title.
    """
    coords = np.asarray(coords, dtype=np.float64)
    marks = marks or {}
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    if coords.shape[1] >= 2:
        gridsize = int(np.clip(np.sqrt(len(coords)), 10, 60))
        density = ax.hexbin(coords[:, 0], coords[:, 1], gridsize=gridsize, cmap="Greys", mincnt=1, bins="log")
        fig.colorbar(density, ax=ax, label="particles (log)")
        ax.set_ylabel(axis_labels[1])
    else:
        ax.hist(coords[:, 0], bins=int(np.clip(np.sqrt(len(coords)), 10, 80)), color="0.6")
        ax.set_ylabel("particles")
    for number, (label, points) in enumerate(marks.items()):
        points = np.asarray(points, dtype=np.float64)
        y = points[:, 1] if coords.shape[1] >= 2 else np.zeros(len(points))
        is_centres = label.lower().startswith("k-means")
        if is_centres:
            ax.scatter(points[:, 0], y, marker="X", s=60, c="crimson", edgecolors="white", linewidths=0.6, label=label, zorder=4)
            for index, (px, py) in enumerate(zip(points[:, 0], y)):
                ax.annotate(str(index), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points", color="crimson")
        else:
            ax.plot(points[:, 0], y, "-o", ms=4, lw=1, color=colours(number % 10), label=label, zorder=3)
    ax.set_xlabel(axis_labels[0])
    if marks:
        ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def explained_variance(path: str | Path, ratio: np.ndarray) -> None:
    """Write the fraction of latent variance explained by each principal component (bars) and
    its cumulative sum (line).

    Args:
        path: output PNG.
        ratio: ``(C,)`` explained variance ratio of PC1..PCC.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    pcs = np.arange(1, len(ratio) + 1)
    fig = Figure(figsize=(max(3.5, 0.5 * len(ratio) + 2), 3.4))
    ax = fig.subplots()
    ax.bar(pcs, ratio, color="steelblue", label="per PC")
    ax.plot(pcs, np.cumsum(ratio), "-o", color="black", ms=3, label="cumulative")
    ax.set_xticks(pcs)
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    _save(fig, path)


def segment_colours(n_segments: int) -> list[str]:
    """``n_segments`` distinct ``#rrggbb`` colours, segment k's at index k: the same in every picture
    and in the ChimeraX scripts (tab20, or turbo beyond 20 segments)."""
    colours = matplotlib.colormaps["tab20" if n_segments <= 20 else "turbo"].resampled(max(n_segments, 1))
    return [matplotlib.colors.to_hex(colours(k)) for k in range(n_segments)]


def segment_membership(path: str | Path, segment: np.ndarray, probability: np.ndarray, chain_ids: np.ndarray) -> None:
    """Write the segmentation along the sequence: one bar per residue, coloured by its segment,
    as high as its membership probability; residues outside every part are a grey band.

    Args:
        path: output PNG.
        segment: ``(R,)`` int segment of each residue, -1 outside every part.
        probability: ``(R,)`` membership of that segment in [0, 1].
        chain_ids: ``(R,)`` str chain of each residue (chain starts are marked).
    """
    segment = np.asarray(segment)
    probability = np.asarray(probability, dtype=np.float64)
    index = np.arange(len(segment))
    n_segments = int(segment.max()) + 1 if (segment >= 0).any() else 0
    colours = segment_colours(n_segments)
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    fixed = segment < 0
    if fixed.any():
        ax.bar(index[fixed], np.ones(int(fixed.sum())), width=1.0, color="0.85", label="fixed")
    for k in range(n_segments):
        rows = segment == k
        if rows.any():
            ax.bar(index[rows], probability[rows], width=1.0, color=colours[k], label=f"segment {k}")
    # Chain starts, so residue indices can be related to chains.
    starts = np.flatnonzero(np.r_[True, chain_ids[1:] != chain_ids[:-1]])
    for start in starts:
        ax.axvline(start - 0.5, color="black", lw=0.6)
        # Vertical labels so that short chains (DNA strands, peptides) do not overlap.
        ax.text(start, 1.01, str(chain_ids[start]), fontsize=6, rotation=90, va="bottom", ha="left")
    ax.set_xlim(-0.5, len(segment) - 0.5)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("residue index (file order, chains concatenated; chain starts marked)")
    ax.set_ylabel("membership probability")
    ax.legend(fontsize=6, ncol=min(max(n_segments, 1), 10), loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    _save(fig, path)


def training_curves(
    path: str | Path,
    epochs: np.ndarray,
    losses: dict[str, np.ndarray],
    regularisers: dict[str, np.ndarray],
    marked_epoch: int | None = None,
) -> None:
    """Write the loss curves of a run: the total and correlation losses (left), the weighted
    regularisers on a log scale (right).

    Args:
        path: output PNG.
        epochs: ``(E,)`` epoch numbers.
        losses: name -> ``(E,)`` values (e.g. total, correlation).
        regularisers: name -> ``(E,)`` weighted values (>= 0; zeros are not drawn on the log scale).
        marked_epoch: an epoch to mark with a vertical line (e.g. the analysed checkpoint).
    """
    fig = Figure(figsize=(9.5, 3.6))
    left, right = fig.subplots(1, 2)
    for name, values in losses.items():
        left.plot(epochs, values, "-o", ms=2, label=name)
    left.set_title("losses", fontsize=9)
    drawn = False
    for name, values in regularisers.items():
        values = np.asarray(values, dtype=np.float64)
        if (values > 0).any():
            right.plot(epochs, np.where(values > 0, values, np.nan), "-o", ms=2, label=name)
            drawn = True
    if drawn:
        right.set_yscale("log")
    right.set_title("weighted regularisers", fontsize=9)
    for ax in (left, right):
        if marked_epoch is not None:
            ax.axvline(marked_epoch, color="0.5", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path)


def segment_motions(path: str | Path, angle_deg: np.ndarray, displacement_A: np.ndarray) -> None:
    """Write the distribution over particles of each segment's rotation angle (left) and centre
    displacement (right), one box per segment in the segment's colour.

    Args:
        path: output PNG.
        angle_deg: ``(N, K)`` rotation angle of each segment in each particle, degrees.
        displacement_A: ``(N, K)`` displacement of each segment's centre, Å.
    """
    n_segments = angle_deg.shape[1]
    colours = segment_colours(n_segments)
    fig = Figure(figsize=(max(6.0, 0.45 * n_segments * 2 + 2), 3.4))
    axes = fig.subplots(1, 2)
    for ax, values, label in zip(axes, (angle_deg, displacement_A), ("rotation angle (degrees)", "centre displacement (Å)")):
        boxes = ax.boxplot(np.asarray(values, dtype=np.float64), patch_artist=True, showfliers=False, widths=0.6)
        for box, colour in zip(boxes["boxes"], colours):
            box.set_facecolor(colour)
        ax.set_xticks(np.arange(1, n_segments + 1), [str(k) for k in range(n_segments)], fontsize=7)
        ax.set_xlabel("segment")
        ax.set_ylabel(label)
    fig.suptitle(f"segment motions of {angle_deg.shape[0]} particles (boxes: quartiles, whiskers: 1.5 IQR)", fontsize=9)
    _save(fig, path)


def motion_pc_correlation(path: str | Path, angle: np.ndarray, displacement: np.ndarray, title: str = "Spearman correlation") -> None:
    """Write how strongly each segment's motion follows each latent PC: two heat maps (angle,
    displacement) of correlations in [-1, 1], segments down, PCs across.

    Args:
        path: output PNG.
        angle: ``(K, C)`` correlation of segment k's angle with PC c's coordinate (NaN: undefined).
        displacement: ``(K, C)`` the same for the centre displacement.
        title: what the numbers are.
    """
    n_segments, n_pcs = angle.shape
    fig = Figure(figsize=(2.2 + 2 * (0.5 * n_pcs + 1.2), 1.4 + 0.3 * n_segments))
    axes = fig.subplots(1, 2)
    for ax, values, label in zip(axes, (angle, displacement), ("rotation angle", "centre displacement")):
        image = ax.imshow(np.asarray(values, dtype=np.float64), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(np.arange(n_pcs), [f"PC{c + 1}" for c in range(n_pcs)], fontsize=7)
        ax.set_yticks(np.arange(n_segments), [str(k) for k in range(n_segments)], fontsize=7)
        ax.set_ylabel("segment")
        ax.set_title(label, fontsize=9)
        if n_segments * n_pcs <= 200:
            for (k, c), value in np.ndenumerate(values):
                ax.text(c, k, "" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=axes[1], label=title)
    _save(fig, path)
