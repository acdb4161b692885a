"""Gaussian pseudo-atom rendering: rotation to the view frame, projection images, volumes.

Conventions (see :mod:`cryodomain.io.poses`): a rotation matrix ``A`` maps model coordinates to
the view frame, ``y = A @ x``; images are indexed ``[y, x]`` and volumes ``[z, y, x]``; pixel ``k``
sits at ``(k - N // 2) * apix``. Each pseudo-atom is an isotropic Gaussian of width ``sigma``; the
projection along z carries no normalisation constant (docs/method.md, 3.1), and the volume is scaled so that
its line integral along z equals that projection.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Lowest exponent evaluated in a Gaussian profile (see _WeightedProfile).
_EXPONENT_FLOOR = -80.0
# Gaussian tails beyond this many sigma along z are below float32 precision (exp(-18) ~ 1.5e-8).
_Z_CUTOFF_SIGMAS = 6.0


def pixel_coordinates(box: int, pixel_size_A: float, *, device=None, dtype=torch.float32) -> Tensor:
    """Positions of the pixel centres along one axis.

    Args:
        box: image side N in pixels.
        pixel_size_A: pixel size in Å.
        device, dtype: of the returned tensor.

    Returns:
        ``(N,)`` in Å: ``(k - N // 2) * pixel_size_A``.
    """
    return (torch.arange(box, device=device, dtype=dtype) - box // 2) * pixel_size_A


def rotate_points(rotations: Tensor, points: Tensor) -> Tensor:
    """Apply rotation matrices to points: ``y = A @ x``.

    Args:
        rotations: ``(B, 3, 3)`` matrices ``A`` (model -> view frame).
        points: ``(R, 3)`` shared by all rotations, or ``(B, R, 3)``, in Å.

    Returns:
        ``(B, R, 3)`` rotated points in Å.
    """
    # Row vectors: y^T = x^T A^T (rotations follow the points' dtype, e.g. float64 poses).
    return torch.matmul(points, rotations.to(points.dtype).transpose(-1, -2))


class _WeightedProfile(torch.autograd.Function):
    """``P[..., i, p] = a_i exp(-(c_i - g_p)^2 / (2 s_i^2))`` with a hand-written backward (``s`` one
    width for all, or ``(R,)`` one per pseudo-atom).

    These ``(..., R, N)`` tensors are the largest of a training step after the images, so the
    passes over them count. Forward: ``d = (c - g) / (sqrt(2) s)``, then ``log a - d^2`` (one
    ``addcmul``), a floor, and ``exp``: four passes. Backward:
    ``dL/dc_i = sum_p G P (g_p - c_i) / s^2 = (sum_p G P g_p - c_i sum_p G P) / s^2``, one product
    and two reductions: four passes where autograd would replay about ten.
    Only the coordinates get a gradient (grid, weights and width are constants of the step).
    """

    @staticmethod
    def forward(ctx, coordinates: Tensor, grid: Tensor, log_weights: Tensor, sigma_A: float | Tensor) -> Tensor:  # type: ignore[override]
        # A width per pseudo-atom (R,) scales each row; a float scales all alike.
        scale = 1.0 / (math.sqrt(2.0) * sigma_A)
        profile = (coordinates * scale).unsqueeze(-1) - grid * (scale.unsqueeze(-1) if torch.is_tensor(scale) else scale)
        torch.addcmul(log_weights.unsqueeze(-1), profile, profile, value=-1.0, out=profile)
        # Flooring the exponent at -80 (exp = 2e-35, far below float32 resolution of any sum)
        # keeps exp on its vectorised path: arguments that underflow take a slow path, 7x slower.
        profile.clamp_min_(_EXPONENT_FLOOR).exp_()
        ctx.save_for_backward(coordinates, grid, profile)
        ctx.sigma_A = sigma_A
        return profile

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        coordinates, grid, profile = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        weighted = grad * profile  # (..., R, N)
        total = weighted.sum(dim=-1)
        first_moment = weighted.mul_(grid).sum(dim=-1)
        grad_coordinates = (first_moment - coordinates * total) / ctx.sigma_A**2
        return grad_coordinates, None, None, None


def gaussian_profiles(coordinates: Tensor, grid: Tensor, sigma_A: float | Tensor, weights: Tensor | None = None) -> Tensor:
    """One-axis Gaussian profiles of pseudo-atoms on the pixel grid, optionally weighted.

    Args:
        coordinates: ``(..., R)`` positions along one axis, Å.
        grid: ``(N,)`` pixel coordinates, Å.
        sigma_A: Gaussian width, Å: one for all, or ``(R,)`` one per pseudo-atom.
        weights: ``(..., R)`` factors per atom (amplitudes); None for 1.

    Returns:
        ``(..., R, N)``: ``weights[..., i] * exp(-(coordinates[..., i] - grid[p])^2 / (2 sigma^2))``.
    """
    grid = grid.to(coordinates.dtype)
    if weights is None or weights.requires_grad or not bool((weights > 0).all()):
        # Positive constant weights go into the exponent as logs; others multiply the profile.
        unit = _WeightedProfile.apply(coordinates, grid, coordinates.new_zeros(()).expand(coordinates.shape), _width(sigma_A, coordinates))
        return unit if weights is None else weights.unsqueeze(-1) * unit
    log_weights = torch.log(weights.to(coordinates.dtype)).expand(coordinates.shape)
    return _WeightedProfile.apply(coordinates, grid, log_weights, _width(sigma_A, coordinates))


def _width(sigma_A: float | Tensor, like: Tensor) -> float | Tensor:
    """The width as the profile kernel takes it: a float, or a tensor of ``like``'s dtype."""
    return sigma_A.to(like.dtype) if torch.is_tensor(sigma_A) else float(sigma_A)


def project_gaussians(points: Tensor, amplitudes: Tensor, sigma_A: float | Tensor, grid: Tensor) -> Tensor:
    """Project Gaussian pseudo-atoms along z onto the pixel grid.

    ``I[q, p] = sum_i A_i exp(-(x_i - g_p)^2 / 2 s^2) exp(-(y_i - g_q)^2 / 2 s^2)``, computed
    separably as one ``(N x R) @ (R x N)`` matrix product per image.

    Args:
        points: ``(B, R, 3)`` positions in the view frame, Å.
        amplitudes: ``(R,)`` or ``(B, R)`` amplitudes (electrons).
        sigma_A: Gaussian width in Å, or ``(R,)`` one per pseudo-atom.
        grid: ``(N,)`` pixel coordinates in Å from :func:`pixel_coordinates`.

    Returns:
        ``(B, N, N)`` images indexed ``[y, x]``.
    """
    weighted_x = gaussian_profiles(points[..., 0], grid, sigma_A, amplitudes.to(points.dtype))  # (B, R, N) over columns
    profile_y = gaussian_profiles(points[..., 1], grid, sigma_A)  # (B, R, N) over rows
    return torch.matmul(profile_y.transpose(-1, -2), weighted_x)


class _GaussianSpectra(torch.autograd.Function):
    """``S[..., i, k] = m_ik exp(-2 pi i f_k (c_i + o))`` as ``[real | imaginary]`` (``m`` real and
    broadcastable to ``(..., R, K)``), with a backward
    that reuses the forward's output: ``d Re / dc = 2 pi f Im`` and ``d Im / dc = -2 pi f Re``, so
    no cosine or sine is evaluated twice. Only the coordinates get a gradient."""

    @staticmethod
    def forward(ctx, coordinates: Tensor, frequencies: Tensor, magnitude: Tensor, origin_A: float) -> Tensor:  # type: ignore[override]
        # One contiguous cosine over both halves, sin(t) = cos(t - pi / 2), scaled in place: no
        # concatenation of (..., R, K) tensors and no temporaries, about 4x faster on CPU than
        # cat([m cos(t), m sin(t)]); the shift costs one rounding of the phase, as forming it does.
        count = frequencies.shape[0]
        doubled = torch.cat([frequencies, frequencies]) * (-2.0 * math.pi)
        shift = torch.cat([frequencies.new_zeros(count), frequencies.new_full((count,), -math.pi / 2)])
        spectra = torch.addcmul(shift, (coordinates + origin_A).unsqueeze(-1), doubled).cos_()
        spectra.mul_(torch.cat([magnitude, magnitude], dim=-1))
        ctx.save_for_backward(frequencies, spectra)
        return spectra

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        frequencies, spectra = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        count = frequencies.shape[0]
        real, imaginary = spectra[..., :count], spectra[..., count:]
        grad_real, grad_imaginary = grad[..., :count], grad[..., count:]
        # d phase / dc = -2 pi f; d Re / d phase = -Im, d Im / d phase = Re.
        along = (grad_real * imaginary - grad_imaginary * real) * (2.0 * math.pi * frequencies)
        return along.sum(dim=-1), None, None, None


def gaussian_spectra(
    coordinates: Tensor, frequencies: Tensor, sigma_A: float | Tensor, pixel_size_A: float, origin_A: float, weights: Tensor | None = None
) -> Tensor:
    """Discrete Fourier transforms of sampled one-axis Gaussian profiles, at chosen frequencies.

    The profile ``exp(-(g_p - c)^2 / 2 s^2)`` sampled at pixels ``g_p = p * apix - origin`` has the
    DFT ``sum_p exp(-(g_p - c)^2 / 2 s^2) exp(-2 pi i k p apix)``, which is (Poisson summation,
    exact up to aliasing below 1e-6 for ``s >= apix``, and the wrap-around of a periodic image)
    ``sqrt(2 pi) s / apix * exp(-2 pi^2 s^2 k^2) * exp(-2 pi i k (c + origin))``.

    Args:
        coordinates: ``(..., R)`` positions along one axis, Å.
        frequencies: ``(K,)`` spatial frequencies, 1/Å.
        sigma_A: Gaussian width, Å: one for all, or ``(R,)`` one per pseudo-atom.
        pixel_size_A: pixel size, Å.
        origin_A: position of pixel 0 is ``-origin_A`` (``N // 2 * apix`` for the detector grid).
        weights: ``(R,)`` or ``(..., R)`` factors of the profiles (amplitudes), or None.

    Returns:
        ``(..., R, 2K)``: the real parts for the K frequencies, then the imaginary parts.
    """
    frequencies = frequencies.to(coordinates.dtype)
    width = torch.as_tensor(sigma_A, dtype=coordinates.dtype, device=coordinates.device).reshape(-1, 1)  # (R or 1, 1)
    magnitude = (math.sqrt(2.0 * math.pi) / pixel_size_A) * width * torch.exp(-2.0 * math.pi**2 * (width * frequencies) ** 2)
    if weights is not None and weights.requires_grad:
        return _GaussianSpectra.apply(coordinates, frequencies, magnitude, float(origin_A)) * weights.to(coordinates.dtype).unsqueeze(-1)
    if weights is not None:
        magnitude = magnitude * weights.to(coordinates.dtype).unsqueeze(-1)  # (R, K) for one amplitude per Gaussian
    return _GaussianSpectra.apply(coordinates, frequencies, magnitude, float(origin_A))


class RowFold(NamedTuple):
    """Rows ``ky`` folded onto their distinct magnitudes: ``ky = sign * magnitudes[row_of]``.

    Attributes:
        magnitudes: ``(K|y|,)`` the distinct ``|ky|``, 1/Å.
        row_of: ``(Ky,)`` index into ``magnitudes`` of each row.
        sign: ``(Ky, 1)`` -1 where ``ky < 0``, else 1.
    """

    magnitudes: Tensor
    row_of: Tensor
    sign: Tensor


def fold_rows(ky: Tensor) -> RowFold:
    """Fold ``(Ky,)`` row frequencies onto their distinct magnitudes (see :class:`RowFold`).

    ``torch.unique`` waits for the device, so callers that form many images on one band fold once.
    """
    magnitudes, row_of = torch.unique(ky.abs(), return_inverse=True)
    return RowFold(magnitudes, row_of, torch.where(ky < 0, -1.0, 1.0).to(ky.dtype).unsqueeze(-1))


def project_gaussians_spectrum(
    points: Tensor,
    amplitudes: Tensor,
    sigma_A: float | Tensor,
    ky: Tensor | RowFold,
    kx: Tensor,
    pixel_size_A: float,
    origin_A: float,
) -> Tensor:
    """The ``rfft2`` of :func:`project_gaussians`' images at a rectangle of frequencies, computed
    directly: per image one ``(2 K|y| x R) @ (R x 2 Kx)`` real matrix product.

    Separability carries over to Fourier space: ``F[q, p] = sum_i A_i Y_i(ky_q) X_i(kx_p)`` with
    ``X``, ``Y`` from :func:`gaussian_spectra`; with ``Y = Yc + i Ys`` and ``X = Xc + i Xs`` one
    product of the stacked real and imaginary parts gives all four ``Y X`` blocks. A profile is
    real, so ``Y(-ky) = conj Y(ky)``: the product runs over the K|y| distinct ``|ky|`` only, about
    half the rows of a low-pass band, and a row at ``-ky`` takes the blocks of ``|ky|`` with the
    sign of ``Ys`` flipped. For a band of frequencies smaller than the grid (a low-pass) this is
    cheaper than projecting on every pixel.
    Equal to ``rfft2(project_gaussians(...))`` there for Gaussians inside the box (the images are
    periodic, so a Gaussian crossing the edge wraps around instead of being cut).

    Args:
        points: ``(B, R, 3)`` positions in the view frame, Å.
        amplitudes: ``(R,)`` or ``(B, R)`` amplitudes (electrons).
        sigma_A: Gaussian width in Å, or ``(R,)`` one per pseudo-atom.
        ky: ``(Ky,)`` row frequencies, 1/Å, or their :func:`fold_rows` (computed once per band);
            kx: ``(Kx,)`` column frequencies, 1/Å.
        pixel_size_A: pixel size, Å.
        origin_A: ``N // 2 * pixel_size_A`` (pixel ``N // 2`` is at 0 Å).

    Returns:
        complex ``(B, Ky, Kx)``.
    """
    along_x = gaussian_spectra(points[..., 0], kx, sigma_A, pixel_size_A, origin_A, weights=amplitudes)
    magnitudes, row_of, sign = ky if isinstance(ky, RowFold) else fold_rows(ky)
    along_y = gaussian_spectra(points[..., 1], magnitudes, sigma_A, pixel_size_A, origin_A)
    blocks = torch.matmul(along_y.transpose(-1, -2), along_x)  # (B, 2 K|y|, 2 Kx)
    rows, columns = magnitudes.shape[0], kx.shape[0]
    cos_cos, cos_sin = blocks[..., :rows, :columns], blocks[..., :rows, columns:]
    sin_cos, sin_sin = blocks[..., rows:, :columns], blocks[..., rows:, columns:]
    sign = sign.to(blocks.dtype)  # the sign of Ys
    real = cos_cos.index_select(-2, row_of) - sign * sin_sin.index_select(-2, row_of)
    imaginary = cos_sin.index_select(-2, row_of) + sign * sin_cos.index_select(-2, row_of)
    return torch.complex(real, imaginary)


def render_volume(
    points: Tensor,
    amplitudes: Tensor,
    sigma_A: float | Tensor,
    box: int,
    pixel_size_A: float,
    *,
    chunk: int = 256,
) -> Tensor:
    """Render Gaussian pseudo-atoms into a density volume.

    The density is ``sum_i A_i / (sqrt(2 pi) sigma) * G_z G_y G_x``, so that
    ``volume.sum(0) * pixel_size_A`` equals :func:`project_gaussians` of the same points (the line
    integral along z). Gaussians are cut off at 6 sigma (1.5e-8 of the peak). Residues are sorted
    by z and processed in chunks of C; a chunk touches only the box within 6 sigma of its atoms
    (Z slices, Y rows, X columns) and adds one ``(Y x C) @ (C x X)`` product per slice, so memory
    stays near ``N^3 + Z * Y * (X + C)`` floats (about 0.1 GB for 14,000 residues at N = 256).
    Differentiable, but the autograd graph keeps every chunk: call under ``torch.no_grad()`` for
    large models.

    Args:
        points: ``(R, 3)`` positions in Å (model frame, origin at the box centre).
        amplitudes: ``(R,)`` amplitudes (electrons).
        sigma_A: Gaussian width in Å, or ``(R,)`` one per pseudo-atom.
        box: volume side N in voxels.
        pixel_size_A: voxel size in Å.
        chunk: residues per chunk.

    Returns:
        ``(N, N, N)`` density indexed ``[z, y, x]``, dtype and device of ``points``.
    """
    grid = pixel_coordinates(box, pixel_size_A, device=points.device, dtype=points.dtype)
    volume = torch.zeros(box, box, box, device=points.device, dtype=points.dtype)
    if points.shape[0] == 0:
        return volume
    # Sorting by z keeps each chunk's atoms in a thin slab of slices.
    order = torch.argsort(points[:, 2].detach())
    points, amplitudes = points[order], amplitudes[order]
    sigmas = torch.as_tensor(sigma_A, dtype=points.dtype, device=points.device).expand(points.shape[0])[order]
    scales = 1.0 / (math.sqrt(2.0 * math.pi) * sigmas)
    margin = _Z_CUTOFF_SIGMAS * float(sigmas.max())
    for start in range(0, points.shape[0], chunk):
        block = points[start : start + chunk]
        # Voxel ranges (z, y, x) within the cut-off of this chunk's atoms; elsewhere the sum is 0.
        lows = block.detach().amin(dim=0).tolist()
        highs = block.detach().amax(dim=0).tolist()
        ranges = [
            (
                max(math.ceil((low - margin) / pixel_size_A) + box // 2, 0),
                min(math.floor((high + margin) / pixel_size_A) + box // 2, box - 1) + 1,
            )
            for low, high in zip(lows, highs)
        ]
        (x0, x1), (y0, y1), (z0, z1) = ranges
        if x0 >= x1 or y0 >= y1 or z0 >= z1:
            continue
        widths = sigmas[start : start + chunk]
        profile_x = gaussian_profiles(block[:, 0], grid[x0:x1], widths)  # (C, X)
        profile_y = gaussian_profiles(block[:, 1], grid[y0:y1], widths)  # (C, Y)
        profile_z = gaussian_profiles(block[:, 2], grid[z0:z1], widths)  # (C, Z)
        weighted_z = (amplitudes[start : start + chunk] * scales[start : start + chunk])[:, None] * profile_z
        # Per slice: (Y x C) @ (C x X), with the slice's z weights folded into the y factor.
        slab_y = weighted_z.transpose(0, 1)[:, None, :] * profile_y.transpose(0, 1)[None]  # (Z, Y, C)
        volume[z0:z1, y0:y1, x0:x1] += torch.matmul(slab_y, profile_x)
    return volume
