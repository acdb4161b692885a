import csv
import io
import logging
import re
import sys

import mrcfile
import numpy as np
import pytest
import torch
import yaml

import cryodomain.workflows.train as train_module
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.model.losses import clash_pairs_light
from cryodomain.model.networks import Encoder, LatentTable
from cryodomain.workflows.config import load_config
from cryodomain.workflows.data import batch_loader
from cryodomain.workflows.inputs import build_model, load_training_data
from cryodomain.workflows.objective import betas_at, build_context, compute_losses, encoder_inputs
from cryodomain.workflows.optimization import build_optimizer, set_l2_weight
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun


def run(tmp_path, simulation, overrides, name="run", **kwargs):
    config = load_config(None, overrides)
    train(simulation["star"], STATE_A, tmp_path / name, config, progress=False, **kwargs)
    return tmp_path / name


def test_a_run_writes_checkpoints_metrics_and_config(tmp_path, tiny_simulation, tiny_config_overrides):
    run_dir = run(tmp_path, tiny_simulation, tiny_config_overrides)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert (run_dir / "last.pt").exists()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for term in ("total", "correlation", "latent_kl", "centres_kl", "continuity", "clash", "l2", "beta_latent_kl"):
        assert np.isfinite(float(rows[-1][term]))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["epochs"] == 2 and saved["model"]["n_segments"] == 3
    # The saved config reproduces the run's configuration exactly.
    assert load_config(run_dir / "config.yaml") == load_config(None, tiny_config_overrides)


def test_same_seed_same_bits_and_resume_continues_exactly(tmp_path, tiny_simulation, tiny_config_overrides):
    straight = run(tmp_path, tiny_simulation, {**tiny_config_overrides, "optim.epochs": 3}, "straight")
    again = run(tmp_path, tiny_simulation, {**tiny_config_overrides, "optim.epochs": 3}, "again")
    # Stop after one epoch, then resume to three.
    resumed = run(tmp_path, tiny_simulation, {**tiny_config_overrides, "optim.epochs": 3}, "resumed", stop_after_epoch=1)
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    run(tmp_path, tiny_simulation, {**tiny_config_overrides, "optim.epochs": 3}, "resumed", resume=True)
    final = {name: torch.load(d / "last.pt", weights_only=False) for name, d in [("straight", straight), ("again", again), ("resumed", resumed)]}
    for key, value in final["straight"]["model"].items():
        assert torch.equal(value, final["again"]["model"][key]), key
        assert torch.equal(value, final["resumed"]["model"][key]), key
    metrics = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (straight, resumed)]
    assert [r["total"] for r in metrics[0]] == [r["total"] for r in metrics[1]]


def encoded_alone(trained, i):
    """Latent mean ``(D,)`` of particle ``i`` encoded in a batch of its own, its image read from the stack."""
    batch = trained.data.dataset[[i]]
    # The batch holds image i of the stack and row i's pose: the particle itself, not a neighbour.
    with mrcfile.mmap(trained.data.table.image_paths[i], mode="r") as stack:
        np.testing.assert_array_equal(batch["images"][0].numpy(), stack.data[trained.data.table.image_indices[i]])
    np.testing.assert_array_equal(batch["rotations"][0].numpy(), trained.data.table.rotations[i].astype(np.float32))
    with torch.no_grad():
        encoder_input, _, _ = encoder_inputs(trained.model, batch, trained.data.table, trained.context)
        mean, _ = trained.model.encode(encoder_input, batch["index"], batch["rotations"])
    return mean[0].numpy()


def test_latent_means_are_in_particle_order(tmp_path, tiny_simulation, tiny_config_overrides):
    run_dir = run(tmp_path, tiny_simulation, tiny_config_overrides)
    trained = TrainedRun.load(run_dir)
    z = trained.latent_means(batch_size=5, progress=False)
    assert z.shape == (48, 2)
    alone = np.stack([encoded_alone(trained, i) for i in range(48)])
    np.testing.assert_allclose(z, alone, rtol=1e-5, atol=1e-6)
    # The images' latents differ, so a reordering could not pass unnoticed.
    assert len(np.unique(alone.round(4), axis=0)) == 48


def test_batch_larger_than_the_dataset_is_an_input_error(tmp_path, tiny_simulation, tiny_config_overrides):
    with pytest.raises(InputError, match="batch_size"):
        run(tmp_path, tiny_simulation, {**tiny_config_overrides, "optim.batch_size": 500})


def test_an_uncentred_model_is_refused_with_a_pointer_to_center(tmp_path, tiny_simulation, tiny_config_overrides):
    config = load_config(None, tiny_config_overrides)
    with pytest.raises(InputError, match="cryodomain center"):
        train(tiny_simulation["star"], STATE_A.parent / "3mht.pdb", tmp_path / "r", config, progress=False)


def test_parts_move_only_their_residues(tmp_path, tiny_simulation, tiny_config_overrides):
    """Two parts of chain A with their own segment counts; the DNA is in no part and stays put."""
    overrides = {
        **tiny_config_overrides,
        "model.parts": [
            {"chain": "A", "first_residue": 1, "last_residue": 185, "n_segments": 2},
            {"chain": "A", "first_residue": 186, "last_residue": 327, "n_segments": 3, "init": {"centres": [10, 60, 120]}},
        ],
        "loss.clash_mode": "full",
    }
    run_dir = run(tmp_path, tiny_simulation, overrides)
    trained = TrainedRun.load(run_dir)
    model, data = trained.model, trained.data
    assert model.segmentation.n_segments == 5
    z = trained.latent_means(progress=False)
    with torch.no_grad():
        deformation = model.decode(torch.as_tensor(z[:8]) * 5.0, sample_segmentation=False)
    dna = data.structure.chain_ids != "A"
    moved = deformation.coords.numpy() - data.structure.coords[None]
    assert np.abs(moved[:, dna]).max() < 1e-5  # float32 rounding only
    assert np.abs(moved[:, ~dna]).max() > 1e-3
    segment, _ = model.segmentation.hard_assignment()
    assert set(segment[dna]) == {-1}
    assert set(segment[~dna]) <= {0, 1, 2, 3, 4}


def test_non_amortised_latents_train(tmp_path, tiny_simulation, tiny_config_overrides):
    run_dir = run(tmp_path, tiny_simulation, {**tiny_config_overrides, "model.amortized": False})
    trained = TrainedRun.load(run_dir)
    # A table of one free latent mean per image in place of the encoder network.
    assert isinstance(trained.model.encoder, LatentTable) and not trained.model.amortized
    assert not any(isinstance(module, Encoder) for module in trained.model.modules())
    table = trained.model.encoder.means.detach().numpy()
    assert table.shape == (48, 2)
    z = trained.latent_means(batch_size=5, progress=False)
    # The latent of image i is row i of the table, moved away from its zero start by training.
    np.testing.assert_array_equal(z, table)
    assert np.abs(z).max() > 0 and len(np.unique(z, axis=0)) == 48


def test_a_part_on_a_missing_chain_is_an_input_error(tmp_path, tiny_simulation, tiny_config_overrides):
    overrides = {**tiny_config_overrides, "model.parts": [{"chain": "Z", "n_segments": 2}]}
    with pytest.raises(InputError, match="chain"):
        run(tmp_path, tiny_simulation, overrides)


def test_weight_decay_step_equals_the_l2_gradient_step(tiny_simulation, tiny_config_overrides):
    # The loop leaves the L2 gradient to Adam's weight decay: one step must match autograd's.
    config = load_config(None, {**tiny_config_overrides, "loss.l2.value": 0.3})
    data = load_training_data(tiny_simulation["star"], STATE_A, config)
    batch = next(iter(batch_loader(data.dataset, 16, shuffle=False)))
    betas = betas_at(config, 0)
    results = []
    for l2_gradient, weight_decay in ((True, False), (False, True), (False, False)):
        torch.manual_seed(0)
        model = build_model(data, config)
        optimizer = build_optimizer(model, config)
        if weight_decay:
            set_l2_weight(optimizer, betas["l2"])
        context = build_context(model, data, config, 1.0, torch.device("cpu"))
        noise = (torch.zeros(16, config.model.latent_dim), torch.zeros(3, 16, config.model.n_segments))
        terms = compute_losses(model, batch, data.table, context, betas, noise=noise, l2_gradient=l2_gradient)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        results.append((float(terms["total"].detach()), torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)
    # Without the weight decay the step is another one: the penalty matters here.
    assert not torch.allclose(results[2][1], results[0][1], rtol=1e-5, atol=1e-7)


def test_full_clash_switches_to_neighbour_pairs_above_the_threshold(tiny_simulation, tiny_config_overrides, monkeypatch, caplog):
    # Memory stays linear in residues: no all-pairs list above the threshold, and the log says so.
    config = load_config(None, {**tiny_config_overrides, "loss.clash_mode": "full"})
    data = load_training_data(tiny_simulation["star"], STATE_A, config)
    model = build_model(data, config)
    n = data.structure.n_residues
    all_pairs_context = build_context(model, data, config, 1.0, torch.device("cpu"))
    assert all_pairs_context.clash_pairs.shape[0] == (n - 1) * (n - 2) // 2
    monkeypatch.setattr("cryodomain.workflows.objective.FULL_CLASH_MAX_RESIDUES", n - 1)
    with caplog.at_level("INFO", logger="cryodomain.workflows.objective"):
        context = build_context(model, data, config, 1.0, torch.device("cpu"))
    torch.testing.assert_close(context.clash_pairs, clash_pairs_light(model.base_coords))
    assert context.clash_pairs.shape[0] < n * 20
    assert any("neighbour pairs" in record.getMessage() for record in caplog.records)


def test_cosine_learning_rates_warm_up_then_decay_to_the_final_fraction():
    from cryodomain.workflows.optimization import learning_rate_factor

    config = load_config(None, {"optim.lr_schedule": "cosine", "optim.warmup_epochs": 2, "optim.final_lr_fraction": 0.1, "optim.epochs": 12})
    assert learning_rate_factor(config, 0.0) < 0.01 and learning_rate_factor(config, 1.0) == pytest.approx(0.5, abs=1e-3)
    assert learning_rate_factor(config, 2.0) == pytest.approx(1.0)
    # Halfway through the decay (epoch 7 of 2..12): the mean of 1 and the final fraction.
    assert learning_rate_factor(config, 7.0) == pytest.approx(0.55)
    assert learning_rate_factor(config, 12.0) == pytest.approx(0.1)
    assert learning_rate_factor(load_config(None, {"optim.epochs": 5, "optim.lr_schedule": "constant"}), 3.0) == 1.0


class Pipe(io.StringIO):
    """stderr redirected to a file or a pipe (a batch job's log)."""

    def isatty(self) -> bool:
        return False


def progress_lines(run_dir) -> list[str]:
    """The epoch progress lines of train.log, without their time stamp."""
    lines = [line.split("  ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()]
    return [line for line in lines if re.match(r"epoch \d+/\d+  \d+/\d+ steps", line)]


def test_checkpoint_every_keeps_some_epochs_and_resume_stays_exact(tmp_path, tiny_simulation, tiny_config_overrides, monkeypatch):
    overrides = {**tiny_config_overrides, "optim.epochs": 3, "optim.checkpoint_every": 2}
    straight = run(tmp_path, tiny_simulation, overrides, "straight")
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt"]
    # Stopped after an epoch that keeps no file of its own: last.pt alone carries the run on.
    resumed = run(tmp_path, tiny_simulation, overrides, "resumed", stop_after_epoch=1)
    assert not (resumed / "checkpoints").exists() or not list((resumed / "checkpoints").iterdir())
    assert torch.load(resumed / "last.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(sys, "stderr", Pipe())
    config = load_config(None, overrides)
    train(tiny_simulation["star"], STATE_A, resumed, config, resume=True, progress=True)
    final = [torch.load(d / "last.pt", weights_only=False)["model"] for d in (straight, resumed)]
    for key, value in final[0].items():
        assert torch.equal(value, final[1][key]), key
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt"]
    # A kept epoch is a checkpoint the analysis commands load (--checkpoint).
    assert TrainedRun.load(resumed, resumed / "checkpoints" / "epoch_0002.pt").epoch == 2


def test_a_non_interactive_run_logs_one_progress_line_per_epoch_with_its_counts(tmp_path, tiny_simulation, tiny_config_overrides, monkeypatch, caplog):
    stderr = Pipe()
    monkeypatch.setattr(sys, "stderr", stderr)
    caplog.set_level(logging.INFO)  # as the command sets it
    config = load_config(None, {**tiny_config_overrides, "optim.epochs": 3})  # 48 images: 3 steps of 16
    train(tiny_simulation["star"], STATE_A, tmp_path / "run", config, progress=True)
    lines = progress_lines(tmp_path / "run")
    assert [line.split("  ")[:2] for line in lines] == [[f"epoch {epoch}/3", "3/3 steps"] for epoch in (1, 2, 3)]
    assert all(re.search(r"  [0-9.]+ images/s  loss -?[0-9.]+  correlation", line) for line in lines), lines
    assert "0/3" not in stderr.getvalue() and "\r" not in stderr.getvalue()  # no bar redrawn into the log


def test_a_small_last_batch_is_stepped_with_the_one_before(tmp_path, tiny_simulation, tiny_config_overrides, monkeypatch):
    original = train_module.compute_losses
    steps = []

    def recording(model, batch, table, context, betas, *, noise, **kwargs):
        steps.append((len(batch["index"]), noise[0].shape[0], kwargs["batch_weight"]))
        return original(model, batch, table, context, betas, noise=noise, **kwargs)

    monkeypatch.setattr(train_module, "compute_losses", recording)
    # 48 images in batches of 20: 20 and 28 (the last 8 join the second batch), each at full weight.
    run_dir = run(tmp_path, tiny_simulation, {**tiny_config_overrides, "optim.epochs": 1, "optim.batch_size": 20})
    assert steps == [(20, 20, 1.0), (28, 28, 1.0)]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert np.isfinite(float(rows[0]["total"]))
