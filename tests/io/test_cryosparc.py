import logging
import re
from pathlib import Path

import numpy as np
import pytest
from cryosparc_files import ALIGNMENTS3D, BLOB, CTF, LOCATION, cs_dataset, group_fields, particle_groups, save_cs

from cryodomain.errors import InputError
from cryodomain.io.cryosparc import read_cryosparc
from cryodomain.io.stack import write_stack
from cryodomain.io.star import read_star, write_star


def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    """The usual rotation matrix exp([v]_x), written out from Rodrigues' formula."""
    angle = np.linalg.norm(rotvec)
    k = rotvec / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def cs_array(n: int, pose_prefix: str = "alignments3D", with_bfactor: bool = True) -> np.ndarray:
    """A cryoSPARC-like structured array (same field names and dtypes as real particle .cs files)."""
    fields = [
        ("uid", "<u8"),
        ("blob/path", "S40"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        (f"{pose_prefix}/shift", "<f4", (2,)),
        (f"{pose_prefix}/pose", "<f4", (3,)),
    ]
    if with_bfactor:
        fields.append(("ctf/bfactor", "<f4"))
    data = np.zeros(n, dtype=fields)
    rng = np.random.default_rng(0)
    data["uid"] = np.arange(n)
    # cryoSPARC sometimes prefixes paths with '>'.
    data["blob/path"] = [b">J3/extract/a.mrcs" if k % 2 == 0 else b"J3/extract/b.mrcs" for k in range(n)]
    data["blob/idx"] = np.arange(n) // 2
    data["blob/shape"] = 8
    data["blob/psize_A"] = [1.0 if k < n - 1 else 2.0 for k in range(n)]
    data["ctf/accel_kv"] = 300
    data["ctf/cs_mm"] = 2.7
    data["ctf/amp_contrast"] = 0.1
    data["ctf/df1_A"] = rng.uniform(10000, 20000, n)
    data["ctf/df2_A"] = rng.uniform(10000, 20000, n)
    data["ctf/df_angle_rad"] = rng.uniform(-1, 1, n)
    data["ctf/phase_shift_rad"] = rng.uniform(0, 1, n)
    data[f"{pose_prefix}/shift"] = rng.normal(size=(n, 2))
    data[f"{pose_prefix}/pose"] = rng.normal(size=(n, 3))
    if with_bfactor:
        data["ctf/bfactor"] = 25.0
    return data


def make_project(tmp_path, n: int) -> None:
    """Stacks where cryoSPARC puts them, relative to the project folder."""
    extract = tmp_path / "J3" / "extract"
    extract.mkdir(parents=True)
    count = (n + 1) // 2
    write_stack(extract / "a.mrcs", np.zeros((count, 8, 8), np.float32), 1.0)
    write_stack(extract / "b.mrcs", np.zeros((count, 8, 8), np.float32), 1.0)


def test_refinement_cs_is_read_with_transposed_rodrigues_poses_and_angstrom_shifts(tmp_path):
    n = 5
    make_project(tmp_path, n)
    data = cs_array(n)
    path = tmp_path / "J5" / "particles.cs"
    save_cs(path, data)
    table = read_cryosparc(path, datadir=tmp_path)

    assert len(table) == n
    expected_paths = [str(tmp_path / "J3" / "extract" / ("a.mrcs" if k % 2 == 0 else "b.mrcs")) for k in range(n)]
    assert table.image_paths.tolist() == expected_paths
    np.testing.assert_array_equal(table.image_indices, [0, 0, 1, 1, 2])
    for k in range(n):
        np.testing.assert_allclose(table.rotations[k], rodrigues(data["alignments3D/pose"][k].astype(np.float64)).T, atol=1e-12)
    pixel_size = data["blob/psize_A"].astype(np.float64)
    np.testing.assert_allclose(table.shifts_A, data["alignments3D/shift"] * pixel_size[:, None], rtol=1e-6)
    np.testing.assert_allclose(table.defocus_u_A, data["ctf/df1_A"])
    np.testing.assert_allclose(table.defocus_v_A, data["ctf/df2_A"])
    np.testing.assert_allclose(table.defocus_angle_rad, data["ctf/df_angle_rad"])
    np.testing.assert_allclose(table.phase_shift_rad, data["ctf/phase_shift_rad"])
    np.testing.assert_allclose(table.voltage_kv, 300)
    np.testing.assert_allclose(table.spherical_aberration_mm, 2.7, rtol=1e-6)
    np.testing.assert_allclose(table.amplitude_contrast, 0.1, rtol=1e-6)
    np.testing.assert_allclose(table.bfactor_A2, 25.0)
    np.testing.assert_array_equal(table.image_size, 8)
    # The last particle has another pixel size, hence its own optics group.
    np.testing.assert_array_equal(table.optics_group, [1, 1, 1, 1, 2])
    assert table.optics_group_names == {1: "opticsGroup1", 2: "opticsGroup2"}


def test_abinit_cs_uses_class_0_alignments_and_says_so(tmp_path, caplog):
    n = 3
    make_project(tmp_path, n)
    data = cs_array(n, pose_prefix="alignments_class_0", with_bfactor=False)
    path = tmp_path / "abinit.cs"
    save_cs(path, data)
    with caplog.at_level(logging.INFO, logger="cryodomain.io.cryosparc"):
        table = read_cryosparc(path)  # stacks relative to the .cs folder
    assert "alignments_class_0" in caplog.text
    np.testing.assert_allclose(table.rotations[1], rodrigues(data["alignments_class_0/pose"][1].astype(np.float64)).T, atol=1e-12)
    np.testing.assert_allclose(table.shifts_A[:2], data["alignments_class_0/shift"][:2], rtol=1e-6)
    np.testing.assert_array_equal(table.bfactor_A2, 0.0)


def test_missing_fields_are_listed(tmp_path):
    data = cs_array(2)
    kept = [name for name in data.dtype.names if name not in ("ctf/df1_A", "alignments3D/pose")]
    path = tmp_path / "p.cs"
    save_cs(path, data[kept].copy())
    with pytest.raises(InputError) as error:
        read_cryosparc(path)
    message = str(error.value)
    assert "p.cs" in message and "ctf/df1_A" in message and "alignments3D/pose" in message


def test_missing_stack_names_the_cs_file_and_suggests_datadir(tmp_path):
    path = tmp_path / "J5" / "particles.cs"
    save_cs(path, cs_array(2))
    with pytest.raises(InputError) as error:
        read_cryosparc(path)
    message = str(error.value)
    assert "particles.cs" in message and "blob/path" in message and "J3/extract/a.mrcs" in message and "--datadir" in message


def test_file_that_is_not_a_cs_array_is_an_input_error(tmp_path):
    path = tmp_path / "p.cs"
    save_cs(path, np.zeros((3, 3)))
    with pytest.raises(InputError, match="p.cs"):
        read_cryosparc(path)
    path.write_text("garbage")
    with pytest.raises(InputError, match="p.cs"):
        read_cryosparc(path)


def test_cs_particles_convert_to_a_star_file_with_the_same_values(tmp_path):
    n = 4
    make_project(tmp_path, n)
    path = tmp_path / "particles.cs"
    save_cs(path, cs_array(n))
    table = read_cryosparc(path)
    write_star(tmp_path / "particles.star", table)
    back = read_star(tmp_path / "particles.star")
    np.testing.assert_array_equal(back.image_paths, table.image_paths)
    np.testing.assert_array_equal(back.image_indices, table.image_indices)
    np.testing.assert_array_equal(back.optics_group, table.optics_group)
    for name in ("rotations", "shifts_A", "defocus_u_A", "defocus_angle_rad", "phase_shift_rad", "pixel_size_A", "bfactor_A2"):
        np.testing.assert_allclose(getattr(back, name), getattr(table, name), atol=1e-5, err_msg=name)


# --- Exports as cryoSPARC writes them (tests/io/cryosparc_files.py) ---------------------------


def rotation_about_z(angle: float) -> np.ndarray:
    """``A`` for cryoSPARC pose ``(0, 0, angle)``: the transpose of the rotation by ``angle`` about z."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def project_stack(tmp_path, n: int) -> None:
    """The stack every fixture names, where cryoSPARC puts it under the project folder."""
    write_stack(tmp_path / "J3" / "extract" / "mic1_particles.mrc", np.zeros((n, 8, 8), np.float32), 1.0)


N, K = 5, 3
CHOSEN = [2, 0, 1, 2, 2]  # each particle's most probable class


def class_values(k: int, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose ``(0, 0, 0.1 (k + 1) + 0.01 i)`` and shift ``(10 k + i, -i)`` px of particles ``i`` in class ``k``."""
    pose = np.stack([np.zeros(len(i)), np.zeros(len(i)), 0.1 * (k + 1) + 0.01 * i], axis=-1)
    return pose, np.stack([10.0 * k + i, -1.0 * i], axis=-1)


def posteriors() -> np.ndarray:
    """``(N, K)`` class posteriors whose argmax is CHOSEN."""
    posterior = np.full((N, K), 0.1)
    posterior[np.arange(N), CHOSEN] = 0.8
    return posterior


def expected_poses(chosen: list[int], psize_A: float) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(N)
    angles = 0.1 * (np.asarray(chosen) + 1) + 0.01 * i
    shifts_px = np.stack([10.0 * np.asarray(chosen) + i, -1.0 * i], axis=-1)
    return np.stack([rotation_about_z(angle) for angle in angles]), shifts_px * psize_A


def hetero_refinement(tmp_path, with_posterior: bool = True) -> Path:
    """``J9_00020_particles_all_classes.cs`` of a hetero refinement at half the box (alignment 2 Å/px, images 1 Å/px)."""
    groups = [group_fields("blob", BLOB), group_fields("ctf", CTF)]
    values = particle_groups(N, psize_A=1.0)
    posterior = posteriors()
    for k in range(K):
        fields = [field for field in ALIGNMENTS3D if with_posterior or field[0] != "class_posterior"]
        groups.append(group_fields(f"alignments_class_{k}", fields))
        pose, shift = class_values(k, np.arange(N))
        values.update({f"alignments_class_{k}/pose": pose, f"alignments_class_{k}/shift": shift, f"alignments_class_{k}/psize_A": 2.0})
        values[f"alignments_class_{k}/class"] = k
        if with_posterior:
            values[f"alignments_class_{k}/class_posterior"] = posterior[:, k]
    project_stack(tmp_path, N)
    return save_cs(tmp_path / "J9" / "J9_00020_particles_all_classes.cs", cs_dataset(np.arange(N) + 100, groups, values))


def test_hetero_refinement_takes_each_particle_pose_from_its_most_probable_class(tmp_path, caplog):
    path = hetero_refinement(tmp_path)
    with caplog.at_level(logging.INFO, logger="cryodomain.io.cryosparc"):
        table = read_cryosparc(path, datadir=tmp_path)
    rotations, shifts_A = expected_poses(CHOSEN, psize_A=2.0)
    np.testing.assert_allclose(table.rotations, rotations, atol=1e-6)
    # Shifts are in pixels of the alignment (2 Å), not of the images (1 Å).
    np.testing.assert_allclose(table.shifts_A, shifts_A, rtol=1e-6)
    np.testing.assert_allclose(table.defocus_u_A, 10000 + 100 * np.arange(N))
    assert "poses: most probable of 3 classes (alignments_class_N), class sizes 1/1/3; shifts in pixels of alignments_class_N/psize_A (2 Å)" in caplog.text


def test_a_forced_class_gives_every_particle_that_class_pose(tmp_path, caplog):
    path = hetero_refinement(tmp_path, with_posterior=False)  # a forced class needs no posterior
    with caplog.at_level(logging.INFO, logger="cryodomain.io.cryosparc"):
        table = read_cryosparc(path, datadir=tmp_path, particle_class=1)
    rotations, shifts_A = expected_poses([1] * N, psize_A=2.0)
    np.testing.assert_allclose(table.rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(table.shifts_A, shifts_A, rtol=1e-6)
    assert "poses: class 1 of 3 (alignments_class_1), forced by --class" in caplog.text


def test_a_class_beyond_the_file_classes_is_a_one_line_input_error(tmp_path):
    path = hetero_refinement(tmp_path)
    with pytest.raises(InputError) as error:
        read_cryosparc(path, datadir=tmp_path, particle_class=3)
    assert str(error.value) == (
        f"{path}: --class (config data.particle_class): class 3 is not in the file: it holds 3 class(es), 0 to 2 (alignments_class_N); give a class from 0 to 2"
    )


def test_several_classes_without_class_posterior_are_refused_not_read_as_class_0(tmp_path):
    path = hetero_refinement(tmp_path, with_posterior=False)
    with pytest.raises(
        InputError, match=re.escape(f"{path}: alignments_class_0/class_posterior: missing: the most probable of the 3 classes is unknown; choose")
    ):
        read_cryosparc(path, datadir=tmp_path)


def every_class_poses(psize_A: float) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K, 3, 3)`` rotations and ``(N, K, 2)`` Å shifts of every class (``class_values``)."""
    per_class = [expected_poses([k] * N, psize_A) for k in range(K)]
    return np.stack([rotations for rotations, _ in per_class], axis=1), np.stack([shifts for _, shifts in per_class], axis=1)


@pytest.mark.parametrize("particle_class", [None, 1])
def test_a_multi_class_table_carries_every_class_poses_for_the_convention_check(tmp_path, particle_class):
    table = read_cryosparc(hetero_refinement(tmp_path), datadir=tmp_path, particle_class=particle_class)
    rotations, shifts_A = every_class_poses(psize_A=2.0)
    assert table.class_rotations.shape == (N, K, 3, 3) and table.class_rotations.dtype == np.float32
    np.testing.assert_allclose(table.class_rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(table.class_shifts_A, shifts_A, rtol=1e-6)
    # The chosen class's poses are among them; a subset keeps each particle's classes.
    chosen = CHOSEN if particle_class is None else [particle_class] * N
    np.testing.assert_allclose(table.class_rotations[np.arange(N), chosen], table.rotations, atol=1e-6)
    subset = table.subset(np.array([4, 1]))
    np.testing.assert_allclose(subset.class_shifts_A, shifts_A[[4, 1]], rtol=1e-6)


def test_a_single_class_table_carries_no_class_poses(tmp_path):
    table = read_cryosparc(refinement_export(tmp_path, 1.0, 1.0), datadir=tmp_path)
    assert table.class_rotations is None and table.class_shifts_A is None


def multi_export(tmp_path, psize_shape: tuple = ()) -> Path:
    """An ``alignments3D_multi`` export: pose (K, 3), shift (K, 2), class_posterior (K,) per particle."""
    project_stack(tmp_path, N)
    i = np.arange(N)
    poses, shifts = zip(*(class_values(k, i) for k in range(K)))
    multi = [entry for entry in ALIGNMENTS3D if entry[0] != "psize_A"] + [("psize_A", "<f4", psize_shape)]
    values = particle_groups(N, psize_A=1.0)
    values.update(
        {
            "alignments3D_multi/pose": np.stack(poses, axis=1),
            "alignments3D_multi/shift": np.stack(shifts, axis=1),
            "alignments3D_multi/class_posterior": posteriors(),
            "alignments3D_multi/class": np.arange(K),
            "alignments3D_multi/psize_A": 1.5,
        }
    )
    groups = [group_fields("blob", BLOB), group_fields("ctf", CTF), group_fields("alignments3D_multi", multi, classes=K)]
    return save_cs(tmp_path / "cryosparc_P4_J9_00020_particles.cs", cs_dataset(i, groups, values))


@pytest.mark.parametrize("psize_shape", [(), (K,)], ids=["psize per particle", "psize per class"])
def test_alignments3d_multi_takes_each_particle_pose_from_its_most_probable_class(tmp_path, caplog, psize_shape):
    path = multi_export(tmp_path, psize_shape)
    assert path.stat().st_size > 0 and np.load(path)["alignments3D_multi/pose"].shape == (N, K, 3)
    with caplog.at_level(logging.INFO, logger="cryodomain.io.cryosparc"):
        table = read_cryosparc(path, datadir=tmp_path)
    rotations, shifts_A = expected_poses(CHOSEN, psize_A=1.5)
    np.testing.assert_allclose(table.rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(table.shifts_A, shifts_A, rtol=1e-6)
    assert "poses: most probable of 3 classes (alignments3D_multi), class sizes 1/1/3; shifts in pixels of alignments3D_multi/psize_A (1.5 Å)" in caplog.text

    rotations, shifts_A = every_class_poses(psize_A=1.5)
    np.testing.assert_allclose(table.class_rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(table.class_shifts_A, shifts_A, rtol=1e-6)

    forced = read_cryosparc(path, datadir=tmp_path, particle_class=0)
    np.testing.assert_allclose(forced.rotations, expected_poses([0] * N, 1.5)[0], atol=1e-6)
    with pytest.raises(InputError, match=re.escape("class 5 is not in the file: it holds 3 class(es), 0 to 2 (alignments3D_multi)")):
        read_cryosparc(path, datadir=tmp_path, particle_class=5)


def test_alignments3d_multi_without_class_posterior_is_refused_unless_a_class_is_forced(tmp_path):
    path = multi_export(tmp_path)
    data = np.load(path)
    kept = [name for name in data.dtype.names if name != "alignments3D_multi/class_posterior"]
    save_cs(path, data[kept].copy())
    with pytest.raises(InputError, match=re.escape(f"{path}: alignments3D_multi/class_posterior: missing: the most probable of the 3 classes is unknown")):
        read_cryosparc(path, datadir=tmp_path)
    np.testing.assert_allclose(read_cryosparc(path, datadir=tmp_path, particle_class=2).rotations, expected_poses([2] * N, 1.5)[0], atol=1e-6)


def refinement_export(tmp_path, blob_psize_A: float, alignment_psize_A: float | None) -> Path:
    """A homogeneous refinement's particles: blob, ctf, alignments3D (with or without psize_A)."""
    project_stack(tmp_path, 2)
    fields = [entry for entry in ALIGNMENTS3D if alignment_psize_A is not None or entry[0] != "psize_A"]
    values = particle_groups(2, psize_A=blob_psize_A)
    values.update({"alignments3D/pose": [[0, 0, 0.5], [0, 0, -0.25]], "alignments3D/shift": [[3.0, -4.0], [0.5, 1.0]], "alignments3D/class_posterior": 1.0})
    if alignment_psize_A is not None:
        values["alignments3D/psize_A"] = alignment_psize_A
    groups = [group_fields("blob", BLOB), group_fields("ctf", CTF), group_fields("alignments3D", fields)]
    return save_cs(tmp_path / "J5" / "J5_005_particles.cs", cs_dataset([1, 2], groups, values))


@pytest.mark.parametrize(
    "blob_psize_A, alignment_psize_A, expected_A",
    [
        (2.0, 1.0, [[3.0, -4.0], [0.5, 1.0]]),  # images downsampled after the refinement: the alignment's pixels
        (1.0, 1.0, [[3.0, -4.0], [0.5, 1.0]]),
        (1.25, None, [[3.75, -5.0], [0.625, 1.25]]),  # no alignment pixel size: the images'
    ],
)
def test_refinement_shifts_are_converted_with_the_alignment_pixel_size(tmp_path, caplog, blob_psize_A, alignment_psize_A, expected_A):
    path = refinement_export(tmp_path, blob_psize_A, alignment_psize_A)
    with caplog.at_level(logging.INFO, logger="cryodomain.io.cryosparc"):
        table = read_cryosparc(path, datadir=tmp_path)
    np.testing.assert_allclose(table.shifts_A, expected_A, rtol=1e-6)
    np.testing.assert_allclose(table.pixel_size_A, blob_psize_A)
    np.testing.assert_allclose(table.rotations, [rotation_about_z(0.5), rotation_about_z(-0.25)], atol=1e-6)
    np.testing.assert_allclose(table.defocus_u_A, [10000, 10100])
    np.testing.assert_allclose(table.defocus_v_A, [9500, 9600])
    np.testing.assert_allclose(table.defocus_angle_rad, [0.0, 0.25])
    np.testing.assert_allclose(table.bfactor_A2, [0.0, 10.0])
    units = "alignments3D/psize_A (1 Å)" if alignment_psize_A is not None else "blob/psize_A"
    assert f"poses: alignments3D; shifts in pixels of {units}" in caplog.text


def test_a_forced_class_of_a_single_class_refinement(tmp_path):
    path = refinement_export(tmp_path, 1.0, 1.0)
    assert len(read_cryosparc(path, datadir=tmp_path, particle_class=0)) == 2
    with pytest.raises(InputError, match=re.escape("class 1 is not in the file: it holds one class (alignments3D)")):
        read_cryosparc(path, datadir=tmp_path, particle_class=1)


def test_a_non_positive_alignment_pixel_size_is_refused(tmp_path):
    path = refinement_export(tmp_path, 1.0, 0.0)
    with pytest.raises(InputError, match=re.escape(f"{path}: alignments3D/psize_A: pixel size of the alignment must be positive")):
        read_cryosparc(path, datadir=tmp_path)


# --- Passthrough files ----------------------------------------------------------------------

PASSTHROUGH_UIDS = [30, 99, 7, 11]  # another order than the main file's, and one particle more


def passthrough_pair(tmp_path, main_name: str, passthrough_name: str, main_uids=(11, 7, 30), main_groups=None) -> Path:
    """A job whose main file holds only its alignments and whose passthrough holds blob, ctf, location."""
    project_stack(tmp_path, len(PASSTHROUGH_UIDS))
    main = tmp_path / "J42" / main_name
    if main_groups is None:
        values = {
            "alignments3D/pose": [[0, 0, 0.1], [0, 0, 0.2], [0, 0, 0.3]],
            "alignments3D/shift": [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]],
            "alignments3D/psize_A": 1.0,
        }
        main_groups = ([group_fields("alignments3D", ALIGNMENTS3D)], values)
    save_cs(main, cs_dataset(list(main_uids), *main_groups))
    groups = [group_fields("blob", BLOB), group_fields("ctf", CTF), group_fields("location", LOCATION)]
    save_cs(tmp_path / "J42" / passthrough_name, cs_dataset(PASSTHROUGH_UIDS, groups, particle_groups(len(PASSTHROUGH_UIDS))))
    return main


def assert_merged_by_uid(table) -> None:
    """Main uids 11, 7, 30 are passthrough rows 3, 2, 0: their images and defocus."""
    np.testing.assert_array_equal(table.image_indices, [3, 2, 0])
    np.testing.assert_allclose(table.defocus_u_A, [10300, 10200, 10000])
    np.testing.assert_allclose(table.bfactor_A2, [30, 20, 0])


@pytest.mark.parametrize(
    "main_name, passthrough_name",
    [
        ("J42_005_particles.cs", "J42_passthrough_particles.cs"),
        ("particles_selected.cs", "J42_passthrough_particles_selected.cs"),
        ("J42_class_01_00020_particles.cs", "J42_passthrough_particles_class_1.cs"),
        ("cryosparc_P4_J42_00020_particles.cs", "cryosparc_P4_J42_passthrough_particles_all_classes.cs"),
    ],
)
def test_the_passthrough_file_beside_the_main_file_is_found_and_merged_by_uid(tmp_path, caplog, main_name, passthrough_name):
    main = passthrough_pair(tmp_path, main_name, passthrough_name)
    with caplog.at_level(logging.INFO, logger="cryodomain.io.cryosparc"):
        table = read_cryosparc(main, datadir=tmp_path)
    assert_merged_by_uid(table)
    np.testing.assert_allclose(table.rotations, [rotation_about_z(0.1), rotation_about_z(0.2), rotation_about_z(0.3)], atol=1e-6)
    np.testing.assert_allclose(table.shifts_A, [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    assert f"blob, ctf, location merged from {tmp_path / 'J42' / passthrough_name} by uid" in caplog.text


def test_a_passthrough_file_given_by_name_is_used(tmp_path):
    main = passthrough_pair(tmp_path, "J42_005_particles.cs", "renamed.cs")
    assert_merged_by_uid(read_cryosparc(main, datadir=tmp_path, passthrough=tmp_path / "J42" / "renamed.cs"))


def test_uids_absent_from_the_passthrough_file_name_both_files_and_uid(tmp_path):
    main = passthrough_pair(tmp_path, "J42_005_particles.cs", "J42_passthrough_particles.cs", main_uids=(11, 5, 6))
    with pytest.raises(InputError) as error:
        read_cryosparc(main, datadir=tmp_path)
    passthrough = tmp_path / "J42" / "J42_passthrough_particles.cs"
    assert str(error.value) == (
        f"{main}: uid: 2 particle(s) absent from the passthrough file {passthrough} (first uid 5); "
        "give the passthrough file written by the same cryoSPARC job (--passthrough)"
    )


def test_without_a_passthrough_file_the_missing_fields_and_the_names_tried_are_given(tmp_path):
    main = passthrough_pair(tmp_path, "J42_005_particles.cs", "J42_passthrough_particles.cs")
    (tmp_path / "J42" / "J42_passthrough_particles.cs").unlink()
    with pytest.raises(InputError) as error:
        read_cryosparc(main, datadir=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{main}: blob/path, blob/idx, blob/shape, blob/psize_A, ctf/accel_kv")
    assert "no passthrough file beside it (J42_passthrough_particles.cs, J42_passthrough_particles_all_classes.cs)" in message
    assert "--passthrough" in message and "\n" not in message


def test_a_passthrough_file_given_but_absent_is_an_input_error(tmp_path):
    main = passthrough_pair(tmp_path, "J42_005_particles.cs", "J42_passthrough_particles.cs")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'nope.cs'}: --passthrough: file not found")):
        read_cryosparc(main, datadir=tmp_path, passthrough=tmp_path / "nope.cs")


def test_an_earlier_job_alignments3D_in_the_passthrough_does_not_replace_the_class_poses(tmp_path):
    # A hetero refinement after a homogeneous one: the passthrough carries the old alignments3D.
    values = {}
    groups = []
    for k in range(K):
        groups.append(group_fields(f"alignments_class_{k}", ALIGNMENTS3D))
        pose, shift = class_values(k, np.arange(3))
        values.update({f"alignments_class_{k}/pose": pose, f"alignments_class_{k}/shift": shift, f"alignments_class_{k}/psize_A": 1.0})
        values[f"alignments_class_{k}/class_posterior"] = [1.0 if k == 2 else 0.0] * 3
    main = passthrough_pair(tmp_path, "J42_00020_particles_all_classes.cs", "J42_passthrough_particles_all_classes.cs", main_groups=(groups, values))
    passthrough = np.load(tmp_path / "J42" / "J42_passthrough_particles_all_classes.cs")
    old = cs_dataset(
        PASSTHROUGH_UIDS, [[(name, passthrough.dtype[name]) for name in passthrough.dtype.names[1:]], group_fields("alignments3D", ALIGNMENTS3D)], {}
    )
    for name in passthrough.dtype.names:
        old[name] = passthrough[name]
    old["alignments3D/pose"] = [0.0, 0.0, 1.5]
    save_cs(tmp_path / "J42" / "J42_passthrough_particles_all_classes.cs", old)

    table = read_cryosparc(main, datadir=tmp_path)
    assert_merged_by_uid(table)
    np.testing.assert_allclose(table.rotations, [rotation_about_z(0.3 + 0.01 * i) for i in range(3)], atol=1e-6)
