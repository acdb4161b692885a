import pickle

import mrcfile
import numpy as np
import pytest

from cryodomain.errors import InputError
from cryodomain.io.stack import ParticleImages, read_stack_header, write_stack


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, size, size)).astype(np.float32)


def test_write_stack_header_holds_count_shape_and_pixel_size(tmp_path):
    path = tmp_path / "a.mrcs"
    write_stack(path, random_images(5, size=6), pixel_size_A=1.75)
    header = read_stack_header(path)
    assert (header.n_images, header.height, header.width) == (5, 6, 6)
    assert header.pixel_size_A == pytest.approx(1.75)
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack()
    # Atomic write leaves no temporary file behind.
    assert [p.name for p in tmp_path.iterdir()] == ["a.mrcs"]


def test_read_subset_in_arbitrary_order_across_files_equals_written_images(tmp_path):
    first, second = random_images(6, seed=1), random_images(4, seed=2)
    write_stack(tmp_path / "first.mrcs", first, 1.0)
    write_stack(tmp_path / "second.mrcs", second, 1.0)
    paths = np.array([str(tmp_path / "first.mrcs")] * 6 + [str(tmp_path / "second.mrcs")] * 4)
    indices = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    expected_all = np.concatenate([first, second])

    with ParticleImages(paths, indices) as images:
        assert len(images) == 10
        assert images.image_shape == (8, 8)
        positions = np.array([9, 0, 5, 7, 5, 2, 6])
        batch = images.read(positions)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, expected_all[positions])


def test_rows_may_point_into_stacks_out_of_order(tmp_path):
    stack = random_images(5, seed=3)
    write_stack(tmp_path / "s.mrcs", stack, 1.0)
    indices = np.array([4, 2, 0, 3])
    images = ParticleImages(np.full(4, str(tmp_path / "s.mrcs")), indices)
    np.testing.assert_array_equal(images.read([0, 1, 2, 3]), stack[indices])


def test_few_open_files_still_read_correctly_and_object_pickles(tmp_path):
    stacks = [random_images(2, seed=seed) for seed in range(3)]
    for k, stack in enumerate(stacks):
        write_stack(tmp_path / f"{k}.mrcs", stack, 1.0)
    paths = np.repeat([str(tmp_path / f"{k}.mrcs") for k in range(3)], 2)
    images = ParticleImages(paths, np.tile([0, 1], 3), max_open_files=1)
    expected = np.concatenate(stacks)
    positions = np.array([5, 0, 3, 1, 4])
    np.testing.assert_array_equal(images.read(positions), expected[positions])
    clone = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(clone.read(positions), expected[positions])
    images.close()
    clone.close()


def test_2d_mrc_is_a_stack_of_one(tmp_path):
    image = random_images(1, size=10, seed=4)[0]
    path = tmp_path / "single.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(image)
        mrc.voxel_size = 2.0
    header = read_stack_header(path)
    assert (header.n_images, header.height, header.width, header.pixel_size_A) == (1, 10, 10, 2.0)
    images = ParticleImages(np.array([str(path)]), np.array([0]))
    np.testing.assert_array_equal(images.read([0, 0]), np.stack([image, image]))


def test_index_beyond_stack_is_an_input_error_naming_file_index_and_length(tmp_path):
    path = tmp_path / "short.mrcs"
    write_stack(path, random_images(3), 1.0)
    with pytest.raises(InputError) as error:
        ParticleImages(np.full(2, str(path)), np.array([1, 3]))
    message = str(error.value)
    assert "short.mrcs" in message and "index 3" in message and "3 images" in message


def test_not_an_mrc_file_is_an_input_error(tmp_path):
    path = tmp_path / "junk.mrcs"
    path.write_bytes(b"not an mrc file" * 100)
    with pytest.raises(InputError, match="junk.mrcs"):
        read_stack_header(path)
    with pytest.raises(InputError, match="missing.mrcs"):
        ParticleImages(np.array([str(tmp_path / "missing.mrcs")]), np.array([0]))


def test_stacks_of_different_box_sizes_are_an_input_error(tmp_path):
    write_stack(tmp_path / "small.mrcs", random_images(1, size=6), 1.0)
    write_stack(tmp_path / "large.mrcs", random_images(1, size=8), 1.0)
    with pytest.raises(InputError, match="6x6"):
        ParticleImages(np.array([str(tmp_path / "large.mrcs"), str(tmp_path / "small.mrcs")]), np.array([0, 0]))
