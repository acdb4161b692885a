"""Fourier-space helpers for square images: frequency grids, filters, shifts, cropping.

Conventions (see :mod:`cryodomain.io.poses`): images are ``(..., N, N)`` arrays indexed ``[y, x]``;
real-space pixel ``k`` sits at ``(k - N // 2) * apix``. Frequency grids are in 1/Å and in
``torch.fft.fftfreq`` order (DC at ``[0, 0]``, not shifted), so they multiply ``torch.fft.fft2``
output directly. A real filter that is even in ``k`` (the CTF, a low-pass) is a convolution with a
symmetric kernel, so it leaves the content centred at pixel ``N // 2`` where it was.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def frequency_grid(box: int, pixel_size_A: float, *, half: bool = False, device=None, dtype=torch.float32) -> Tensor:
    """Spatial frequencies of a ``box x box`` image, unshifted.

    Args:
        box: image side N in pixels.
        pixel_size_A: pixel size in Å.
        half: only the ``N // 2 + 1`` non-negative kx columns, the layout of ``torch.fft.rfft2``
            (a real image's spectrum is Hermitian, so the other half is redundant).
        device, dtype: of the returned tensor.

    Returns:
        ``(N, N, 2)`` (``(N, N // 2 + 1, 2)`` with ``half``) in 1/Å: ``[..., 0]`` is kx (varies
        along columns), ``[..., 1]`` is ky (varies along rows), in ``torch.fft.fftfreq`` order
        (kx in ``rfftfreq`` order with ``half``).
    """
    axis = torch.fft.fftfreq(box, d=pixel_size_A, device=device, dtype=dtype)
    columns = torch.fft.rfftfreq(box, d=pixel_size_A, device=device, dtype=dtype) if half else axis
    ky, kx = torch.meshgrid(axis, columns, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def apply_fourier_filter(images: Tensor, fourier_filter: Tensor) -> Tensor:
    """Multiply images by a filter in Fourier space and return the real part.

    A filter on the half grid (last axis ``N // 2 + 1``, see :func:`frequency_grid`) is applied
    with ``rfft2``/``irfft2``, at half the cost; for a filter that is even in ``k`` (a CTF, a
    low-pass, a shift phase ramp) the result is that of the full grid, up to the Nyquist lines.

    Args:
        images: ``(..., N, N)`` real images.
        fourier_filter: ``(..., N, N)`` or ``(..., N, N // 2 + 1)``, real or complex, unshifted;
            broadcast against ``images``.

    Returns:
        ``(..., N, N)`` real: ``ifft2(fft2(images) * fourier_filter).real``.
    """
    box = images.shape[-1]
    if fourier_filter.shape[-1] != box:
        return torch.fft.irfft2(torch.fft.rfft2(images) * fourier_filter, s=images.shape[-2:])
    return torch.fft.ifft2(torch.fft.fft2(images) * fourier_filter).real


def shift_filter(shifts_A: Tensor, freqs: Tensor) -> Tensor:
    """Phase ramp that translates image content by ``+shift``.

    Content at position ``p`` moves to ``p + shift``: ``F(k) * exp(-2 pi i k . shift)``. On a grid
    from :func:`frequency_grid` the ramp is the product of one ramp per axis, built as an outer
    product (one complex multiply over the grid instead of a cosine and a sine per frequency).

    Args:
        shifts_A: ``(..., 2)`` shifts (x, y) in Å.
        freqs: ``(N, M, 2)`` frequency grid from :func:`frequency_grid` (full or half).

    Returns:
        complex ``(..., N, M)``.
    """
    shifts = shifts_A.to(freqs.dtype)
    kx, ky = freqs[0, :, 0], freqs[:, 0, 1]  # (M,) along columns, (N,) along rows
    ramp_x = torch.polar(torch.ones_like(kx), -2.0 * math.pi * shifts[..., 0, None] * kx)  # (..., M)
    ramp_y = torch.polar(torch.ones_like(ky), -2.0 * math.pi * shifts[..., 1, None] * ky)  # (..., N)
    return ramp_y.unsqueeze(-1) * ramp_x.unsqueeze(-2)


def shift_images(images: Tensor, shifts_A: Tensor, pixel_size_A: float) -> Tensor:
    """Translate images by ``+shift`` with an exact (periodic) Fourier shift.

    Args:
        images: ``(..., N, N)`` real images.
        shifts_A: ``(..., 2)`` shifts (x, y) in Å; content at ``p`` moves to ``p + shift``.
        pixel_size_A: pixel size in Å.

    Returns:
        ``(..., N, N)`` shifted images.
    """
    freqs = frequency_grid(images.shape[-1], pixel_size_A, device=images.device, dtype=images.dtype)
    return apply_fourier_filter(images, shift_filter(shifts_A, freqs))


def lowpass_filter(freqs: Tensor, resolution_A: float) -> Tensor:
    """Hard low-pass filter: 1 for ``|k| <= 1 / resolution``, 0 beyond.

    Args:
        freqs: ``(N, N, 2)`` frequency grid in 1/Å.
        resolution_A: cut-off resolution in Å.

    Returns:
        ``(N, N)`` real filter, same dtype as ``freqs``.
    """
    radius_sq = (freqs * freqs).sum(dim=-1)
    return (radius_sq <= (1.0 / resolution_A) ** 2).to(freqs.dtype)


def fourier_crop(images: Tensor, new_box: int) -> Tensor:
    """Downsample by keeping the central ``new_box x new_box`` Fourier coefficients.

    The pixel size becomes ``apix * N / new_box``. Values are scaled by ``(new_box / N)^2`` so a
    smooth image keeps its pixel values (a band-limited blob becomes the same blob sampled on the
    coarse grid), and the centre pixel ``N // 2`` maps to the coarse centre ``new_box // 2`` for
    every parity of ``N`` and ``new_box``.

    Args:
        images: ``(..., N, N)`` real images.
        new_box: new side n in pixels, ``1 <= n <= N``.

    Returns:
        ``(..., n, n)`` real images.
    """
    box = images.shape[-1]
    if images.shape[-2] != box:
        raise ValueError(f"fourier_crop needs square images, got {tuple(images.shape[-2:])}")
    if not 1 <= new_box <= box:
        raise ValueError(f"fourier_crop: new_box must lie in [1, {box}], got {new_box}")
    # Move the centre pixel to index 0 so the Fourier phases refer to the box centre.
    spectrum = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    # Centre DC, keep frequencies -n//2 .. n - n//2 - 1 (the fftshift layout of size n).
    spectrum = torch.fft.fftshift(spectrum, dim=(-2, -1))
    start = box // 2 - new_box // 2
    spectrum = spectrum[..., start : start + new_box, start : start + new_box]
    # Back to unshifted order, invert, and put the origin back at the coarse centre pixel.
    cropped = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real
    cropped = torch.fft.fftshift(cropped, dim=(-2, -1))
    return cropped * (new_box / box) ** 2
