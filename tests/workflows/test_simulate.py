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
