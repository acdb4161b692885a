"""How a trained run fits its data: the training images next to the model's, and the loss curves.

Used by ``analyze`` for its pictures (images.png, training_curves.png).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryodomain.model.losses import correlation_loss
from cryodomain.workflows.objective import WEIGHTED_TERMS, model_images, term_weight
from cryodomain.workflows.run_folder import MetricsLog
from cryodomain.workflows.trained_run import TrainedRun


def observed_and_model_images(run: TrainedRun, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Experimental images as training compares them, and the model's images, for some particles.

    The observed image is the training target (scaled, shifted into the model frame, filtered and
    masked as configured); the model image is formed exactly as in training
    (:func:`~cryodomain.workflows.objective.model_images`) from the structure at the image's latent
    mean with the segmentation means (no sampling).

    Args:
        run: the trained run (its model's device is used).
        rows: ``(B,)`` particle indices.

    Returns:
        ``(observed, predicted, correlation)``: ``(B, N, N)``, ``(B, N, N)`` float32 and ``(B,)``
        the normalised correlation of each pair (the training loss's measure, sign flipped).
    """
    batch = run.data.dataset[[int(row) for row in rows]]
    with torch.no_grad():
        seen = model_images(run.model, batch, run.data.table, run.context, sample=False)
        correlation = torch.stack([-correlation_loss(seen.predicted[i : i + 1], seen.target[i : i + 1]) for i in range(len(rows))])
    return seen.target.cpu().numpy(), seen.predicted.cpu().numpy(), correlation.cpu().numpy()


def metric_curves(metrics_path: str | Path, n_pixels: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Loss curves from a run's ``metrics.csv``; None when it is missing or empty.

    Args:
        metrics_path: the run's ``metrics.csv``.
        n_pixels: pixels per image, ``N * N`` (per-pixel terms enter the loss divided by it).

    Returns:
        ``(epochs (E,), {"total", "correlation"}, {term: weighted value})``, each value ``(E,)``:
        the regulariser as it entered the total loss (:func:`~cryodomain.workflows.objective.term_weight`).
    """
    rows = MetricsLog(Path(metrics_path)).read()
    if not rows:
        return None

    def column(name: str) -> np.ndarray:
        return np.array([float(row[name]) for row in rows])

    epochs = column("epoch").astype(np.int64)
    losses = {name: column(name) for name in ("total", "correlation")}
    regularisers = {
        term.name: np.array([term_weight(term, beta, n_pixels) for beta in column(f"beta_{term.name}")]) * column(term.name) for term in WEIGHTED_TERMS
    }
    return epochs, losses, regularisers


def example_rows(n_images: int, n_examples: int) -> np.ndarray:
    """Up to ``n_examples`` particle indices spread evenly over the dataset, ``(B,)`` int64."""
    return np.unique(np.linspace(0, n_images - 1, min(n_examples, n_images)).round().astype(np.int64))
