"""Plain helpers of the reliability tests (fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np

TINY_CONFIG = """\
model: {encoder_hidden: [32, 16], decoder_hidden: [32], n_segments: 3, latent_dim: 2}
optim: {epochs: 2, batch_size: 16, lr: 0.001, device: cpu}
"""


def stack_images(tiny_simulation) -> np.ndarray:
    """The tiny simulation's ``(48, 32, 32)`` images."""
    with mrcfile.open(tiny_simulation["particles"]) as mrc:
        return np.array(mrc.data)


def write_mrcs(path: Path, images: np.ndarray, pixel_size_A: float = 4.0) -> Path:
    """A stack written plainly (not through cryodomain's writer)."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(images, dtype=np.float32))
        mrc.voxel_size = pixel_size_A
    return path


def assert_one_line_error(status: int, lines: list[str], *expected: str) -> str:
    """Exit status 2 and exactly one error line holding every expected piece; returns the line."""
    errors = [line for line in lines if line.startswith("cryodomain train: error:")]
    assert status == 2 and len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines)
    for piece in expected:
        assert piece in errors[0], errors[0]
    return errors[0]


# Runs of the fault tests: 3 epochs of 6 steps (48 particles, batches of 8), tiny networks, CPU.
FAULT_CONFIG = """\
model: {encoder_hidden: [32, 16], decoder_hidden: [32], n_segments: 3, latent_dim: 2}
optim: {epochs: 3, batch_size: 8, lr: 0.001, device: cpu}
"""
STEPS_PER_EPOCH = 6


def load_state(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=False)


def assert_same_model(path_a: Path, path_b: Path) -> None:
    """Two checkpoints hold bit-identical model parameters (and optimizer steps)."""
    import torch

    a, b = load_state(path_a), load_state(path_b)
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def metric_totals(run: Path) -> list[str]:
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        return [row["total"] for row in csv.DictReader(handle)]
