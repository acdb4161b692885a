"""Reading particle metadata of either kind: the extension picks the reader."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from particle_tables import small_table

import cryodomain.io.metadata as metadata
from cryodomain.errors import InputError
from cryodomain.io.metadata import read_particles
from cryodomain.io.stack import write_stack
from cryodomain.io.star import write_star


@pytest.fixture
def spies(monkeypatch):
    """Record which reader read_particles calls, with which arguments."""
    calls = []
    for name in ("read_star", "read_cryosparc"):
        monkeypatch.setattr(metadata, name, lambda path, datadir=None, name=name, **options: calls.append((name, str(path), datadir, options)) or name)
    return calls


@pytest.mark.parametrize(
    "filename, reader",
    [("p.star", "read_star"), ("P.STAR", "read_star"), ("run.data.star", "read_star"), ("p.cs", "read_cryosparc"), ("J5.CS", "read_cryosparc")],
)
def test_the_extension_picks_the_reader_and_datadir_is_passed_on(tmp_path, spies, filename, reader):
    assert read_particles(tmp_path / filename, datadir="stacks") == reader
    options = {"particle_class": None, "passthrough": None} if reader == "read_cryosparc" else {}
    assert spies == [(reader, str(tmp_path / filename), "stacks", options)]


def test_the_class_and_the_passthrough_file_are_passed_to_the_cryosparc_reader(tmp_path, spies):
    read_particles(tmp_path / "J42_particles.cs", particle_class=2, passthrough="J42_passthrough_particles.cs")
    assert spies == [("read_cryosparc", str(tmp_path / "J42_particles.cs"), None, {"particle_class": 2, "passthrough": "J42_passthrough_particles.cs"})]


@pytest.mark.parametrize("option, value, flag", [("particle_class", 0, "--class"), ("passthrough", "p_passthrough.cs", "--passthrough")])
def test_cryosparc_options_with_a_star_file_are_refused_not_ignored(tmp_path, spies, option, value, flag):
    with pytest.raises(InputError, match=re.escape(f"p.star: {flag}: applies to cryoSPARC .cs files only")):
        read_particles(tmp_path / "p.star", **{option: value})
    assert spies == []


def test_a_star_file_is_read_through_the_dispatcher(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((3, 8, 8), np.float32), 1.4)
    table = small_table([str(tmp_path / "s.mrcs")] * 3)
    write_star(tmp_path / "particles.star", table)
    back = read_particles(tmp_path / "particles.star")
    assert len(back) == 3 and back.image_paths.tolist() == [str(tmp_path / "s.mrcs")] * 3
    np.testing.assert_allclose(back.defocus_u_A, table.defocus_u_A)
    np.testing.assert_allclose(back.shifts_A, table.shifts_A, atol=1e-5)
    np.testing.assert_allclose(back.amplitude_contrast, table.amplitude_contrast)


@pytest.mark.parametrize("name", ["folder", "folder.star", "folder.cs"])
def test_a_folder_is_refused_whatever_its_name(tmp_path, spies, name):
    (tmp_path / name).mkdir()
    with pytest.raises(InputError, match=f"{name}: is a folder, not a particle file"):
        read_particles(tmp_path / name)
    assert spies == []


@pytest.mark.parametrize("name, shown", [("p.txt", "'.txt'"), ("particles", "'(no extension)'"), ("p.star.bak", "'.bak'")])
def test_an_unknown_extension_is_an_input_error_naming_it(tmp_path, spies, name, shown):
    (tmp_path / name).write_text("")
    with pytest.raises(InputError, match=re.escape(f"{name}: unknown particle file type {shown}; give a RELION .star or a cryoSPARC .cs file")):
        read_particles(tmp_path / name)
    assert spies == []


def test_importing_the_particle_table_does_not_import_the_readers():
    code = "import json, sys; import cryodomain.io.particles; print(json.dumps(sorted(m for m in sys.modules if m.startswith('cryodomain'))))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert "cryodomain.io.particles" in loaded
    assert "cryodomain.io.star" not in loaded and "cryodomain.io.cryosparc" not in loaded
    assert not any(name.startswith("cryodomain.workflows") for name in loaded)
