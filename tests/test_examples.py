import importlib.util
from pathlib import Path

import numpy as np
import pytest
import roma
import torch

from cryodomain.examples import (
    HINGE_ANGLE_DEG,
    HINGE_RESIDUES,
    MOVED_CHAIN,
    MOVED_RESIDUES,
    SOURCE_STRUCTURE,
    example_structures,
)
from cryodomain.io.structure import center_of_residues, read_atomic_model

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def states():
    path_a, path_b = example_structures()
    return read_atomic_model(path_a), read_atomic_model(path_b)


def domain_mask(model):
    return (model.chain_ids == MOVED_CHAIN) & (model.residue_numbers >= MOVED_RESIDUES[0]) & (model.residue_numbers <= MOVED_RESIDUES[1])


def test_states_share_residues_and_atoms(states):
    a, b = states
    assert a.n_residues == b.n_residues == 352 and a.n_atoms == b.n_atoms == 3115
    for field in ("chain_ids", "residue_numbers", "residue_names", "atom_names", "amplitudes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_state_a_is_3mht_centred_on_its_residues(states):
    a, _ = states
    source = read_atomic_model(SOURCE_STRUCTURE)
    np.testing.assert_allclose(center_of_residues(a), 0.0, atol=1e-3)
    np.testing.assert_allclose(a.atom_coords, source.atom_coords - center_of_residues(source), atol=1e-3)


def test_state_b_differs_only_inside_the_domain(states):
    a, b = states
    in_domain = domain_mask(a)
    assert in_domain.sum() == MOVED_RESIDUES[1] - MOVED_RESIDUES[0] + 1
    outside_atoms = ~in_domain[a.atom_residue_index]
    np.testing.assert_array_equal(b.atom_coords[outside_atoms], a.atom_coords[outside_atoms])
    displacement = np.linalg.norm(b.coords[in_domain] - a.coords[in_domain], axis=1)
    # A clearly visible motion: several Å on average for the domain's CA atoms.
    assert displacement.mean() > 4.0 and displacement.min() > 0.1


def test_domain_moves_rigidly_by_the_hinge_angle_about_the_hinge_axis(states):
    a, b = states
    atoms = domain_mask(a)[a.atom_residue_index]
    source = torch.from_numpy(a.atom_coords[atoms])
    target = torch.from_numpy(b.atom_coords[atoms])
    rotation, translation = roma.rigid_points_registration(source, target)
    rmsd = torch.sqrt(((source @ rotation.T + translation - target) ** 2).sum(-1).mean())
    assert rmsd < 0.01  # only the 3-decimal rounding of the PDB format
    rotvec = roma.rotmat_to_rotvec(rotation).numpy()
    assert np.rad2deg(np.linalg.norm(rotvec)) == pytest.approx(HINGE_ANGLE_DEG, abs=0.05)
    # Right-handed about the axis from the first hinge CA to the second.
    hinge = [np.nonzero((a.chain_ids == MOVED_CHAIN) & (a.residue_numbers == n))[0][0] for n in HINGE_RESIDUES]
    axis = a.coords[hinge[1]] - a.coords[hinge[0]]
    cosine = rotvec @ axis / (np.linalg.norm(rotvec) * np.linalg.norm(axis))
    assert cosine > 0.9999


def ca_distances(model, pairs):
    return np.linalg.norm(model.coords[pairs[:, 0]] - model.coords[pairs[:, 1]], axis=1)


def test_chain_stays_continuous_and_free_of_severe_clashes(states):
    a, b = states
    pairs = a.consecutive_pairs()
    np.testing.assert_allclose(ca_distances(b, pairs), ca_distances(a, pairs), atol=0.01)
    # Heavy atoms of the domain against the rest, except the two peptide bonds across the hinges.
    in_domain = domain_mask(b)
    atoms = in_domain[b.atom_residue_index]
    hinge_neighbours = np.isin(b.residue_numbers[b.atom_residue_index], [*HINGE_RESIDUES, *MOVED_RESIDUES])
    moved = b.atom_coords[atoms & ~hinge_neighbours]
    rest = b.atom_coords[~atoms & ~hinge_neighbours]
    distances = np.linalg.norm(moved[:, None] - rest[None], axis=-1)
    assert distances.min() > 1.5
    assert (distances < 2.2).sum() <= 10


def test_generator_script_reproduces_the_bundled_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_example_conformations", REPO_ROOT / "tools" / "make_example_conformations.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--output-dir", str(tmp_path)])
    for bundled in example_structures():
        assert (tmp_path / bundled.name).read_bytes() == bundled.read_bytes()
