"""The preflight's convention self-test: each wrong reading of a particle file is caught and named.

Small simulations of the example (128 particles, 32 px at 4 Å, shifts up to 8 Å) at SNR inf and
0.01, written back as a user's file would be with one convention wrong: the stack with inverted
contrast, the star file with the angles of the transposed rotations, or with negated origins.
"""

import dataclasses
import logging
import shutil

import mrcfile
import numpy as np
import pytest
import starfile
import torch

# The .cs builders of tests/io (on the import path: pyproject.toml, pytest pythonpath).
from cryosparc_files import BLOB, CTF, class_groups, cs_dataset, group_fields, save_cs, table_groups
from scipy.spatial.transform import Rotation

from cryodomain.commands.main import main
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A, example_structures
from cryodomain.io.poses import relion_euler_to_matrix
from cryodomain.io.star import read_star
from cryodomain.workflows.config import load_config
from cryodomain.workflows.conventions_check import (
    MIN_SAMPLE,
    WIN_FRACTION,
    Alternative,
    ConventionReport,
    check_conventions,
    convention_report,
)
from cryodomain.workflows.data import ParticleBatches
from cryodomain.workflows.inputs import build_model, load_training_data, residue_gaussians
from cryodomain.workflows.simulate import SimulationSettings, simulate
from cryodomain.workflows.train import train

LOW_SNR = 0.01
SNRS = (float("inf"), LOW_SNR)
# Each wrong reading, the alternative the message must name, and a word of its fix.
WRONG = {
    "inverted": ("inverted contrast", "add --invert-contrast"),
    "transposed": ("transposed rotations", "(-psi, -tilt, -rot)"),
    "negated": ("negated shifts", "negate rlnOriginXAngst"),
}


@pytest.fixture(scope="module", params=SNRS, ids=["snr_inf", "snr_0.01"])
def simulation(request, tmp_path_factory):
    settings = SimulationSettings(n_images=128, box=32, pixel_size_A=4.0, snr=request.param, max_shift_A=8.0, seed=5)
    return simulate(list(example_structures()), tmp_path_factory.mktemp("conventions"), settings)


def variant(simulation: dict, kind: str, out) -> str:
    """A copy of the simulated particles (star file and stack) with one convention written wrong."""
    out.mkdir()
    shutil.copy(simulation["particles"], out / "particles.mrcs")
    star = starfile.read(simulation["star"])
    particles = star["particles"]
    if kind == "inverted":
        with mrcfile.open(out / "particles.mrcs", mode="r+") as mrc:
            mrc.data[:] = -mrc.data
    elif kind == "transposed":
        # The RELION angles of A^T = Rz(rot) Ry(tilt) Rz(psi).
        rot, tilt, psi = (particles[name].to_numpy().copy() for name in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
        particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = -psi, -tilt, -rot
    elif kind == "negated":
        particles["rlnOriginXAngst"] = -particles["rlnOriginXAngst"]
        particles["rlnOriginYAngst"] = -particles["rlnOriginYAngst"]
    starfile.write(star, out / "particles.star")
    return str(out / "particles.star")


def load(star, **overrides):
    config = load_config(None, overrides)
    return load_training_data(star, STATE_A, config), config


def test_correct_data_passes_with_every_alternative_far_from_winning(simulation):
    data, config = load(simulation["star"])
    report = check_conventions(data, config)
    assert report is not None and len(report.as_read) == 128
    for alternative, values in report.tried:
        # Noise at SNR 0.01 stays far from the threshold: these are below 20% (measured).
        assert report.wins(values) < WIN_FRACTION / 2, alternative.name
        assert np.median(values) < np.median(report.as_read), alternative.name


@pytest.mark.parametrize("kind", WRONG)
def test_a_wrong_convention_is_refused_naming_the_alternative_and_the_fix(simulation, kind, tmp_path):
    name, fix = WRONG[kind]
    data, config = load(variant(simulation, kind, tmp_path / kind))
    with pytest.raises(InputError, match=f"images correlate better with {name} ") as error:
        check_conventions(data, config)
    message = str(error.value)
    assert fix in message and "--no-convention-check" in message and "\n" not in message


def test_the_rotation_fix_in_the_message_gives_the_transposed_matrices(tiny_simulation, tmp_path):
    before = starfile.read(tiny_simulation["star"])["particles"]
    after = starfile.read(variant(tiny_simulation, "transposed", tmp_path / "t"))["particles"]
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    original = relion_euler_to_matrix(before[columns].to_numpy())
    np.testing.assert_allclose(relion_euler_to_matrix(after[columns].to_numpy()), original.transpose(0, 2, 1), atol=1e-9)


def test_invert_contrast_on_data_that_needs_none_is_refused_naming_its_removal(simulation):
    data, config = load(simulation["star"], **{"data.invert_contrast": True})
    with pytest.raises(InputError, match=r"inverted contrast .*remove --invert-contrast"):
        check_conventions(data, config)


def test_inverted_images_pass_with_invert_contrast(simulation, tmp_path):
    data, config = load(variant(simulation, "inverted", tmp_path / "inverted"), **{"data.invert_contrast": True})
    assert check_conventions(data, config) is not None


def test_the_preflight_block_reports_one_line_per_alternative(simulation, caplog):
    data, config = load(simulation["star"])
    with caplog.at_level(logging.INFO, logger="cryodomain.workflows.conventions_check"):
        check_conventions(data, config)
    # (only the check's own records: the preflight of load() is captured too when INFO is on)
    block = "\n".join(record.getMessage() for record in caplog.records if record.name == "cryodomain.workflows.conventions_check")
    assert "preflight: conventions (median correlation of 128 particles" in block
    lines = block.splitlines()[1:]
    assert [line.split()[0:2] for line in lines] == [["as", "read"], ["inverted", "contrast"], ["transposed", "rotations"], ["negated", "shifts"]]
    assert all("% of the images" in line for line in lines[1:])


def test_the_check_is_skipped_when_switched_off(simulation, tmp_path, caplog):
    data, config = load(variant(simulation, "inverted", tmp_path / "inverted"), **{"data.convention_check": False})
    with caplog.at_level(logging.INFO, logger="cryodomain.workflows.conventions_check"):
        assert check_conventions(data, config) is None
    assert "conventions not checked (data.convention_check: false)" in caplog.text


def test_too_few_particles_are_not_judged(tiny_simulation, caplog):
    data, config = load(tiny_simulation["star"])
    few = data.table.subset(np.arange(MIN_SAMPLE - 1))
    data = dataclasses.replace(data, table=few, dataset=ParticleBatches(few))
    assert convention_report(data, config) is None
    with caplog.at_level(logging.INFO, logger="cryodomain.workflows.conventions_check"):
        assert check_conventions(data, config) is None
    assert f"{MIN_SAMPLE - 1} particles (the check needs {MIN_SAMPLE})" in caplog.text


def test_clearly_better_needs_most_images_and_a_median_margin():
    rng = np.random.default_rng(0)
    as_read = rng.normal(0.1, 0.05, 256)

    def alternative(values):
        return ConventionReport(as_read, ((Alternative("x", "fix", lambda inputs: inputs), values),)).clearly_better()

    assert alternative(as_read + 0.05)  # better on every image by 0.05
    assert not alternative(as_read + 0.005)  # on every image, but by less than the margin
    worse = np.where(np.arange(256) < 0.7 * 256, as_read + 0.2, as_read - 0.01)
    assert not alternative(worse)  # by a lot, but on 70% of the images only


def test_the_best_of_several_clearly_better_alternatives_is_named_first():
    as_read = np.linspace(0.0, 0.1, 64)
    tried = tuple((Alternative(name, "fix", lambda inputs: inputs), as_read + gain) for name, gain in (("good", 0.1), ("best", 0.3), ("better", 0.2)))
    assert [alternative.name for alternative, _ in ConventionReport(as_read, tried).clearly_better()] == ["best", "better", "good"]


@pytest.mark.parametrize("gaussian_at", ["ca", "centroid", "split"])
@pytest.mark.parametrize("gaussian_width", ["sigma", "atoms"])
def test_the_base_model_is_rendered_where_training_puts_its_gaussians(tiny_simulation, gaussian_at, gaussian_width):
    data, config = load(tiny_simulation["star"], **{"model.gaussian_at": gaussian_at, "model.gaussian_width": gaussian_width})
    model = build_model(data, config)
    gaussians = residue_gaussians(data.structure, config)
    torch.testing.assert_close(torch.as_tensor(gaussians.positions, dtype=torch.float32), model.base_gaussians)
    torch.testing.assert_close(torch.as_tensor(gaussians.amplitudes, dtype=torch.float32), model.amplitudes)


def test_training_refuses_before_writing_anything(simulation, tmp_path, tiny_config_overrides):
    star = variant(simulation, "negated", tmp_path / "negated")
    with pytest.raises(InputError, match="negated shifts"):
        train(star, STATE_A, tmp_path / "run", load_config(None, tiny_config_overrides), progress=False)
    assert not (tmp_path / "run").exists()


def test_no_convention_check_flag_trains_on_odd_data(tiny_simulation, tmp_path, capsys):
    star = variant(tiny_simulation, "inverted", tmp_path / "inverted")
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  encoder_hidden: [16]\n  decoder_hidden: [16]\n")
    common = ["--structure", str(STATE_A), "--config", str(config), "--epochs", "1", "--batch-size", "16", "--segments", "2", "--latent-dim", "2"]
    assert main(["train", star, "-o", str(tmp_path / "refused"), *common]) == 2
    assert "--invert-contrast" in capsys.readouterr().err
    assert main(["train", star, "-o", str(tmp_path / "run"), *common, "--no-convention-check"]) == 0
    assert "convention_check: false" in (tmp_path / "run" / "config.yaml").read_text()


def test_an_alternative_reading_other_columns_at_the_sampled_rows_is_one_more_entry(simulation, tmp_path, monkeypatch):
    # As another class's poses would be: here the true rotations, for a file holding their inverses.
    truth = load(simulation["star"])[0].table.rotations
    data, config = load(variant(simulation, "transposed", tmp_path / "transposed"))
    other = Alternative("class 2 poses", "train on class 2", lambda inputs: dataclasses.replace(inputs, rotations=torch.as_tensor(truth[inputs.rows]).float()))
    monkeypatch.setattr("cryodomain.workflows.conventions_check.alternatives", lambda config, table: (other,))
    with pytest.raises(InputError, match="images correlate better with class 2 poses .*; train on class 2"):
        check_conventions(data, config)


def hetero_refinement(simulation: dict, right_class: int, out) -> str:
    """The simulated particles as a two-class heterogeneous refinement's ``.cs``: class ``right_class``
    holds the true poses and shifts, the other random ones, and the posteriors favour class 0."""
    out.mkdir()
    shutil.copy(simulation["particles"], out / "particles.mrcs")
    table = read_star(simulation["star"])
    n = len(table)
    rng = np.random.default_rng(11)
    right = (table.rotations, table.shifts_A)
    wrong = (Rotation.random(n, random_state=12).as_matrix(), rng.uniform(-8.0, 8.0, (n, 2)))
    classes, values = class_groups([right, wrong] if right_class == 0 else [wrong, right], np.tile([0.9, 0.1], (n, 1)), table.pixel_size_A)
    values.update(table_groups(table, "particles.mrcs"))
    groups = [group_fields("blob", BLOB), group_fields("ctf", CTF), *classes]
    return str(save_cs(out / "J9_00020_particles_all_classes.cs", cs_dataset(np.arange(n) + 1000, groups, values)))


@pytest.mark.parametrize("forced", [None, 0], ids=["most probable class", "class 0 forced"])
def test_poses_of_the_wrong_class_are_refused_naming_the_class_that_fits(simulation, tmp_path, forced):
    # The reader takes class 0 (most probable, or forced); the true poses are class 1's.
    data, config = load(hetero_refinement(simulation, 1, tmp_path / "cs"), **{"data.particle_class": forced})
    with pytest.raises(InputError, match="images correlate better with poses of class 1 ") as error:
        check_conventions(data, config)
    message = str(error.value)
    instead = " instead of --class 0" if forced is not None else ""
    assert f"--class 1{instead} (data.particle_class: 1)" in message and "J9_00020_particles_all_classes.cs" in message and "\n" not in message


def test_the_right_class_passes_with_the_other_class_far_from_winning(simulation, tmp_path):
    data, config = load(hetero_refinement(simulation, 0, tmp_path / "cs"))
    report = check_conventions(data, config)
    tried = {alternative.name: values for alternative, values in report.tried}
    # Class 0 is every particle's pose as read: tried, and never better.
    assert report.wins(tried["poses of class 0"]) == 0.0
    assert report.wins(tried["poses of class 1"]) < WIN_FRACTION / 2


def test_a_forced_class_that_fits_passes_and_is_not_tried_again(simulation, tmp_path):
    data, config = load(hetero_refinement(simulation, 1, tmp_path / "cs"), **{"data.particle_class": 1})
    report = check_conventions(data, config)
    assert [alternative.name for alternative, _ in report.tried][3:] == ["poses of class 0"]


def test_widths_from_the_atoms_keep_each_residue_s_projected_electrons(tiny_simulation):
    data, config = load(tiny_simulation["star"], **{"model.gaussian_at": "centroid", "model.gaussian_width": "atoms"})
    gaussians = residue_gaussians(data.structure, config)
    sigma = config.model.sigma_A
    expected = np.sqrt(sigma**2 + data.structure.residue_spreads(gaussians.positions))
    np.testing.assert_allclose(gaussians.widths, expected)
    assert np.all(gaussians.widths > sigma)
    # The integral of a projected Gaussian is 2 pi width^2 amplitude: that of its atoms at sigma.
    np.testing.assert_allclose(gaussians.widths**2 * gaussians.amplitudes, sigma**2 * data.structure.amplitudes)


@pytest.mark.parametrize("gaussian_width", ["sigma", "atoms"])
def test_split_gaussians_share_out_each_residue_s_atoms(tiny_simulation, gaussian_width):
    data, config = load(tiny_simulation["star"], **{"model.gaussian_at": "split", "model.gaussian_width": gaussian_width})
    structure = data.structure
    gaussians = residue_gaussians(structure, config)
    side = structure.side_chain_atoms()
    # One Gaussian per residue and one more per residue with side-chain atoms, in residue order.
    with_side = np.unique(structure.atom_residue_index[side])
    assert len(gaussians.residue) == structure.n_residues + len(with_side)
    assert np.all(np.diff(gaussians.residue) >= 0) and not gaussians.one_per_residue
    # Together they project every electron of the residue (2 pi width^2 amplitude).
    sigma = config.model.sigma_A
    projected = np.bincount(gaussians.residue, weights=gaussians.amplitudes * np.broadcast_to(gaussians.widths, gaussians.amplitudes.shape) ** 2 / sigma**2)
    np.testing.assert_allclose(projected, structure.amplitudes)
    # Each sits at its atoms' electron centroid: the electron-weighted mean of the two is the residue's.
    electrons = np.bincount(structure.atom_residue_index * 2 + side, weights=structure.atom_electrons)
    electrons = electrons[electrons > 0]
    mean = np.stack([np.bincount(gaussians.residue, weights=electrons * gaussians.positions[:, d]) for d in range(3)], 1)
    np.testing.assert_allclose(mean / structure.amplitudes[:, None], structure.electron_centroids(), atol=1e-9)
