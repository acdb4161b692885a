"""Each image's structure weighed by its likelihood over the decoded population."""

import numpy as np
import pytest
import torch

from cryodomain.physics.imaging import ImageFrame
from cryodomain.workflows.objective import model_images
from cryodomain.workflows.reweighting import Reweighting, band_dof, draw_anchors, image_residuals, likelihood_weights, reweight
from cryodomain.workflows.structures import decode_batches
from cryodomain.workflows.trained_run import LatentPosterior, TrainedRun


@pytest.fixture(scope="module")
def run(tiny_analysis):
    return TrainedRun.load(tiny_analysis.run)


def decoded(model, z, **options):
    return np.concatenate([coords for _, coords in decode_batches(model, z, progress=False, **options)])


@pytest.mark.parametrize("box, pixel_size_A, resolution_A", [(64, 2.0, 6.0), (63, 1.5, 5.0), (32, 3.0, 10.0)])
def test_band_dof_counts_the_full_grid_frequencies_inside_the_low_pass(box, pixel_size_A, resolution_A):
    frequencies = np.fft.fftfreq(box, d=pixel_size_A)
    inside = int(((frequencies[:, None] ** 2 + frequencies[None, :] ** 2) <= 1.0 / resolution_A**2).sum())
    assert band_dof(ImageFrame.build(box, pixel_size_A, lowpass_A=resolution_A)) == inside
    assert band_dof(ImageFrame.build(box, pixel_size_A)) == box * box


def test_the_smallest_residual_is_the_noise_and_a_worse_fit_loses_weight_with_the_dof():
    # Residuals of 1 (the best), 1.01 and 2 on 1000 degrees of freedom: exp(-1000 * 0.01 / 2) = e^-5.
    residuals = np.array([[1.0, 1.01, 2.0], [3.0, 3.0, 3.0]])
    weights = likelihood_weights(residuals, 1000)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    np.testing.assert_allclose(weights[1], 1 / 3)
    noise = 1000 / 999
    np.testing.assert_allclose(weights[0, 1] / weights[0, 0], np.exp(-1000 * 0.01 / (2 * noise)), rtol=1e-9)
    assert weights[0, 2] < 1e-200
    # Scale-free (an image's own noise level), and each row on its own.
    np.testing.assert_allclose(likelihood_weights(residuals * [[7.0], [0.1]], 1000), weights, rtol=1e-9)
    np.testing.assert_allclose(likelihood_weights(residuals[:1], 1000), weights[:1])


def test_anchors_are_one_posterior_draw_each_of_distinct_images_and_fixed_by_the_seed():
    posterior = LatentPosterior(np.arange(20, dtype=np.float32)[:, None] * [1.0, -1.0], np.zeros((20, 2), dtype=np.float32))
    anchors = draw_anchors(posterior, 8, seed=3)
    assert anchors.shape == (8, 2) and len(np.unique(anchors[:, 0])) == 8
    assert np.isin(anchors[:, 0], posterior.means[:, 0]).all()  # zero width: the draws are the means
    np.testing.assert_array_equal(draw_anchors(posterior, 8, seed=3), anchors)
    assert draw_anchors(posterior, 100).shape == (20, 2)
    wide = LatentPosterior(posterior.means, np.ones_like(posterior.stds))
    assert not np.isin(draw_anchors(wide, 8, seed=3)[:, 0], posterior.means[:, 0]).any()


def test_the_own_residual_is_that_of_the_training_objectives_image_at_the_latent_mean(run):
    indices = np.array([0, 5, 11])
    posterior = run.latent_posterior_of(indices)
    anchors = run.model.decode(torch.as_tensor(posterior.means[:1] + 0.5), sample_segmentation=False).render_coords
    residuals = image_residuals(run, indices, anchors, posterior.means)
    assert residuals.shape == (3, 2)
    with torch.no_grad():
        seen = model_images(run.model, run.data.dataset[indices.tolist()], run.data.table, run.context, sample=False)
    x, y = seen.predicted.flatten(1).double(), seen.target.flatten(1).double()
    scale = (x * y).sum(1, keepdim=True) / x.square().sum(1, keepdim=True)
    np.testing.assert_allclose(residuals[:, 1], (y - scale * x).square().sum(1).numpy(), rtol=1e-4)
    assert np.all(residuals[:, 0] != residuals[:, 1])


def test_reweighted_structures_are_the_weighted_means_of_the_anchor_and_own_structures(run):
    posterior = run.latent_posterior_of(np.arange(4))
    anchors = posterior.means[:2] + np.float32(1.5)
    own, first, second = decoded(run.model, posterior.means), decoded(run.model, anchors[:1]), decoded(run.model, anchors[1:])
    weights = np.array([[0, 0, 1.0], [1.0, 0, 0], [0.25, 0.25, 0.5], [0, 0.5, 0.5]])
    got = decoded(run.model, posterior.means, reweighting=Reweighting(anchors, weights), batch_size=3)
    np.testing.assert_allclose(got[0], own[0], atol=1e-4)
    np.testing.assert_allclose(got[1], first[0], atol=1e-4)
    np.testing.assert_allclose(got[2], 0.25 * first[0] + 0.25 * second[0] + 0.5 * own[2], atol=1e-4)
    assert np.abs(got[3] - own[3]).max() > 1e-3
    # Every atom moves alike: the atoms of the mean are the mean of the atoms.
    atoms = decoded(run.model, posterior.means, reweighting=Reweighting(anchors, weights), atoms_of=run.data.structure)
    own_atoms = decoded(run.model, posterior.means, atoms_of=run.data.structure)
    anchor_atoms = decoded(run.model, anchors, atoms_of=run.data.structure)
    np.testing.assert_allclose(atoms[3], 0.5 * anchor_atoms[1] + 0.5 * own_atoms[3], atol=1e-4)


def test_reweight_gives_each_image_weights_that_do_not_depend_on_the_others(run):
    posterior = run.latent_posterior(progress=False)
    everyone = reweight(run, posterior, np.arange(10), n_anchors=6, progress=False)
    assert everyone.anchors.shape == (6, posterior.means.shape[1]) and everyone.weights.shape == (10, 7)
    np.testing.assert_allclose(everyone.weights.sum(1), 1.0)
    assert np.all((everyone.effective_anchors() >= 1.0) & (everyone.effective_anchors() <= 7.0 + 1e-9))
    alone = reweight(run, posterior, np.array([7, 2]), n_anchors=6, progress=False)
    np.testing.assert_allclose(alone.weights, everyone.weights[[7, 2]], rtol=1e-6, atol=1e-12)
