"""`center`: a fitted model and its map moved together so the map's centre voxel is the origin."""

import gemmi
import mrcfile
import numpy as np
import pytest

from cryodomain.examples import STATE_A
from cryodomain.workflows.center import center_model_and_map

# An odd box, different along each axis (catches x/z swaps), (Z, Y, X) voxels.
SHAPE_ZYX = (41, 39, 37)
APIX = 1.5
ORIGIN_XYZ = np.array([10.0, -20.0, 30.5])
START_XYZ = np.array([3, -2, 7])
BRIGHT_ZYX = (5, 30, 12)  # one voxel that stands out


def atom_positions(path) -> np.ndarray:
    """``(A, 3)`` Å atom positions in file order."""
    structure = gemmi.read_structure(str(path))
    return np.array([atom.pos.tolist() for chain in structure[0] for residue in chain for atom in residue])


def voxel_position(origin, start, index_xyz) -> np.ndarray:
    """Where voxel ``index_xyz`` sits in a map's frame: ``origin + (index + nstart) * voxel size``."""
    return np.asarray(origin) + (np.asarray(index_xyz) + np.asarray(start)) * APIX


@pytest.fixture
def fitted(tmp_path):
    """A map with an origin and nstart, and the example model placed with its first atom on the bright voxel."""
    data = np.random.default_rng(0).normal(size=SHAPE_ZYX).astype(np.float32)
    data[BRIGHT_ZYX] = 100.0
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = APIX
        mrc.header.origin = tuple(ORIGIN_XYZ.tolist())
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = START_XYZ.tolist()
    structure = gemmi.read_structure(str(STATE_A))
    first = np.array(structure[0][0][0][0].pos.tolist())
    offset = voxel_position(ORIGIN_XYZ, START_XYZ, BRIGHT_ZYX[::-1]) - first
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                atom.pos = gemmi.Position(*(np.array(atom.pos.tolist()) + offset))
    structure.write_pdb(str(tmp_path / "fitted.pdb"))
    return tmp_path / "fitted.pdb", tmp_path / "map.mrc", data


def test_the_centre_voxel_becomes_the_origin_and_the_model_keeps_its_place_in_the_map(fitted, tmp_path):
    structure_path, map_path, data = fitted
    written = center_model_and_map(structure_path, map_path, tmp_path / "out")
    assert written.structure == tmp_path / "out" / "fitted_centered.pdb" and written.map == tmp_path / "out" / "map_centered.mrc"
    # Minus the position of voxel N // 2 of each axis (x, y, z), origin and nstart included.
    centre = voxel_position(ORIGIN_XYZ, START_XYZ, np.array(SHAPE_ZYX[::-1]) // 2)
    np.testing.assert_allclose(written.translation_A, -centre, atol=1e-9)

    with mrcfile.open(written.map) as mrc:
        # The map's values untouched, in the same axis order.
        np.testing.assert_array_equal(mrc.data, data)
        assert (mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z) == pytest.approx((APIX,) * 3)
        origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z], dtype=np.float64)
        start = np.array([mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart])
    np.testing.assert_allclose(voxel_position(origin, start, np.array(SHAPE_ZYX[::-1]) // 2), 0.0, atol=1e-4)

    # Every atom moved by the same translation, so the first still sits on the bright voxel.
    before, after = atom_positions(structure_path), atom_positions(written.structure)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before + written.translation_A, atol=2e-3)  # PDB keeps 3 decimals
    np.testing.assert_allclose(after[0], voxel_position(origin, start, BRIGHT_ZYX[::-1]), atol=2e-3)
