import math

import pytest
import torch

from cryodomain.physics.ctf import CTFParameters, compute_ctf, electron_wavelength_A
from cryodomain.physics.fourier import apply_fourier_filter, frequency_grid


def make_params(dtype=torch.float64, **overrides) -> CTFParameters:
    values = dict(
        defocus_u_A=[15000.0],
        defocus_v_A=[15000.0],
        defocus_angle_rad=[0.0],
        voltage_kv=[300.0],
        spherical_aberration_mm=[2.7],
        amplitude_contrast=[0.1],
        phase_shift_rad=[0.0],
        bfactor_A2=[0.0],
    )
    values.update(overrides)
    return CTFParameters(**{name: torch.tensor(value, dtype=dtype) for name, value in values.items()})


def zero_frequencies(defocus: float, params: CTFParameters, orders: range) -> torch.Tensor:
    """|k| where chi = -n pi, from the quadratic in s^2 along a direction with deltaf = -defocus."""
    wavelength = electron_wavelength_A(params.voltage_kv[0]).item()
    a = 0.5 * math.pi * params.spherical_aberration_mm[0].item() * 1e7 * wavelength**3
    b = -math.pi * wavelength * defocus
    offset = params.phase_shift_rad[0].item() + math.asin(params.amplitude_contrast[0].item())
    roots = []
    for n in orders:
        c = n * math.pi - offset
        # Smaller root of a x^2 + b x + c = 0, in the cancellation-free form.
        roots.append(2 * c / (-b + math.sqrt(b * b - 4 * a * c)))
    return torch.sqrt(torch.tensor(roots, dtype=torch.float64))


def test_wavelength_at_300_kv():
    assert electron_wavelength_A(torch.tensor(300.0, dtype=torch.float64)).item() == pytest.approx(0.019687, abs=1e-6)
    assert electron_wavelength_A(torch.tensor(200.0, dtype=torch.float64)).item() == pytest.approx(0.025079, abs=1e-6)


@pytest.mark.parametrize("phase_shift", [0.0, 0.4])
def test_analytic_zeros_without_astigmatism(phase_shift):
    params = make_params(phase_shift_rad=[phase_shift])
    radii = zero_frequencies(15000.0, params, range(1, 8))
    for angle in (0.0, 0.7, 2.0):
        freqs = radii[:, None] * torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        assert compute_ctf(freqs, params).abs().max() < 1e-4
    # Between two zeros the CTF is far from zero (the test would catch wrong zeros).
    midpoints = 0.5 * (radii[:-1] + radii[1:])
    assert compute_ctf(torch.stack([midpoints, torch.zeros_like(midpoints)], -1), params).abs().min() > 0.5


def test_analytic_zeros_along_astigmatism_axes():
    angle = 0.6
    params = make_params(defocus_u_A=[18000.0], defocus_v_A=[12000.0], defocus_angle_rad=[angle])
    orders = range(1, 7)
    for defocus, direction in ((18000.0, angle), (12000.0, angle + math.pi / 2)):
        radii = zero_frequencies(defocus, params, orders)
        unit = torch.tensor([math.cos(direction), math.sin(direction)], dtype=torch.float64)
        for sign in (1.0, -1.0):
            assert compute_ctf(sign * radii[:, None] * unit, params).abs().max() < 1e-4


def test_defocus_along_angle_equals_defocus_u():
    # Along defocus_angle the astigmatic CTF equals an isotropic CTF of defocus U; across it, V.
    angle = 1.1
    astigmatic = make_params(defocus_u_A=[20000.0], defocus_v_A=[14000.0], defocus_angle_rad=[angle])
    radii = torch.linspace(0.0, 0.3, 200, dtype=torch.float64)
    for defocus, direction in ((20000.0, angle), (14000.0, angle + math.pi / 2)):
        freqs = radii[:, None] * torch.tensor([math.cos(direction), math.sin(direction)], dtype=torch.float64)
        isotropic = make_params(defocus_u_A=[defocus], defocus_v_A=[defocus])
        torch.testing.assert_close(compute_ctf(freqs, astigmatic), compute_ctf(freqs, isotropic))


def test_value_and_sign_at_zero_frequency():
    params = make_params(
        amplitude_contrast=[0.07, 0.1, 0.1],
        phase_shift_rad=[0.0, 0.0, math.pi / 2],
        defocus_u_A=[1e4] * 3,
        defocus_v_A=[1e4] * 3,
        defocus_angle_rad=[0.0] * 3,
        voltage_kv=[300.0] * 3,
        spherical_aberration_mm=[2.7] * 3,
        bfactor_A2=[0.0] * 3,
    )
    dc = compute_ctf(torch.zeros(1, 2, dtype=torch.float64), params)[:, 0]
    torch.testing.assert_close(dc, torch.tensor([0.07, 0.1, math.sin(math.pi / 2 + math.asin(0.1))], dtype=torch.float64))
    # Positive (white protein) at low frequency before the first zero.
    low = torch.tensor([[0.01, 0.0]], dtype=torch.float64)
    assert compute_ctf(low, make_params()).item() > 0.1


def test_bfactor_envelope():
    freqs = torch.stack([torch.linspace(0.01, 0.3, 50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)], -1)
    plain = compute_ctf(freqs, make_params())
    damped = compute_ctf(freqs, make_params(bfactor_A2=[80.0]))
    torch.testing.assert_close(damped, plain * torch.exp(-80.0 * freqs[:, 0] ** 2 / 4))


def test_matches_cryodrgn_formula_with_opposite_sign():
    # cryoDRGN: gamma = 2 pi (-0.5 df lambda s^2 + 0.25 Cs lambda^3 s^4) - phase_shift,
    # ctf = sqrt(1 - w^2) sin(gamma) - w cos(gamma), with df the astigmatic defocus via atan2.
    generator = torch.Generator().manual_seed(0)
    params = make_params(
        defocus_u_A=[21000.0, 9000.0],
        defocus_v_A=[19000.0, 8500.0],
        defocus_angle_rad=[0.3, -1.2],
        voltage_kv=[300.0, 200.0],
        spherical_aberration_mm=[2.7, 2.0],
        amplitude_contrast=[0.1, 0.07],
        phase_shift_rad=[0.0, 0.5],
        bfactor_A2=[0.0, 30.0],
    )
    freqs = (torch.rand(300, 2, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    s2 = (freqs**2).sum(-1)
    expected = []
    for i in range(2):
        angle = torch.atan2(freqs[:, 1], freqs[:, 0])
        df_u, df_v, df_ang = params.defocus_u_A[i], params.defocus_v_A[i], params.defocus_angle_rad[i]
        df = 0.5 * (df_u + df_v + (df_u - df_v) * torch.cos(2 * (angle - df_ang)))
        lam = electron_wavelength_A(params.voltage_kv[i])
        cs = params.spherical_aberration_mm[i] * 1e7
        w = params.amplitude_contrast[i]
        gamma = 2 * math.pi * (-0.5 * df * lam * s2 + 0.25 * cs * lam**3 * s2**2) - params.phase_shift_rad[i]
        drgn = torch.sqrt(1 - w**2) * torch.sin(gamma) - w * torch.cos(gamma)
        expected.append(drgn * torch.exp(-params.bfactor_A2[i] / 4 * s2))
    torch.testing.assert_close(compute_ctf(freqs, params), -torch.stack(expected))


def test_shapes_dtype_and_grid_symmetry():
    params = make_params(dtype=torch.float32, defocus_u_A=[15000.0], defocus_v_A=[13000.0], defocus_angle_rad=[0.4])
    batch = CTFParameters(*(field.expand(5) for field in params))
    freqs = frequency_grid(32, 1.5)
    ctf = compute_ctf(freqs, batch)
    assert ctf.shape == (5, 32, 32) and ctf.dtype == torch.float32
    assert compute_ctf(freqs.reshape(-1, 2), batch).shape == (5, 32 * 32)
    # Even in k: CTF(k) = CTF(-k) away from the Nyquist row/column.
    interior = ctf[0, 1:16, 1:16]
    torch.testing.assert_close(interior, ctf[0, 17:32, 17:32].flip(0, 1))


def test_parameters_to_changes_dtype():
    params = make_params(dtype=torch.float64).to(dtype=torch.float32)
    assert isinstance(params, CTFParameters)
    assert all(field.dtype == torch.float32 for field in params)


def test_gradient_reaches_defocus():
    params = make_params(dtype=torch.float32)
    defocus = params.defocus_u_A.clone().requires_grad_(True)
    params = params._replace(defocus_u_A=defocus, defocus_v_A=defocus)
    compute_ctf(frequency_grid(16, 2.0), params).sum().backward()
    assert torch.isfinite(defocus.grad).all() and defocus.grad.abs().sum() > 0


@pytest.mark.parametrize("box", [32, 33])
def test_ctf_filter_keeps_centre_pixel_the_centre(box):
    # A point at pixel N//2 filtered by an astigmatic CTF stays point-symmetric about N//2.
    params = make_params(defocus_u_A=[12000.0], defocus_v_A=[9000.0], defocus_angle_rad=[0.5])
    image = torch.zeros(box, box, dtype=torch.float64)
    image[box // 2, box // 2] = 1.0
    ctf = compute_ctf(frequency_grid(box, 1.5, dtype=torch.float64), params)
    filtered = apply_fourier_filter(image, ctf)[0]
    centre = box // 2
    mirrored = torch.roll(filtered.flip(0, 1), shifts=(2 * centre - box + 1, 2 * centre - box + 1), dims=(0, 1))
    torch.testing.assert_close(filtered, mirrored)
    # The value at the centre is the point-spread function at the origin: the mean of the CTF.
    assert filtered[centre, centre].item() == pytest.approx(ctf.mean().item(), abs=1e-12)
