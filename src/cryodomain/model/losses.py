"""The terms of the cryoSPHERE loss (all minimised, all averaged over the batch).

``L = L_corr + (b_z KL_z + b_c KL_c + b_v KL_v + b_p KL_p) / P + b_l2 L2 + b_cont L_cont
+ b_clash L_clash``; the weights ``b`` come from :mod:`cryodomain.model.schedules` and are applied
by the training workflow, not here.

Residue pairs (for continuity and clash) are ``(P, 2)`` int64 tensors of indices into the model's
residue arrays, built once from the base structure, so that the pairwise terms cost memory linear
in the number of pairs rather than ``R**2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

# Distances are taken as sqrt(max(d^2, floor)) so that coincident points give a zero gradient
# instead of NaN (the gradient of sqrt is infinite at 0).
_SQUARED_DISTANCE_FLOOR = 1e-12

# Upper bound on the number of entries of one block of the distance matrix in clash_pairs_light.
_DISTANCE_BLOCK_ENTRIES = 1 << 24


def correlation_loss(predicted: Tensor, observed: Tensor) -> Tensor:
    """Negative normalised correlation between predicted and observed images.

    ``L = -(1/B) sum_n [sum_p I_np Y_np / ((std Y_n + 1e-5)(std I_n + 1e-5))] / P`` as in docs/method.md, 7
    (the images are not mean-centred; the std is the population std over the pixels).

    Args:
        predicted: ``(B, N, N)`` (or ``(B, P)``) images rendered from the model.
        observed: ``(B, N, N)`` (or ``(B, P)``) experimental images, same shape.

    Returns:
        Scalar; ``-1`` for zero-mean images equal to each other, ``+1`` for opposite ones.
    """
    predicted = predicted.flatten(start_dim=1)
    observed = observed.flatten(start_dim=1)
    n_pixels = predicted.shape[1]
    dots = (predicted * observed).sum(dim=1)
    scale = (_population_std(observed) + 1e-5) * (_population_std(predicted) + 1e-5)
    return -(dots / scale / n_pixels).mean()


def _population_std(values: Tensor) -> Tensor:
    """Std over the last axis of ``(B, P)`` values, as ``torch.std(correction=0)`` to 1e-6.

    The norm of the centred values: an order of magnitude faster than ``torch.std`` on CPU.
    """
    centred = values - values.mean(dim=-1, keepdim=True)
    return torch.linalg.vector_norm(centred, dim=-1) / math.sqrt(values.shape[-1])


def latent_kl(mean: Tensor, std: Tensor, eps: float = 1e-8) -> Tensor:
    """KL divergence of ``N(mean, diag std^2)`` to the prior ``N(0, I)``.

    Args:
        mean: ``(B, D)`` latent means.
        std: ``(B, D)`` latent standard deviations (>= 0).
        eps: added to ``std^2`` inside the log so that a zero std gives a finite value.

    Returns:
        Scalar: mean over the batch of the sum over the latent dimensions.
    """
    variance = std.square()
    per_image = -0.5 * (1.0 + torch.log(variance + eps) - mean.square() - variance).sum(dim=-1)
    return per_image.mean()


def gaussian_kl(mean: Tensor, std: Tensor, prior_mean: Tensor, prior_std: Tensor) -> Tensor:
    """KL divergence of independent Gaussians ``N(mean, std^2)`` to ``N(prior_mean, prior_std^2)``.

    Each element contributes ``log(prior_std / std) - 1/2 + (std^2 + (prior_mean - mean)^2) /
    (2 prior_std^2)``.

    Args:
        mean: ``(...)`` variational means.
        std: ``(...)`` variational standard deviations (> 0).
        prior_mean: ``(...)`` prior means (broadcastable).
        prior_std: ``(...)`` prior standard deviations (> 0, broadcastable).

    Returns:
        Scalar: the sum over all elements.
    """
    kl = torch.log(prior_std / std) - 0.5 + (std.square() + (prior_mean - mean).square()) / (2.0 * prior_std.square())
    return kl.sum()


def _pair_distances(points: Tensor, pairs: Tensor) -> Tensor:
    """Distances ``(B, P)`` Å between the two residues of each pair, NaN-safe at zero distance."""
    # index_select: its backward is an index_add, faster than advanced indexing's index_put.
    difference = points.index_select(-2, pairs[:, 0]) - points.index_select(-2, pairs[:, 1])
    return difference.square().sum(dim=-1).clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt()


def continuity_loss(deformed: Tensor, base: Tensor, pairs: Tensor) -> Tensor:
    """Mean squared change of the distances between chain neighbours.

    Args:
        deformed: ``(B, R, 3)`` Å deformed residue positions.
        base: ``(R, 3)`` Å residue positions of the base structure S0.
        pairs: ``(P, 2)`` int64 consecutive residues of one chain (see :meth:`cryodomain.io.structure.AtomicModel.consecutive_pairs`).

    Returns:
        Scalar: mean over the batch and the pairs of ``(||x'_i - x'_j|| - ||x_i - x_j||)^2`` (Å²);
        0 when there are no pairs.
    """
    if pairs.shape[0] == 0:
        return deformed.sum() * 0.0
    deformed_distances = _pair_distances(deformed, pairs)
    base_distances = _pair_distances(base, pairs)
    return (deformed_distances - base_distances).square().mean()


def all_pairs(n_residues: int, min_separation: int = 2, device: torch.device | None = None) -> Tensor:
    """Every residue pair ``i < j`` with ``j - i >= min_separation``.

    Args:
        n_residues: ``R``.
        min_separation: smallest index separation kept (2 skips chain neighbours).
        device: where to build the tensor.

    Returns:
        ``(P, 2)`` int64, ``P ~ R^2 / 2`` (use :func:`clash_pairs_light` for large models).
    """
    return torch.triu_indices(n_residues, n_residues, offset=min_separation, device=device).T.contiguous()


def clash_pairs_light(base: Tensor, low: float = 4.0, high: float = 10.0, min_separation: int = 2) -> Tensor:
    """Residue pairs whose distance in the base structure lies in ``[low, high]`` Å.

    These are the pairs that can come into contact under moderate motions (the light clash loss).
    The distance matrix is computed in row blocks so that memory stays bounded for large models.

    Args:
        base: ``(R, 3)`` Å residue positions of the base structure S0.
        low: smallest base distance kept, Å.
        high: largest base distance kept, Å.
        min_separation: smallest index separation ``j - i`` kept.

    Returns:
        ``(P, 2)`` int64 pairs ``i < j`` on ``base``'s device.
    """
    n_residues = base.shape[0]
    block_rows = max(1, _DISTANCE_BLOCK_ENTRIES // max(n_residues, 1))
    columns = torch.arange(n_residues, device=base.device)
    selected = []
    for start in range(0, n_residues, block_rows):
        rows = columns[start : start + block_rows]
        distances = torch.cdist(base[rows].unsqueeze(0), base.unsqueeze(0)).squeeze(0)
        keep = (distances >= low) & (distances <= high) & (columns[None, :] - rows[:, None] >= min_separation)
        row_in_block, column = torch.nonzero(keep, as_tuple=True)
        selected.append(torch.stack([rows[row_in_block], column], dim=1))
    if not selected:
        return torch.zeros((0, 2), dtype=torch.int64, device=base.device)
    return torch.cat(selected).to(torch.int64)


def clash_loss(deformed: Tensor, pairs: Tensor, cutoff: float = 4.0) -> Tensor:
    """Penalty on residue pairs that come closer than ``cutoff``.

    Args:
        deformed: ``(B, R, 3)`` Å deformed residue positions.
        pairs: ``(P, 2)`` int64 candidate pairs (:func:`all_pairs` or :func:`clash_pairs_light`).
        cutoff: distance below which a pair clashes, Å.

    Returns:
        Scalar: mean over the batch of the mean of ``(cutoff - d)^2`` over the clashing pairs of each
        image (Å²); the count is clamped to at least 1, so no clash gives exactly 0, never 0/0.
    """
    if pairs.shape[0] == 0:
        return deformed.sum() * 0.0
    distances = _pair_distances(deformed, pairs)
    clashing = distances < cutoff
    violation = torch.where(clashing, (cutoff - distances).square(), torch.zeros_like(distances))
    count = clashing.sum(dim=-1).clamp_min(1).to(distances.dtype)
    return (violation.sum(dim=-1) / count).mean()


def weights_and_biases(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters of ``modules`` split into weights (under the L2 penalty) and biases."""
    weights, biases = [], []
    for module in modules:
        for name, parameter in module.named_parameters():
            (biases if name.rsplit(".", 1)[-1] == "bias" else weights).append(parameter)
    return weights, biases


def l2_penalty(modules: Iterable[nn.Module]) -> Tensor:
    """Sum of the squared weights (not the biases) of ``modules``.

    Its gradient, ``2 w``, is what Adam's ``weight_decay`` adds to each weight's gradient: the
    training loop applies it that way (see ``cryodomain.workflows.train.set_l2_weight``).

    Args:
        modules: e.g. the encoder and the decoder.

    Returns:
        Scalar tensor (0 if there are no weights).
    """
    weights, _ = weights_and_biases(modules)
    if not weights:
        return torch.zeros(())
    # One pass per tensor and no squared copy (the encoder's first layer holds N^2 x 512 weights).
    # Norms of rows, summed in float64: a float32 norm over millions of entries is off by 5e-4.
    squares = [torch.linalg.vector_norm(weight, dim=-1).double().square().sum() for weight in weights]
    return torch.stack(squares).sum().to(weights[0].dtype)
