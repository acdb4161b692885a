import math

import pytest
import torch

from cryodomain.physics.fourier import (
    apply_fourier_filter,
    fourier_crop,
    frequency_grid,
    lowpass_filter,
    shift_filter,
    shift_images,
)
from cryodomain.physics.render import pixel_coordinates


def gaussian_blob(box: int, pixel_size: float, centre_xy: tuple[float, float], sigma: float, dtype=torch.float64):
    """Blob sampled at pixel centres (k - N//2) * apix, indexed [y, x]."""
    coords = pixel_coordinates(box, pixel_size, dtype=dtype)
    gx = torch.exp(-((coords - centre_xy[0]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((coords - centre_xy[1]) ** 2) / (2 * sigma**2))
    return gy[:, None] * gx[None, :]


def centroid_xy(images: torch.Tensor, pixel_size: float) -> torch.Tensor:
    coords = pixel_coordinates(images.shape[-1], pixel_size, dtype=images.dtype)
    total = images.sum(dim=(-2, -1))
    x = (images.sum(dim=-2) * coords).sum(-1) / total
    y = (images.sum(dim=-1) * coords).sum(-1) / total
    return torch.stack([x, y], dim=-1)


def test_frequency_grid_layout_matches_fft_order():
    freqs = frequency_grid(8, 2.0)
    assert freqs.shape == (8, 8, 2) and freqs.dtype == torch.float32
    expected = torch.fft.fftfreq(8, d=2.0)
    # kx varies along columns, ky along rows, DC at [0, 0].
    torch.testing.assert_close(freqs[0, :, 0], expected)
    torch.testing.assert_close(freqs[:, 0, 1], expected)
    assert torch.all(freqs[3, :, 1] == expected[3]) and torch.all(freqs[:, 5, 0] == expected[5])


@pytest.mark.parametrize("shift_xy", [(3.0, 0.0), (-2.5, 0.0), (0.0, 4.0), (0.0, -1.5), (2.2, -3.7)])
def test_shift_moves_content_by_plus_shift(shift_xy):
    pixel_size = 1.5
    blob = gaussian_blob(48, pixel_size, (1.0, -2.0), sigma=3.0)
    shifted = shift_images(blob, torch.tensor(shift_xy, dtype=torch.float64), pixel_size)
    moved = centroid_xy(shifted, pixel_size) - centroid_xy(blob, pixel_size)
    torch.testing.assert_close(moved, torch.tensor(shift_xy, dtype=torch.float64), atol=1e-6, rtol=0)
    # Exact Fourier shift of a smooth blob equals the blob sampled at the new centre.
    expected = gaussian_blob(48, pixel_size, (1.0 + shift_xy[0], -2.0 + shift_xy[1]), sigma=3.0)
    torch.testing.assert_close(shifted, expected, atol=1e-8, rtol=0)


def test_integer_pixel_shift_is_a_roll():
    images = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    shifted = shift_images(images, torch.tensor([2.0, -1.0]), pixel_size_A=1.0)
    torch.testing.assert_close(shifted, torch.roll(images, shifts=(-1, 2), dims=(-2, -1)), atol=1e-5, rtol=0)


def test_shift_round_trip_with_batch_of_shifts():
    generator = torch.Generator().manual_seed(1)
    pixel_size = 2.0
    blobs = torch.stack([gaussian_blob(32, pixel_size, (0.5 * i, -0.7 * i), 4.0) for i in range(4)])
    shifts = torch.randn(4, 2, generator=generator, dtype=torch.float64) * 5
    freqs = frequency_grid(32, pixel_size, dtype=torch.float64)
    assert shift_filter(shifts, freqs).shape == (4, 32, 32)
    back = shift_images(shift_images(blobs, shifts, pixel_size), -shifts, pixel_size)
    # Exact up to the blob's (tiny) content at Nyquist, whose fractional shift is not invertible.
    torch.testing.assert_close(back, blobs, atol=1e-8, rtol=0)


def test_shift_gradient_reaches_shifts():
    blob = gaussian_blob(24, 1.0, (0.0, 0.0), 2.5, dtype=torch.float32)
    shifts = torch.tensor([[0.3, -0.2]], requires_grad=True)
    shift_images(blob, shifts, 1.0).mul(blob).sum().backward()
    assert shifts.grad is not None and torch.isfinite(shifts.grad).all() and shifts.grad.abs().sum() > 0


def test_apply_fourier_filter_identity_and_broadcast():
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(apply_fourier_filter(images, torch.ones(16, 16)), images, atol=1e-5, rtol=0)
    halves = apply_fourier_filter(images, torch.full((3, 16, 16), 0.5))
    torch.testing.assert_close(halves, images * 0.5, atol=1e-5, rtol=0)


def test_lowpass_removes_high_frequency_keeps_low():
    box, pixel_size = 64, 1.0
    coords = pixel_coordinates(box, pixel_size, dtype=torch.float64)
    low = torch.cos(2 * math.pi * 4 / box * coords)[None, :].expand(box, box)  # 1/16 1/Å along x
    high = torch.cos(2 * math.pi * 20 / box * coords)[:, None].expand(box, box)  # 1/3.2 1/Å along y
    freqs = frequency_grid(box, pixel_size, dtype=torch.float64)
    mask = lowpass_filter(freqs, resolution_A=8.0)
    assert mask.dtype == torch.float64 and set(mask.unique().tolist()) == {0.0, 1.0}
    filtered = apply_fourier_filter(low + high, mask)
    torch.testing.assert_close(filtered, low.contiguous(), atol=1e-10, rtol=0)


def test_lowpass_keeps_frequency_exactly_at_cutoff():
    freqs = torch.tensor([[0.1, 0.0], [0.0, 0.1000001], [0.06, 0.08]], dtype=torch.float64)
    assert lowpass_filter(freqs, 10.0).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("box,new_box,sigma", [(64, 32, 4.0), (64, 48, 4.0), (96, 31, 5.5), (63, 32, 4.0), (65, 65, 4.0)])
def test_fourier_crop_of_blob_equals_blob_on_coarse_grid(box, new_box, sigma):
    # sigma keeps the blob band-limited on the coarse grid and negligible at the fine box edge.
    pixel_size, centre = 1.0, (3.0, -5.0)
    fine = gaussian_blob(box, pixel_size, centre, sigma)
    coarse = fourier_crop(fine, new_box)
    expected = gaussian_blob(new_box, pixel_size * box / new_box, centre, sigma)
    assert coarse.shape == (new_box, new_box)
    torch.testing.assert_close(coarse, expected, atol=1e-6, rtol=0)


def test_fourier_crop_keeps_centre_and_batch_dims():
    images = torch.zeros(2, 3, 32, 32)
    images[..., 16, 16] = 1.0
    cropped = fourier_crop(images, 16)
    assert cropped.shape == (2, 3, 16, 16)
    flat = cropped.reshape(6, -1).argmax(dim=-1)
    assert torch.all(flat == 8 * 16 + 8)


def test_fourier_crop_rejects_larger_box():
    with pytest.raises(ValueError):
        fourier_crop(torch.zeros(8, 8), 9)


def test_half_grid_filter_equals_full_grid_filter_for_an_even_filter():
    # A CTF-like even filter applied with rfft2 on the half grid gives the full-grid result.
    images = torch.randn(3, 16, 16, dtype=torch.float64)
    full = frequency_grid(16, 2.0, dtype=torch.float64)
    half = frequency_grid(16, 2.0, half=True, dtype=torch.float64)
    assert half.shape == (16, 9, 2)
    torch.testing.assert_close(half, full[:, :9].abs() * torch.tensor([1.0, 0.0]) + full[:, :9] * torch.tensor([0.0, 1.0]))

    def radial(freqs):
        return torch.cos(40.0 * (freqs**2).sum(-1))

    torch.testing.assert_close(apply_fourier_filter(images, radial(half)), apply_fourier_filter(images, radial(full)))


def test_shift_filter_is_the_phase_ramp_on_full_and_half_grids():
    shifts = torch.tensor([[1.3, -0.4], [0.0, 2.5]], dtype=torch.float64)
    for half in (False, True):
        freqs = frequency_grid(12, 1.5, half=half, dtype=torch.float64)
        phase = -2.0 * math.pi * (shifts[:, None, None, :] * freqs).sum(-1)
        torch.testing.assert_close(shift_filter(shifts, freqs), torch.polar(torch.ones_like(phase), phase))
