"""Fault injection: a training process killed with SIGKILL at random moments, then resumed, ends
with the same checkpoint as an uninterrupted run, and never leaves a broken file under a final name."""

import csv
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from reliability_helpers import assert_same_model, metric_totals

from cryodomain.examples import STATE_A
from cryodomain.workflows.config import load_config
from cryodomain.workflows.objective import LOGGED_VALUES
from cryodomain.workflows.train import train

# Multi-process runs: minutes, not seconds (`pytest -m 'not slow'` leaves them out).
pytestmark = pytest.mark.slow

# Long enough (36 steps) for kills to land inside epochs, in checkpoint writes and between them.
KILL_CONFIG = """\
model: {encoder_hidden: [32, 16], decoder_hidden: [32], n_segments: 3, latent_dim: 2}
optim: {epochs: 6, batch_size: 8, lr: 0.001, device: cpu}
"""
ATTEMPTS = 3


def assert_final_files_are_whole(run):
    """Every file under its final name is complete: checkpoints load, metrics and config parse."""
    for path in [run / "last.pt", *sorted((run / "checkpoints").glob("epoch_*.pt"))]:
        if path.exists():
            state = torch.load(path, weights_only=False)
            assert {"epoch", "model", "optimizer", "torch_rng"} <= state.keys(), path
    if (run / "metrics.csv").exists():
        with open(run / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert all(set(LOGGED_VALUES) <= row.keys() and row["seconds"] for row in rows)
    if (run / "config.yaml").exists():
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["epochs"] == 6


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_simulation):
    config_path = tmp_path / "kill.yaml"
    config_path.write_text(KILL_CONFIG)
    reference = tmp_path / "reference"
    started = time.perf_counter()
    train(tiny_simulation["star"], STATE_A, reference, load_config(config_path), progress=False)
    # Kills land at random moments of a run as long as this one (after its preflight).
    run_seconds = time.perf_counter() - started

    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cryodomain",
        "train",
        str(tiny_simulation["star"]),
        "--structure",
        str(STATE_A),
        "-o",
        str(run),
        "--config",
        str(config_path),
        "--resume",
    ]
    # One thread, as the in-process reference (the bits of a CPU run depend on the thread count).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rng = random.Random(11)
    kills, epochs_at_kills = 0, []
    for attempt in range(ATTEMPTS + 1):
        log = run / "train.log"
        log_size = log.stat().st_size if log.exists() else 0
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if attempt < ATTEMPTS:
            # Past the preflight (it writes to train.log), then a random moment of training.
            while process.poll() is None and not (log.exists() and log.stat().st_size > log_size):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8 * run_seconds))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        _, stderr = process.communicate(timeout=120)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr
        assert_final_files_are_whole(run)
        last = run / "last.pt"
        epochs_at_kills.append(torch.load(last, weights_only=False)["epoch"] if last.exists() else 0)

    assert process.returncode == 0, stderr
    assert kills >= 2 and min(epochs_at_kills) < 6, f"kills after epochs {epochs_at_kills}: lengthen KILL_CONFIG"
    assert_same_model(run / "last.pt", reference / "last.pt")
    assert_same_model(run / "checkpoints" / "epoch_0006.pt", reference / "checkpoints" / "epoch_0006.pt")
    assert metric_totals(run) == metric_totals(reference)
    assert not [path.name for path in run.rglob("*") if ".tmp" in path.name]


# Long enough that a run signalled after its first epoch is far from its end.
SIGTERM_CONFIG = """\
model: {encoder_hidden: [32, 16], decoder_hidden: [32], n_segments: 3, latent_dim: 2}
optim: {epochs: 40, batch_size: 8, lr: 0.001, device: cpu}
"""


def test_sigterm_to_a_training_process_saves_its_place_and_exits_143(tmp_path, tiny_simulation):
    """README, Reliability: SIGTERM (a batch scheduler's stop) finishes the step, saves last.pt with
    the position inside the epoch and exits with status 143; --resume continues from there."""
    config_path = tmp_path / "long.yaml"
    config_path.write_text(SIGTERM_CONFIG)
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cryodomain",
        "train",
        str(tiny_simulation["star"]),
        "--structure",
        str(STATE_A),
        "-o",
        str(run),
        "--config",
        str(config_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Inside training (an epoch's checkpoint is written), far from its end.
    deadline = time.monotonic() + 120
    while process.poll() is None and not (run / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "cryodomain train: stopped by SIGTERM after" in stderr and "--resume" in stderr and "Traceback" not in stderr
    state = torch.load(run / "last.pt", weights_only=False)
    assert 1 <= state["epoch"] < 40

    # --resume starts where the signal stopped it (one more epoch here, not the whole run).
    before = metric_totals(run)
    train(tiny_simulation["star"], STATE_A, run, load_config(config_path), resume=True, progress=False, stop_after_epoch=state["epoch"] + 1)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == state["epoch"] + 1
    assert len(before) == state["epoch"] and metric_totals(run)[:-1] == before
