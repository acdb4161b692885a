"""Simulation: settings checked when made, the origin-shift convention, and the noise level."""

import argparse
import dataclasses
import math
import types

import numpy as np
import pytest

from cryodomain.commands.simulate import add_args
from cryodomain.errors import InputError
from cryodomain.examples import example_structures
from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import ParticleImages
from cryodomain.io.star import read_star
from cryodomain.workflows.simulate import SimulationSettings, load_conformations, render_particles

# Each bad value and the flag its message must name.
BAD_SETTINGS = [
    ({"n_images": 0}, "--n-images"),
    ({"n_images": -5}, "--n-images"),
    ({"box": 4}, "--box"),
    ({"pixel_size_A": 0.0}, "--apix"),
    ({"snr": 0.0}, "--snr"),
    ({"snr": -1.0}, "--snr"),
    ({"snr": math.nan}, "--snr"),
    ({"sigma_A": 0.0}, "--sigma"),
    ({"defocus_min_A": 30000.0, "defocus_max_A": 20000.0}, "--defocus-min"),
    ({"defocus_min_A": 0.0}, "--defocus-min"),
    ({"max_astigmatism_A": -1.0}, "--max-astigmatism"),
    ({"voltage_kv": 0.0}, "--voltage"),
    ({"spherical_aberration_mm": -0.1}, "--cs"),
    ({"max_shift_A": -1.0}, "--max-shift"),
    ({"amplitude_contrast": 1.0}, "--amplitude-contrast"),
    ({"amplitude_contrast": -0.1}, "--amplitude-contrast"),
    ({"atoms": "backbone"}, "--atoms"),
    ({"batch_size": 0}, "batch_size"),
]


@pytest.mark.parametrize("changes, flag", BAD_SETTINGS, ids=[f"{flag}={list(changes.values())[-1]}" for changes, flag in BAD_SETTINGS])
def test_a_bad_setting_is_an_input_error_naming_its_flag(changes, flag):
    with pytest.raises(InputError, match=rf"^{flag}: invalid value"):
        SimulationSettings(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"snr": math.inf},
        {"box": 8, "n_images": 1},
        {"defocus_min_A": 15000.0, "defocus_max_A": 15000.0},
        {"amplitude_contrast": 0.0, "spherical_aberration_mm": 0.0, "max_shift_A": 0.0, "max_astigmatism_A": 0.0},
        {"box": 33, "atoms": "all"},
    ],
)
def test_defaults_and_edge_values_are_accepted(changes):
    settings = SimulationSettings(**changes)
    for name, value in changes.items():
        assert getattr(settings, name) == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.box = 16


def simulate_flags() -> set[str]:
    parser = argparse.ArgumentParser()
    add_args(parser)
    return {option for action in parser._actions for option in action.option_strings}


NAMED_FLAGS = sorted({flag for _, flag in BAD_SETTINGS if flag.startswith("--")})


@pytest.mark.parametrize("flag", NAMED_FLAGS)
def test_every_flag_named_by_a_settings_error_is_an_option_of_the_command(flag):
    assert flag in simulate_flags()


def particle_table(shifts_A: np.ndarray, box: int, apix: float) -> ParticleTable:
    n = len(shifts_A)
    return ParticleTable(
        image_paths=np.full(n, "unused.mrcs"),
        image_indices=np.arange(n),
        rotations=np.repeat(np.eye(3)[None], n, axis=0),
        shifts_A=np.asarray(shifts_A, dtype=np.float64),
        defocus_u_A=np.full(n, 15000.0),
        defocus_v_A=np.full(n, 14000.0),
        defocus_angle_rad=np.full(n, 0.4),
        voltage_kv=np.full(n, 300.0),
        spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_rad=np.zeros(n),
        bfactor_A2=np.zeros(n),
        pixel_size_A=np.full(n, apix),
        image_size=np.full(n, box, dtype=np.int64),
        optics_group=np.ones(n, dtype=np.int64),
        optics_group_names={1: "opticsGroup1"},
        source="test",
    )


def test_a_particle_with_origin_shift_s_is_drawn_at_minus_s():
    """RELION's rlnOriginX/YAngst: the particle centre sits at -shift in the extracted image."""
    box, apix = 24, 3.0
    # Two residues off the centre, so the image has no symmetry that could hide a flip.
    model = types.SimpleNamespace(coords=np.array([[6.0, -3.0, 0.0], [-9.0, 3.0, 4.0]]), amplitudes=np.array([1.0, 2.5]))
    settings = SimulationSettings(n_images=3, box=box, pixel_size_A=apix, batch_size=2)
    shifts = np.array([[0.0, 0.0], [2 * apix, -3 * apix], [-1 * apix, 4 * apix]])
    images = render_particles([model], np.zeros(3, dtype=np.int64), particle_table(shifts, box, apix), settings)
    assert images.shape == (3, box, box) and images.dtype == np.float32
    assert np.abs(images[0]).max() > 0
    for k in (1, 2):
        # Content moves by -shift: x (columns) by -sx / apix, y (rows) by -sy / apix.
        columns, rows = int(-shifts[k, 0] / apix), int(-shifts[k, 1] / apix)
        np.testing.assert_allclose(images[k], np.roll(images[0], (rows, columns), axis=(0, 1)), atol=1e-5 * np.abs(images[0]).max())


def test_the_noise_of_the_tiny_simulation_matches_its_snr(tiny_simulation):
    """Images minus the noise-free rendering of the same poses and CTFs: variance = signal / SNR."""
    truth = np.load(tiny_simulation["truth"])
    table = read_star(tiny_simulation["star"])
    table = table.subset(np.arange(len(table)))  # writable copies of the columns
    images = ParticleImages(table.image_paths, table.image_indices).read(np.arange(len(table)))
    settings = SimulationSettings(n_images=len(table), box=32, pixel_size_A=float(truth["pixel_size_A"]), snr=float(truth["snr"]))
    np.testing.assert_allclose(table.shifts_A, truth["shifts_A"], atol=1e-4)
    np.testing.assert_allclose(table.defocus_u_A, truth["defocus_u_A"], rtol=1e-6)
    clean = render_particles(load_conformations(list(example_structures())), truth["conformation"], table, settings)
    noise = images.astype(np.float64) - clean
    assert noise.var() == pytest.approx(clean.var() / float(truth["snr"]), rel=0.03)
    # The noise is white and independent of the signal.
    assert abs(np.corrcoef(noise.ravel(), clean.ravel())[0, 1]) < 0.02
    assert abs(noise.mean()) < 0.02 * noise.std()


def _relion_ctf(kx: np.ndarray, ky: np.ndarray, row, optics) -> np.ndarray:
    """RELION's CTF::getCTF (src/ctf.cpp) at frequencies (1/Å): -sin(K1 deltaf u^2 + K2 u^4 - K5 - K3)."""
    voltage = optics["rlnVoltage"] * 1e3
    wavelength = 12.2643247 / np.sqrt(voltage * (1.0 + voltage * 0.978466e-6))
    cs = optics["rlnSphericalAberration"] * 1e7
    q0 = optics["rlnAmplitudeContrast"]
    k1, k2 = np.pi * wavelength, np.pi / 2 * cs * wavelength**3
    k3 = np.arctan(q0 / np.sqrt(1 - q0 * q0))
    k5 = np.deg2rad(row.get("rlnPhaseShift", 0.0))
    u2 = kx * kx + ky * ky
    azimuth = np.deg2rad(row["rlnDefocusAngle"])
    average, deviation = -(row["rlnDefocusU"] + row["rlnDefocusV"]) / 2, -(row["rlnDefocusU"] - row["rlnDefocusV"]) / 2
    deltaf = average + deviation * np.cos(2 * (np.arctan2(ky, kx) - azimuth))
    return -np.sin(k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3)


def test_a_noise_free_stack_is_what_its_star_file_says_pixel_by_pixel(tmp_path):
    """Each simulated image, rebuilt by brute force from the star file alone (read with starfile, not
    our reader): RELION's Euler matrix, Gaussians drawn at -rlnOriginX/YAngst in real space, RELION's
    CTF applied with numpy's FFT. Flipping a sign of the angles, the origins or the CTF fails."""
    import mrcfile
    import starfile
    from test_poses import relion_euler_angles2matrix  # RELION's matrix, written out in tests/io

    from cryodomain.io.structure import read_atomic_model
    from cryodomain.workflows.simulate import simulate

    state = example_structures()[0]
    # 1 Å pixels sample the 2 Å Gaussians finely (a Fourier shift of a coarsely sampled Gaussian is not
    # its continuous shift); an odd box has no Nyquist column, where rfft and fft disagree on the sign of kx.
    settings = SimulationSettings(n_images=6, box=111, pixel_size_A=1.0, snr=math.inf, max_shift_A=6.0, max_astigmatism_A=2000.0, seed=7)
    written = simulate([state], tmp_path, settings)
    star = starfile.read(written["star"], always_dict=True)
    optics, particles = star["optics"].iloc[0], star["particles"]
    stack = mrcfile.read(written["particles"])
    model = read_atomic_model(state)
    box, apix, sigma = settings.box, float(optics["rlnImagePixelSize"]), settings.sigma_A
    grid = (np.arange(box) - box // 2) * apix
    k = np.fft.fftfreq(box, d=apix)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    for _, row in particles.iterrows():
        index, name = row["rlnImageName"].split("@")
        assert name == "particles.mrcs"
        view = model.coords @ relion_euler_angles2matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"]).T
        x = view[:, 0] - row["rlnOriginXAngst"]
        y = view[:, 1] - row["rlnOriginYAngst"]
        projection = (
            model.amplitudes[:, None, None]
            * np.exp(-((grid[None, :, None] - y[:, None, None]) ** 2) / (2 * sigma**2))
            * np.exp(-((grid[None, None, :] - x[:, None, None]) ** 2) / (2 * sigma**2))
        ).sum(axis=0)
        expected = np.fft.ifft2(np.fft.fft2(projection) * _relion_ctf(kx, ky, row, optics)).real
        observed = stack[int(index) - 1]
        assert np.abs(observed - expected).max() < 1e-4 * np.abs(expected).max()


# Ranges other than the defaults, so that a simulation ignoring a setting fails.
RANGES = SimulationSettings(
    n_images=300,
    box=24,
    pixel_size_A=6.0,
    snr=0.5,
    defocus_min_A=12000.0,
    defocus_max_A=18000.0,
    max_astigmatism_A=800.0,
    max_shift_A=6.0,
    seed=3,
)


@pytest.fixture(scope="module")
def ranged_simulation(tmp_path_factory):
    """300 particles of both example states simulated with the RANGES settings, read back with starfile."""
    import starfile

    from cryodomain.workflows.simulate import simulate

    written = simulate(list(example_structures()), tmp_path_factory.mktemp("ranges"), RANGES)
    return written, starfile.read(written["star"], always_dict=True)["particles"]


def assert_fills(values: np.ndarray, low: float, high: float, name: str) -> None:
    """Every value in [low, high] and both ends reached within 5 % of the range (300 uniform draws)."""
    margin = 0.05 * (high - low)
    assert values.min() >= low and values.max() <= high, name
    assert values.min() < low + margin and values.max() > high - margin, name


def test_shifts_defocus_and_astigmatism_in_the_star_file_fill_the_configured_ranges(ranged_simulation):
    """README, simulate: shifts uniform within --max-shift Å, defocus uniform in the range with random
    astigmatism up to --max-astigmatism (angles in degrees in the file)."""
    _, particles = ranged_simulation
    for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
        assert_fills(particles[column].to_numpy(), -RANGES.max_shift_A, RANGES.max_shift_A, column)
    defocus_u, defocus_v = particles["rlnDefocusU"].to_numpy(), particles["rlnDefocusV"].to_numpy()
    assert_fills((defocus_u + defocus_v) / 2, RANGES.defocus_min_A, RANGES.defocus_max_A, "mean defocus")
    assert_fills(defocus_u - defocus_v, 0.0, RANGES.max_astigmatism_A, "astigmatism")
    angles = particles["rlnDefocusAngle"].to_numpy()
    assert_fills(angles, 0.0, 180.0, "rlnDefocusAngle")
    assert angles.max() > 3.2  # degrees, not radians


def test_the_snr_is_signal_variance_over_noise_variance_of_the_whole_stack(ranged_simulation):
    """One noise level for the stack: the variance of the noise-free stack over the SNR, the same in
    every image (a per-image SNR would make each image's noise follow its own signal)."""
    import mrcfile

    written, _ = ranged_simulation
    table = read_star(written["star"])
    table = table.subset(np.arange(len(table)))
    clean = render_particles(load_conformations(list(example_structures())), np.load(written["truth"])["conformation"], table, RANGES)
    noise = mrcfile.read(written["particles"]).astype(np.float64) - clean
    assert noise.var() == pytest.approx(clean.var() / RANGES.snr, rel=0.02)
    per_image_noise, per_image_signal = noise.var(axis=(1, 2)), clean.var(axis=(1, 2))
    assert per_image_signal.max() > 1.5 * per_image_signal.min()  # the images' signals differ ...
    assert abs(np.corrcoef(per_image_noise, per_image_signal)[0, 1]) < 0.2  # ... their noise does not follow
    assert np.abs(per_image_noise / per_image_noise.mean() - 1).max() < 0.3
