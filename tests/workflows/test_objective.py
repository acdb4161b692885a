"""The training objective: the table of loss terms, the weighted total, and the model's images."""

import types

import pytest
import torch

from cryodomain.examples import STATE_A
from cryodomain.model.schedules import BetaSchedule
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.imaging import ImageFrame, form_images
from cryodomain.workflows.config import LossConfig, load_config
from cryodomain.workflows.data import batch_loader, ctf_parameters
from cryodomain.workflows.inputs import build_model, load_training_data, residue_gaussians
from cryodomain.workflows.objective import (
    LOSS_TERMS,
    TERM_NAMES,
    WEIGHTED_TERMS,
    betas_at,
    build_context,
    compute_losses,
    model_images,
    term_weight,
    weighted_total,
)

# docs/method.md, "Loss": the KL terms are divided by the pixel count; the correlation, latent KL,
# continuity and clash average over the images of a batch.
PER_PIXEL = {"latent_kl", "centres_kl", "widths_kl", "proportions_kl"}
BATCH_MEAN = {"correlation", "latent_kl", "continuity", "clash"}
BATCH, LATENT_DIM, SEGMENTS = 4, 2, 3


@pytest.fixture(scope="module")
def setup(tiny_simulation, tiny_config_overrides):
    """An untrained model with perturbed parameters (so that every term is non-zero) and one batch."""
    config = load_config(None, {**tiny_config_overrides, "data.lowpass_A": 12.0, "data.lowpass_final_A": 12.0, "data.mask_radius_fraction": 0.9})
    data = load_training_data(tiny_simulation["star"], STATE_A, config)
    torch.manual_seed(0)
    model = build_model(data, config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    context = build_context(model, data, config, 2.0, torch.device("cpu"))
    batch = next(iter(batch_loader(data.dataset, BATCH, shuffle=False)))
    generator = torch.Generator().manual_seed(1)
    noise = (torch.randn(BATCH, LATENT_DIM, generator=generator), torch.randn(3, BATCH, SEGMENTS, generator=generator))
    return types.SimpleNamespace(config=config, data=data, model=model, context=context, batch=batch, noise=noise)


def test_loss_table_has_unique_names_and_one_schedule_per_weighted_term():
    assert len(set(TERM_NAMES)) == len(TERM_NAMES) == len(LOSS_TERMS)
    schedules = {name for name, field in LossConfig.model_fields.items() if field.annotation is BetaSchedule}
    assert {term.name for term in WEIGHTED_TERMS} == schedules
    # The correlation is the only unscheduled term, and the table says what the method says.
    assert [term.name for term in LOSS_TERMS if not term.weighted] == ["correlation"]
    assert {term.name for term in LOSS_TERMS if term.per_pixel} == PER_PIXEL
    assert {term.name for term in LOSS_TERMS if term.batch_mean} == BATCH_MEAN


def test_term_weight_divides_only_per_pixel_terms_by_the_pixel_count():
    by_name = {term.name: term for term in LOSS_TERMS}
    assert term_weight(by_name["latent_kl"], 2.0, 400) == pytest.approx(2.0 / 400)
    assert term_weight(by_name["widths_kl"], 3.0, 100) == pytest.approx(0.03)
    assert term_weight(by_name["continuity"], 2.0, 400) == 2.0
    assert term_weight(by_name["l2"], 0.5, 400) == 0.5


def test_betas_at_reads_every_schedule_of_the_configuration():
    values = {term.name: 0.1 * (k + 1) for k, term in enumerate(WEIGHTED_TERMS)}
    overrides = {f"loss.{name}": {"kind": "constant", "value": value} for name, value in values.items()}
    config = load_config(None, {**overrides, "loss.latent_kl": {"kind": "linear", "value": 2.0, "ramp_epochs": 4}, "optim.epochs": 10})
    betas = betas_at(config, 1)
    assert set(betas) == set(values)
    for name, value in values.items():
        if name != "latent_kl":
            assert betas[name] == pytest.approx(value)
    # Linear ramp over 4 epochs to 2.0: 0.5 at epoch 1, the plateau from epoch 4.
    assert betas["latent_kl"] == pytest.approx(0.5)
    assert betas_at(config, 7)["latent_kl"] == pytest.approx(2.0)


def losses(setup, betas, batch_weight=1.0):
    with torch.no_grad():
        return compute_losses(setup.model, setup.batch, setup.data.table, setup.context, betas, noise=setup.noise, batch_weight=batch_weight)


def test_every_term_is_returned_and_non_zero_here(setup):
    terms = losses(setup, {term.name: 1.0 for term in WEIGHTED_TERMS})
    assert set(terms) == {*TERM_NAMES, "total"}
    for name in TERM_NAMES:
        assert terms[name].shape == () and torch.isfinite(terms[name]) and float(terms[name]) != 0.0, name


@pytest.mark.parametrize("batch_weight", [1.0, 0.5])
def test_total_is_the_correlation_plus_each_term_times_its_weight(setup, batch_weight):
    n_pixels = setup.context.n_pixels
    assert n_pixels == 32 * 32
    # Weights that make every term's share of the total distinct and of order 0.1 (the terms span
    # 1e-3 to 1e5 here), so that any wrong factor on any term shows in the total.
    unit = losses(setup, {term.name: 1.0 for term in WEIGHTED_TERMS}, batch_weight)
    betas = {}
    for k, term in enumerate(WEIGHTED_TERMS):
        betas[term.name] = 0.1 * (k + 1) / abs(float(unit[term.name])) * (n_pixels if term.name in PER_PIXEL else 1)
    terms = losses(setup, betas, batch_weight)
    expected = batch_weight * float(terms["correlation"])
    for name, beta in betas.items():
        factor = beta / (n_pixels if name in PER_PIXEL else 1) * (batch_weight if name in BATCH_MEAN else 1)
        expected += factor * float(terms[name])
    assert float(terms["total"]) == pytest.approx(expected, rel=1e-5)
    # With every weight at 0 the total is the (batch-weighted) correlation alone.
    zero = losses(setup, {term.name: 0.0 for term in WEIGHTED_TERMS}, batch_weight)
    assert float(zero["total"]) == pytest.approx(batch_weight * float(zero["correlation"]), rel=1e-6)


def test_weighted_total_of_the_term_values_is_the_total(setup):
    betas = {term.name: 0.2 + 0.15 * k for k, term in enumerate(WEIGHTED_TERMS)}
    terms = losses(setup, betas)
    values = {name: float(terms[name]) for name in TERM_NAMES}
    assert weighted_total(values, betas, setup.context.n_pixels) == pytest.approx(float(terms["total"]), rel=1e-5)


def test_model_images_without_sampling_decode_the_latent_mean_deterministically(setup):
    model, batch, context, table = setup.model, setup.batch, setup.context, setup.data.table
    with torch.no_grad():
        torch.manual_seed(10)
        first = model_images(model, batch, table, context, sample=False)
        torch.manual_seed(11)
        second = model_images(model, batch, table, context, sample=False)
        torch.testing.assert_close(first.predicted, second.predicted, rtol=0, atol=0)
        torch.testing.assert_close(first.deformation.coords, second.deformation.coords, rtol=0, atol=0)
        _, target = context.preprocess(batch["images"], batch["shifts_A"])
        ctf = compute_ctf(context.frame.freqs, ctf_parameters(table, batch["index"].numpy()))
        base = form_images(model.base_gaussians, model.amplitudes, batch["rotations"], context.sigma_A, context.frame, ctf)
        scale = (base * target).sum(dim=(-2, -1), keepdim=True) / (base * base).sum(dim=(-2, -1), keepdim=True)
        mean, std = model.encode(target - scale * base, batch["index"], batch["rotations"])
        torch.testing.assert_close(first.mean, mean)
        torch.testing.assert_close(first.std, std)
        torch.testing.assert_close(first.target, target)
        decoded = model.decode(mean, sample_segmentation=False)
        torch.testing.assert_close(first.deformation.coords, decoded.coords)
        # The predicted images are the residue Gaussians of those structures seen at the batch's poses through its CTFs.
        ctf = compute_ctf(context.frame.freqs, ctf_parameters(table, batch["index"].numpy()))
        images = form_images(decoded.render_coords, model.amplitudes, batch["rotations"], context.sigma_A, context.frame, ctf)
        torch.testing.assert_close(first.predicted, images)
        # Sampling draws from the global RNG: two seeds give two results (so the check above can fail).
        torch.manual_seed(10)
        sampled = model_images(model, batch, table, context, sample=True)
        torch.manual_seed(11)
        resampled = model_images(model, batch, table, context, sample=True)
        assert not torch.equal(sampled.predicted, resampled.predicted)


def test_build_context_takes_the_frame_scale_and_pairs_from_config_and_data(setup, tiny_config_overrides):
    context, data = setup.context, setup.data
    expected = ImageFrame.build(data.box, data.pixel_size_A, lowpass_A=12.0, mask_radius_fraction=0.9)
    torch.testing.assert_close(context.frame.lowpass, expected.lowpass)
    torch.testing.assert_close(context.frame.mask, expected.mask)
    assert context.preprocess.scale == 2.0 and context.preprocess.sign == 1.0
    # The widths of the Gaussians training renders (one per Gaussian with widths from the atoms).
    widths = residue_gaussians(data.structure, setup.config).widths
    torch.testing.assert_close(context.sigma_A, torch.as_tensor(widths, dtype=torch.float32))
    assert not context.mixed_precision
    assert context.continuity_pairs.tolist() == data.structure.consecutive_pairs().tolist()
    assert context.clash_pairs is not None and context.clash_pairs.shape[1] == 2
    config = load_config(None, {**tiny_config_overrides, "loss.clash_mode": "off", "data.invert_contrast": True, "optim.mixed_precision": True})
    context = build_context(setup.model, data, config, 1.0, torch.device("cpu"))
    assert context.clash_pairs is None and context.preprocess.sign == -1.0
    assert context.frame.mask is None and context.encoder_residual
    assert not context.mixed_precision  # bfloat16 autocast only on CUDA
    # Without clash pairs the clash term is 0, whatever its weight.
    with torch.no_grad():
        terms = compute_losses(setup.model, setup.batch, data.table, context, {term.name: 1.0 for term in WEIGHTED_TERMS}, noise=setup.noise)
    assert float(terms["clash"]) == 0.0 and float(terms["continuity"]) > 0


def test_coarse_to_fine_lowpass_moves_linearly_in_frequency_and_then_stays():
    from cryodomain.workflows.objective import lowpass_at

    config = load_config(None, {"data.lowpass_A": 10.0, "data.lowpass_final_A": 5.0, "data.lowpass_fraction": 0.5, "optim.epochs": 20})
    assert lowpass_at(config, 0) == pytest.approx(10.0)
    # Halfway through the ramp (epoch 5 of 10): frequency 0.15 /Å, resolution 1 / 0.15.
    assert lowpass_at(config, 5) == pytest.approx(1 / 0.15)
    assert lowpass_at(config, 10) == pytest.approx(5.0) and lowpass_at(config, 19) == pytest.approx(5.0)
    assert lowpass_at(config) == pytest.approx(5.0)
    assert lowpass_at(load_config(None, {"data.lowpass_A": 8.0, "data.lowpass_final_A": 8.0, "optim.epochs": 3}), 1) == 8.0
    # A final resolution not finer than the start keeps the start (no fine-to-coarse schedule).
    assert lowpass_at(load_config(None, {"data.lowpass_A": 5.0, "optim.epochs": 3}), 2) == 5.0
    # The default goes from 10 to 6 Å over three quarters of the epochs.
    default = load_config(None, {"optim.epochs": 40})
    assert lowpass_at(default, 0) == pytest.approx(10.0) and lowpass_at(default, 30) == pytest.approx(6.0)


def test_each_epochs_context_has_that_epochs_lowpass_and_the_last_is_the_built_one(setup):
    from cryodomain.workflows.objective import context_at

    config = load_config(None, {"data.lowpass_A": 12.0, "data.lowpass_final_A": 8.0, "optim.epochs": 4})
    context = build_context(setup.model, setup.data, config, 2.0, torch.device("cpu"))
    expected = ImageFrame.build(setup.data.box, setup.data.pixel_size_A, lowpass_A=12.0).lowpass
    torch.testing.assert_close(context_at(context, config, 0).frame.lowpass, expected)
    assert context_at(context, config, 3) is context
    torch.testing.assert_close(context.frame.lowpass, ImageFrame.build(setup.data.box, setup.data.pixel_size_A, lowpass_A=8.0).lowpass)
