"""Reference accuracies that make an evaluation readable: what is reachable, and by what.

* :func:`best_single_structure`: the one structure closest (mean squared RMSD, no superposition)
  to the truth of every image: what a homogeneous model could at best reach.
* :func:`piecewise_rigid_limit`: the best K contiguous rigid segments of the base model, shared by
  all conformations, each moved exactly (Kabsch) onto every true conformation: what a K-segment
  rigid-body model of this base could at best reach.
* :func:`fourier_shell_correlation`, :func:`fsc_auc`, :func:`fsc_resolution`: map agreement in the
  style of CryoBench's per-image FSC.

Coordinates are in Å, arrays are numpy. Squared errors are sums over residues (Å²).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Above this many residues the candidate boundaries of the rigid limit are put on a grid of every
# ceil(R / 750) residues, so that at most ~751 candidates (282,000 ranges) are searched: the cost is
# one 3x3 SVD per range and conformation (~1.4 us each: ~40 s for 98 conformations at worst).
MAX_EXACT_RESIDUES = 750
GRID_CANDIDATES = 750
# 3x3 matrices in flight at once in the range costs, over all threads (~70 MB per array).
_BATCH_MATRICES = 1_000_000
_MAX_THREADS = 8


def kabsch(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proper rigid motion moving ``x`` onto ``y`` in the least-squares sense.

    Minimises ``sum_i |A x_i + t - y_i|^2`` over rotations ``A`` (``det A = +1``, never a
    reflection, even when ``y`` is a mirror image of ``x``) and translations ``t``.

    Args:
        x: ``(..., n, 3)`` points in Å.
        y: ``(..., n, 3)`` target points in Å.

    Returns:
        ``(rotation (..., 3, 3), translation (..., 3) Å)`` with ``y ~ x @ rotation^T + translation``.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mean_x, mean_y = x.mean(-2), y.mean(-2)
    covariance = np.swapaxes(x - mean_x[..., None, :], -1, -2) @ (y - mean_y[..., None, :])
    rotation = _rotation_from_covariance(covariance)
    return rotation, mean_y - np.einsum("...ij,...j->...i", rotation, mean_x)


def _rotation_from_covariance(covariance: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` best rotation for cross-covariances ``H = sum (x - mx)(y - my)^T``."""
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    sign = np.where(sign == 0, 1.0, sign)
    correction = np.ones(covariance.shape[:-1])
    correction[..., -1] = sign
    return np.swapaxes(vt, -1, -2) @ (correction[..., :, None] * np.swapaxes(u, -1, -2))


def _signed_nuclear_norm(covariance: np.ndarray) -> np.ndarray:
    """``s1 + s2 + d s3`` of each ``(..., 3, 3)`` matrix, ``d = sign(det)``: ``max_A tr(A H)`` over rotations."""
    singular = np.linalg.svd(covariance, compute_uv=False)
    sign = np.sign(np.linalg.det(covariance))
    return singular[..., 0] + singular[..., 1] + np.where(sign == 0, 1.0, sign) * singular[..., 2]


def best_single_structure(truth_coords: np.ndarray, conformation: np.ndarray) -> np.ndarray:
    """The single structure with the smallest mean squared per-image RMSD (no superposition).

    ``mean_m |S - T_{c(m)}|^2`` is minimised by the image-weighted mean of the true conformations.

    Args:
        truth_coords: ``(C, R, 3)`` Å, one structure per conformation.
        conformation: ``(M,)`` conformation index of each image.

    Returns:
        ``(R, 3)`` Å, float64.
    """
    weights = np.bincount(np.asarray(conformation), minlength=len(truth_coords)).astype(np.float64)
    return np.tensordot(weights / weights.sum(), np.asarray(truth_coords, dtype=np.float64), axes=1)


@dataclass(frozen=True)
class RigidLimit:
    """The best shared piecewise-rigid approximation of the true conformations by the base model.

    Attributes:
        n_segments: K.
        boundaries: ``(K + 1,)`` residue indices, ``0 = b_0 < ... < b_K = R``; segment k is
            residues ``[b_k, b_{k+1})``.
        rmsd_A: ``(C,)`` RMSD over all residues of the fitted base to each true conformation, Å.
        rotations: ``(C, K, 3, 3)`` rotation of each segment for each conformation (det +1).
        translations: ``(C, K, 3)`` Å; residue ``x`` of segment k moves to ``rotation @ x + translation``.
        weighted_sse_A2: the minimised ``sum_c w_c sum_residues |fit - truth|^2``, Å².
        candidate_step: boundaries were searched every ``candidate_step`` residues (1: every
            residue, the exact optimum; more: a coarse grid for large models, an upper bound).
    """

    n_segments: int
    boundaries: np.ndarray
    rmsd_A: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    weighted_sse_A2: float
    candidate_step: int

    @property
    def exact(self) -> bool:
        """Whether every residue was a candidate boundary (the optimum, not a grid upper bound)."""
        return self.candidate_step == 1


def candidate_boundaries(n_residues: int, chain_breaks: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Residue indices where segments may start, and the grid step used.

    Every residue up to :data:`MAX_EXACT_RESIDUES` residues, else every ``ceil(R / GRID_CANDIDATES)``; the
    chain breaks (if given) and ``R`` are always included.

    Returns:
        ``(candidates (G,) int64 sorted, from 0 to R, step)``.
    """
    step = 1 if n_residues <= MAX_EXACT_RESIDUES else math.ceil(n_residues / GRID_CANDIDATES)
    points = [np.arange(0, n_residues, step), [n_residues]]
    if chain_breaks is not None:
        points.append(np.asarray(chain_breaks, dtype=np.int64))
    return np.unique(np.concatenate(points).astype(np.int64)), step


def range_costs(base: np.ndarray, truth_coords: np.ndarray, weights: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Image-weighted rigid-fit error of every range between two candidate boundaries.

    For residues ``[a, b)`` and conformation c the least-squares error of one rigid motion of the
    base onto the truth is ``Xc + Yc - 2 (s1 + s2 + d s3)`` with ``Xc``, ``Yc`` the centred sums
    of squares and ``s`` the singular values of the centred cross-covariance (``d`` its
    determinant's sign: proper rotations only). All five moments come from prefix sums over the
    residues, so each range costs one 3x3 SVD per conformation, batched.

    Args:
        base: ``(R, 3)`` Å.
        truth_coords: ``(C, R, 3)`` Å.
        weights: ``(C,)`` images per conformation (conformations of weight 0 are skipped).
        candidates: ``(G,)`` sorted boundary candidates from 0 to R.

    Returns:
        ``(G, G)`` Å²: entry ``[i, j]`` is ``sum_c w_c error_c(candidates[i], candidates[j])``
        for ``i < j``, ``inf`` elsewhere.
    """
    weights = np.asarray(weights, dtype=np.float64)
    used = np.flatnonzero(weights > 0)
    x = np.asarray(base, dtype=np.float64)
    x = x - x.mean(0)  # centring the inputs keeps the prefix sums small (no cancellation)

    def prefix(values: np.ndarray, axis: int) -> np.ndarray:
        shape = list(values.shape)
        shape[axis] = 1
        summed = np.concatenate([np.zeros(shape), np.cumsum(values, axis=axis)], axis=axis)
        return np.take(summed, candidates, axis=axis)

    start, stop = np.triu_indices(len(candidates), k=1)
    count = (candidates[stop] - candidates[start]).astype(np.float64)[:, None]
    px, pxx = prefix(x, 0), prefix((x * x).sum(-1), 0)
    sum_x = px[stop] - px[start]  # (P, 3)
    mean_x = sum_x / count
    centred_xx = pxx[stop] - pxx[start] - (sum_x * mean_x).sum(-1)

    def batch_cost(chosen: np.ndarray) -> np.ndarray:
        y = np.asarray(truth_coords[chosen], dtype=np.float64)
        y = y - y.mean(1, keepdims=True)
        py, pyy = prefix(y, 1), prefix((y * y).sum(-1), 1)
        pxy = prefix(x[None, :, :, None] * y[:, :, None, :], 1)  # (c, G, 3, 3)
        sum_y = py[:, stop] - py[:, start]  # (c, P, 3)
        covariance = pxy[:, stop]  # sum x y^T - n mean_x mean_y^T, in place
        covariance -= pxy[:, start]
        covariance -= mean_x[None, :, :, None] * sum_y[:, :, None, :]
        centred_yy = pyy[:, stop] - pyy[:, start] - (sum_y * sum_y).sum(-1) / count[None, :, 0]
        error = np.maximum(centred_xx[None] + centred_yy - 2.0 * _signed_nuclear_norm(covariance), 0.0)
        return weights[chosen] @ error

    # numpy's SVDs release the GIL: batches of conformations run on threads, summed in order.
    n_threads = max(1, min(_MAX_THREADS, _usable_cpus(), len(used)))
    per_batch = max(1, _BATCH_MATRICES // n_threads // max(1, len(start)))
    batches = [used[first : first + per_batch] for first in range(0, len(used), per_batch)]
    with ThreadPoolExecutor(n_threads) as pool:
        total = sum(pool.map(batch_cost, batches), np.zeros(len(start)))
    costs = np.full((len(candidates), len(candidates)), np.inf)
    costs[start, stop] = total
    return costs


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _best_path(costs: np.ndarray, n_segments: int) -> tuple[list[int], float]:
    """Indices into the candidates of the K-segment path from the first to the last with least cost."""
    size = len(costs)
    best = np.full(size, np.inf)
    best[0] = 0.0
    choices = np.zeros((n_segments, size), dtype=np.int64)
    for k in range(n_segments):
        options = best[:, None] + costs  # (from, to)
        choices[k] = np.argmin(options, axis=0)
        best = options[choices[k], np.arange(size)]
    path = [size - 1]
    for k in range(n_segments - 1, -1, -1):
        path.append(int(choices[k, path[-1]]))
    return path[::-1], float(best[-1])


def piecewise_rigid_limit(
    base: np.ndarray,
    truth_coords: np.ndarray,
    weights: np.ndarray,
    n_segments: int,
    chain_breaks: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
) -> RigidLimit:
    """Best K contiguous segments of the base, each moved rigidly onto every true conformation.

    The segmentation (over residue index) is shared by all conformations; the rigid motion of each
    segment is fitted exactly per conformation (Kabsch, proper rotation). "Best" is the least
    image-weighted total squared error ``sum_c w_c sum_residues |fit_c - truth_c|^2``, found by
    dynamic programming over the boundaries with every range's cost from :func:`range_costs`.
    Above :data:`MAX_EXACT_RESIDUES` residues the boundaries are searched on a grid (see
    ``RigidLimit.candidate_step``). A segment may span chains unless ``chain_breaks`` is given.

    Args:
        base: ``(R, 3)`` base model, Å.
        truth_coords: ``(C, R, 3)`` true conformations, Å.
        weights: ``(C,)`` images per conformation.
        n_segments: K >= 1.
        chain_breaks: residue indices where a new chain starts; no segment spans one.
        candidates: the only residue indices where a segment may start (0 and R are added;
            ``candidate_step`` is then their largest gap); None: every residue, or a grid above
            :data:`MAX_EXACT_RESIDUES`.

    Returns:
        :class:`RigidLimit`.

    Raises:
        ValueError: K outside ``[1, number of candidate ranges]``, or fewer segments than the chain
            breaks require.
    """
    base = np.asarray(base, dtype=np.float64)
    truth_coords = np.asarray(truth_coords, dtype=np.float64)
    n_residues = base.shape[0]
    if candidates is None:
        candidates, step = candidate_boundaries(n_residues, chain_breaks)
    else:
        extra = [] if chain_breaks is None else [np.asarray(chain_breaks, dtype=np.int64)]
        candidates = np.unique(np.concatenate([[0, n_residues], np.asarray(candidates, dtype=np.int64), *extra]))
        step = int(np.diff(candidates).max())
    if not 1 <= n_segments <= len(candidates) - 1:
        raise ValueError(f"n_segments must be in [1, {len(candidates) - 1}] for {n_residues} residues, got {n_segments}")
    costs = range_costs(base, truth_coords, weights, candidates)
    if chain_breaks is not None:
        breaks = np.asarray(chain_breaks, dtype=np.int64)
        spans = (candidates[:, None, None] < breaks) & (breaks < candidates[None, :, None])
        costs[spans.any(-1)] = np.inf
    path, total = _best_path(costs, n_segments)
    if not np.isfinite(total):
        raise ValueError(f"{n_segments} segments cannot respect {len(chain_breaks)} chain breaks")
    boundaries = candidates[path]
    rotations, translations, rmsd = fit_segments(base, truth_coords, boundaries)
    return RigidLimit(n_segments, boundaries, rmsd, rotations, translations, total, step)


def fit_segments(base: np.ndarray, truth_coords: np.ndarray, boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact rigid fit of each segment of the base onto each conformation.

    Args:
        base: ``(R, 3)`` Å.
        truth_coords: ``(C, R, 3)`` Å.
        boundaries: ``(K + 1,)`` from 0 to R.

    Returns:
        ``(rotations (C, K, 3, 3), translations (C, K, 3) Å, rmsd (C,) Å)``.
    """
    base = np.asarray(base, dtype=np.float64)
    truth = np.asarray(truth_coords, dtype=np.float64)
    boundaries = np.asarray(boundaries, dtype=np.int64)
    segment = np.repeat(np.arange(len(boundaries) - 1), np.diff(boundaries))  # (R,)
    counts = np.diff(boundaries).astype(np.float64)
    starts = boundaries[:-1]
    mean_x = np.add.reduceat(base, starts, axis=0) / counts[:, None]  # (K, 3)
    mean_y = np.add.reduceat(truth, starts, axis=1) / counts[None, :, None]  # (C, K, 3)
    centred_x = base - mean_x[segment]
    centred_y = truth - mean_y[:, segment]
    covariance = np.add.reduceat(centred_x[None, :, :, None] * centred_y[:, :, None, :], starts, axis=1)  # (C, K, 3, 3)
    rotations = _rotation_from_covariance(covariance)
    translations = mean_y - np.einsum("ckij,kj->cki", rotations, mean_x)
    moved = move_segments(base, boundaries, rotations, translations)
    rmsd = np.sqrt(((moved - truth) ** 2).sum(-1).mean(-1))
    return rotations, translations, rmsd


def move_segments(base: np.ndarray, boundaries: np.ndarray, rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """The base with each segment moved rigidly, for each conformation.

    Args:
        base: ``(R, 3)`` Å.
        boundaries: ``(K + 1,)`` from 0 to R.
        rotations: ``(C, K, 3, 3)``.
        translations: ``(C, K, 3)`` Å.

    Returns:
        ``(C, R, 3)`` Å: residue ``x`` of segment k becomes ``rotations[c, k] @ x + translations[c, k]``.
    """
    segment = np.repeat(np.arange(len(boundaries) - 1), np.diff(boundaries))
    return np.einsum("crij,rj->cri", rotations[:, segment], np.asarray(base, dtype=np.float64)) + translations[:, segment]


def fourier_shell_correlation(a: np.ndarray, b: np.ndarray, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two maps (or two batches of maps), shell by shell.

    Shell s holds the Fourier components with ``round(|k|) = s`` (k in cycles per box), for
    ``s = 0 .. N // 2`` (Nyquist); ``FSC_s = Re sum F_a conj(F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)``,
    0 where a shell holds no power.

    Args:
        a, b: ``(..., N, N, N)`` real maps of the same shape.
        pixel_size_A: voxel size in Å.

    Returns:
        ``(frequencies (N // 2 + 1,) in 1/Å, fsc (..., N // 2 + 1))``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 3 or len(set(a.shape[-3:])) != 1:
        raise ValueError(f"need two maps of the same cubic shape, got {a.shape} and {b.shape}")
    n = a.shape[-1]
    fa, fb = np.fft.rfftn(a, axes=(-3, -2, -1)), np.fft.rfftn(b, axes=(-3, -2, -1))
    full, half = np.fft.fftfreq(n) * n, np.fft.rfftfreq(n) * n
    radius = np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + half[None, None, :] ** 2)
    shell = np.rint(radius).astype(np.int64)
    # The half transform stores one of each conjugate pair along x, except x = 0 (and x = N/2 for even N).
    multiplicity = np.where((half == 0) | (2 * half == n), 1.0, 2.0)[None, None, :] * np.ones_like(radius)
    keep = shell <= n // 2
    shell, multiplicity = shell[keep], multiplicity[keep]
    n_shells = n // 2 + 1
    batch = a.shape[:-3]
    fa, fb = fa.reshape(-1, *radius.shape)[:, keep], fb.reshape(-1, *radius.shape)[:, keep]
    index = (shell[None, :] + n_shells * np.arange(fa.shape[0])[:, None]).ravel()

    def shell_sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(index, (values * multiplicity).ravel(), minlength=n_shells * fa.shape[0]).reshape(-1, n_shells)

    cross = shell_sums((fa * np.conj(fb)).real)
    power = shell_sums(np.abs(fa) ** 2) * shell_sums(np.abs(fb) ** 2)
    fsc = np.divide(cross, np.sqrt(power), out=np.zeros_like(cross), where=power > 0)
    return np.arange(n_shells) / (n * pixel_size_A), fsc.reshape(*batch, n_shells)


def fsc_auc(frequencies: np.ndarray, fsc: np.ndarray, pixel_size_A: float) -> np.ndarray:
    """Area under the FSC curve over frequency normalised by Nyquist (0 to 1), FSC clipped to [0, 1].

    Args:
        frequencies: ``(S,)`` 1/Å from :func:`fourier_shell_correlation`.
        fsc: ``(..., S)``.
        pixel_size_A: voxel size in Å (Nyquist is ``1 / (2 pixel_size_A)``).

    Returns:
        ``(...)`` in [0, 1]: 1 for identical maps.
    """
    x = np.asarray(frequencies) * 2.0 * pixel_size_A
    return np.trapezoid(np.clip(fsc, 0.0, 1.0), x, axis=-1)


def fsc_resolution(frequencies: np.ndarray, fsc: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Resolution in Å where the FSC first falls below ``threshold``, interpolated linearly.

    Args:
        frequencies: ``(S,)`` 1/Å, ``frequencies[0] = 0``.
        fsc: ``(..., S)``.
        threshold: FSC level (0.5 for model-to-map style comparisons).

    Returns:
        ``(...)`` Å: ``1 / f`` at the first crossing after the zero shell; the Nyquist resolution
        ``1 / frequencies[-1]`` if the curve never falls below; at most ``1 / frequencies[1]``
        (the box size) if it starts below.
    """
    fsc = np.asarray(fsc, dtype=np.float64)
    below = fsc[..., 1:] < threshold
    first = np.where(below.any(-1), below.argmax(-1) + 1, fsc.shape[-1] - 1)  # index of the first shell below
    previous = np.maximum(first - 1, 1)
    f_hi, f_lo = frequencies[first], frequencies[previous]
    v_hi = np.take_along_axis(fsc, first[..., None], -1)[..., 0]
    v_lo = np.take_along_axis(fsc, previous[..., None], -1)[..., 0]
    fraction = np.clip(np.divide(v_lo - threshold, v_lo - v_hi, out=np.zeros_like(v_hi), where=v_lo != v_hi), 0.0, 1.0)
    crossing = np.where(below.any(-1) & (first > 1), f_lo + fraction * (f_hi - f_lo), frequencies[first])
    return 1.0 / crossing
