import math

import pytest
import torch

from cryodomain.physics.render import (
    fold_rows,
    gaussian_profiles,
    gaussian_spectra,
    pixel_coordinates,
    project_gaussians,
    project_gaussians_spectrum,
    render_volume,
    rotate_points,
)
from cryodomain.physics.rotations import random_rotations


def test_pixel_coordinates_centre_at_half_box():
    torch.testing.assert_close(pixel_coordinates(4, 2.0), torch.tensor([-4.0, -2.0, 0.0, 2.0]))
    torch.testing.assert_close(pixel_coordinates(5, 1.0), torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))


def test_rotate_points_is_matrix_times_column_vector():
    rotations = random_rotations(3, torch.Generator().manual_seed(0))
    points = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rotated = rotate_points(rotations, points)
    assert rotated.shape == (3, 7, 3)
    torch.testing.assert_close(rotated[1, 4], rotations[1] @ points[4])
    per_image = rotate_points(rotations, points.expand(3, 7, 3))
    torch.testing.assert_close(per_image, rotated)


def test_projection_matches_brute_force_loop():
    generator = torch.Generator().manual_seed(2)
    points = torch.randn(2, 4, 3, generator=generator, dtype=torch.float64) * 3
    amplitudes = torch.rand(2, 4, generator=generator, dtype=torch.float64) + 0.5
    sigma, box, pixel_size = 1.7, 7, 1.3
    grid = pixel_coordinates(box, pixel_size, dtype=torch.float64)
    images = project_gaussians(points, amplitudes, sigma, grid)
    assert images.shape == (2, box, box)
    for b in range(2):
        for q in range(box):
            for p in range(box):
                value = 0.0
                for i in range(4):
                    x, y = points[b, i, 0].item(), points[b, i, 1].item()
                    value += (
                        amplitudes[b, i].item()
                        * math.exp(-((x - grid[p].item()) ** 2) / (2 * sigma**2))
                        * math.exp(-((y - grid[q].item()) ** 2) / (2 * sigma**2))
                    )
                assert images[b, q, p].item() == pytest.approx(value, rel=1e-12)
    # Shared amplitudes (R,) broadcast over the batch.
    shared = project_gaussians(points, amplitudes[0], sigma, grid)
    torch.testing.assert_close(shared[0], images[0])


@pytest.mark.parametrize("box", [16, 17])
def test_single_atom_lights_expected_pixel(box):
    pixel_size = 1.5
    point = torch.tensor([[[2 * pixel_size, -3 * pixel_size, 4.0]]])
    image = project_gaussians(point, torch.tensor([6.0]), 1.0, pixel_coordinates(box, pixel_size))
    row, column = divmod(image[0].argmax().item(), box)
    assert (row, column) == (box // 2 - 3, box // 2 + 2)
    assert image[0, row, column].item() == pytest.approx(6.0, rel=1e-6)


def test_gradients_flow_to_points_and_amplitudes():
    points = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    amplitudes = torch.ones(5, requires_grad=True)
    target = torch.randn(2, 12, 12, generator=torch.Generator().manual_seed(4))
    image = project_gaussians(points, amplitudes, 2.0, pixel_coordinates(12, 1.0))
    (image * target).sum().backward()
    assert torch.isfinite(points.grad).all() and points.grad[..., :2].abs().sum() > 0
    assert torch.isfinite(amplitudes.grad).all() and amplitudes.grad.abs().sum() > 0


@pytest.mark.parametrize("rotate", [False, True])
def test_volume_line_integral_equals_projection(rotate):
    generator = torch.Generator().manual_seed(5)
    # Atoms stay 6 sigma inside the box so no density is cut off along z.
    box, pixel_size, sigma = 40, 1.0, 1.5
    points = (torch.rand(40, 3, generator=generator, dtype=torch.float64) - 0.5) * 10
    amplitudes = torch.rand(40, generator=generator, dtype=torch.float64) * 5 + 1
    if rotate:
        points = rotate_points(random_rotations(1, generator), points)[0]
    # A small chunk exercises the z-sorted chunking.
    volume = render_volume(points, amplitudes, sigma, box, pixel_size, chunk=7)
    assert volume.shape == (box, box, box) and volume.dtype == torch.float64
    projection = project_gaussians(points[None], amplitudes, sigma, pixel_coordinates(box, pixel_size, dtype=torch.float64))[0]
    # Gaussians are cut off at 6 sigma in the volume: 1.5e-8 of the peak, below float32 precision.
    torch.testing.assert_close(volume.sum(0) * pixel_size, projection, rtol=1e-7, atol=1e-7 * projection.max().item())


def test_volume_is_indexed_z_y_x():
    box, pixel_size = 20, 2.0
    point = torch.tensor([[1 * pixel_size, -2 * pixel_size, 3 * pixel_size]])
    volume = render_volume(point, torch.tensor([1.0]), 1.5, box, pixel_size)
    z, y, x = torch.unravel_index(volume.argmax(), volume.shape)
    assert (z.item(), y.item(), x.item()) == (box // 2 + 3, box // 2 - 2, box // 2 + 1)
    assert volume.max().item() == pytest.approx(1 / (math.sqrt(2 * math.pi) * 1.5), rel=1e-5)


def test_volume_chunking_does_not_change_result_and_is_differentiable():
    generator = torch.Generator().manual_seed(6)
    points = ((torch.rand(30, 3, generator=generator) - 0.5) * 12).requires_grad_(True)
    amplitudes = torch.rand(30, generator=generator) + 1
    whole = render_volume(points, amplitudes, 2.0, 16, 1.0, chunk=1000)
    chunked = render_volume(points, amplitudes, 2.0, 16, 1.0, chunk=4)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    chunked.pow(2).sum().backward()
    assert torch.isfinite(points.grad).all() and points.grad.abs().sum() > 0


def test_profile_gradient_matches_finite_differences():
    # The profile has a hand-written backward: check it numerically, with and without weights.
    grid = pixel_coordinates(12, 1.5, dtype=torch.float64)
    coordinates = (torch.randn(2, 5, dtype=torch.float64) * 4).requires_grad_()
    weights = torch.rand(5, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda c: gaussian_profiles(c, grid, 2.0, weights), (coordinates,))
    assert torch.autograd.gradcheck(lambda c: gaussian_profiles(c, grid, 2.0), (coordinates,))
    learnable = weights.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda c, w: gaussian_profiles(c, grid, 2.0, w), (coordinates, learnable))


def test_profile_weights_scale_each_atom_including_zero_and_negative_ones():
    grid = pixel_coordinates(16, 1.0)
    coordinates = torch.randn(3, 6) * 3
    weights = torch.tensor([2.0, 0.5, 1.0, 3.0, 0.0, -1.0])
    unit = gaussian_profiles(coordinates, grid, 1.5)
    torch.testing.assert_close(gaussian_profiles(coordinates, grid, 1.5, weights), weights[:, None] * unit)
    torch.testing.assert_close(gaussian_profiles(coordinates, grid, 1.5, weights.abs() + 0.1), (weights.abs() + 0.1)[:, None] * unit)
    peak = torch.exp(-((coordinates[..., None] - grid) ** 2) / (2 * 1.5**2))
    torch.testing.assert_close(unit, peak)


def test_a_width_per_atom_renders_each_atom_with_its_own_width():
    torch.manual_seed(3)
    points = torch.randn(2, 5, 3, dtype=torch.float64) * 6
    amplitudes = torch.rand(5, dtype=torch.float64) + 0.5
    sigmas = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64)
    grid = pixel_coordinates(32, 1.5, dtype=torch.float64)
    together = project_gaussians(points, amplitudes, sigmas, grid)
    alone = sum(project_gaussians(points[:, i : i + 1], amplitudes[i : i + 1], float(sigmas[i]), grid) for i in range(5))
    torch.testing.assert_close(together, alone)
    volume = render_volume(points[0], amplitudes, sigmas, 32, 1.5, chunk=2)
    volume_alone = sum(render_volume(points[0, i : i + 1], amplitudes[i : i + 1], float(sigmas[i]), 32, 1.5) for i in range(5))
    torch.testing.assert_close(volume, volume_alone)
    # The hand-written backward with one width per atom, against finite differences.
    coordinates = points[0, :, 0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: gaussian_profiles(c, grid, sigmas, amplitudes), (coordinates,))


@pytest.mark.parametrize("box", [24, 25])
def test_spectrum_projection_is_the_rfft2_of_the_pixel_projection(box):
    """At the frequencies up to half Nyquist (where the pixel grid's aliasing is below 1e-7), for
    Gaussians inside the box, one width or one each."""
    pixel_size = 2.0
    generator = torch.Generator().manual_seed(1)
    points = (torch.rand(3, 12, 3, generator=generator, dtype=torch.float64) - 0.5) * 10
    amplitudes = torch.rand(3, 12, generator=generator, dtype=torch.float64) + 0.5
    grid = pixel_coordinates(box, pixel_size, dtype=torch.float64)
    rows = torch.fft.fftfreq(box, d=pixel_size, dtype=torch.float64).abs() <= 0.25 / pixel_size
    columns = torch.fft.rfftfreq(box, d=pixel_size, dtype=torch.float64) <= 0.25 / pixel_size
    ky = torch.fft.fftfreq(box, d=pixel_size, dtype=torch.float64)[rows]
    kx = torch.fft.rfftfreq(box, d=pixel_size, dtype=torch.float64)[columns]
    for sigma in (2.5, torch.rand(12, generator=generator, dtype=torch.float64) + 2.5):
        expected = torch.fft.rfft2(project_gaussians(points, amplitudes, sigma, grid))[:, rows][..., columns]
        spectrum = project_gaussians_spectrum(points, amplitudes, sigma, ky, kx, pixel_size, box // 2 * pixel_size)
        assert spectrum.shape == expected.shape and spectrum.is_complex()
        torch.testing.assert_close(spectrum, expected, rtol=0, atol=1e-7 * float(expected.abs().max()))
        folded = project_gaussians_spectrum(points, amplitudes, sigma, fold_rows(ky), kx, pixel_size, box // 2 * pixel_size)
        torch.testing.assert_close(folded, spectrum, rtol=0, atol=0)


def test_fold_rows_recovers_the_rows_from_their_distinct_magnitudes():
    ky = torch.fft.fftfreq(9, d=2.0, dtype=torch.float64)
    fold = fold_rows(ky)
    assert fold.magnitudes.numel() == 5 and bool((fold.magnitudes >= 0).all())
    torch.testing.assert_close(fold.sign.squeeze(-1) * fold.magnitudes[fold.row_of], ky, rtol=0, atol=0)


def test_spectrum_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(2)
    coordinates = (torch.randn(2, 5, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    frequencies = torch.linspace(-0.2, 0.2, 7, dtype=torch.float64)
    widths = torch.rand(5, generator=generator, dtype=torch.float64) + 2.0
    assert torch.autograd.gradcheck(lambda c: gaussian_spectra(c, frequencies, widths, 2.0, 32.0), (coordinates,))
    assert torch.autograd.gradcheck(lambda c: gaussian_spectra(c, frequencies, 2.5, 2.0, 32.0), (coordinates,))


def test_spectrum_weights_scale_each_profile_and_keep_their_gradient():
    generator = torch.Generator().manual_seed(3)
    coordinates = (torch.randn(2, 5, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    frequencies = torch.linspace(-0.2, 0.2, 7, dtype=torch.float64)
    weights = torch.rand(2, 5, generator=generator, dtype=torch.float64) + 0.5
    unweighted = gaussian_spectra(coordinates, frequencies, 2.5, 2.0, 32.0)
    for given in (weights[0], weights):  # one amplitude per Gaussian, or per image and Gaussian
        torch.testing.assert_close(gaussian_spectra(coordinates, frequencies, 2.5, 2.0, 32.0, weights=given), unweighted * given.unsqueeze(-1))
    assert torch.autograd.gradcheck(lambda c: gaussian_spectra(c, frequencies, 2.5, 2.0, 32.0, weights=weights[0]), (coordinates,))
    learned = weights.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda c, w: gaussian_spectra(c, frequencies, 2.5, 2.0, 32.0, weights=w), (coordinates, learned))
