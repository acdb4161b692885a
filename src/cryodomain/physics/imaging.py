"""Image formation, written once: structure -> view -> projection -> Fourier filter -> mask.

Training, analysis, simulation and the benchmarks form every image through :func:`form_images`
on an :class:`ImageFrame` (the detector grid and the filters that depend only on it). This layer
knows nothing of training: the data side (scaling, shifting the experimental images into the model
frame) lives in :mod:`cryodomain.workflows.data`. Conventions: docs/method.md, "Image formation".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from cryodomain.physics.fourier import apply_fourier_filter, frequency_grid, lowpass_filter, shift_filter
from cryodomain.physics.masks import circular_mask
from cryodomain.physics.render import (
    RowFold,
    fold_rows,
    pixel_coordinates,
    project_gaussians,
    project_gaussians_spectrum,
    rotate_points,
)

# Raised-cosine edge of the circular mask, pixels.
MASK_SOFT_EDGE_PX = 3.0
# Images are formed from a low-pass band's frequencies directly when the band holds less than this
# fraction of the rfft2 half grid (below it, fewer products than projecting on every pixel).
BAND_FRACTION = 0.5


@dataclass(frozen=True)
class SpectralBand:
    """The rectangle of the rfft2 half grid that holds a low-pass filter's nonzero frequencies.

    Attributes:
        rows: ``(Ky,)`` row indices (``fftfreq`` order) of the rows with a nonzero frequency.
        columns: the first ``Kx`` columns (``rfftfreq`` order) hold every nonzero frequency.
        freqs: ``(Ky, Kx, 2)`` the band's frequencies (kx, ky), 1/Å.
        lowpass: ``(Ky, Kx)`` the low-pass filter on the band.
        fold: the rows folded onto their distinct ``|ky|`` (:func:`fold_rows`), computed once here
            because it waits for the device.
    """

    rows: Tensor
    columns: int
    freqs: Tensor
    lowpass: Tensor
    fold: RowFold

    @property
    def kx(self) -> Tensor:
        """``(Kx,)`` the columns' frequencies, 1/Å."""
        return self.freqs[0, :, 0]

    @property
    def ky(self) -> Tensor:
        """``(Ky,)`` the rows' frequencies, 1/Å."""
        return self.freqs[:, 0, 1]

    @classmethod
    def of(cls, lowpass: Tensor, freqs: Tensor) -> SpectralBand | None:
        """The band of a ``(N, N // 2 + 1)`` filter on ``freqs``, or None when it is too wide to pay."""
        support = lowpass != 0
        rows = torch.nonzero(support.any(dim=1)).flatten()
        columns = int(torch.nonzero(support.any(dim=0)).max()) + 1 if bool(support.any()) else 1
        if rows.numel() * columns >= BAND_FRACTION * lowpass.numel():
            return None
        band_freqs = freqs[rows, :columns]
        return cls(rows, columns, band_freqs, lowpass[rows, :columns], fold_rows(band_freqs[:, 0, 1]))

    def restrict(self, spectrum: Tensor) -> Tensor:
        """``(..., N, N // 2 + 1)`` -> ``(..., Ky, Kx)``: the band's entries."""
        return spectrum.index_select(-2, self.rows)[..., : self.columns]

    def to_images(self, band_spectrum: Tensor, box: int) -> Tensor:
        """``(..., Ky, Kx)`` complex band -> ``(..., N, N)`` real images (zero outside the band)."""
        padded = torch.nn.functional.pad(band_spectrum, (0, box // 2 + 1 - self.columns))
        spectrum = padded.new_zeros(*band_spectrum.shape[:-2], box, box // 2 + 1).index_copy(-2, self.rows, padded)
        return torch.fft.irfft2(spectrum, s=(box, box))


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
        band: the low-pass's frequency band when images are formed on it directly (see
            :func:`form_images`), or None.
    """

    box: int
    pixel_size_A: float
    grid: Tensor
    freqs: Tensor
    lowpass: Tensor | None
    mask: Tensor | None
    band: SpectralBand | None = None

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
        grid = pixel_coordinates(box, pixel_size_A, device=device, dtype=dtype)
        return cls(box, pixel_size_A, grid, freqs, None, mask).with_lowpass(lowpass_A)

    def with_lowpass(self, lowpass_A: float | None) -> ImageFrame:
        """This frame with a hard low-pass at ``lowpass_A`` Å (None: none), and its band."""
        if lowpass_A is None:
            return dataclasses.replace(self, lowpass=None, band=None)
        lowpass = lowpass_filter(self.freqs, lowpass_A)
        return dataclasses.replace(self, lowpass=lowpass, band=SpectralBand.of(lowpass, self.freqs))

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
        Fourier space, then mask. With a frame's band (a low-pass narrow enough) the projection's
        spectrum is computed on the band alone (:func:`project_gaussians_spectrum`): the same
        images for Gaussians inside the box, at a fraction of the cost.
    """
    # Pose: the view frame's z is the beam.
    view = rotate_points(rotations, points)
    if frame.band is not None:
        band = frame.band
        spectrum = project_gaussians_spectrum(view, amplitudes, sigma_A, band.fold, band.kx, frame.pixel_size_A, frame.box // 2 * frame.pixel_size_A)
        band_filter = band.restrict(ctf) * band.lowpass
        if shifts_A is not None:
            band_filter = band_filter * shift_filter(shifts_A, band.freqs)
        images = band.to_images(spectrum * band_filter, frame.box)
        return images * frame.mask if frame.mask is not None else images
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
