"""DDP on CPU (gloo, 2 processes launched by torchrun) against one process with the same global batch."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cryodomain.examples import STATE_A

# Multi-process runs: minutes, not seconds (`pytest -m 'not slow'` leaves them out).
pytestmark = pytest.mark.slow


def train_command(star, run_dir, *extra):
    config = run_dir.parent / "tiny.yaml"
    config.write_text("model:\n  encoder_hidden: [32, 16]\n  decoder_hidden: [32]\n")
    return [
        "-m", "cryodomain", "train", str(star), "--structure", str(STATE_A), "-o", str(run_dir), "--config", str(config),
        "--batch-size", "16", "--segments", "3", "--latent-dim", "2", "--lr", "1e-3", "--device", "cpu", *extra,
    ]  # fmt: skip


def run(args, processes=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        args = args[1:]  # torchrun takes "-m module" itself
        launcher += ["-m"]
    result = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run_dir):
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(open(run_dir / "metrics.csv"))]


EPOCHS = 3
TERMS = ("total", "correlation", "latent_kl", "continuity", "clash", "l2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_simulation):
    """The same 3-epoch run on one process and on two (every epoch keeps its checkpoint)."""
    base = tmp_path_factory.mktemp("ddp")
    single, double = base / "single", base / "double"
    run(train_command(tiny_simulation["star"], single, "--epochs", str(EPOCHS)))
    run(train_command(tiny_simulation["star"], double, "--epochs", str(EPOCHS)), processes=2)
    return single, double


def assert_same_run(one, two):
    """Two runs' epoch losses and final weights agree to float summation order (DDP averages gradients)."""
    rows_one, rows_two = metrics(one), metrics(two)
    assert [int(r["epoch"]) for r in rows_two] == [int(r["epoch"]) for r in rows_one] == list(range(1, EPOCHS + 1))
    for a, b in zip(rows_one, rows_two):
        for term in TERMS:
            assert b[term] == pytest.approx(a[term], rel=1e-4, abs=1e-7), (int(a["epoch"]), term)
    a = torch.load(one / "last.pt", weights_only=False)
    b = torch.load(two / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-3, atol=1e-5)


def killed_after_epoch(run_dir, copy, epoch):
    """A copy of ``run_dir`` as a process killed during epoch ``epoch + 1`` leaves it: last.pt of
    epoch ``epoch`` and no later checkpoint (the later metrics rows stay, as the resume drops them)."""
    shutil.copytree(run_dir, copy)
    shutil.copyfile(copy / "checkpoints" / f"epoch_{epoch:04d}.pt", copy / "last.pt")
    for later in range(epoch + 1, EPOCHS + 1):
        (copy / "checkpoints" / f"epoch_{later:04d}.pt").unlink()
    assert torch.load(copy / "last.pt", weights_only=False)["epoch"] == epoch
    return copy


def test_two_processes_follow_one_process_with_the_same_global_batch(runs):
    single, double = runs
    assert_same_run(single, double)


def test_only_one_set_of_outputs_is_written(runs):
    _, double = runs
    log = (double / "train.log").read_text()
    assert all(log.count(f"epoch {epoch}/{EPOCHS}") == 1 for epoch in range(1, EPOCHS + 1))
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == [f"epoch_{epoch:04d}.pt" for epoch in range(1, EPOCHS + 1)]
    assert len(metrics(double)) == EPOCHS
    assert not [p for p in double.rglob("*") if ".tmp" in p.name]


def test_a_two_process_checkpoint_resumes_on_one_process_as_if_never_stopped(runs, tiny_simulation, tmp_path):
    single, double = runs
    resumed = killed_after_epoch(double, tmp_path / "resumed", 1)
    run(train_command(tiny_simulation["star"], resumed, "--epochs", str(EPOCHS), "--resume"))
    assert "resuming after epoch 1" in (resumed / "train.log").read_text()
    # The README: a checkpoint of any number of processes resumes on any other, on the same trajectory.
    assert_same_run(single, resumed)


def test_a_one_process_checkpoint_resumes_on_two_processes_as_if_never_stopped(runs, tiny_simulation, tmp_path):
    single, _ = runs
    resumed = killed_after_epoch(single, tmp_path / "resumed", 1)
    run(train_command(tiny_simulation["star"], resumed, "--epochs", str(EPOCHS), "--resume"), processes=2)
    assert "resuming after epoch 1" in (resumed / "train.log").read_text()
    assert_same_run(single, resumed)


def test_structures_and_analyze_run_distributed_in_particle_order(runs, tmp_path):
    single, _ = runs
    run([sys.executable, "-m", "cryodomain", "structures", str(single), "-o", str(tmp_path / "one")][1:])
    run([sys.executable, "-m", "cryodomain", "structures", str(single), "-o", str(tmp_path / "two")][1:], processes=2)
    np.testing.assert_allclose(np.load(tmp_path / "two" / "coords.npy"), np.load(tmp_path / "one" / "coords.npy"), atol=1e-5)
    assert not [p for p in (tmp_path / "two").iterdir() if "partial" in p.name]

    command = ["-m", "cryodomain", "analyze", str(single), "-o", str(tmp_path / "analysis"), "--kmeans", "3", "--pcs", "2", "--points", "4"]
    result = run(command, processes=2)
    assert result.stdout.count("Analysis written to") == 1
    from cryodomain.workflows.trained_run import TrainedRun

    trained = TrainedRun.load(single)
    np.testing.assert_allclose(np.load(tmp_path / "analysis" / "z.npy"), trained.latent_means(progress=False), atol=1e-5)
