"""Each image's structure weighed by its likelihood over the decoded population (``--posterior reweighted``).

At high noise the encoder's posterior ``q(z | image)`` is narrower than what the image supports, and
its mean leans on the encoder's guess (benchmarks/RESULTS.md, "the segmentation and the
posterior"). Here the run's own decoded structures serve as an empirical prior instead: ``K``
anchor latents, one posterior draw of each of ``K`` random images (a sample of the aggregate
posterior), and the image's own latent mean as one more anchor. Each image weighs the anchors by
the Gaussian likelihood of its image given each anchor's image (at the image's pose and CTF, on
the run's final low-pass band, least-squares scaled as the correlation loss is scale-free):

    w_k  ∝  exp(-M r_k / (2 s)),

``r_k`` the residual's sum of squares, ``M`` the real degrees of freedom of the band, ``s`` the noise's
sum of squares, estimated as the image's smallest residual. The structure is
the weighted mean of the anchors' structures. Where an image says much (little noise) its own
mean takes the weight; where it says little the estimate leans towards the structures its image
does not rule out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryodomain.physics.imaging import ImageFrame, form_images
from cryodomain.progress import progress_bar
from cryodomain.workflows.distributed import Processes, gather_in_order, share
from cryodomain.workflows.objective import encoder_inputs
from cryodomain.workflows.trained_run import LatentPosterior, TrainedRun

# Anchors drawn from the aggregate posterior, and the seed of that draw (the same for every
# subset of images, so that a structure does not depend on which others are decoded with it).
ANCHORS = 128
ANCHOR_SEED = 0


@dataclass(frozen=True)
class Reweighting:
    """Likelihood weights of M images over K shared anchors and each image's own latent mean.

    Attributes:
        anchors: ``(K, D)`` anchor latents.
        weights: ``(M, K + 1)`` float64, rows summing to 1; the last column is the image's own mean.
    """

    anchors: np.ndarray
    weights: np.ndarray

    def effective_anchors(self) -> np.ndarray:
        """``(M,)`` the number of anchors each image's weights are spread over, ``1 / sum w^2``."""
        return 1.0 / (self.weights**2).sum(axis=1)


def band_dof(frame: ImageFrame) -> int:
    """Real degrees of freedom of a real image of ``frame`` after its low-pass (all pixels without
    one): the full-grid frequencies it keeps. On the half grid the columns ``kx = 0`` and, for an
    even box, ``kx = N / 2`` count once and the others twice (Hermitian symmetry)."""
    if frame.lowpass is None:
        return frame.box * frame.box
    kept = (frame.lowpass != 0).cpu().numpy()
    edges = [0, frame.box // 2] if frame.box % 2 == 0 else [0]
    return int(2 * kept.sum() - kept[:, edges].sum())


def draw_anchors(posterior: LatentPosterior, n_anchors: int = ANCHORS, seed: int = ANCHOR_SEED) -> np.ndarray:
    """``(K, D)`` one posterior draw of each of ``K = min(n_anchors, N)`` images chosen at random."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(posterior.means), size=min(n_anchors, len(posterior.means)), replace=False))
    draws = rng.standard_normal(posterior.means[chosen].shape)
    return (posterior.means[chosen] + posterior.stds[chosen] * draws).astype(np.float32)


def likelihood_weights(residuals: np.ndarray, dof: int) -> np.ndarray:
    """Weights ``(M, K)`` from residual sums of squares ``(M, K)`` on ``dof`` real degrees of freedom.

    Each image's noise sum of squares is its smallest residual (a least-squares scale is fitted, so
    one degree of freedom fewer is left to the noise): on ``dof`` of hundreds it is known to a few
    per cent, it follows images of different noise (ice thickness), and an image's weights depend
    on no other image.
    """
    noise = residuals.min(axis=1, keepdims=True) * dof / max(dof - 1, 1)
    log_likelihood = -dof * residuals / (2.0 * np.maximum(noise, 1e-300))
    weights = np.exp(log_likelihood - log_likelihood.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def image_residuals(run: TrainedRun, indices: np.ndarray, anchor_points: torch.Tensor, own_means: np.ndarray, progress: bool = False) -> np.ndarray:
    """Residual sum of squares of each image against every anchor's image and its own.

    Args:
        run: the trained run.
        indices: ``(M,)`` particle indices.
        anchor_points: ``(K, G, 3)`` Å the anchors' Gaussian positions.
        own_means: ``(M, D)`` each image's own latent mean.

    Returns:
        ``(M, K + 1)`` float64, on the run's final low-pass band, each anchor's image scaled to the
        image by least squares.
    """
    model, context, data = run.model, run.context, run.data
    residuals = np.empty((len(indices), len(anchor_points) + 1))
    with torch.no_grad():
        for row in progress_bar(range(len(indices)), "likelihoods", enabled=progress):
            batch = data.dataset[[int(indices[row])]]
            _, target, ctf = encoder_inputs(model, batch, data.table, context)
            own = torch.as_tensor(own_means[row : row + 1], dtype=torch.float32, device=run.device)
            points = torch.cat([anchor_points, model.decode(own, sample_segmentation=False).render_coords])
            rotations = batch["rotations"].to(run.device).expand(len(points), 3, 3)
            predicted = form_images(points, model.amplitudes, rotations, context.sigma_A, context.frame, ctf.expand(len(points), -1, -1))
            x, y = predicted.flatten(1).double(), target.flatten(1).double()
            scale = (x @ y[0]) / x.square().sum(1).clamp_min(1e-30)
            residuals[row] = (y - scale[:, None] * x).square().sum(1).cpu().numpy()
    return residuals


def reweight(
    run: TrainedRun,
    posterior: LatentPosterior,
    indices: np.ndarray,
    *,
    n_anchors: int = ANCHORS,
    seed: int = ANCHOR_SEED,
    progress: bool = True,
    processes: Processes = Processes(),
) -> Reweighting:
    """The likelihood weights of the images ``indices`` ``(M,)`` over anchors of ``posterior``.

    Args:
        run: the trained run.
        posterior: the encoder's posterior of every particle (anchors are drawn from all of them).
        indices: the particles to weigh; their own means are ``posterior.means[indices]``.
        n_anchors, seed: the anchor draw (:func:`draw_anchors`).
        progress: show a bar.
        processes: with torchrun each process scores a contiguous share of ``indices``; every
            process gets all the weights.

    An image's weights depend on its image, the run and the anchor draw alone, not on the other
    images weighed with it.
    """
    indices = np.asarray(indices, dtype=np.int64)
    anchors = draw_anchors(posterior, n_anchors, seed)
    mine = share(len(indices), processes)
    with torch.no_grad():
        anchor_points = run.model.decode(torch.as_tensor(anchors, device=run.device), sample_segmentation=False).render_coords
    mine_residuals = image_residuals(run, indices[mine], anchor_points, posterior.means[indices[mine]], progress and processes.is_main)
    residuals = gather_in_order(mine_residuals, processes)
    dof = band_dof(run.context.frame)
    return Reweighting(anchors, likelihood_weights(residuals, dof))
