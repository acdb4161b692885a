import numpy as np
import pytest
import torch

from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.segmentation import SegmentPart


def model_of(n_residues=12, **kwargs):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n_residues, 3)) * 10
    return CryoSphere(base, np.ones(n_residues), [SegmentPart(np.arange(n_residues), 3)], box=16, n_images=4, latent_dim=2, **kwargs), base


def test_the_residue_gaussians_move_rigidly_with_their_residues():
    centroids = np.random.default_rng(1).normal(size=(12, 3)) * 10
    model, base = model_of(gaussian_coords=centroids, rotate_about="segment")
    with torch.no_grad():
        model.decoder.network[-1].bias.normal_()  # motions of about a radian and an Å
        deformation = model.decode(torch.zeros(2, 2), sample_segmentation=False)
    # The same per-residue transform moves the CA and the Gaussian.
    rotations, translations = deformation.rotations.double(), deformation.translations.double()
    expected = torch.einsum("brij,rj->bri", rotations, torch.as_tensor(centroids)) + translations
    torch.testing.assert_close(deformation.render_coords.double(), expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(deformation.render_coords, deformation.coords)
    # Without separate Gaussians they sit on the CA.
    plain, _ = model_of()
    with torch.no_grad():
        plain.decoder.network[-1].weight.zero_()  # no motion at all
        same = plain.decode(torch.zeros(1, 2), sample_segmentation=False)
    assert same.render_coords is same.coords
    torch.testing.assert_close(same.coords[0].double(), torch.as_tensor(base), atol=1e-5, rtol=0)


def test_two_gaussians_of_one_residue_move_with_that_residue():
    rng = np.random.default_rng(2)
    residue = np.repeat(np.arange(12), 2)[:-1]  # residue 11 has one Gaussian (a glycine)
    points = rng.normal(size=(len(residue), 3)) * 10
    model, _ = model_of(gaussian_coords=points, gaussian_residue=residue, rotate_about="segment")
    with torch.no_grad():
        model.decoder.network[-1].bias.normal_()
        deformation = model.decode(torch.zeros(2, 2), sample_segmentation=False)
    rotations, translations = deformation.rotations.double()[:, residue], deformation.translations.double()[:, residue]
    expected = torch.einsum("bgij,gj->bgi", rotations, torch.as_tensor(points)) + translations
    assert deformation.render_coords.shape == (2, 23, 3) and deformation.coords.shape == (2, 12, 3)
    torch.testing.assert_close(deformation.render_coords.double(), expected, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="gaussian_residue"):
        model_of(gaussian_residue=residue)


def test_an_unknown_rotation_centre_is_refused():
    with pytest.raises(ValueError, match="rotate_about"):
        model_of(rotate_about="hinge")


def test_the_encoder_takes_the_pose_when_asked():
    model, _ = model_of(encoder_pose=True, latent_std_scale=0.1)
    images, poses = torch.randn(3, 16, 16), torch.eye(3).expand(3, 3, 3)
    mean, std = model.encode(images, torch.arange(3), poses)
    assert mean.shape == (3, 2) and torch.all(std < 0.2)
    other, _ = model.encode(images, torch.arange(3), -poses)
    assert not torch.allclose(mean, other)
