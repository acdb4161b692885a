"""Bad particle files, stacks and pixels: one error line naming file, field and fix; exit 2; no run folder."""

import errno

import numpy as np
import pandas as pd
import pytest
import starfile
from reliability_helpers import stack_images, write_mrcs

from cryodomain.errors import InputError
from cryodomain.io.star import read_star


def test_missing_particle_file(tmp_path, refused):
    refused(tmp_path / "nowhere.star", "nowhere.star", "file not found")


def test_wrong_extension(tmp_path, refused):
    path = tmp_path / "particles.txt"
    path.write_text("data_\n")
    refused(path, "particles.txt", "unknown particle file type", ".star")


def test_folder_instead_of_file(tmp_path, refused):
    (tmp_path / "particles.star").mkdir()
    refused(tmp_path / "particles.star", "is a folder")


@pytest.mark.parametrize(
    "content, expected",
    [("", "no particle table"), ("data_particles\n\nloop_\n_rlnImageName #1\n", "empty"), (bytes(range(256)) * 3, "particles.star")],
    ids=["empty-file", "no-rows", "binary-garbage"],
)
def test_empty_or_garbage_star(tmp_path, refused, content, expected):
    path = tmp_path / "particles.star"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    refused(path, expected)


def test_unreadable_star(tmp_path, refused, monkeypatch, tiny_simulation):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(starfile, "read", denied)
    refused(tiny_simulation["star"], "particles.star", "cannot read (Permission denied)")


@pytest.mark.parametrize("column", ["rlnImageName", "rlnAngleTilt", "rlnDefocusU", "rlnDefocusAngle"])
def test_star_without_a_needed_column(star_variant, refused, column):
    path = star_variant(lambda blocks: blocks.update(particles=blocks["particles"].drop(columns=[column])))
    refused(path, column, "missing column")


def test_star_without_voltage_in_optics(star_variant, refused):
    path = star_variant(lambda blocks: blocks.update(optics=blocks["optics"].drop(columns=["rlnVoltage"])))
    refused(path, "rlnVoltage", "missing column")


def test_image_index_beyond_the_stack(star_variant, refused):
    def edit(blocks):
        blocks["particles"].loc[5, "rlnImageName"] = "000049@particles.mrcs"

    refused(star_variant(edit), "particles.mrcs", "image index 48 (0-based) is outside the stack of 48 images")


def test_more_star_rows_than_images(star_variant, refused):
    def edit(blocks):
        particles = blocks["particles"]
        extra = particles.iloc[:4].copy()
        extra["rlnImageName"] = [f"{k:06d}@particles.mrcs" for k in range(49, 53)]
        blocks["particles"] = pd.concat([particles, extra], ignore_index=True)

    refused(star_variant(edit), "outside the stack of 48 images")


def test_stack_missing_from_datadir(star_variant, refused, tmp_path):
    path = star_variant()
    (path.parent / "particles.mrcs").unlink()
    empty = tmp_path / "stacks"
    empty.mkdir()
    refused(path, "rlnImageName", "image stack 'particles.mrcs' not found", "--datadir", flags=("--datadir", str(empty)))


def test_datadir_that_is_not_a_folder(star_variant, refused, tmp_path):
    refused(star_variant(), "--datadir", "not a folder", flags=("--datadir", str(tmp_path / "typo")))


def test_truncated_stack(star_variant, refused, tiny_simulation):
    path = star_variant(images=stack_images(tiny_simulation))
    stack = path.parent / "particles.mrcs"
    stack.write_bytes(stack.read_bytes()[:-1000])
    refused(path, "particles.mrcs", "truncated")


def test_non_square_images(star_variant, refused, tiny_simulation):
    refused(star_variant(images=stack_images(tiny_simulation)[:, :, :28]), "not square")


def test_box_in_metadata_disagrees_with_the_stack(star_variant, refused):
    path = star_variant(lambda blocks: blocks["optics"].__setitem__("rlnImageSize", 64))
    refused(path, "rlnImageSize", "metadata says 64 px but the stack holds 32 px")


def test_pixel_size_in_metadata_disagrees_with_the_stack_header(star_variant, refused, tiny_simulation):
    path = star_variant(images=stack_images(tiny_simulation), pixel_size_A=2.0)
    refused(path, "pixel size", "the stack header says 2 Å/px but particles.star says 4 Å/px")


def test_an_unset_header_pixel_size_is_not_a_disagreement(star_variant, tiny_simulation, tiny_config_overrides):
    from cryodomain.examples import STATE_A
    from cryodomain.workflows.config import load_config
    from cryodomain.workflows.inputs import load_training_data

    path = star_variant(images=stack_images(tiny_simulation), pixel_size_A=1.0)
    data = load_training_data(path, STATE_A, load_config(None, tiny_config_overrides))
    assert data.pixel_size_A == 4.0


def test_optics_groups_with_different_boxes(star_variant, refused, tiny_simulation, tmp_path):
    (tmp_path / "data").mkdir()
    big = write_mrcs(tmp_path / "data" / "big.mrcs", np.zeros((2, 64, 64)) + np.arange(64.0))

    def edit(blocks):
        optics = blocks["optics"]
        second = optics.iloc[[0]].copy()
        second["rlnOpticsGroup"] = 2
        second["rlnOpticsGroupName"] = "big"
        second["rlnImageSize"] = 64
        blocks["optics"] = pd.concat([optics, second], ignore_index=True)
        blocks["particles"].loc[0:1, "rlnOpticsGroup"] = 2
        blocks["particles"].loc[0:1, "rlnImageName"] = [f"00000{k}@{big}" for k in (1, 2)]

    refused(star_variant(edit), "rlnImageSize", "optics groups have different boxes [32, 64]")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("value, problem", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (None, "blank")])
def test_bad_pixels_are_found_in_the_preflight_and_named(star_variant, refused, tiny_simulation, value, problem):
    images = stack_images(tiny_simulation)
    if value is None:
        images[7] = 0.0
    else:
        images[7, 3, 4] = value
    line = refused(star_variant(images=images), "particle row 8", "000008@", problem, "remove these particles")
    assert "particles.star" in line


@pytest.mark.parametrize(
    "column, value, problem",
    [
        ("rlnDefocusU", -12000.0, "defocus must be"),
        ("rlnDefocusV", float("inf"), "defocus must be"),
        ("rlnAngleRot", float("inf"), "not a finite number"),
        ("rlnOriginXAngst", float("-inf"), "not a finite number"),
    ],
)
def test_absurd_particle_values(star_variant, refused, column, value, problem):
    def edit(blocks):
        blocks["particles"][column] = blocks["particles"][column].astype(float)
        blocks["particles"].loc[3, column] = value

    line = refused(star_variant(edit), problem, "particle row 4")
    assert column.removesuffix("Angst")[:10] in line


@pytest.mark.parametrize(
    "column, value, problem",
    [
        ("rlnVoltage", 0.0, "voltage must be between 30 and 1000 kV"),
        ("rlnVoltage", 300000.0, "in kV"),
        ("rlnAmplitudeContrast", 1.5, "[0, 1)"),
        ("rlnSphericalAberration", -2.7, ">= 0 mm"),
    ],
)
def test_absurd_optics_values(star_variant, refused, column, value, problem):
    path = star_variant(lambda blocks: blocks["optics"].__setitem__(column, value))
    refused(path, column, problem)


# cryoSPARC files


def test_cs_file_that_is_not_numpy(tmp_path, refused):
    path = tmp_path / "particles.cs"
    path.write_text("not numpy")
    refused(path, "particles.cs", "cannot read as a cryoSPARC .cs file")


def test_cs_without_poses_or_ctf(cs_variant, refused):
    from numpy.lib import recfunctions

    path = cs_variant()
    data = np.load(path)
    with open(path, "wb") as handle:
        np.save(handle, recfunctions.drop_fields(data, ["alignments3D/pose", "ctf/df1_A"], usemask=False))
    refused(path, "ctf/df1_A", "alignments3D/pose", "missing field")


def test_cs_index_beyond_the_stack(cs_variant, refused):
    refused(cs_variant(lambda data: data["blob/idx"].__setitem__(10, 60)), "image index 60 (0-based) is outside the stack of 48 images")


def test_cs_non_square_shape(cs_variant, refused):
    refused(cs_variant(lambda data: data["blob/shape"].__setitem__((0, 1), 28)), "blob/shape", "not square")


def test_cs_negative_defocus_and_zero_voltage(cs_variant, refused):
    refused(cs_variant(lambda data: data["ctf/df1_A"].__setitem__(2, -5000.0)), "ctf/df1_A", "particle row 3")
    refused(cs_variant(lambda data: data["ctf/accel_kv"].__setitem__(slice(None), 0.0)), "ctf/accel_kv", "voltage")


def test_the_good_cs_file_passes_the_preflight(cs_variant, tiny_config_overrides):
    from cryodomain.examples import STATE_A
    from cryodomain.workflows.config import load_config
    from cryodomain.workflows.inputs import load_training_data

    data = load_training_data(cs_variant(), STATE_A, load_config(None, tiny_config_overrides))
    assert len(data.table) == 48 and data.box == 32


def test_reading_the_star_directly_names_the_column(star_variant):
    with pytest.raises(InputError, match="rlnDefocusU: defocus must be"):
        read_star(star_variant(lambda blocks: blocks["particles"].__setitem__("rlnDefocusU", -1.0)))
