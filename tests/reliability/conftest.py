"""Helpers for the reliability tests: edited copies of the tiny simulation, the CLI in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch
from reliability_helpers import (
    FAULT_CONFIG,
    TINY_CONFIG,
    assert_one_line_error,
    write_mrcs,
)

from cryodomain.commands.main import main
from cryodomain.examples import STATE_A
from cryodomain.io.poses import matrix_to_cryosparc_pose
from cryodomain.io.star import read_star


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny runs are fastest on one thread, above all on a busy machine; bits depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def star_variant(tmp_path, tiny_simulation) -> Callable[..., Path]:
    """``star_variant(edit, images=None, name=...)``: the tiny simulation's star file, edited.

    ``edit(blocks)`` changes ``{"optics": DataFrame, "particles": DataFrame}`` in place; ``images``
    replaces the stack (written as ``particles.mrcs`` beside the new star file, else the original
    stack is linked there).
    """

    def make(edit: Callable[[dict], None] | None = None, images: np.ndarray | None = None, name: str = "particles.star", pixel_size_A: float = 4.0) -> Path:
        folder = tmp_path / "data"
        folder.mkdir(exist_ok=True)
        stack = folder / "particles.mrcs"
        if not stack.exists():
            if images is None:
                stack.symlink_to(tiny_simulation["particles"])
            else:
                write_mrcs(stack, images, pixel_size_A)
        blocks = starfile.read(tiny_simulation["star"], always_dict=True)
        if edit is not None:
            edit(blocks)
        path = folder / name
        starfile.write(blocks, path)
        return path

    return make


@pytest.fixture
def cs_variant(tmp_path, tiny_simulation) -> Callable[..., Path]:
    """``cs_variant(edit)``: the tiny simulation as a cryoSPARC ``.cs`` file, ``edit(array)`` applied."""

    def make(edit: Callable[[np.ndarray], None] | None = None) -> Path:
        table = read_star(tiny_simulation["star"])
        n = len(table)
        data = np.zeros(
            n,
            dtype=[
                ("uid", "<u8"),
                ("blob/path", "S200"),
                ("blob/idx", "<u4"),
                ("blob/shape", "<u4", (2,)),
                ("blob/psize_A", "<f4"),
                ("ctf/accel_kv", "<f4"),
                ("ctf/cs_mm", "<f4"),
                ("ctf/amp_contrast", "<f4"),
                ("ctf/df1_A", "<f4"),
                ("ctf/df2_A", "<f4"),
                ("ctf/df_angle_rad", "<f4"),
                ("ctf/phase_shift_rad", "<f4"),
                ("alignments3D/shift", "<f4", (2,)),
                ("alignments3D/pose", "<f4", (3,)),
            ],
        )
        data["uid"] = np.arange(n)
        data["blob/path"] = [path.encode() for path in table.image_paths]
        data["blob/idx"] = table.image_indices
        data["blob/shape"] = table.image_size[:, None]
        data["blob/psize_A"] = table.pixel_size_A
        data["ctf/accel_kv"] = table.voltage_kv
        data["ctf/cs_mm"] = table.spherical_aberration_mm
        data["ctf/amp_contrast"] = table.amplitude_contrast
        data["ctf/df1_A"] = table.defocus_u_A
        data["ctf/df2_A"] = table.defocus_v_A
        data["ctf/df_angle_rad"] = table.defocus_angle_rad
        data["alignments3D/shift"] = table.shifts_A / table.pixel_size_A[:, None]
        data["alignments3D/pose"] = matrix_to_cryosparc_pose(table.rotations)
        if edit is not None:
            edit(data)
        path = tmp_path / "particles.cs"
        with open(path, "wb") as handle:
            np.save(handle, data)
        return path

    return make


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture
def refused(tmp_path, train_cli):
    """``refused(particles, *expected, flags=(), structure=STATE_A)``: the train command stops with
    one error line holding every expected piece, exit status 2, and no run folder written."""

    def check(particles, *expected: str, flags=(), structure=STATE_A) -> str:
        run = tmp_path / "run"
        status, lines = train_cli(particles, *flags, structure=structure, run=run)
        line = assert_one_line_error(status, lines, *expected)
        assert not run.exists()
        return line

    return check


@pytest.fixture
def train_cli(capsys, tiny_config):
    """``train_cli(particles, *flags, structure=STATE_A, run=...)`` -> (exit status, stderr lines)."""

    def run(particles, *flags: str, structure=STATE_A, run: Path) -> tuple[int, list[str]]:
        status = main(["train", str(particles), "--structure", str(structure), "-o", str(run), "--config", str(tiny_config), *flags])
        return status, capsys.readouterr().err.strip().splitlines()

    return run


@pytest.fixture(scope="session")
def fault_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fault_config") / "fault.yaml"
    path.write_text(FAULT_CONFIG)
    return path


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_simulation, fault_config) -> Path:
    """An uninterrupted run with the fault tests' configuration (read-only: copy before changing)."""
    from cryodomain.workflows.config import load_config
    from cryodomain.workflows.train import train

    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test here (one_torch_thread)
    try:
        train(tiny_simulation["star"], STATE_A, run, load_config(fault_config), progress=False)
    finally:
        torch.set_num_threads(threads)
    return run
