"""A trained run loaded back: model, configuration, data and latents as training left them."""

import dataclasses
import shutil
import types

import numpy as np
import pytest
import torch

from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.imaging import form_images
from cryodomain.workflows.config import load_config
from cryodomain.workflows.data import ctf_parameters
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun, kept_checkpoints

EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_simulation, tiny_config_overrides):
    run_dir = tmp_path_factory.mktemp("trained_run") / "run"
    config = load_config(None, {**tiny_config_overrides, "optim.epochs": EPOCHS, "data.mask_radius_fraction": 0.9})
    train(tiny_simulation["star"], STATE_A, run_dir, config, progress=False)
    return types.SimpleNamespace(run_dir=run_dir, config=config, run=TrainedRun.load(run_dir))


def test_a_loaded_run_is_frozen_and_holds_the_training_epoch_and_config(trained):
    run = trained.run
    assert run.epoch == EPOCHS and run.checkpoint == trained.run_dir / "last.pt" and run.run_dir == trained.run_dir
    assert run.config == trained.config
    assert len(run.data.table) == 48 and run.data.box == 32
    assert run.scale > 0 and run.device == torch.device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.epoch = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.config = None


def test_the_model_is_in_eval_mode_with_the_checkpoint_weights_and_scale(trained):
    model = trained.run.model
    assert not model.training and not any(module.training for module in model.modules())
    state = torch.load(trained.run_dir / "last.pt", weights_only=False)
    assert set(model.state_dict()) == set(state["model"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    # The data scale of training, which the context's preprocessing divides by.
    assert trained.run.scale == state["scale"] and trained.run.context.preprocess.scale == state["scale"]


def test_an_earlier_checkpoint_loads_its_own_epoch_and_weights(trained):
    first = TrainedRun.load(trained.run_dir, trained.run_dir / "checkpoints" / "epoch_0001.pt")
    assert first.epoch == 1 and first.checkpoint.name == "epoch_0001.pt"
    differs = [not torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), trained.run.model.state_dict().values())]
    assert any(differs)


def test_latent_means_in_batches_equal_each_image_encoded_alone(trained):
    run = trained.run
    z = run.latent_means(batch_size=5, progress=False)
    assert z.shape == (48, 2) and z.dtype == np.float32
    context = run.context
    assert context.frame.mask is not None  # the run's mask applies to the encoder's input
    with torch.no_grad():
        for i in range(len(run.data.table)):
            batch = run.data.dataset[[i]]
            _, target = context.preprocess(batch["images"], batch["shifts_A"])
            ctf = compute_ctf(context.frame.freqs, ctf_parameters(run.data.table, batch["index"].numpy()))
            base = form_images(run.model.base_gaussians, run.model.amplitudes, batch["rotations"], context.sigma_A, context.frame, ctf)
            scale = (base * target).sum(dim=(-2, -1), keepdim=True) / (base * base).sum(dim=(-2, -1), keepdim=True)
            mean, _ = run.model.encode(target - scale * base, batch["index"], batch["rotations"])
            np.testing.assert_allclose(z[i], mean[0].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"image {i}")
    assert np.unique(z.round(5), axis=0).shape[0] == 48  # every image has its own latent


def test_a_missing_checkpoint_is_an_input_error_naming_the_option(trained, tmp_path):
    with pytest.raises(InputError, match="nothere.pt: no checkpoint found.*--checkpoint"):
        TrainedRun.load(trained.run_dir, trained.run_dir / "nothere.pt")
    with pytest.raises(InputError, match="last.pt: no checkpoint found.*--checkpoint"):
        TrainedRun.load(tmp_path)


def test_an_epoch_the_run_did_not_keep_is_refused_listing_the_kept_checkpoints(trained):
    missing = trained.run_dir / "checkpoints" / "epoch_0050.pt"
    with pytest.raises(InputError) as error:
        TrainedRun.load(trained.run_dir, missing)
    assert str(error.value) == (
        f"{missing}: no checkpoint found; pass --checkpoint with one the run kept (kept: epoch_0001.pt, epoch_0002.pt in checkpoints/, last.pt)"
    )


def test_many_kept_checkpoints_are_listed_by_both_ends(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for epoch in range(1, 31):
        (tmp_path / "checkpoints" / f"epoch_{epoch:04d}.pt").touch()
    assert kept_checkpoints(tmp_path) == "kept: epoch_0001.pt, epoch_0002.pt, epoch_0003.pt, ..., epoch_0028.pt, epoch_0029.pt, epoch_0030.pt in checkpoints/"
    (tmp_path / "last.pt").touch()
    assert kept_checkpoints(tmp_path).endswith("epoch_0030.pt in checkpoints/, last.pt")
    for path in (tmp_path / "checkpoints").iterdir():
        path.unlink()
    assert kept_checkpoints(tmp_path) == "kept: last.pt"


def test_a_corrupt_checkpoint_is_an_input_error(trained, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(trained.run_dir, broken)
    (broken / "last.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="last.pt: cannot be read as a checkpoint"):
        TrainedRun.load(broken)


def test_a_torch_file_that_is_not_a_checkpoint_is_an_input_error(trained, tmp_path):
    torch.save(trained.run.model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(InputError, match="weights.pt"):
        TrainedRun.load(trained.run_dir, tmp_path / "weights.pt")


def test_the_latent_posterior_holds_the_means_and_the_encoders_stds(trained):
    run = trained.run
    posterior = run.latent_posterior(progress=False)
    np.testing.assert_array_equal(posterior.means, run.latent_means(progress=False))
    assert posterior.stds.shape == posterior.means.shape == (48, run.config.model.latent_dim)
    some = run.latent_posterior_of(np.array([7, 2]))
    np.testing.assert_allclose(some.stds, posterior.stds[[7, 2]], atol=1e-6)
    assert np.all(posterior.stds > 0) and np.ptp(posterior.stds) > 0  # per image, from the encoder
