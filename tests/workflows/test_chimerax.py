"""ChimeraX scripts and the segment attribute file: the format ChimeraX reads, files that exist."""

import dataclasses
import shlex
from pathlib import Path

import numpy as np
import pytest

from cryodomain import plots
from cryodomain.examples import STATE_A
from cryodomain.io.maps import write_map
from cryodomain.io.structure import read_atomic_model
from cryodomain.io.structure_writer import write_structure
from cryodomain.workflows.chimerax import Series, defattr_text, segment_palette, write_scripts

RIBOSOME_SUBSET = Path(__file__).parents[1] / "data" / "6zu5_subset.cif"
OPTIONS = {"models", "vseries", "format", "name"}  # keywords that end the file names of an `open`


def parse_defattr(text):
    """Control values and data lines as ChimeraX's defattr reader splits them (chimerax.std_commands.defattr)."""
    controls, data = {}, []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("\t"):
            fields = line[1:].split("\t")
            assert len(fields) == 2, f"not <tab> spec <tab> value: {line!r}"
            data.append(tuple(fields))
        else:
            name, value = line.split(": ")  # exactly one ': ', as ChimeraX requires
            assert not data, "control lines come before the data lines"
            controls[name.strip().lower()] = value.strip()
    return controls, data


def opened_files(script: Path) -> list[Path]:
    """Every file the script's `open` commands name, resolved against the script's folder."""
    files = []
    for line in script.read_text().splitlines():
        if line.startswith("#"):
            continue
        words = shlex.split(line)
        if not words or words[0] != "open":
            continue
        for word in words[1:]:
            if word in OPTIONS:
                break
            files.append(script.parent / word)
    return files


@pytest.mark.parametrize("source", [STATE_A, RIBOSOME_SUBSET])
def test_the_attribute_file_names_every_residue_with_its_segment(source):
    structure = read_atomic_model(source)
    segment = np.arange(structure.n_residues) % 4 - 1  # -1 (outside every part) to 2
    controls, data = parse_defattr(defattr_text(structure, segment))
    assert controls == {"attribute": "segment", "match mode": "1-to-1", "recipient": "residues"}
    assert len(data) == structure.n_residues
    expected = [f"/{chain}:{number}" for chain, number in zip(structure.chain_ids, structure.residue_numbers)]
    assert [spec for spec, _ in data] == expected
    assert [int(value) for _, value in data] == segment.tolist()
    assert len(set(expected)) == len(expected)  # one-to-one: no residue named twice


def test_insertion_codes_and_blank_chains_in_residue_specifiers():
    structure = read_atomic_model(STATE_A)
    codes = structure.insertion_codes.astype("<U1").copy()
    codes[5] = "A"
    chains = structure.chain_ids.copy()
    chains[:] = np.where(chains == "C", " ", chains)
    renamed = dataclasses.replace(structure, insertion_codes=codes, chain_ids=chains)
    _, data = parse_defattr(defattr_text(renamed, np.zeros(structure.n_residues, dtype=int)))
    assert data[5][0] == f":{structure.residue_numbers[5]}A"  # residue 5 is in chain C (now blank)
    assert structure.chain_ids[-1] != "C" and data[-1][0] == f"/{structure.chain_ids[-1]}:{structure.residue_numbers[-1]}"


def test_the_palette_gives_each_segment_its_picture_colour():
    stops = segment_palette(3).split(":")
    assert stops[0].startswith("-1,")
    assert stops[1:] == [f"{k},{colour}" for k, colour in enumerate(plots.segment_colours(3))]


@pytest.fixture
def analysis_folder(tmp_path):
    """A folder laid out as analyze writes it: two traversals with maps, k-means centres, flexibility."""
    structure = read_atomic_model(RIBOSOME_SUBSET)
    n_points = 4
    pcs = []
    for pc in (1, 2):
        trajectory = tmp_path / f"pc{pc}" / "trajectory.cif"
        write_structure(trajectory, structure, np.stack([structure.coords] * n_points), full_atom=False)
        volumes = [tmp_path / f"pc{pc}" / f"point_{i + 1:02d}.mrc" for i in range(n_points)]
        for path in volumes:
            write_map(path, np.zeros((8, 8, 8), dtype=np.float32), 2.0)
        pcs.append(Series(trajectory, n_points, volumes, f"PC{pc} traversal"))
    centres = tmp_path / "kmeans" / "centers.cif"
    write_structure(centres, structure, np.stack([structure.coords] * 3), full_atom=False)
    flexibility = tmp_path / "flexibility.cif"
    write_structure(flexibility, structure, structure.atom_coords, full_atom=True)
    written = write_scripts(tmp_path / "chimerax", structure, np.zeros(structure.n_residues, dtype=int), 2, pcs, Series(centres, 3), flexibility)
    return tmp_path, written, structure


def test_every_file_a_script_opens_exists_relative_to_the_script(analysis_folder, monkeypatch):
    root, written, _ = analysis_folder
    names = sorted(path.name for path in written)
    assert names == sorted(["segments.defattr", "pc1.cxc", "pc2.cxc", "movie_pc1.cxc", "movie_pc2.cxc", "kmeans.cxc", "flexibility.cxc"])
    monkeypatch.chdir(root.parent)  # nothing may depend on the folder ChimeraX was started in
    for script in (path for path in written if path.suffix == ".cxc"):
        files = opened_files(script)
        assert files, script.name
        for path in files:
            assert not path.is_absolute() or path.is_relative_to(script.parent)
            assert path.is_file(), f"{script.name} opens {path}"
    pc1 = (root / "chimerax" / "pc1.cxc").read_text()
    assert "../pc1/trajectory.cif" in pc1 and "../pc1/point_04.mrc" in pc1


def test_the_traversal_script_is_a_model_series_and_a_volume_series(analysis_folder):
    root, _, _ = analysis_folder
    lines = (root / "chimerax" / "pc2.cxc").read_text().splitlines()
    assert lines[lines.index("close session") + 1] == "open ../pc2/trajectory.cif"  # model #1
    # One-to-one assignments: the attribute file once per model of the series.
    assert [line for line in lines if "segments.defattr" in line] == [f"open segments.defattr models #1.{i}" for i in range(1, 5)]
    assert any(line.startswith("color byattribute r:segment #1 palette ") for line in lines)
    assert "mseries slider #1 pauseFrames 10" in lines
    (volumes,) = [line for line in lines if line.endswith("vseries true")]
    assert volumes.split()[1:-2] == [f"../pc2/point_{i:02d}.mrc" for i in range(1, 5)]  # in traversal order
    assert "vseries slider #2" in lines


def test_the_movie_script_records_one_pass_of_the_series(analysis_folder):
    root, _, _ = analysis_folder
    lines = (root / "chimerax" / "movie_pc1.cxc").read_text().splitlines()
    assert any(line.startswith("#") and line.endswith("--exit movie_pc1.cxc (OSMesa)") for line in lines)
    recording = lines[lines.index("movie record") :]
    assert recording == ["movie record", "mseries #1 pauseFrames 10", "wait 40", "movie encode pc1.mp4 framerate 25"]


def test_a_single_centre_is_one_model_without_submodels(tmp_path):
    structure = read_atomic_model(STATE_A)
    centre = tmp_path / "kmeans" / "centers.pdb"
    write_structure(centre, structure, structure.coords, full_atom=False)
    write_scripts(tmp_path / "chimerax", structure, np.zeros(structure.n_residues, dtype=int), 1, [], Series(centre, 1))
    lines = (tmp_path / "chimerax" / "kmeans.cxc").read_text().splitlines()
    assert "open segments.defattr models #1" in lines
    assert not any(line.startswith(("mseries", "hide")) for line in lines)
