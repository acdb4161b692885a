"""Subsets written for RELION and cryoSPARC read back, with starfile/numpy and with our reader, as the input rows."""

import os

import numpy as np
import pandas as pd
import pytest
import starfile
import yaml

from cryodomain.errors import InputError
from cryodomain.io.metadata import read_particles
from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import write_stack
from cryodomain.io.subset_writer import cryosparc_subset, result_group, star_subset, write_cryosparc, write_star_blocks

ROWS = np.array([1, 2, 4])
# Fields whose values must survive the round trip, and the tolerance of float32 .cs storage.
VALUE_FIELDS = (
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
)


def assert_same_particles(actual: ParticleTable, expected: ParticleTable, rtol: float = 1e-6, atol: float = 1e-5) -> None:
    np.testing.assert_array_equal(actual.image_paths, expected.image_paths)
    for name in VALUE_FIELDS:
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), rtol=rtol, atol=atol, err_msg=name)


def make_stack(path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stack(path, np.zeros((n, 8, 8), np.float32), 1.0)


RELION31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
krios 1 0.55 300.0 2.7 0.1 1.1 8 2
glacios 2 0.65 200.0 2.0 0.07 1.3 8 2

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnAngleRot #3
_rlnAngleTilt #4
_rlnAnglePsi #5
_rlnOriginXAngst #6
_rlnOriginYAngst #7
_rlnDefocusU #8
_rlnDefocusV #9
_rlnDefocusAngle #10
_rlnPhaseShift #11
_rlnCtfBfactor #12
_rlnOpticsGroup #13
_rlnRandomSubset #14
_rlnClassNumber #15
000001@Extract/job012/a.mrcs mic0.mrc 10.0 20.0 30.0 1.5 -2.25 15000.0 14000.0 45.0 0.0 0.0 1 1 3
000002@Extract/job012/a.mrcs mic0.mrc -50.0 90.0 0.0 -3.0 0.5 16000.0 15500.0 -10.0 0.0 10.0 1 2 1
000003@Extract/job012/a.mrcs mic1.mrc 120.0 45.0 -60.0 0.0 1.1 17000.0 16000.0 0.0 0.0 0.0 2 2 1
000001@Extract/job012/b.mrcs mic2.mrc -170.0 160.0 100.0 2.6 2.6 18000.0 17500.0 80.0 0.0 5.0 2 1 2
000002@Extract/job012/b.mrcs mic2.mrc 5.0 5.0 5.0 -1.3 0.0 19000.0 18000.0 -80.0 0.0 0.0 1 1 3
"""

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
_rlnClassNumber #16
000001@Particles/s.mrcs mic1.mrc 10.0 20.0 30.0  2.0 -1.0 15000.0 14000.0 45.0 300 2.7 0.1 50000 7.0 1
000002@Particles/s.mrcs mic1.mrc -50.0 90.0 0.0 -3.0  0.5 16000.0 15500.0 -10.0 300 2.7 0.1 50000 7.0 2
000003@Particles/s.mrcs mic2.mrc 0.0 30.0 0.0  0.0  0.0 17000.0 17000.0 0.0 200 2.0 0.07 50000 7.0 1
000004@Particles/s.mrcs mic2.mrc 70.0 10.0 20.0  1.0  1.0 17000.0 17000.0 0.0 200 2.0 0.07 50000 7.0 2
000005@Particles/s.mrcs mic3.mrc 80.0 50.0 30.0  0.5  4.0 18000.0 17000.0 3.0 300 2.7 0.1 50000 7.0 1
"""


@pytest.fixture
def relion31(tmp_path):
    """A RELION 3.1 project: Extract/job012/{a,b}.mrcs and the refinement's particle star."""
    make_stack(tmp_path / "project" / "Extract" / "job012" / "a.mrcs", 3)
    make_stack(tmp_path / "project" / "Extract" / "job012" / "b.mrcs", 2)
    path = tmp_path / "project" / "run_data.star"
    path.write_text(RELION31)
    return read_particles(path)


@pytest.fixture
def relion30(tmp_path):
    make_stack(tmp_path / "old" / "Particles" / "s.mrcs", 5)
    path = tmp_path / "old" / "data.star"
    path.write_text(RELION30)
    return read_particles(path)


def cs_input(tmp_path, n: int = 5) -> np.ndarray:
    """A cryoSPARC refinement's particles (project-relative stack paths) and the table read from it."""
    project = tmp_path / "P1"
    make_stack(project / "J3" / "extract" / "a.mrcs", n)
    fields = [
        ("uid", "<u8"),
        ("blob/path", "S40"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("blob/sign", "<f4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/class_posterior", "<f4"),
        ("location/micrograph_path", "S20"),
    ]
    data = np.zeros(n, dtype=fields)
    rng = np.random.default_rng(1)
    data["uid"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    data["blob/path"] = b">J3/extract/a.mrcs"
    data["blob/idx"] = np.arange(n)[::-1]
    data["blob/shape"] = 8
    data["blob/psize_A"] = 1.25
    data["blob/sign"] = -1.0
    data["ctf/accel_kv"] = 300
    data["ctf/cs_mm"] = 2.7
    data["ctf/amp_contrast"] = 0.1
    data["ctf/df1_A"] = rng.uniform(10000, 20000, n)
    data["ctf/df2_A"] = rng.uniform(10000, 20000, n)
    data["ctf/df_angle_rad"] = rng.uniform(-1, 1, n)
    data["ctf/phase_shift_rad"] = rng.uniform(0, 0.5, n)
    data["alignments3D/shift"] = rng.normal(size=(n, 2))
    data["alignments3D/pose"] = rng.normal(size=(n, 3))
    data["alignments3D/class_posterior"] = 1.0
    data["location/micrograph_path"] = [f"mic{k}.mrc".encode() for k in range(n)]
    path = project / "J9" / "particles.cs"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as handle:
        np.save(handle, data)
    return data


def written_star(table: ParticleTable, out) -> tuple[dict[str, pd.DataFrame], ParticleTable]:
    write_star_blocks(out / "particles.star", star_subset(table, ROWS, out))
    return starfile.read(out / "particles.star", always_dict=True), read_particles(out / "particles.star")


# ---------------------------------------------------------------------------------------------
# RELION
# ---------------------------------------------------------------------------------------------


def test_star_from_relion31_keeps_the_input_rows_columns_and_optics_table(relion31, tmp_path):
    out = tmp_path / "elsewhere" / "subset"
    blocks, back = written_star(relion31, out)

    assert_same_particles(back, relion31.subset(ROWS))
    assert back.optics_group_names == {1: "krios", 2: "glacios"}
    particles, optics = blocks["particles"], blocks["optics"]
    # The user's optics table, column for column (rlnMicrographOriginalPixelSize included).
    source = starfile.read(tmp_path / "project" / "run_data.star", always_dict=True)
    pd.testing.assert_frame_equal(optics, source["optics"])
    # The input rows with every column, only the image paths rewritten.
    assert list(particles.columns) == list(source["particles"].columns)
    expected = source["particles"].iloc[ROWS].reset_index(drop=True)
    pd.testing.assert_frame_equal(particles.drop(columns="rlnImageName"), expected.drop(columns="rlnImageName"))


def test_star_image_paths_are_relative_to_the_output_folder(relion31, tmp_path):
    out = tmp_path / "elsewhere" / "subset"
    blocks, back = written_star(relion31, out)
    names = blocks["particles"]["rlnImageName"].tolist()
    assert names == ["000002@../../project/Extract/job012/a.mrcs", "000003@../../project/Extract/job012/a.mrcs", "000002@../../project/Extract/job012/b.mrcs"]
    # They resolve from OUT whatever the working directory (RELION runs from its project folder).
    for name in names:
        assert (out / name.split("@")[1]).is_file()
    np.testing.assert_array_equal(back.image_paths, relion31.image_paths[ROWS])


def test_star_from_relion30_is_written_in_the_31_layout(relion30, tmp_path):
    blocks, back = written_star(relion30, tmp_path / "out")

    assert_same_particles(back, relion30.subset(ROWS))
    particles = blocks["particles"]
    assert not {"rlnOriginX", "rlnOriginY", "rlnVoltage", "rlnMagnification", "rlnDetectorPixelSize"} & set(particles.columns)
    assert particles["rlnClassNumber"].tolist() == [2, 1, 1]
    assert particles["rlnMicrographName"].tolist() == ["mic1.mrc", "mic2.mrc", "mic3.mrc"]
    # 1.4 Å pixels: rlnOriginX 2 px -> 2.8 Å.
    np.testing.assert_allclose(particles["rlnOriginXAngst"], np.array([-3.0, 0.0, 0.5]) * 1.4)
    optics = blocks["optics"]
    assert optics["rlnOpticsGroup"].tolist() == [1, 2]
    np.testing.assert_allclose(optics["rlnVoltage"], [300, 200])
    np.testing.assert_allclose(optics["rlnImagePixelSize"], 1.4)


def test_star_from_cs_builds_poses_ctf_and_optics(tmp_path):
    data = cs_input(tmp_path)
    table = read_particles(tmp_path / "P1" / "J9" / "particles.cs", datadir=tmp_path / "P1")
    blocks, back = written_star(table, tmp_path / "out")

    assert_same_particles(back, table.subset(ROWS))
    assert blocks["particles"]["rlnImageName"].tolist() == [f"{data['blob/idx'][row] + 1:06d}@../P1/J3/extract/a.mrcs" for row in ROWS]
    assert blocks["optics"]["rlnImageSize"].tolist() == [8]


def test_star_subset_refuses_a_source_whose_optics_groups_are_gone(relion31, tmp_path):
    text = RELION31.replace("glacios 2 0.65 200.0 2.0 0.07 1.3 8 2\n", "")
    (tmp_path / "project" / "run_data.star").write_text(text)
    with pytest.raises(InputError, match="optics group"):
        star_subset(relion31, ROWS, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# cryoSPARC
# ---------------------------------------------------------------------------------------------


def test_cs_from_cs_keeps_the_input_rows_and_uids(tmp_path):
    data = cs_input(tmp_path)
    table = read_particles(tmp_path / "P1" / "J9" / "particles.cs", datadir=tmp_path / "P1")
    out = tmp_path / "P1" / "selection"
    csg = write_cryosparc(out / "particles.cs", cryosparc_subset(table, ROWS))

    back = np.load(out / "particles.cs")
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back, data[ROWS])
    assert_same_particles(read_particles(out / "particles.cs", datadir=tmp_path / "P1"), table.subset(ROWS))
    group = yaml.safe_load(csg.read_text())
    assert set(group["results"]) == {"blob", "ctf", "alignments3D", "location"}
    assert group["results"]["location"] == {"metafile": ">particles.cs", "num_items": 3, "type": "particle.location"}


def test_cs_from_star_has_the_poses_ctf_and_fresh_uids(relion31, tmp_path):
    out = tmp_path / "out"
    data = cryosparc_subset(relion31, ROWS, data_sign=1.0)
    write_cryosparc(out / "particles.cs", data)

    back = np.load(out / "particles.cs")
    assert {"uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A", "ctf/df1_A", "alignments3D/pose", "alignments3D/shift"} <= set(back.dtype.names)
    assert back["uid"].dtype == np.uint64 and len(np.unique(back["uid"])) == len(ROWS)
    # Absolute stack paths (no cryoSPARC project to be relative to), 0-based indices.
    assert all(os.path.isabs(path.decode()) for path in back["blob/path"])
    np.testing.assert_array_equal(back["blob/idx"], [1, 2, 1])
    np.testing.assert_array_equal(back["blob/sign"], 1.0)
    # RELION's rlnRandomSubset 1/2 is cryoSPARC's split 0/1.
    np.testing.assert_array_equal(back["alignments3D/split"], [1, 1, 0])
    # Our reader finds the same particles, to float32 precision.
    assert_same_particles(read_particles(out / "particles.cs"), relion31.subset(ROWS), rtol=1e-6, atol=1e-4)


def test_fresh_uids_differ_between_subsets_unless_seeded(relion31):
    first, second = cryosparc_subset(relion31, ROWS)["uid"], cryosparc_subset(relion31, ROWS)["uid"]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(cryosparc_subset(relion31, ROWS, seed=3)["uid"], cryosparc_subset(relion31, ROWS, seed=3)["uid"])


def test_star_to_cs_to_star_gives_back_the_poses(relion30, tmp_path):
    write_cryosparc(tmp_path / "a" / "particles.cs", cryosparc_subset(relion30, ROWS, data_sign=-1.0))
    via_cs = read_particles(tmp_path / "a" / "particles.cs")
    write_star_blocks(tmp_path / "b" / "particles.star", star_subset(via_cs, np.arange(len(via_cs)), tmp_path / "b"))
    assert_same_particles(read_particles(tmp_path / "b" / "particles.star"), relion30.subset(ROWS), rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "particles.cs")["blob/sign"], -1.0)


def test_result_group_lists_one_result_per_field_prefix():
    data = np.zeros(4, dtype=[("uid", "<u8"), ("blob/path", "S4"), ("blob/idx", "<u4"), ("alignments_class_0/pose", "<f4", (3,)), ("ctf/df1_A", "<f4")])
    group = result_group("p.cs", data, "title")
    assert list(group["results"]) == ["blob", "alignments_class_0", "ctf"]
    assert group["results"]["alignments_class_0"]["type"] == "particle.alignments3D"
    assert group["results"]["ctf"] == {"metafile": ">p.cs", "num_items": 4, "type": "particle.ctf"}
    assert group["group"]["type"] == "particle"


def test_cs_subset_refuses_a_source_that_changed(tmp_path):
    cs_input(tmp_path, n=5)
    table = read_particles(tmp_path / "P1" / "J9" / "particles.cs", datadir=tmp_path / "P1")
    cs_input(tmp_path / "again", n=4)
    os.replace(tmp_path / "again" / "P1" / "J9" / "particles.cs", tmp_path / "P1" / "J9" / "particles.cs")
    with pytest.raises(InputError, match="holds 4 particles"):
        cryosparc_subset(table, ROWS)
