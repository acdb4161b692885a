"""What README promises of the commands, each from the command line: help for every command, --debug,
the flags of structures and analyze, convert from a .cs with --datadir, where stacks are found, and
data with dark protein under --invert-contrast."""

import ast
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

# The .cs builders of tests/io (on the import path: pyproject.toml, pytest pythonpath).
from cryosparc_files import ALIGNMENTS3D, BLOB, CTF, cs_dataset, group_fields, save_cs, table_groups

from cryodomain.commands.main import COMMANDS, main
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.io.poses import matrix_to_cryosparc_pose
from cryodomain.io.star import read_star
from cryodomain.workflows.config import load_config
from cryodomain.workflows.reweighting import reweight
from cryodomain.workflows.structures import DEFAULT_ESTIMATE, ESTIMATES, write_coordinates, write_particle_structures
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun

TINY_CONFIG = "model: {encoder_hidden: [32, 16], decoder_hidden: [32], n_segments: 3, latent_dim: 2}\noptim: {epochs: 2, batch_size: 16, device: cpu}\n"


@pytest.fixture(autouse=True)
def quiet_and_one_thread():
    """One torch thread (tiny runs, repeatable bits); the root logger as it was (main() points it at
    this test's captured stderr)."""
    root, threads = logging.getLogger(), torch.get_num_threads()
    handlers, level = list(root.handlers), root.level
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    root.handlers[:] = handlers
    root.setLevel(level)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.strip().splitlines() if ": error: " in line]


# Help and --debug


def docstring_first_line(module_name: str) -> str:
    source = Path(importlib.util.find_spec(module_name).origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)).strip().splitlines()[0]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_prints_its_help_with_examples(name, capsys):
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: cryodomain {name}")
    assert docstring_first_line(COMMANDS[name]) in shown and "Example" in shown and "--debug" in shown


def test_debug_shows_the_traceback_instead_of_one_line(tmp_path, capsys):
    args = ["simulate", str(tmp_path / "missing.pdb"), "-o", str(tmp_path / "out")]
    assert main(args) == 2 and len(error_lines(capsys)) == 1
    with pytest.raises(InputError, match="missing.pdb"):
        main([*args, "--debug"])
    # As a process: Python's traceback on stderr, not the one line.
    result = subprocess.run([sys.executable, "-m", "cryodomain", *args, "--debug"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "cryodomain.errors.InputError" in result.stderr and "missing.pdb" in result.stderr
    assert "cryodomain simulate: error:" not in result.stderr and not (tmp_path / "out").exists()


# structures and analyze on a tiny trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_simulation, tiny_config_overrides):
    """A tiny run of 2 epochs (checkpoints/epoch_0001.pt, epoch_0002.pt, last.pt)."""
    run = tmp_path_factory.mktemp("cli_promises") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_simulation["star"], STATE_A, run, load_config(None, {**tiny_config_overrides, "optim.device": "cpu"}), progress=False)
    finally:
        torch.set_num_threads(threads)
    return types.SimpleNamespace(run=run, first=run / "checkpoints" / "epoch_0001.pt")


def test_structures_decodes_the_latent_points_of_z(tmp_path, trained):
    z = np.array([[0.0, 0.0], [1.5, -1.0], [-2.0, 0.5]], dtype=np.float32)
    np.save(tmp_path / "points.npy", z)
    out = tmp_path / "out"
    assert main(["structures", str(trained.run), "-o", str(out), "--z", str(tmp_path / "points.npy"), "--format", "pdb", "--device", "cpu"]) == 0
    coords = np.load(out / "coords.npy")
    model = TrainedRun.load(trained.run).model
    with torch.no_grad():
        expected = model.decode(torch.from_numpy(z), sample_segmentation=False).coords.numpy()
    assert coords.shape == (3, 352, 3)
    np.testing.assert_allclose(coords, expected, atol=1e-4)
    assert np.abs(coords[1] - coords[2]).max() > 1e-3  # the points, not one structure three times
    assert sum(line.startswith("MODEL") for line in (out / "structures.pdb").read_text().splitlines()) == 3


def test_structures_decodes_with_the_checkpoint_given(tmp_path, trained):
    assert main(["structures", str(trained.run), "-o", str(tmp_path / "first"), "--checkpoint", str(trained.first), "--device", "cpu"]) == 0
    assert main(["structures", str(trained.run), "-o", str(tmp_path / "last"), "--device", "cpu"]) == 0
    first = TrainedRun.load(trained.run, trained.first)
    expected = write_particle_structures(tmp_path / "expected.npy", first, DEFAULT_ESTIMATE, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "first" / "coords.npy"), expected, atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "first" / "coords.npy"), np.load(tmp_path / "last" / "coords.npy"), atol=1e-5)


def test_structures_estimates_each_image_by_likelihood_by_its_posterior_or_at_its_latent_mean(tmp_path, trained):
    np.savetxt(tmp_path / "chosen.txt", [3, 0, 5], fmt="%d")
    common = ["structures", str(trained.run), "--indices", str(tmp_path / "chosen.txt"), "--device", "cpu"]
    assert main([*common, "-o", str(tmp_path / "default")]) == 0
    for estimate in ESTIMATES:
        assert main([*common, "-o", str(tmp_path / estimate), "--estimate", estimate]) == 0
    assert main([*common, "-o", str(tmp_path / "at_mean"), "--at-mean"]) == 0
    run = TrainedRun.load(trained.run)
    chosen = np.array([3, 0, 5])
    posterior = run.latent_posterior(progress=False)
    at_mean = write_coordinates(tmp_path / "m.npy", run.model, posterior.means[chosen], progress=False)
    expected = write_coordinates(tmp_path / "p.npy", run.model, posterior.means[chosen], stds=posterior.stds[chosen], progress=False)
    weights = reweight(run, posterior, chosen, progress=False)
    reweighted = write_coordinates(tmp_path / "r.npy", run.model, posterior.means[chosen], reweighting=weights, progress=False)
    written = {name: np.load(tmp_path / name / "coords.npy") for name in (*ESTIMATES, "default", "at_mean")}
    np.testing.assert_allclose(written["mean"], at_mean, atol=1e-5)
    np.testing.assert_allclose(written["at_mean"], at_mean, atol=1e-5)
    np.testing.assert_allclose(written["expected"], expected, atol=1e-5)
    np.testing.assert_allclose(written["reweighted"], reweighted, atol=1e-5)
    np.testing.assert_allclose(written["default"], written[DEFAULT_ESTIMATE], atol=1e-6)
    assert not np.allclose(at_mean, expected, atol=1e-4)  # a 2-epoch run's posteriors are wide
    assert not np.allclose(reweighted, expected, atol=1e-4)


def map_grid(path: Path) -> tuple:
    with mrcfile.open(path) as mrc:
        return mrc.data.shape, float(mrc.voxel_size.x), float(mrc.header.origin.x)


def test_analyze_uses_the_checkpoint_and_the_map_grid_given(tmp_path, trained):
    out = tmp_path / "analysis"
    args = ["analyze", str(trained.run), "-o", str(out), "--checkpoint", str(trained.first), "--pcs", "1", "--points", "2", "--kmeans", "2"]
    assert main([*args, "--volumes", "--box", "20", "--apix", "5", "--device", "cpu"]) == 0
    first, last = (TrainedRun.load(trained.run, checkpoint).latent_means(progress=False) for checkpoint in (trained.first, None))
    np.testing.assert_allclose(np.load(out / "z.npy"), first, atol=1e-5)
    assert not np.allclose(first, last, atol=1e-5)
    maps = sorted((out / "kmeans").glob("center_*.mrc")) + sorted((out / "pc1").glob("point_*.mrc"))
    assert len(maps) == 4
    # 20 voxels of 5 Å (not the run's 32 of 4 Å), voxel 10 at coordinate 0.
    assert {map_grid(path) for path in maps} == {((20, 20, 20), 5.0, -50.0)}


# convert, and where the stacks are found


def simulation_as_cs(tiny_simulation, path: Path, blob_path: str) -> Path:
    """The tiny simulation as a cryoSPARC refinement's particles file, images at ``blob_path``."""
    table = read_star(tiny_simulation["star"])
    alignments = group_fields("alignments3D", ALIGNMENTS3D)
    values = {
        **table_groups(table, blob_path),
        "alignments3D/pose": matrix_to_cryosparc_pose(table.rotations),
        "alignments3D/shift": table.shifts_A / table.pixel_size_A[:, None],
        "alignments3D/psize_A": table.pixel_size_A,
    }
    return save_cs(path, cs_dataset(np.arange(len(table)) + 1000, [group_fields("blob", BLOB), group_fields("ctf", CTF), alignments], values))


def assert_converted(out: Path, tiny_simulation) -> None:
    """``out`` holds the tiny simulation's images and poses, in particle order."""
    original = read_star(tiny_simulation["star"])
    converted = read_star(out / "particles.star")
    np.testing.assert_allclose(converted.rotations, original.rotations, atol=1e-5)
    np.testing.assert_allclose(converted.shifts_A, original.shifts_A, atol=1e-4)
    np.testing.assert_allclose(converted.defocus_u_A, original.defocus_u_A, rtol=1e-6)
    np.testing.assert_array_equal(mrcfile.read(out / "particles.mrcs"), mrcfile.read(tiny_simulation["particles"]))


def test_convert_reads_a_cs_file_with_its_stacks_in_datadir(tmp_path, tiny_simulation, capsys):
    # The job wrote its project-relative path; the stack lies elsewhere, under that file name.
    cs = simulation_as_cs(tiny_simulation, tmp_path / "J42" / "J42_particles.cs", "J3/extract/particles.mrcs")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    shutil.copy(tiny_simulation["particles"], stacks / "particles.mrcs")
    assert main(["convert", str(cs), "-o", str(tmp_path / "without")]) == 2
    (line,) = error_lines(capsys)
    assert "blob/path" in line and "--datadir" in line and not (tmp_path / "without").exists()
    assert main(["convert", str(cs), "-o", str(tmp_path / "out"), "--datadir", str(stacks)]) == 0
    assert_converted(tmp_path / "out", tiny_simulation)


@pytest.fixture
def relion_project(tmp_path, tiny_simulation) -> Path:
    """A RELION project: Refine3D/job010/run_data.star naming its images Extract/job002/particles.mrcs,
    relative to the project folder (as RELION writes them), not to the star file's folder."""
    project = tmp_path / "project"
    (project / "Extract" / "job002").mkdir(parents=True)
    shutil.copy(tiny_simulation["particles"], project / "Extract" / "job002" / "particles.mrcs")
    blocks = starfile.read(tiny_simulation["star"], always_dict=True)
    blocks["particles"]["rlnImageName"] = [f"{k + 1:06d}@Extract/job002/particles.mrcs" for k in range(len(blocks["particles"]))]
    (project / "Refine3D" / "job010").mkdir(parents=True)
    starfile.write(blocks, project / "Refine3D" / "job010" / "run_data.star")
    return project


@pytest.mark.parametrize("where", ["working directory", "metadata folder", "datadir"])
def test_stacks_are_found_from_the_working_directory_the_metadata_file_or_datadir(tmp_path, relion_project, tiny_simulation, monkeypatch, capsys, where):
    star = relion_project / "Refine3D" / "job010" / "run_data.star"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    flags = []
    if where == "working directory":
        monkeypatch.chdir(relion_project)
    elif where == "metadata folder":
        # The same paths, valid from the star file's folder.
        moved = relion_project / "run_data.star"
        shutil.copy(star, moved)
        star = moved
    else:
        flags = ["--datadir", str(relion_project / "Extract" / "job002")]
    assert main(["convert", str(star), "-o", str(tmp_path / "out"), *flags]) == 0
    assert_converted(tmp_path / "out", tiny_simulation)
    # From another folder, without --datadir, the same file is refused (so each case above can fail).
    monkeypatch.chdir(elsewhere)
    assert main(["convert", str(relion_project / "Refine3D" / "job010" / "run_data.star"), "-o", str(tmp_path / "refused")]) == 2
    (line,) = error_lines(capsys)
    assert "rlnImageName" in line and "Extract/job002/particles.mrcs" in line and "--datadir" in line


# --invert-contrast


def test_data_with_dark_protein_trains_with_invert_contrast_as_the_same_data_with_white(tmp_path, tiny_simulation, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    dark = tmp_path / "dark"
    dark.mkdir()
    with mrcfile.new(dark / "particles.mrcs") as mrc:
        mrc.set_data(-mrcfile.read(tiny_simulation["particles"]))
        mrc.voxel_size = 4.0
    shutil.copy(tiny_simulation["star"], dark / "particles.star")

    def run(star: Path, name: str, *flags: str) -> int:
        return main(["train", str(star), "--structure", str(STATE_A), "-o", str(tmp_path / name), "--config", str(config), *flags])

    # Without the flag the preflight sees the contrast is inverted, and names the flag.
    assert run(dark / "particles.star", "refused") == 2
    (line,) = error_lines(capsys)
    assert "add --invert-contrast" in line and not (tmp_path / "refused").exists()
    assert run(tiny_simulation["star"], "white") == 0
    assert run(dark / "particles.star", "dark", "--invert-contrast") == 0
    white, dark_run = (torch.load(tmp_path / name / "last.pt", weights_only=False) for name in ("white", "dark"))
    assert dark_run["scale"] == white["scale"]
    for key, value in white["model"].items():
        assert torch.equal(value, dark_run["model"][key]), key


# The demo


@pytest.mark.slow
def test_the_demo_recovers_the_moved_state(tmp_path, monkeypatch, capsys):
    """`make demo` (cryodomain demo) end to end, smaller: 400 particles without noise on 32 px of 4 Å
    (the same 128 Å box) and 14 epochs of the demo's settings instead of 2000 at SNR 0.1 on 64 px and
    40 epochs. The hinge motion must be found: state-B images decoded closer to B than to A."""
    import cryodomain.commands.demo as demo
    from cryodomain.workflows.simulate import SimulationSettings

    made = []

    def on_a_coarser_grid(*args, **settings):
        made.append(settings)
        return SimulationSettings(*args, **{**settings, "box": 32, "pixel_size_A": 4.0})

    monkeypatch.setattr(demo, "SimulationSettings", on_a_coarser_grid)
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--n-images", "400", "--epochs", "14", "--snr", "inf"]) == 0
    assert len(made) == 1 and made[0]["atoms"] == "all"  # every atom rendered, as the demo does
    printed = capsys.readouterr().out
    assert "median per-image RMSD" in printed and str(out / "analysis") in printed

    truth = np.load(out / "simulation" / "truth.npz")
    decoded = np.load(out / "run" / "evaluation" / "coords.npy")
    state_a, state_b = truth["coords"]
    moved = truth["conformation"] == 1
    to_a, to_b = (np.sqrt(((decoded - state) ** 2).sum(axis=-1).mean(axis=-1)) for state in (state_a, state_b))
    assert (to_b[moved] < to_a[moved]).mean() > 0.75  # 0.93 when written
    assert (to_a[~moved] < to_b[~moved]).mean() > 0.9  # and no motion invented for state A
    # The demo's own summary says the same: the moved state's median below the unmoved model's.
    summary = json.loads((out / "run" / "evaluation" / "summary.json").read_text())["by_conformation"]["1"]
    assert summary["rmsd_A"]["median"] < 0.6 * summary["baseline_rmsd_A"]["median"]
    assert (out / "analysis" / "z.npy").exists() and len(np.load(out / "analysis" / "z.npy")) == 400
    # The demo's own report opens offline in Chromium with every section and no JavaScript error.
    report = out / "analysis" / "report.html"
    assert str(report) in printed
    _open_in_chromium(report)


def _open_in_chromium(report) -> None:
    """Load ``report`` in headless Chromium (network cut): no JS error, only file:/data: requests,
    every section drawn. Skipped without Chromium unless CRYODOMAIN_REQUIRE_BROWSER=1 (CI)."""
    import os

    from headless_chromium import Chromium, find_chromium

    from cryodomain.workflows.report import SECTIONS

    program = find_chromium()
    if program is None:
        if os.environ.get("CRYODOMAIN_REQUIRE_BROWSER") == "1":
            pytest.fail("CRYODOMAIN_REQUIRE_BROWSER=1 but no chromium on the PATH")
        pytest.skip("no chromium on the PATH (Debian: apt-get install chromium)")
    with Chromium(program) as page:
        page.open(report)
        page.wait_until("document.readyState === 'complete'")
        assert page.errors() == []
        assert all(url.startswith(("file://", "data:")) for url in page.requests())
        keys = [key for key, _ in SECTIONS]
        assert page.evaluate("Array.from(document.querySelectorAll('main > section')).map(s => s.id)") == keys
        for key in keys:
            assert page.evaluate(f"document.getElementById('{key}').getBoundingClientRect().height") > 100, key
