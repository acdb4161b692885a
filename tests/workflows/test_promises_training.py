"""What the configuration promises reaches training: the mask and the low-pass act on the images the
loss compares, and an infinite loss stops training as a NaN does (README, Configuration, Reliability)."""

import types

import pytest
import torch

import cryodomain.workflows.objective as objective_module
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.workflows.config import load_config
from cryodomain.workflows.data import batch_loader
from cryodomain.workflows.inputs import build_model, load_training_data
from cryodomain.workflows.objective import WEIGHTED_TERMS, build_context, compute_losses, model_images
from cryodomain.workflows.train import NonFiniteLoss, Trainer, train, train_step

BATCH, LATENT_DIM, SEGMENTS = 8, 2, 3


def setup(tiny_simulation, tiny_config_overrides, **data_settings):
    """An untrained model, its context with ``data.*`` settings, one batch and fixed noise."""
    config = load_config(None, tiny_config_overrides)
    for name, value in data_settings.items():
        setattr(config.data, name, value)  # (load_config's overrides skip None: "not given")
    data = load_training_data(tiny_simulation["star"], STATE_A, config)
    torch.manual_seed(0)
    model = build_model(data, config)
    batch = next(iter(batch_loader(data.dataset, BATCH, shuffle=False)))
    generator = torch.Generator().manual_seed(1)
    noise = (torch.randn(BATCH, LATENT_DIM, generator=generator), torch.randn(3, BATCH, SEGMENTS, generator=generator))
    context = build_context(model, data, config, 2.0, torch.device("cpu"))
    return types.SimpleNamespace(config=config, data=data, model=model, batch=batch, noise=noise, context=context)


def total_loss(s, batch) -> float:
    betas = {term.name: 1.0 for term in WEIGHTED_TERMS}
    with torch.no_grad():
        return float(compute_losses(s.model, batch, s.data.table, s.context, betas, noise=s.noise)["total"])


def test_pixels_outside_the_mask_do_not_change_the_loss(tiny_simulation, tiny_config_overrides):
    """data.mask_radius_fraction: the circular mask reaches what the encoder sees and what the loss
    compares. No low-pass and no shifts here, which would carry outside pixels inside."""
    masked = setup(tiny_simulation, tiny_config_overrides, mask_radius_fraction=0.5, lowpass_A=None)
    outside = masked.context.frame.mask == 0
    assert 0.3 < float(outside.double().mean()) < 0.7
    batch = {**masked.batch, "shifts_A": torch.zeros_like(masked.batch["shifts_A"])}
    changed_images = batch["images"].clone()
    replacement = torch.randn(changed_images.shape, generator=torch.Generator().manual_seed(2)) * batch["images"].std()
    changed_images[:, outside] = replacement[:, outside]
    changed = {**batch, "images": changed_images}
    before, after = total_loss(masked, batch), total_loss(masked, changed)
    assert after == pytest.approx(before, rel=1e-5, abs=1e-6)
    # Without the mask the same pixels do change it (so the check above can fail).
    unmasked = setup(tiny_simulation, tiny_config_overrides, mask_radius_fraction=None, lowpass_A=None)
    assert abs(total_loss(unmasked, changed) - total_loss(unmasked, batch)) > 1e-3 * abs(total_loss(unmasked, batch))


def high_frequency_share(images: torch.Tensor, frame, resolution_A: float) -> float:
    """Fraction of the power of ``(B, N, N)`` images at frequencies above 1 / resolution_A."""
    power = torch.fft.rfft2(images.double()).abs().square()
    high = frame.freqs.double().norm(dim=-1) > 1.0 / resolution_A
    return float(power[:, high].sum() / power.sum())


def test_the_lowpass_filters_the_images_the_encoder_sees_the_targets_and_the_models_images(tiny_simulation, tiny_config_overrides):
    """data.lowpass_A: images and model filtered alike (README, Configuration)."""
    resolution = 12.0  # Å, inside the 8 Å Nyquist of the 4 Å pixels
    shares = {}
    for lowpass in (resolution, None):
        s = setup(tiny_simulation, tiny_config_overrides, lowpass_A=lowpass, lowpass_final_A=None)
        with torch.no_grad():
            seen = model_images(s.model, s.batch, s.data.table, s.context, sample=False)
            encoder_input, _, _ = objective_module.encoder_inputs(s.model, s.batch, s.data.table, s.context)
        frame = s.context.frame
        shares[lowpass] = [high_frequency_share(images, frame, resolution) for images in (encoder_input, seen.target, seen.predicted)]
    assert max(shares[resolution]) < 1e-10, shares
    # Unfiltered, every one of them holds power there (so the check above can fail).
    assert min(shares[None]) > 1e-3, shares


def test_an_infinite_loss_is_caught_like_nan_and_makes_no_update(tiny_simulation, tiny_config_overrides, monkeypatch):
    original = objective_module.clash_loss
    monkeypatch.setattr(objective_module, "clash_loss", lambda *args, **kwargs: original(*args, **kwargs) + float("inf"))
    s = setup(tiny_simulation, tiny_config_overrides)
    trainer = Trainer.build(s.data, s.config, 2.0, torch.device("cpu"))
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    betas = {term.name: 1.0 for term in WEIGHTED_TERMS}
    batch = next(iter(batch_loader(s.data.dataset, s.config.optim.batch_size, shuffle=False)))  # a whole global batch
    with pytest.raises(NonFiniteLoss) as caught:
        train_step(trainer, batch, 0, 0, betas)
    assert caught.value.values["clash"] == float("inf") and caught.value.step == 0
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_an_infinite_loss_stops_training_naming_the_term_and_keeping_the_last_checkpoint(tmp_path, tiny_simulation, tiny_config_overrides, monkeypatch):
    original = objective_module.clash_loss
    calls = {"n": 0}

    def clash_turning_infinite(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value + float("inf") if calls["n"] == 5 else value  # epoch 2, step 2 (3 steps an epoch)

    monkeypatch.setattr(objective_module, "clash_loss", clash_turning_infinite)
    config = load_config(None, {**tiny_config_overrides, "optim.epochs": 3})
    with pytest.raises(InputError, match=r"loss term clash: is inf at epoch 2, step 2; .*last.pt \(epoch 1\).*optim.grad_clip.*--resume"):
        train(tiny_simulation["star"], STATE_A, tmp_path / "run", config, progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 1
