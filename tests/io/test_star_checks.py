"""Star files that are not 2-D single-particle images are refused in one line naming file, field and fix;
aberrations the CTF model leaves out are said, not ignored."""

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from particle_tables import METADATA

from cryodomain.errors import InputError
from cryodomain.io.stack import write_stack
from cryodomain.io.star import read_star


def refusal(tmp_path, name: str, text: str | None = None) -> str:
    """The one-line message read_star gives for fixture ``name`` (or for ``text`` written under that name)."""
    path = tmp_path / name
    if text is None:
        shutil.copy(METADATA / name, path)
    else:
        path.write_text(text)
    with pytest.raises(InputError) as error:
        read_star(path)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_relion5_tomography_particles_are_refused_naming_the_tomo_label(tmp_path):
    message = refusal(tmp_path, "relion5_tomo_particles.star")
    assert message.startswith(f"{tmp_path / 'relion5_tomo_particles.star'}: rlnTomoSubTomosAre2DStacks: a RELION tomography particle file (data_general)")
    assert "single-particle (SPA) Extract or Refine3D" in message


SPA_OPTICS = (
    "data_optics\n\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n{extra_optics_labels}"
    "1 1.0 8 300 2.7 0.1 {extra_optics_values}\n\n"
)
SPA_PARTICLES = (
    "data_particles\n\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
    "_rlnOpticsGroup\n{extra_particle_labels}000001@s.mrcs 10 20 30 15000 14000 45 1 {extra_particle_values}\n"
)


def spa_star(optics: dict[str, str] | None = None, particles: dict[str, str] | None = None) -> str:
    """A RELION 3.1 SPA star file of one particle with extra optics / particle labels."""
    optics, particles = optics or {}, particles or {}
    return SPA_OPTICS.format(
        extra_optics_labels="".join(f"_{label}\n" for label in optics), extra_optics_values=" ".join(optics.values())
    ) + SPA_PARTICLES.format(extra_particle_labels="".join(f"_{label}\n" for label in particles), extra_particle_values=" ".join(particles.values()))


@pytest.mark.parametrize(
    "optics, particles, field, block",
    [
        ({}, {"rlnTomoName": "TS_01"}, "rlnTomoName", "particles"),
        ({}, {"rlnTomoParticleName": "TS_01/7"}, "rlnTomoParticleName", "particles"),
        ({"rlnTomoSubtomogramBinning": "2.0"}, {}, "rlnTomoSubtomogramBinning", "optics"),
        ({"rlnTomoTiltSeriesPixelSize": "1.35"}, {}, "rlnTomoTiltSeriesPixelSize", "optics"),
    ],
)
def test_any_tomography_label_in_particles_or_optics_is_refused(tmp_path, optics, particles, field, block):
    message = refusal(tmp_path, "p.star", spa_star(optics, particles))
    assert message.startswith(f"{tmp_path / 'p.star'}: {field}: a RELION tomography particle file (data_{block})")


def test_subtomograms_are_refused_naming_rlnImageDimensionality(tmp_path):
    message = refusal(tmp_path, "relion31_subtomograms.star")
    assert message == (
        f"{tmp_path / 'relion31_subtomograms.star'}: rlnImageDimensionality: 3-D images (subtomograms) (data_optics); "
        "only 2-D particle images are supported; give a .star file of 2-D single-particle images"
    )


def test_dimensionality_3_per_particle_in_a_relion30_file_is_refused(tmp_path):
    text = "data_\n\nloop_\n_rlnImageName\n_rlnImageDimensionality\n000001@s.mrcs 3\n"
    message = refusal(tmp_path, "p.star", text)
    assert message.startswith(f"{tmp_path / 'p.star'}: rlnImageDimensionality: 3-D images (subtomograms); only 2-D")


def test_ctf_premultiplied_images_are_refused(tmp_path):
    message = refusal(tmp_path, "relion4_premultiplied.star")
    assert message == (
        f"{tmp_path / 'relion4_premultiplied.star'}: rlnCtfDataAreCtfPremultiplied: CTF-premultiplied images are not supported (data_optics); "
        "re-extract without premultiplication"
    )


def spa_star_file(tmp_path, optics: dict[str, str] | None = None) -> Path:
    """``tmp_path/p.star`` of :func:`spa_star` with its one-image stack."""
    write_stack(tmp_path / "s.mrcs", np.zeros((1, 8, 8), np.float32), 1.0)
    path = tmp_path / "p.star"
    path.write_text(spa_star(optics))
    return path


def test_files_that_say_2d_and_not_premultiplied_are_read(tmp_path):
    assert len(read_star(spa_star_file(tmp_path, {"rlnImageDimensionality": "2", "rlnCtfDataAreCtfPremultiplied": "0"}))) == 1


def test_refusals_come_before_stacks_are_looked_for(tmp_path):
    # The stacks named in the fixtures do not exist here: the refusal, not a missing stack, is reported.
    for name, field in [("relion31_subtomograms.star", "rlnImageDimensionality"), ("relion4_premultiplied.star", "rlnCtfDataAreCtfPremultiplied")]:
        assert f": {field}: " in refusal(tmp_path, name)


def test_neutral_aberrations_give_no_warning_and_beam_tilt_does(tmp_path, caplog):
    neutral = {"rlnOddZernike": "[0,0,0,0,0,0]", "rlnEvenZernike": "[]", "rlnMagMat00": "1", "rlnMagMat11": "1.0", "rlnBeamTiltX": "0"}
    with caplog.at_level(logging.WARNING, logger="cryodomain.io.star_checks"):
        read_star(spa_star_file(tmp_path, neutral))
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="cryodomain.io.star_checks"):
        read_star(spa_star_file(tmp_path, {**neutral, "rlnBeamTiltY": "0.3"}))
    assert "rlnBeamTiltY not modelled" in caplog.text


def test_a_zernike_value_that_is_not_a_list_is_an_input_error(tmp_path):
    path = spa_star_file(tmp_path, {"rlnOddZernike": "[0.1,x]"})
    with pytest.raises(InputError, match=re.escape("p.star: rlnOddZernike: '[0.1,x]' is not a bracketed list of numbers; fix the optics table")):
        read_star(path)
