"""Decoding latents into structures: at given points, or each image's expectation under its posterior."""

import numpy as np
import pytest
import torch

from cryodomain.workflows.structures import POSTERIOR_SAMPLES, decode_batches, posterior_draws, write_coordinates
from cryodomain.workflows.trained_run import TrainedRun


@pytest.fixture(scope="module")
def run(tiny_analysis):
    return TrainedRun.load(tiny_analysis.run)


def decoded(model, z, **options):
    return np.concatenate([coords for _, coords in decode_batches(model, z, progress=False, **options)])


def test_posterior_draws_are_fixed_antithetic_pairs():
    draws = posterior_draws(3)
    assert draws.shape == (POSTERIOR_SAMPLES, 3)
    half = POSTERIOR_SAMPLES // 2
    torch.testing.assert_close(draws[half:], -draws[:half])
    assert torch.equal(draws, posterior_draws(3))
    assert float(draws.abs().mean()) > 0.3  # standard-normal draws, not zeros


def test_a_posterior_of_zero_width_decodes_its_mean(run):
    z = run.latent_means_of(np.arange(6))
    np.testing.assert_allclose(decoded(run.model, z, stds=np.zeros_like(z)), decoded(run.model, z), atol=1e-4)


def test_the_posterior_structure_is_the_mean_of_the_structures_of_the_draws(run):
    posterior = run.latent_posterior_of(np.arange(5))
    stds = np.full_like(posterior.stds, 0.7)  # wide enough that it differs from the mean's
    expected = np.mean([decoded(run.model, posterior.means + stds * draw.numpy()) for draw in posterior_draws(posterior.means.shape[1])], axis=0)
    got = decoded(run.model, posterior.means, stds=stds)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(got - decoded(run.model, posterior.means)).max() > 1e-3
    # The same structures whatever the batching, and for every atom alike.
    np.testing.assert_allclose(decoded(run.model, posterior.means, stds=stds, batch_size=2), got, atol=1e-4)
    atoms = decoded(run.model, posterior.means, stds=stds, atoms_of=run.data.structure)
    assert atoms.shape == (5, run.data.structure.n_atoms, 3) and np.all(np.isfinite(atoms))


def test_a_posterior_spreads_the_structures_of_an_uncertain_image_less_than_its_draws(run):
    # A wide posterior averages motions: its structure lies closer to the draws' mean structure
    # than a typical draw does (the estimate of least expected squared error).
    z = run.latent_means_of(np.arange(1))
    stds = np.full_like(z, 2.0)
    draws = np.stack([decoded(run.model, z + stds * draw.numpy())[0] for draw in posterior_draws(z.shape[1])])
    expectation = decoded(run.model, z, stds=stds)[0]
    spread = np.sqrt(((draws - expectation) ** 2).sum(-1).mean(-1))
    assert np.sqrt(((draws.mean(0) - expectation) ** 2).sum(-1).mean()) < 1e-3 < np.median(spread)


def test_write_coordinates_passes_the_posterior_through(tmp_path, run):
    posterior = run.latent_posterior_of(np.arange(4))
    stds = np.full_like(posterior.stds, 0.5)
    written = write_coordinates(tmp_path / "coords.npy", run.model, posterior.means, stds=stds, progress=False)
    np.testing.assert_allclose(np.asarray(written), decoded(run.model, posterior.means, stds=stds), atol=1e-6)
