"""The command line as users run it: subcommands, outputs, one-line errors with exit status 2."""

import json
import subprocess
import sys

import gemmi
import mrcfile
import numpy as np
import pytest
import starfile

from cryodomain.commands.main import main
from cryodomain.examples import STATE_A, example_structures


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryodomain", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0
    for name in ("demo", "simulate", "train", "structures", "evaluate", "center"):
        assert name in result.stdout


def test_simulate_writes_readable_outputs_and_is_repeatable(tmp_path):
    args = [*map(str, example_structures()), "--n-images", "10", "--box", "32", "--apix", "4", "--seed", "3"]
    assert main(["simulate", *args, "-o", str(tmp_path / "a")]) == 0
    assert main(["simulate", *args, "-o", str(tmp_path / "b")]) == 0
    for name in ("particles.mrcs", "particles.star", "truth.npz", "particles.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    star = starfile.read(tmp_path / "a" / "particles.star")
    assert len(star["particles"]) == 10 and float(star["optics"]["rlnImagePixelSize"][0]) == 4.0
    with mrcfile.open(tmp_path / "a" / "particles.mrcs") as mrc:
        assert mrc.data.shape == (10, 32, 32) and mrc.voxel_size.x == pytest.approx(4.0)
    truth = np.load(tmp_path / "a" / "truth.npz")
    assert truth["coords"].shape == (2, 352, 3) and list(truth["conformation"][:4]) == [0, 1, 0, 1]


def test_input_errors_are_one_line_with_status_2(tmp_path):
    result = cli("simulate", str(tmp_path / "missing.pdb"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.pdb" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_option_value_names_the_flag(tmp_path):
    result = cli("simulate", str(STATE_A), "-o", str(tmp_path / "out"), "--snr", "-1")
    assert result.returncode == 2 and "--snr" in result.stderr


def test_train_structures_evaluate_from_the_command_line(tmp_path, tiny_simulation):
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  encoder_hidden: [32, 16]\n  decoder_hidden: [32]\n")
    common = ["--config", str(config), "--epochs", "1", "--batch-size", "16", "--segments", "3", "--latent-dim", "2"]
    assert main(["train", str(tiny_simulation["star"]), "--structure", str(STATE_A), "-o", str(run), *common]) == 0
    assert (run / "train.log").read_text().count("epoch 1/1") == 1
    # A second run into the same directory is refused unless --resume or --force.
    again = cli("train", str(tiny_simulation["star"]), "--structure", str(STATE_A), "-o", str(run), *common)
    assert again.returncode == 2 and "--resume" in again.stderr

    out = tmp_path / "structures"
    assert main(["structures", str(run), "-o", str(out), "--format", "pdb"]) == 0
    assert np.load(out / "coords.npy").shape == (48, 352, 3)
    assert len(gemmi.read_structure(str(out / "structures.pdb"))) == 48

    indices = tmp_path / "indices.txt"
    indices.write_text("0\n5\n7\n")
    (tmp_path / "sel" / "models").mkdir(parents=True)
    (tmp_path / "sel" / "models" / "model_0009.cif").write_text("from an earlier, longer run")
    assert main(["structures", str(run), "-o", str(tmp_path / "sel"), "--indices", str(indices), "--full-atom", "--format", "cif", "--split"]) == 0
    assert np.load(tmp_path / "sel" / "coords.npy").shape == (3, 3115, 3)
    selected = gemmi.read_structure(str(tmp_path / "sel" / "structures.cif"))
    assert len(selected) == 3 and selected[0].count_atom_sites() == 3115
    # --split: one mmCIF per model, the same coordinates as that model of the multi-model file.
    assert sorted(path.name for path in (tmp_path / "sel" / "models").iterdir()) == ["model_0001.cif", "model_0002.cif", "model_0003.cif"]
    third = gemmi.read_structure(str(tmp_path / "sel" / "models" / "model_0003.cif"))
    assert len(third) == 1 and third[0].count_atom_sites() == 3115
    positions = [[atom.pos.tolist() for residue in chain for atom in residue] for chain in third[0]]
    expected = [[atom.pos.tolist() for residue in chain for atom in residue] for chain in selected[2]]
    np.testing.assert_allclose(np.concatenate(positions), np.concatenate(expected), atol=1e-3)
    # Full atoms: a geometry report, the input model first.
    quality = (tmp_path / "sel" / "structures_quality.csv").read_text().splitlines()
    assert quality[0].startswith("model,peptide_bonds,peptide_out_of_range") and len(quality) == 1 + 1 + 3

    result = cli("evaluate", str(run), "--truth", str(tiny_simulation["truth"]), "-o", str(tmp_path / "eval"), "--map-images", "4")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "rigid limit" in result.stdout
    assert set(summary["rmsd_A"]) == {"median", "mean", "p90"} and summary["n_images"] == 48
    assert set(summary["by_conformation"]) == {"0", "1"}
    assert (tmp_path / "eval" / "rmsd.csv").read_text().count("\n") == 49


def test_center_moves_model_and_map_to_the_box_centre(tmp_path):
    box, apix = 40, 2.0
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(np.zeros((box, box, box), dtype=np.float32))
        mrc.voxel_size = apix
    # A model sitting around the map centre in the map's frame (origin at the corner).
    structure = gemmi.read_structure(str(STATE_A))
    structure.setup_entities()
    for model in structure:
        for chain in model:
            for residue in chain:
                for atom in residue:
                    atom.pos = gemmi.Position(atom.pos.x + 40.0, atom.pos.y + 40.0, atom.pos.z + 40.0)
    structure.write_pdb(str(tmp_path / "fitted.pdb"))
    assert main(["center", str(tmp_path / "fitted.pdb"), str(tmp_path / "map.mrc"), "-o", str(tmp_path / "c")]) == 0
    centred = gemmi.read_structure(str(tmp_path / "c" / "fitted_centered.pdb"))
    original = gemmi.read_structure(str(STATE_A))
    first = centred[0][0][0][0].pos
    reference = original[0][0][0][0].pos
    assert (first.x, first.y, first.z) == pytest.approx((reference.x, reference.y, reference.z), abs=1e-3)
    with mrcfile.open(tmp_path / "c" / "map_centered.mrc") as mrc:
        assert mrc.header.origin.x == pytest.approx(-box // 2 * apix)
