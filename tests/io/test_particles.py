import numpy as np
import pytest
from particle_tables import small_table

from cryodomain.errors import InputError
from cryodomain.io.metadata import read_particles
from cryodomain.io.particles import ParticleTable, group_optics, resolve_stack_paths
from cryodomain.io.stack import write_stack
from cryodomain.io.star import write_star


def test_subset_takes_rows_in_the_given_order_including_extra():
    table = small_table([f"/data/s{k}.mrcs" for k in range(5)])
    part = table.subset(np.array([3, 0, 3]))
    assert len(part) == 3
    assert part.image_paths.tolist() == ["/data/s3.mrcs", "/data/s0.mrcs", "/data/s3.mrcs"]
    np.testing.assert_array_equal(part.defocus_u_A, [10003, 10000, 10003])
    np.testing.assert_array_equal(part.shifts_A, [[3, -3], [0, 0], [3, -3]])
    assert part.rotations.shape == (3, 3, 3)
    assert part.extra["rlnMicrographName"].tolist() == ["mic3", "mic0", "mic3"]
    assert part.extra.index.tolist() == [0, 1, 2]
    # The original is untouched and a boolean mask works too.
    assert len(table) == 5
    assert table.subset(np.array([True, False, False, False, True])).image_indices.tolist() == [0, 4]


def test_rows_of_different_lengths_are_rejected():
    table = small_table(["/a.mrcs", "/b.mrcs"])
    with pytest.raises(ValueError, match="defocus_v_A"):
        ParticleTable(**{**table.__dict__, "defocus_v_A": np.zeros(3)})


def test_read_particles_dispatches_on_extension(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((2, 8, 8), np.float32), 1.2)
    table = small_table([str(tmp_path / "s.mrcs")] * 2)
    write_star(tmp_path / "p.star", table)
    back = read_particles(tmp_path / "p.star")
    np.testing.assert_allclose(back.defocus_u_A, table.defocus_u_A)

    with pytest.raises(InputError, match="p.txt"):
        read_particles(tmp_path / "p.txt")
    with pytest.raises(InputError, match="missing.cs"):
        read_particles(tmp_path / "missing.cs")


def test_resolve_stack_paths_prefers_datadir_then_the_metadata_folder(tmp_path):
    for folder in ("meta", "data"):
        (tmp_path / folder).mkdir()
        write_stack(tmp_path / folder / "s.mrcs", np.zeros((1, 4, 4), np.float32), 1.0)
    metadata = tmp_path / "meta" / "p.star"
    resolved = resolve_stack_paths(np.array(["s.mrcs", "sub/s.mrcs"]), metadata, "rlnImageName", datadir=tmp_path / "data")
    assert resolved.tolist() == [str(tmp_path / "data" / "s.mrcs")] * 2
    resolved = resolve_stack_paths(np.array(["s.mrcs", str(tmp_path / "data" / "s.mrcs")]), metadata, "rlnImageName")
    assert resolved.tolist() == [str(tmp_path / "meta" / "s.mrcs"), str(tmp_path / "data" / "s.mrcs")]
    with pytest.raises(InputError, match="p.star: rlnImageName: .*nothere.mrcs"):
        resolve_stack_paths(np.array(["nothere.mrcs"]), metadata, "rlnImageName")


def test_group_optics_numbers_distinct_settings_from_one_in_order_of_appearance():
    groups, names = group_optics(
        np.array([1.5, 1.0, 1.5, 1.0, 1.0]),
        np.array([64, 64, 64, 64, 128]),
        np.full(5, 300.0),
        np.full(5, 2.7),
        np.full(5, 0.1),
    )
    np.testing.assert_array_equal(groups, [1, 2, 1, 2, 3])
    assert names == {1: "opticsGroup1", 2: "opticsGroup2", 3: "opticsGroup3"}
