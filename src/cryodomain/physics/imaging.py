"""Image formation, written once: structure -> view -> projection -> Fourier filter -> mask.

Training, analysis, simulation and the benchmarks form every image through :func:`form_images`
on an :class:`ImageFrame` (the detector grid and the filters that depend only on it). This layer
knows nothing of training: the data side (scaling, shifting the experimental images into the model
frame) lives in :mod:`cryodomain.workflows.data`. Conventions: docs/method.md, "Image formation".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cryodomain.physics.fourier import apply_fourier_filter, frequency_grid, lowpass_filter, shift_filter
from cryodomain.physics.masks import circular_mask
from cryodomain.physics.render import pixel_coordinates, project_gaussians, rotate_points

# Raised-cosine edge of the circular mask, pixels.
MASK_SOFT_EDGE_PX = 3.0


@dataclass(frozen=True)
class ImageFrame:
    """The detector grid of an ``N x N`` image and the filters that depend only on it.

    Attributes:
        box: image side N, pixels.
        pixel_size_A: pixel size, Å.
        grid: ``(N,)`` pixel centre positions along one axis, Å (pixel ``N // 2`` at 0).
        freqs: ``(N, N // 2 + 1, 2)`` rfft2 half-grid frequencies (kx, ky), 1/Å.
        lowpass: ``(N, N // 2 + 1)`` low-pass filter, or None.
        mask: ``(N, N)`` real-space circular mask, or None.
    """

    box: int
    pixel_size_A: float
    grid: Tensor
    freqs: Tensor
    lowpass: Tensor | None
    mask: Tensor | None

    @classmethod
    def build(
        cls,
        box: int,
        pixel_size_A: float,
        *,
        lowpass_A: float | None = None,
        mask_radius_fraction: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ImageFrame:
        """The frame of ``box`` px images at ``pixel_size_A``, with a low-pass at ``lowpass_A`` Å and a
        circular mask of radius ``mask_radius_fraction * N / 2`` px when given."""
        freqs = frequency_grid(box, pixel_size_A, half=True, device=device, dtype=dtype)
        mask = None
        if mask_radius_fraction is not None:
            radius = mask_radius_fraction * box / 2
            mask = circular_mask(box, radius_px=radius, soft_edge_px=MASK_SOFT_EDGE_PX, device=device, dtype=dtype)
        lowpass = lowpass_filter(freqs, lowpass_A) if lowpass_A is not None else None
        grid = pixel_coordinates(box, pixel_size_A, device=device, dtype=dtype)
        return cls(box, pixel_size_A, grid, freqs, lowpass, mask)

    @property
    def n_pixels(self) -> int:
        return self.box * self.box


def form_images(
    points: Tensor,
    amplitudes: Tensor,
    rotations: Tensor,
    sigma_A: float | Tensor,
    frame: ImageFrame,
    ctf: Tensor,
    shifts_A: Tensor | None = None,
) -> Tensor:
    """Images of Gaussian pseudo-atoms seen at given poses through a microscope.

    Args:
        points: ``(P, 3)`` shared by all images, or ``(B, P, 3)``, model frame, Å.
        amplitudes: ``(P,)`` weight of each Gaussian (electrons).
        rotations: ``(B, 3, 3)`` pose matrices ``A`` (model -> view), ``y = A x``.
        sigma_A: Gaussian width, Å: one for all, or ``(P,)`` one per Gaussian.
        frame: the detector grid; its low-pass and mask, when set, apply to the image.
        ctf: ``(B, N, N // 2 + 1)`` CTF on the frame's half grid.
        shifts_A: ``(B, 2)`` translate each image by this (x, y), Å; None for no shift.

    Returns:
        ``(B, N, N)`` images: project, then multiply by ``ctf`` (x shift ramp x low-pass) in
        Fourier space, then mask.
    """
    # Pose: the view frame's z is the beam.
    view = rotate_points(rotations, points)
    projections = project_gaussians(view, amplitudes, sigma_A, frame.grid)
    # Everything linear and shift-invariant is one Fourier multiplication.
    fourier_filter = ctf
    if shifts_A is not None:
        fourier_filter = fourier_filter * shift_filter(shifts_A, frame.freqs)
    if frame.lowpass is not None:
        fourier_filter = fourier_filter * frame.lowpass
    images = apply_fourier_filter(projections, fourier_filter)
    if frame.mask is not None:
        images = images * frame.mask
    return images
