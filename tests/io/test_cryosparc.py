import logging

import numpy as np
import pytest

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


def save_cs(path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, data)


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
