"""DDP on CPU (gloo, 2 processes launched by torchrun) against one process with the same global batch."""

import csv
import os
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_simulation):
    base = tmp_path_factory.mktemp("ddp")
    single, double = base / "single", base / "double"
    run(train_command(tiny_simulation["star"], single, "--epochs", "2"))
    run(train_command(tiny_simulation["star"], double, "--epochs", "2"), processes=2)
    return single, double


def test_two_processes_follow_one_process_with_the_same_global_batch(runs):
    single, double = runs
    for one, two in zip(metrics(single), metrics(double)):
        for term in ("total", "correlation", "latent_kl", "continuity", "clash", "l2"):
            assert two[term] == pytest.approx(one[term], rel=1e-4, abs=1e-7), term
    a = torch.load(single / "last.pt", weights_only=False)["model"]
    b = torch.load(double / "last.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)


def test_only_one_set_of_outputs_is_written(runs):
    _, double = runs
    log = (double / "train.log").read_text()
    assert log.count("epoch 1/2") == 1 and log.count("epoch 2/2") == 1
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert len(metrics(double)) == 2
    assert not [p for p in double.rglob("*") if ".tmp" in p.name]


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tiny_simulation):
    _, double = runs
    run(train_command(tiny_simulation["star"], double, "--epochs", "3", "--resume"))
    rows = metrics(double)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert np.isfinite(rows[-1]["total"])


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
