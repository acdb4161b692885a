"""``--class K`` and ``--passthrough FILE`` from ``train`` and ``convert`` to the cryoSPARC reader.

The particles are the tiny simulation as a two-class heterogeneous refinement whose main file holds
only the alignments (class 1 the true poses, class 0 random ones, the posteriors favouring class 0)
and whose blob and ctf fields live in a passthrough file under a name the reader does not look for.
"""

import shutil

import numpy as np
import pytest
import yaml

# The .cs builders of tests/io (on the import path: pyproject.toml, pytest pythonpath).
from cryosparc_files import BLOB, CTF, class_groups, cs_dataset, group_fields, save_cs, table_groups
from scipy.spatial.transform import Rotation

import cryodomain.io.metadata
from cryodomain.commands.main import main
from cryodomain.examples import STATE_A
from cryodomain.io.star import read_star
from cryodomain.workflows.trained_run import TrainedRun

TINY_MODEL = "model:\n  encoder_hidden: [16]\n  decoder_hidden: [16]\n"
TINY_FLAGS = ["--epochs", "1", "--batch-size", "16", "--segments", "2", "--latent-dim", "2"]


@pytest.fixture
def hetero(tmp_path, tiny_simulation):
    """Paths of the main file, the passthrough file and the true table."""
    truth = read_star(tiny_simulation["star"])
    n = len(truth)
    extract = tmp_path / "J3"
    extract.mkdir()
    shutil.copy(tiny_simulation["particles"], extract / "particles.mrcs")
    wrong = (Rotation.random(n, random_state=3).as_matrix(), np.random.default_rng(4).uniform(-8.0, 8.0, (n, 2)))
    groups, values = class_groups([wrong, (truth.rotations, truth.shifts_A)], np.tile([0.9, 0.1], (n, 1)), truth.pixel_size_A)
    uids = np.arange(n) + 500
    main_file = save_cs(tmp_path / "J9" / "J9_00020_particles_all_classes.cs", cs_dataset(uids, groups, values))
    passthrough = save_cs(
        extract / "blob_ctf.cs", cs_dataset(uids, [group_fields("blob", BLOB), group_fields("ctf", CTF)], table_groups(truth, "particles.mrcs"))
    )
    return main_file, passthrough, truth


@pytest.fixture
def reader_calls(monkeypatch):
    """The keyword arguments of every read of a particle file, the reads themselves unchanged."""
    calls = []
    read = cryodomain.io.metadata.read_particles

    def spy(path, **kwargs):
        calls.append(kwargs)
        return read(path, **kwargs)

    for module in ("cryodomain.workflows.inputs", "cryodomain.workflows.convert"):
        monkeypatch.setattr(f"{module}.read_particles", spy)
    return calls


def test_convert_passes_class_and_passthrough_to_the_reader(hetero, tmp_path, reader_calls):
    main_file, passthrough, truth = hetero
    out = tmp_path / "converted"
    assert main(["convert", str(main_file), "--class", "1", "--passthrough", str(passthrough), "-o", str(out)]) == 0
    assert reader_calls[-1]["particle_class"] == 1 and reader_calls[-1]["passthrough"] == str(passthrough)
    converted = read_star(out / "particles.star")
    np.testing.assert_allclose(converted.rotations, truth.rotations, atol=1e-5)  # class 1's poses
    np.testing.assert_allclose(converted.shifts_A, truth.shifts_A, atol=1e-4)
    np.testing.assert_allclose(converted.defocus_u_A, truth.defocus_u_A, rtol=1e-6)  # the passthrough's CTF

    # Without --class each particle takes its most probable class, class 0.
    assert main(["convert", str(main_file), "--passthrough", str(passthrough), "-o", str(tmp_path / "most_probable")]) == 0
    assert not np.allclose(read_star(tmp_path / "most_probable" / "particles.star").rotations, truth.rotations, atol=1e-3)


def test_convert_without_the_passthrough_file_names_the_flag(hetero, tmp_path, capsys):
    main_file, _, _ = hetero
    assert main(["convert", str(main_file), "--class", "1", "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{main_file}: blob/path, blob/idx" in error and "--passthrough" in error
    assert not (tmp_path / "out" / "particles.star").exists()


def test_train_writes_class_and_passthrough_into_the_run_config_and_resumes_with_them(hetero, tmp_path, reader_calls, capsys):
    main_file, passthrough, truth = hetero
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_MODEL)
    run = tmp_path / "run"
    common = ["--structure", str(STATE_A), "-o", str(run), "--config", str(config)]
    flags = ["--class", "1", "--passthrough", str(passthrough)]
    assert main(["train", str(main_file), *common, *TINY_FLAGS, *flags]) == 0
    assert reader_calls[-1]["particle_class"] == 1 and reader_calls[-1]["passthrough"] == str(passthrough)
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["particle_class"] == 1 and data["passthrough"] == str(passthrough)

    # --resume without the flags reads the particles as the run did, from RUN/config.yaml.
    reader_calls.clear()
    assert main(["train", str(main_file), "--structure", str(STATE_A), "-o", str(run), "--resume", "--epochs", "2"]) == 0
    assert reader_calls and all(call["particle_class"] == 1 and call["passthrough"] == str(passthrough) for call in reader_calls)
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header, epochs 1 and 2
    # So does the trained run loaded back for structures, analyze and evaluate.
    np.testing.assert_allclose(TrainedRun.load(run).data.table.rotations, truth.rotations, atol=1e-5)


def test_train_without_the_class_is_refused_naming_it(hetero, tmp_path, capsys):
    # The reader takes class 0; the preflight's convention check finds class 1 fits.
    main_file, passthrough, _ = hetero
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_MODEL)
    run = tmp_path / "run"
    args = ["train", str(main_file), "--structure", str(STATE_A), "-o", str(run), "--config", str(config), *TINY_FLAGS]
    assert main([*args, "--passthrough", str(passthrough)]) == 2
    # The error is the last line on stderr, after the preflight's log lines.
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{main_file}: conventions: images correlate better with poses of class 1 " in error
    assert "--class 1 (data.particle_class: 1)" in error
    assert main(args) == 2  # and without --passthrough, the missing blob fields
    assert "--passthrough" in capsys.readouterr().err
    assert not (run / "last.pt").exists()
