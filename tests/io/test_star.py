import logging

import numpy as np
import pandas as pd
import pytest
import starfile
from particle_tables import star_fixture_with_stacks
from test_poses import relion_euler_angles2matrix

from cryodomain.errors import InputError
from cryodomain.io.particles import ParticleTable
from cryodomain.io.poses import relion_euler_to_matrix
from cryodomain.io.stack import write_stack
from cryodomain.io.star import read_star, write_star

ARRAY_FIELDS = (
    "image_indices",
    "rotations",
    "shifts_A",
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_rad",
    "voltage_kv",
    "spherical_aberration_mm",
    "amplitude_contrast",
    "phase_shift_rad",
    "bfactor_A2",
    "pixel_size_A",
    "image_size",
    "optics_group",
)


def make_stack(path, n: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stack(path, np.zeros((n, size, size), np.float32), 1.0)


def assert_tables_equal(actual: ParticleTable, expected: ParticleTable) -> None:
    np.testing.assert_array_equal(actual.image_paths, expected.image_paths)
    for name in ARRAY_FIELDS:
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), atol=1e-5, err_msg=name)
    assert actual.optics_group_names == expected.optics_group_names


def two_group_table(tmp_path) -> ParticleTable:
    """Six particles in two stacks and two optics groups, with the user's extra columns."""
    make_stack(tmp_path / "stacks" / "a.mrcs", 4)
    make_stack(tmp_path / "stacks" / "b.mrcs", 3)
    rng = np.random.default_rng(0)
    n = 6
    angles = np.stack([rng.uniform(-180, 180, n), rng.uniform(1, 179, n), rng.uniform(-180, 180, n)], axis=-1)
    group = np.array([1, 1, 2, 2, 1, 2])
    extra = pd.DataFrame(
        {
            "rlnMicrographName": [f"mic{k}.mrc" for k in range(n)],
            "rlnCoordinateX": np.arange(n) * 10.0,
            "rlnAngleRot": np.zeros(n),  # stale value that write_star must overwrite
        }
    )
    return ParticleTable(
        image_paths=np.array([str(tmp_path / "stacks" / name) for name in ["a.mrcs"] * 3 + ["b.mrcs"] * 2 + ["a.mrcs"]]),
        image_indices=np.array([0, 2, 3, 0, 2, 1]),
        rotations=relion_euler_to_matrix(angles),
        shifts_A=rng.normal(size=(n, 2)) * 3,
        defocus_u_A=rng.uniform(10000, 20000, n),
        defocus_v_A=rng.uniform(10000, 20000, n),
        defocus_angle_rad=rng.uniform(-np.pi, np.pi, n),
        voltage_kv=np.where(group == 1, 300.0, 200.0),
        spherical_aberration_mm=np.where(group == 1, 2.7, 2.0),
        amplitude_contrast=np.where(group == 1, 0.1, 0.07),
        phase_shift_rad=rng.uniform(0, 1, n),
        bfactor_A2=rng.uniform(0, 50, n),
        pixel_size_A=np.where(group == 1, 1.1, 1.3),
        image_size=np.full(n, 8),
        optics_group=group,
        optics_group_names={1: "krios", 2: "glacios"},
        source="test",
        extra=extra,
    )


def test_write_read_round_trip_keeps_fields_optics_groups_and_extra_columns(tmp_path):
    table = two_group_table(tmp_path)
    path = tmp_path / "particles.star"
    write_star(path, table)
    back = read_star(path)

    assert_tables_equal(back, table)
    assert back.source == str(path)
    np.testing.assert_array_equal(back.extra["rlnMicrographName"], table.extra["rlnMicrographName"])
    np.testing.assert_allclose(back.extra["rlnCoordinateX"], table.extra["rlnCoordinateX"])
    # RELION 3.1 layout: one optics row per group, stacks under the star folder written relative.
    blocks = starfile.read(path, always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    optics = blocks["optics"]
    assert optics["rlnOpticsGroup"].tolist() == [1, 2]
    assert optics["rlnImageDimensionality"].tolist() == [2, 2]
    np.testing.assert_allclose(optics["rlnImagePixelSize"], [1.1, 1.3])
    assert blocks["particles"]["rlnImageName"].iloc[0] == "000001@stacks/a.mrcs"
    assert list(tmp_path.glob(".*.tmp")) == []


def test_written_subset_keeps_user_columns_in_subset_order(tmp_path):
    table = two_group_table(tmp_path).subset(np.array([5, 1]))
    write_star(tmp_path / "subset.star", table)
    back = read_star(tmp_path / "subset.star")
    assert_tables_equal(back, table)
    assert back.extra["rlnMicrographName"].tolist() == ["mic5.mrc", "mic1.mrc"]


def test_stacks_outside_the_star_folder_are_written_absolute(tmp_path):
    table = two_group_table(tmp_path)
    (tmp_path / "out").mkdir()
    write_star(tmp_path / "out" / "p.star", table)
    names = starfile.read(tmp_path / "out" / "p.star", always_dict=True)["particles"]["rlnImageName"]
    assert names.iloc[0] == f"000001@{tmp_path / 'stacks' / 'a.mrcs'}"
    assert_tables_equal(read_star(tmp_path / "out" / "p.star"), table)


RELION30 = """
data_

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnAngleRot #3
_rlnAngleTilt #4
_rlnAnglePsi #5
_rlnOriginX #6
_rlnOriginY #7
_rlnDefocusU #8
_rlnDefocusV #9
_rlnDefocusAngle #10
_rlnVoltage #11
_rlnSphericalAberration #12
_rlnAmplitudeContrast #13
_rlnMagnification #14
_rlnDetectorPixelSize #15
_rlnPhaseShift #16
000002@Particles/s.mrcs mic1.mrc 10.0 20.0 30.0  2.0 -1.0 15000.0 14000.0 45.0 300 2.7 0.1 50000 7.0 0.0
000001@Particles/s.mrcs mic1.mrc -50.0 90.0 0.0 -3.0  0.5 16000.0 15500.0 -10.0 300 2.7 0.1 50000 7.0 90.0
000003@Particles/s.mrcs mic2.mrc 0.0 0.0 0.0  0.0  0.0 17000.0 17000.0 0.0 200 2.0 0.07 50000 7.0 0.0
"""


def test_relion30_star_with_pixel_shifts_and_detector_pixel_size_is_read(tmp_path):
    make_stack(tmp_path / "Particles" / "s.mrcs", 3, size=12)
    path = tmp_path / "run_data.star"
    path.write_text(RELION30)
    table = read_star(path)

    pixel_size = 7.0 * 1e4 / 50000  # 1.4 Å
    np.testing.assert_allclose(table.pixel_size_A, pixel_size)
    np.testing.assert_array_equal(table.image_indices, [1, 0, 2])
    assert set(table.image_paths) == {str(tmp_path / "Particles" / "s.mrcs")}
    np.testing.assert_allclose(table.shifts_A, np.array([[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]]) * pixel_size)
    np.testing.assert_allclose(table.rotations[0], relion_euler_to_matrix(np.array([10.0, 20.0, 30.0])))
    np.testing.assert_allclose(table.defocus_angle_rad, np.deg2rad([45.0, -10.0, 0.0]))
    np.testing.assert_allclose(table.phase_shift_rad, [0.0, np.pi / 2, 0.0])
    np.testing.assert_allclose(table.bfactor_A2, 0.0)
    np.testing.assert_allclose(table.voltage_kv, [300, 300, 200])
    # Box from the stack header; one optics group per distinct optics setting.
    np.testing.assert_array_equal(table.image_size, 12)
    np.testing.assert_array_equal(table.optics_group, [1, 1, 2])
    assert table.optics_group_names == {1: "opticsGroup1", 2: "opticsGroup2"}
    assert table.extra["rlnMicrographName"].tolist() == ["mic1.mrc", "mic1.mrc", "mic2.mrc"]

    # Converting to 3.1 keeps every value and drops the per-particle optics columns.
    write_star(tmp_path / "converted.star", table)
    assert_tables_equal(read_star(tmp_path / "converted.star"), table)
    particles = starfile.read(tmp_path / "converted.star", always_dict=True)["particles"]
    assert not {"rlnOriginX", "rlnVoltage", "rlnMagnification"} & set(particles.columns)


def relion31_text(shift_columns: str, shift_values: list[str]) -> str:
    rows = [
        f"000001@s.mrcs 10 20 30 {shift_values[0]} 15000 14000 45 1",
        f"000002@s.mrcs 40 50 60 {shift_values[1]} 16000 15000 -5 2",
    ]
    return (
        "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnImagePixelSize\n_rlnImageSize\n"
        "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n"
        "1 first 2.0 8 300 2.7 0.1\n2 second 0.5 8 300 2.7 0.1\n\n"
        "data_particles\n\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n"
        f"{shift_columns}_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnOpticsGroup\n" + "\n".join(rows) + "\n"
    )


def test_pixel_shifts_and_angstrom_shifts_give_the_same_table(tmp_path):
    make_stack(tmp_path / "s.mrcs", 2)
    pixels = tmp_path / "pixels.star"
    pixels.write_text(relion31_text("_rlnOriginX\n_rlnOriginY\n", ["1.5 -2.0", "4.0 8.0"]))
    angstroms = tmp_path / "angstroms.star"
    angstroms.write_text(relion31_text("_rlnOriginXAngst\n_rlnOriginYAngst\n", ["3.0 -4.0", "2.0 4.0"]))

    from_pixels, from_angstroms = read_star(pixels), read_star(angstroms)
    assert_tables_equal(from_pixels, from_angstroms)
    np.testing.assert_allclose(from_angstroms.shifts_A, [[3.0, -4.0], [2.0, 4.0]])
    np.testing.assert_allclose(from_angstroms.pixel_size_A, [2.0, 0.5])
    assert from_angstroms.optics_group_names == {1: "first", 2: "second"}


def test_no_shift_columns_means_zero_shifts(tmp_path):
    make_stack(tmp_path / "s.mrcs", 2)
    path = tmp_path / "p.star"
    path.write_text(relion31_text("", ["", ""]))
    np.testing.assert_array_equal(read_star(path).shifts_A, 0.0)


def test_datadir_finds_stacks_by_relative_path_or_basename(tmp_path):
    (tmp_path / "meta").mkdir()
    path = tmp_path / "meta" / "p.star"
    path.write_text(relion31_text("", ["", ""]).replace("@s.mrcs", "@Extract/job007/s.mrcs"))

    with pytest.raises(InputError) as error:
        read_star(path)
    message = str(error.value)
    assert "p.star" in message and "rlnImageName" in message and "Extract/job007/s.mrcs" in message
    assert "--datadir" in message

    make_stack(tmp_path / "flat" / "s.mrcs", 2)
    table = read_star(path, datadir=tmp_path / "flat")
    assert set(table.image_paths) == {str(tmp_path / "flat" / "s.mrcs")}

    make_stack(tmp_path / "project" / "Extract" / "job007" / "s.mrcs", 2)
    table = read_star(path, datadir=tmp_path / "project")
    assert set(table.image_paths) == {str(tmp_path / "project" / "Extract" / "job007" / "s.mrcs")}


def test_missing_required_columns_are_listed(tmp_path):
    make_stack(tmp_path / "s.mrcs", 2)
    path = tmp_path / "p.star"
    text = relion31_text("", ["", ""]).replace("_rlnDefocusV\n", "").replace(" 14000 ", " ").replace(" 15000 -5", " -5")
    text = text.replace("_rlnAnglePsi\n", "").replace("10 20 30", "10 20").replace("40 50 60", "40 50")
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_star(path)
    message = str(error.value)
    assert "p.star" in message and "rlnAnglePsi" in message and "rlnDefocusV" in message


def test_relion30_without_pixel_size_names_the_columns_to_add(tmp_path):
    make_stack(tmp_path / "Particles" / "s.mrcs", 3)
    path = tmp_path / "p.star"
    path.write_text(RELION30.replace("_rlnMagnification #14\n", "_rlnOther #14\n"))
    with pytest.raises(InputError, match="rlnImagePixelSize.*rlnDetectorPixelSize.*rlnMagnification"):
        read_star(path)


def test_empty_file_and_file_without_particles_are_input_errors(tmp_path):
    empty = tmp_path / "empty.star"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.star"):
        read_star(empty)
    optics_only = tmp_path / "optics.star"
    optics_only.write_text("data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n")
    with pytest.raises(InputError, match="rlnImageName"):
        read_star(optics_only)


def test_particles_pointing_to_an_unknown_optics_group_are_an_input_error(tmp_path):
    make_stack(tmp_path / "s.mrcs", 2)
    path = tmp_path / "p.star"
    path.write_text(relion31_text("", ["", ""]).replace("-5 2\n", "-5 3\n"))
    with pytest.raises(InputError, match=r"rlnOpticsGroup.*\[3\]"):
        read_star(path)


def test_bad_image_name_is_an_input_error(tmp_path):
    make_stack(tmp_path / "s.mrcs", 2)
    path = tmp_path / "p.star"
    path.write_text(relion31_text("", ["", ""]).replace("000002@s.mrcs", "x@s.mrcs"))
    with pytest.raises(InputError, match="rlnImageName.*x@s.mrcs"):
        read_star(path)


def test_missing_image_size_is_read_from_the_stack_header(tmp_path):
    make_stack(tmp_path / "s.mrcs", 2, size=10)
    path = tmp_path / "p.star"
    path.write_text(relion31_text("", ["", ""]).replace("_rlnImageSize\n", "").replace(" 8 300 ", " 300 "))
    np.testing.assert_array_equal(read_star(path).image_size, [10, 10])


def test_relion5_star_with_zernike_lists_and_magnification_matrix_is_read_exactly(tmp_path, caplog):
    path = star_fixture_with_stacks("relion5_particles.star", tmp_path, box=12)
    with caplog.at_level(logging.WARNING, logger="cryodomain.io.star_checks"):
        table = read_star(path)

    mic1, mic2 = (str(tmp_path / "Extract" / "job012" / "Movies" / name) for name in ("mic1.mrcs", "mic2.mrcs"))
    assert table.image_paths.tolist() == [mic1, mic1, mic2]
    np.testing.assert_array_equal(table.image_indices, [0, 1, 0])
    np.testing.assert_allclose(table.rotations[1], relion_euler_angles2matrix(44.0, 90.0, 180.0), atol=1e-12)
    np.testing.assert_allclose(table.rotations[0], relion_euler_angles2matrix(-95.36496, 22.953369, -69.45995), atol=1e-12)
    np.testing.assert_allclose(table.rotations[2], relion_euler_angles2matrix(0.0, 135.0, -10.0), atol=1e-12)
    np.testing.assert_allclose(table.shifts_A, [[1.21, -2.42], [-0.55, 3.3], [0.0, 0.0]])
    np.testing.assert_allclose(table.defocus_u_A, [30876.811323, 30911.42, 18250.0])
    np.testing.assert_allclose(table.defocus_v_A, [28722.607179, 28701.95, 17120.5])
    np.testing.assert_allclose(table.defocus_angle_rad, np.deg2rad([161.590835, 161.590835, -33.25]))
    np.testing.assert_allclose(table.phase_shift_rad, [0.0, 0.0, np.pi / 2])
    np.testing.assert_allclose(table.bfactor_A2, [0.0, -12.5, 5.0])
    # Each particle takes its optics group's values (the image pixel size, not the movie's).
    np.testing.assert_allclose(table.voltage_kv, [300, 300, 200])
    np.testing.assert_allclose(table.spherical_aberration_mm, [2.7, 2.7, 2.0])
    np.testing.assert_allclose(table.amplitude_contrast, [0.1, 0.1, 0.07])
    np.testing.assert_allclose(table.pixel_size_A, 1.1)
    np.testing.assert_array_equal(table.image_size, 12)
    np.testing.assert_array_equal(table.optics_group, [1, 1, 2])
    assert table.optics_group_names == {1: "opticsGroup1", 2: "opticsGroup2"}
    # Group 1's aberrations are not modelled: said once, naming the columns (group 2 is neutral).
    assert "rlnOddZernike, rlnEvenZernike, rlnMagMat00, rlnMagMat01, rlnMagMat10, rlnMagMat11 not modelled" in caplog.text


def test_relion31_star_with_two_optics_groups_gives_each_particle_its_group_ctf(tmp_path):
    path = star_fixture_with_stacks("relion31_multi_optics.star", tmp_path, box=10)
    table = read_star(path)

    np.testing.assert_array_equal(table.optics_group, [1, 1, 2, 2])
    assert table.optics_group_names == {1: "krios_K3", 2: "glacios_F4"}
    np.testing.assert_allclose(table.voltage_kv, [300, 300, 200, 200])
    np.testing.assert_allclose(table.spherical_aberration_mm, [2.7, 2.7, 2.0, 2.0])
    np.testing.assert_allclose(table.amplitude_contrast, [0.1, 0.1, 0.07, 0.07])
    np.testing.assert_allclose(table.pixel_size_A, [1.66, 1.66, 1.84, 1.84])
    np.testing.assert_allclose(table.shifts_A, [[1.66, -3.32], [0.0, 0.83], [-1.84, 0.0], [3.68, 1.84]])
    np.testing.assert_allclose(table.defocus_u_A, [12000, 12010, 21000, 21050])
    np.testing.assert_allclose(table.defocus_v_A, [11500, 11520, 20000, 20100])
    np.testing.assert_allclose(table.defocus_angle_rad, np.deg2rad([20, 20, -45, -45]))
    np.testing.assert_allclose(table.rotations[2], relion_euler_angles2matrix(-90.0, 45.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(table.rotations[3], relion_euler_angles2matrix(5.0, 175.0, 120.0), atol=1e-12)
    assert table.image_paths[2] == str(tmp_path / "Extract" / "job007" / "glacios" / "mic_0007.mrcs")
    np.testing.assert_array_equal(table.image_indices, [0, 1, 0, 1])
