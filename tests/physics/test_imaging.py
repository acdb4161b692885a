"""Image formation: where a Gaussian lands, how shifts move it, and the filters in their order."""

import dataclasses
import math

import pytest
import torch

from cryodomain.physics.ctf import CTFParameters, compute_ctf
from cryodomain.physics.fourier import frequency_grid, lowpass_filter, shift_filter
from cryodomain.physics.imaging import MASK_SOFT_EDGE_PX, ImageFrame, form_images
from cryodomain.physics.masks import circular_mask
from cryodomain.physics.render import pixel_coordinates
from cryodomain.physics.rotations import random_rotations

F64 = torch.float64


def identity(batch: int = 1) -> torch.Tensor:
    return torch.eye(3, dtype=F64).expand(batch, 3, 3)


def unit_ctf(frame: ImageFrame, batch: int = 1) -> torch.Tensor:
    return torch.ones(batch, frame.box, frame.box // 2 + 1, dtype=F64)


def ctf_on(freqs: torch.Tensor, batch: int) -> torch.Tensor:
    """A real astigmatic CTF (even in k) for ``batch`` images on any frequency grid."""
    column = torch.linspace(0.0, 1.0, batch, dtype=F64)
    params = CTFParameters(
        defocus_u_A=8000.0 + 4000.0 * column,
        defocus_v_A=7000.0 + 3000.0 * column,
        defocus_angle_rad=0.3 + column,
        voltage_kv=torch.full((batch,), 300.0, dtype=F64),
        spherical_aberration_mm=torch.full((batch,), 2.7, dtype=F64),
        amplitude_contrast=torch.full((batch,), 0.1, dtype=F64),
        phase_shift_rad=torch.zeros(batch, dtype=F64),
        bfactor_A2=torch.full((batch,), 20.0, dtype=F64),
    )
    return compute_ctf(freqs, params)


def brute_force_gaussian(box: int, pixel_size: float, centre_xy: tuple[float, float], sigma: float, amplitude: float) -> torch.Tensor:
    """``amplitude * exp(-|p - c|^2 / 2 sigma^2)`` at every pixel, written out pixel by pixel."""
    image = torch.zeros(box, box, dtype=F64)
    for row in range(box):
        for column in range(box):
            x, y = (column - box // 2) * pixel_size, (row - box // 2) * pixel_size
            image[row, column] = amplitude * math.exp(-((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2) / (2 * sigma**2))
    return image


@pytest.mark.parametrize("box", [16, 17])
def test_one_gaussian_with_unit_ctf_peaks_at_its_pixel_with_its_amplitude(box):
    # Pixel N // 2 is 0 Å; x runs along columns, y along rows; z (the beam) does not matter.
    pixel_size, amplitude = 2.0, 3.5
    frame = ImageFrame.build(box, pixel_size, dtype=F64)
    point = torch.tensor([[3 * pixel_size, -2 * pixel_size, 7.0]], dtype=F64)
    image = form_images(point, torch.tensor([amplitude], dtype=F64), identity(), 1.5, frame, unit_ctf(frame))
    assert image.shape == (1, box, box)
    row, column = divmod(int(image[0].argmax()), box)
    assert (row, column) == (box // 2 - 2, box // 2 + 3)
    expected = brute_force_gaussian(box, pixel_size, (3 * pixel_size, -2 * pixel_size), 1.5, amplitude)
    torch.testing.assert_close(image[0], expected, rtol=0, atol=1e-9)


def test_shift_moves_the_image_content_by_plus_the_shift():
    box, pixel_size, sigma = 24, 1.5, 3.0
    frame = ImageFrame.build(box, pixel_size, dtype=F64)
    x0, y0 = -2 * pixel_size, 1 * pixel_size
    amplitude = torch.tensor([1.0], dtype=F64)
    point = torch.tensor([[x0, y0, 0.0]], dtype=F64)
    # Whole pixels: the peak moves from (x0, y0) to (x0 + sx, y0 + sy), i.e. column + 4, row - 3.
    shift = torch.tensor([[4 * pixel_size, -3 * pixel_size]], dtype=F64)
    moved = form_images(point, amplitude, identity(), sigma, frame, unit_ctf(frame), shift)
    row, column = divmod(int(moved[0].argmax()), box)
    assert (row, column) == (box // 2 + 1 - 3, box // 2 - 2 + 4)
    # A fractional shift is the Gaussian drawn at the shifted position (up to its aliasing, ~1e-7 of the peak).
    fractional = torch.tensor([[1.3, -0.7]], dtype=F64)
    moved = form_images(point, amplitude, identity(), sigma, frame, unit_ctf(frame), fractional)
    expected = brute_force_gaussian(box, pixel_size, (x0 + 1.3, y0 - 0.7), sigma, 1.0)
    torch.testing.assert_close(moved[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["band", "grid"])
@pytest.mark.parametrize("box", [20, 21])
def test_ctf_shift_lowpass_and_mask_compose_as_written_by_hand(box, method):
    """Project, then CTF x shift ramp x low-pass on the full Fourier grid (fft2), then the mask:
    on the low-pass band directly (to the aliasing of 2.5 Å Gaussians on 2 Å pixels, ~1e-6) and on
    every pixel (to rounding)."""
    pixel_size, sigma, batch, resolution = 2.0, 2.5, 3, 4 * 2.0
    frame = ImageFrame.build(box, pixel_size, lowpass_A=resolution, mask_radius_fraction=0.7, dtype=F64)
    assert frame.band is not None
    if method == "grid":
        frame = dataclasses.replace(frame, band=None)
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(6, 3, generator=generator, dtype=F64) - 0.5) * 12
    amplitudes = torch.rand(6, generator=generator, dtype=F64) + 0.5
    rotations = random_rotations(batch, generator, dtype=F64)
    shifts = torch.randn(batch, 2, generator=generator, dtype=F64) * 3
    formed = form_images(points, amplitudes, rotations, sigma, frame, ctf_on(frame.freqs, batch), shifts)

    grid = pixel_coordinates(box, pixel_size, dtype=F64)
    freqs = frequency_grid(box, pixel_size, dtype=F64)  # full grid, independent of the rfft path
    mask = circular_mask(box, radius_px=0.7 * box / 2, soft_edge_px=MASK_SOFT_EDGE_PX, dtype=F64)
    for b in range(batch):
        view = points @ rotations[b].T
        projection = torch.zeros(box, box, dtype=F64)
        for i in range(len(points)):
            gx = torch.exp(-((view[i, 0] - grid) ** 2) / (2 * sigma**2))
            gy = torch.exp(-((view[i, 1] - grid) ** 2) / (2 * sigma**2))
            projection += amplitudes[i] * gy[:, None] * gx[None, :]
        fourier = ctf_on(freqs, batch)[b] * shift_filter(shifts[b], freqs) * lowpass_filter(freqs, resolution)
        expected = torch.fft.ifft2(torch.fft.fft2(projection) * fourier).real * mask
        # The low-pass removes the Nyquist lines, where half and full grids could differ.
        tolerance = 1e-5 if method == "band" else 1e-10
        torch.testing.assert_close(formed[b], expected, rtol=0, atol=tolerance * float(expected.abs().max()))
    # The filters act: without them the images differ.
    bare = form_images(points, amplitudes, rotations, sigma, dataclasses.replace(frame.with_lowpass(None), mask=None), ctf_on(frame.freqs, batch), shifts)
    assert not torch.allclose(bare, formed, atol=1e-3)


def test_per_image_points_equal_each_image_formed_alone():
    box, pixel_size, batch = 16, 2.0, 4
    frame = ImageFrame.build(box, pixel_size, mask_radius_fraction=0.9, dtype=F64)
    generator = torch.Generator().manual_seed(1)
    points = (torch.rand(batch, 5, 3, generator=generator, dtype=F64) - 0.5) * 10
    amplitudes = torch.rand(5, generator=generator, dtype=F64) + 0.5
    rotations = random_rotations(batch, generator, dtype=F64)
    ctf = ctf_on(frame.freqs, batch)
    shifts = torch.randn(batch, 2, generator=generator, dtype=F64)
    together = form_images(points, amplitudes, rotations, 2.0, frame, ctf, shifts)
    for b in range(batch):
        alone = form_images(points[b], amplitudes, rotations[b : b + 1], 2.0, frame, ctf[b : b + 1], shifts[b : b + 1])
        torch.testing.assert_close(together[b], alone[0], rtol=0, atol=1e-12)
    # Shared (P, 3) points are the same as those points repeated per image.
    shared = form_images(points[0], amplitudes, rotations, 2.0, frame, ctf, shifts)
    repeated = form_images(points[0].expand(batch, 5, 3), amplitudes, rotations, 2.0, frame, ctf, shifts)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-12)


@pytest.mark.parametrize("box", [16, 15])
def test_frame_build_gives_filters_of_the_right_shapes_values_and_dtype(box):
    pixel_size = 2.0
    frame = ImageFrame.build(box, pixel_size, lowpass_A=5.0, mask_radius_fraction=0.5, dtype=F64)
    assert frame.box == box and frame.pixel_size_A == pixel_size and frame.n_pixels == box * box
    assert frame.grid.shape == (box,) and frame.freqs.shape == (box, box // 2 + 1, 2)
    assert frame.lowpass.shape == (box, box // 2 + 1) and frame.mask.shape == (box, box)
    for tensor in (frame.grid, frame.freqs, frame.lowpass, frame.mask):
        assert tensor.dtype == F64
    assert float(frame.grid[box // 2]) == 0.0 and float(frame.grid[box // 2 + 1]) == pixel_size
    # Low-pass: 1 up to 1/5 Å^-1, 0 beyond; brute force over the half grid.
    for row in range(box):
        for column in range(box // 2 + 1):
            ky = (row if row < (box + 1) // 2 else row - box) / (box * pixel_size)
            kx = column / (box * pixel_size)
            assert float(frame.lowpass[row, column]) == (1.0 if math.hypot(kx, ky) <= 1 / 5.0 else 0.0)
    # Mask: 1 at the centre, 0 in the corners; radius 0.5 * N / 2 px plus the soft edge.
    assert float(frame.mask[box // 2, box // 2]) == 1.0 and float(frame.mask[0, 0]) == 0.0
    assert float(frame.mask[box // 2, box // 2 + int(0.25 * box)]) == 1.0
    assert float(frame.mask[box // 2, box // 2 + math.ceil(0.25 * box + MASK_SOFT_EDGE_PX)]) == 0.0
    plain = ImageFrame.build(box, pixel_size)
    assert plain.lowpass is None and plain.mask is None and plain.grid.dtype == torch.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.box = 3


@pytest.mark.parametrize("box", [32, 33])
def test_band_holds_every_frequency_the_lowpass_passes_and_only_a_narrow_lowpass_gets_one(box):
    frame = ImageFrame.build(box, 2.0, lowpass_A=10.0, dtype=F64)
    band = frame.band
    assert band is not None and band.freqs.shape == (band.rows.numel(), band.columns, 2)
    # Every passed frequency lies in the band, and the band's frequencies are the grid's.
    inside = torch.zeros_like(frame.lowpass, dtype=torch.bool)
    inside[band.rows, : band.columns] = True
    assert bool((frame.lowpass[~inside] == 0).all())
    torch.testing.assert_close(band.freqs, frame.freqs[band.rows, : band.columns])
    torch.testing.assert_close(band.lowpass, frame.lowpass[band.rows, : band.columns])
    torch.testing.assert_close(band.ky, frame.freqs[band.rows, 0, 1])
    torch.testing.assert_close(band.kx, frame.freqs[0, : band.columns, 0])
    # Restricting and writing back is the low-passed image.
    image = torch.randn(2, box, box, dtype=F64)
    spectrum = torch.fft.rfft2(image) * frame.lowpass
    torch.testing.assert_close(band.to_images(band.restrict(spectrum), box), torch.fft.irfft2(spectrum, s=(box, box)))
    # A low-pass near Nyquist (or none) has no band: every pixel is cheaper then.
    assert frame.with_lowpass(2.5).band is None and frame.with_lowpass(None).band is None
    assert frame.with_lowpass(None).lowpass is None
    assert frame.with_lowpass(8.0).band.rows.numel() > band.rows.numel()


def test_images_on_the_band_match_every_pixel_for_per_gaussian_widths_and_carry_the_same_gradient():
    box, pixel_size, batch = 32, 2.0, 4
    frame = ImageFrame.build(box, pixel_size, lowpass_A=8.0, dtype=F64)
    grid_frame = dataclasses.replace(frame, band=None)
    generator = torch.Generator().manual_seed(3)
    points = ((torch.rand(batch, 40, 3, generator=generator, dtype=F64) - 0.5) * 30).requires_grad_()
    amplitudes = (torch.rand(40, generator=generator, dtype=F64) + 0.5).requires_grad_()
    widths = torch.rand(40, generator=generator, dtype=F64) + 2.0
    rotations = random_rotations(batch, generator, dtype=F64)
    shifts = torch.randn(batch, 2, generator=generator, dtype=F64)
    ctf = ctf_on(frame.freqs, batch)
    weights = torch.randn(batch, box, box, generator=generator, dtype=F64)
    results = []
    for each in (frame, grid_frame):
        images = form_images(points, amplitudes, rotations, widths, each, ctf, shifts)
        results.append((images.detach(), *torch.autograd.grad((images * weights).sum(), (points, amplitudes))))
    # They differ by the pixel grid's aliasing, which the band does not have: exp(-2 pi^2 s^2 k^2)
    # at k = 1/apix - 1/8 Å is 1.5e-5 for s = 2 Å (more for a derivative).
    for band_value, grid_value, tolerance in zip(*results, (1e-5, 1e-4, 1e-5)):
        torch.testing.assert_close(band_value, grid_value, rtol=0, atol=tolerance * float(grid_value.abs().max()))
