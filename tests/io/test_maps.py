"""MRC maps: written in the box-centred frame, read back with where their voxels sit."""

import mrcfile
import numpy as np
import pytest

from cryodomain.errors import InputError
from cryodomain.io.maps import MapFrame, read_map, write_map


@pytest.mark.parametrize("shape", [(8, 8, 8), (9, 9, 9), (5, 6, 7)])
def test_write_then_read_keeps_data_voxel_size_and_puts_the_centre_voxel_at_zero(tmp_path, shape):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=shape)  # float64 in, float32 out
    write_map(tmp_path / "v.mrc", volume, 1.75)
    frame = read_map(tmp_path / "v.mrc")
    assert frame.data.dtype == np.float32 and frame.data.shape == shape
    np.testing.assert_array_equal(frame.data, volume.astype(np.float32))
    np.testing.assert_allclose(frame.voxel_size_A, [1.75] * 3)
    np.testing.assert_allclose(frame.centre_A(), [0.0, 0.0, 0.0], atol=1e-5)
    # Header by hand: the origin of each axis is -(its size // 2) voxels, x from the last axis.
    z, y, x = shape
    np.testing.assert_allclose(frame.origin_A, [-(x // 2) * 1.75, -(y // 2) * 1.75, -(z // 2) * 1.75], atol=1e-5)
    np.testing.assert_array_equal(frame.start, [0, 0, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc"]  # no temporary left


def test_centre_is_origin_plus_start_plus_half_box_in_voxels(tmp_path):
    path = tmp_path / "offset.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((5, 6, 7), dtype=np.float32))  # z, y, x
        mrc.voxel_size = (1.5, 2.0, 2.5)
        mrc.header.origin = (10.0, -20.0, 30.0)
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = -4, 2, 3
    frame = read_map(path)
    np.testing.assert_allclose(frame.voxel_size_A, [1.5, 2.0, 2.5])
    np.testing.assert_allclose(frame.start, [-4, 2, 3])
    # x: 10 + (-4 + 7 // 2) * 1.5; y: -20 + (2 + 6 // 2) * 2; z: 30 + (3 + 5 // 2) * 2.5.
    np.testing.assert_allclose(frame.centre_A(), [10 - 1.5, -20 + 10.0, 30 + 12.5])


def test_centre_of_a_frame_made_by_hand():
    frame = MapFrame(np.zeros((4, 3, 2), np.float32), np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -1.0]), np.array([1.0, 0.0, -2.0]))
    np.testing.assert_allclose(frame.centre_A(), [0.5 + 2 * 1.0, 0.0 + 1 * 2.0, -1.0 + 0 * 3.0])


def test_a_2d_image_is_not_a_map(tmp_path):
    with mrcfile.new(tmp_path / "image.mrc") as mrc:
        mrc.set_data(np.zeros((6, 6), dtype=np.float32))
        mrc.voxel_size = 1.0
    with pytest.raises(InputError, match="image.mrc: holds a 2-D array, not a 3-D map"):
        read_map(tmp_path / "image.mrc")


def test_a_file_that_is_not_mrc_or_is_missing_is_an_input_error(tmp_path):
    (tmp_path / "notes.mrc").write_text("this is text, not a map\n" * 50)
    with pytest.raises(InputError, match="notes.mrc: not a readable MRC map"):
        read_map(tmp_path / "notes.mrc")
    with pytest.raises(InputError, match="missing.mrc"):
        read_map(tmp_path / "missing.mrc")


def test_a_map_without_voxel_size_is_an_input_error(tmp_path):
    with mrcfile.new(tmp_path / "unset.mrc") as mrc:
        mrc.set_data(np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match="unset.mrc: voxel size"):
        read_map(tmp_path / "unset.mrc")


def test_a_particle_stack_is_not_a_map(tmp_path):
    from cryodomain.io.stack import write_stack

    write_stack(tmp_path / "particles.mrcs", np.zeros((4, 8, 8), dtype=np.float32), 2.0)
    with pytest.raises(InputError, match="image stack"):
        read_map(tmp_path / "particles.mrcs")
