"""--resume of a run on other data is refused in one line, the checkpoint untouched; a run trained
with --downsample resumes with the same --downsample and no other (README, Reliability and train)."""

import shutil

import gemmi
import pytest
from reliability_helpers import assert_one_line_error, load_state

from cryodomain.commands.main import main
from cryodomain.examples import STATE_A
from cryodomain.workflows.trained_run import TrainedRun


@pytest.fixture
def copied_run(tmp_path, reference_run):
    """A copy of the fault tests' finished 3-epoch run (48 particles, 352 residues, box 32)."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    return run


def resume(particles, run, config, *flags, structure=STATE_A) -> int:
    return main(["train", str(particles), "--structure", str(structure), "-o", str(run), "--config", str(config), "--resume", *flags])


def structure_without_its_last_residue(tmp_path):
    structure = gemmi.read_structure(str(STATE_A))
    chain = structure[0][0]
    del chain[len(chain) - 1]
    path = tmp_path / "shorter.pdb"
    structure.write_pdb(str(path))
    return path


@pytest.mark.parametrize(
    "other, expected",
    [
        ("particles", ("n_particles", "trained on 48 particles, these inputs have 40")),
        ("residues", ("n_residues", "trained on 352 residues, these inputs have 351")),
        ("box", ("box", "trained on 32 box (px), these inputs have 24")),
    ],
)
def test_resume_on_other_data_is_one_line_and_keeps_the_checkpoint(tmp_path, copied_run, star_variant, tiny_simulation, fault_config, capsys, other, expected):
    before = (copied_run / "last.pt").read_bytes()
    particles, structure, flags = tiny_simulation["star"], STATE_A, ()
    if other == "particles":
        particles = star_variant(lambda blocks: blocks.update(particles=blocks["particles"].iloc[:40]))
    elif other == "residues":
        structure = structure_without_its_last_residue(tmp_path)
    else:
        flags = ("--downsample", "24")
    status = resume(particles, copied_run, fault_config, *flags, structure=structure)
    assert_one_line_error(status, capsys.readouterr().err.strip().splitlines(), "last.pt", *expected, "--force")
    assert (copied_run / "last.pt").read_bytes() == before


def test_a_downsampled_run_trains_on_the_smaller_box_and_resumes_only_with_it(tmp_path, tiny_simulation, fault_config, capsys):
    run = tmp_path / "run"
    common = ["train", str(tiny_simulation["star"]), "--structure", str(STATE_A), "-o", str(run), "--config", str(fault_config)]
    assert main([*common, "--epochs", "1", "--downsample", "16"]) == 0
    state = load_state(run / "last.pt")
    # Fourier-cropped from 32 px at 4 Å to 16 px at 8 Å.
    assert (state["box"], state["pixel_size_A"], state["downsample_box"], state["epoch"]) == (16, 8.0, 16, 1)
    loaded = TrainedRun.load(run)
    assert loaded.data.box == 16 and loaded.data.pixel_size_A == 8.0 and loaded.context.frame.box == 16
    assert tuple(loaded.data.dataset[[0, 1]]["images"].shape) == (2, 16, 16)
    capsys.readouterr()

    before = (run / "last.pt").read_bytes()
    for flags, box in (([], 32), (["--downsample", "24"], 24)):
        status = main([*common, "--epochs", "2", "--resume", *flags])
        assert_one_line_error(status, capsys.readouterr().err.strip().splitlines(), "box", f"trained on 16 box (px), these inputs have {box}")
        assert (run / "last.pt").read_bytes() == before
    # The same --downsample continues the run.
    assert main([*common, "--epochs", "2", "--resume", "--downsample", "16"]) == 0
    assert load_state(run / "last.pt")["epoch"] == 2 and "resuming after epoch 1" in (run / "train.log").read_text()
