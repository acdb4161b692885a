import pytest
import torch
from torch import nn

from cryodomain.model.losses import (
    all_pairs,
    clash_loss,
    clash_pairs_light,
    continuity_loss,
    correlation_loss,
    gaussian_kl,
    l2_penalty,
    latent_kl,
)


def zero_mean_images(batch: int = 3, side: int = 16) -> torch.Tensor:
    images = torch.randn(batch, side, side, generator=torch.Generator().manual_seed(0))
    return images - images.mean(dim=(1, 2), keepdim=True)


def chain(n_residues: int, spacing: float = 3.8) -> torch.Tensor:
    """A straight chain along x with CA-like spacing."""
    points = torch.zeros(n_residues, 3)
    points[:, 0] = torch.arange(n_residues) * spacing
    return points


def test_correlation_of_an_image_with_itself_is_minus_one():
    images = zero_mean_images()
    assert correlation_loss(images, images).item() == pytest.approx(-1.0, abs=1e-4)
    assert correlation_loss(images, -images).item() == pytest.approx(1.0, abs=1e-4)


def test_correlation_ignores_the_scale_of_the_prediction():
    images = zero_mean_images()
    assert correlation_loss(5.0 * images, images).item() == pytest.approx(-1.0, abs=1e-4)


def test_correlation_of_images_with_a_mean_follows_the_uncentred_formula():
    # Not a Pearson correlation: the products are of the raw pixels, only the stds are centred.
    # Image 0: I = (1, 3), Y = (2, 4): both stds 1, sum I Y = 14 over 2 pixels -> 7 (Pearson: 1).
    # Image 1: I = (0, 2), Y = (1, -1): both stds 1, sum I Y = -2 over 2 pixels -> -1 (Pearson: -1).
    predicted = torch.tensor([[[1.0, 3.0]], [[0.0, 2.0]]])
    observed = torch.tensor([[[2.0, 4.0]], [[1.0, -1.0]]])
    by_hand = -(7.0 + -1.0) / 2 / (1.0 + 1e-5) ** 2
    assert correlation_loss(predicted, observed).item() == pytest.approx(by_hand, rel=1e-6)
    # Larger images with means: the formula of the docstring in float64, pixel by pixel.
    generator = torch.Generator().manual_seed(2)
    predicted = torch.randn(4, 8, 8, generator=generator, dtype=torch.float64) + 1.5
    observed = 0.5 * predicted - 2.0 + 0.3 * torch.randn(4, 8, 8, generator=generator, dtype=torch.float64)
    per_image = [
        (p * o).sum().item() / ((o.std(correction=0).item() + 1e-5) * (p.std(correction=0).item() + 1e-5)) / p.numel() for p, o in zip(predicted, observed)
    ]
    assert correlation_loss(predicted, observed).item() == pytest.approx(-sum(per_image) / 4, rel=1e-9)


def test_latent_kl_is_zero_at_the_prior_and_positive_away():
    mean, std = torch.zeros(4, 8), torch.ones(4, 8)
    assert latent_kl(mean, std).item() == pytest.approx(0.0, abs=1e-6)
    # One dimension at mean 1: KL = 1/2 per image.
    mean[:, 0] = 1.0
    assert latent_kl(mean, std).item() == pytest.approx(0.5, abs=1e-6)
    assert torch.isfinite(latent_kl(mean, torch.zeros(4, 8)))


def test_gaussian_kl_matches_closed_form():
    assert gaussian_kl(torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3)).item() == pytest.approx(0.0)
    # KL(N(1, 2^2) || N(0, 1)) = log(1/2) - 1/2 + (4 + 1) / 2.
    value = gaussian_kl(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert value.item() == pytest.approx(torch.log(torch.tensor(0.5)).item() - 0.5 + 2.5, rel=1e-6)


def test_continuity_is_zero_for_a_rigid_motion_of_the_whole_model():
    base = chain(10)
    rotation = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]]))
    moved = (base @ rotation.T + torch.tensor([5.0, -2.0, 1.0]))[None]
    pairs = torch.stack([torch.arange(9), torch.arange(1, 10)], dim=1)
    assert continuity_loss(moved, base, pairs).item() == pytest.approx(0.0, abs=1e-8)
    stretched = (base * 2.0)[None]
    assert continuity_loss(stretched, base, pairs).item() == pytest.approx(3.8**2, rel=1e-5)


def test_continuity_without_pairs_is_zero():
    base = chain(4)
    empty = torch.zeros((0, 2), dtype=torch.int64)
    assert continuity_loss(base[None] * 3.0, base, empty).item() == 0.0


def test_clash_loss_is_exactly_zero_without_clash():
    deformed = chain(12)[None].repeat(2, 1, 1).requires_grad_()
    loss = clash_loss(deformed, all_pairs(12))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(torch.isfinite(deformed.grad))


def test_clash_loss_is_the_mean_penalty_over_clashing_pairs():
    points = chain(6)
    points[5] = points[0] + torch.tensor([0.0, 1.0, 0.0])  # residue 5 lands 1 Å from residue 0
    batch = torch.stack([points, chain(6)])  # the second image has no clash
    loss = clash_loss(batch, all_pairs(6), cutoff=4.0)
    # Image 0 clashes on (0, 5) at 1 Å and (1, 5) at sqrt(3.8^2 + 1) Å; image 1 on nothing.
    image0 = ((4.0 - 1.0) ** 2 + (4.0 - (3.8**2 + 1.0) ** 0.5) ** 2) / 2
    assert loss.item() == pytest.approx(image0 / 2, rel=1e-5)
    assert loss.item() > 0


def test_clash_loss_gradient_is_finite_for_coincident_residues():
    points = chain(5)
    points[4] = points[0]
    deformed = points[None].clone().requires_grad_()
    clash_loss(deformed, all_pairs(5)).backward()
    assert torch.all(torch.isfinite(deformed.grad))


def test_all_pairs_skip_neighbours():
    pairs = all_pairs(5, min_separation=2)
    assert pairs.tolist() == [[0, 2], [0, 3], [0, 4], [1, 3], [1, 4], [2, 4]]
    assert pairs.dtype == torch.int64


def test_light_clash_pairs_are_those_within_the_distance_band():
    base = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)) * 8.0
    pairs = clash_pairs_light(base, low=4.0, high=10.0, min_separation=2)
    distances = torch.cdist(base, base)
    expected = {(i, j) for i in range(40) for j in range(i + 2, 40) if 4.0 <= distances[i, j] <= 10.0}
    assert {tuple(pair) for pair in pairs.tolist()} == expected
    assert pairs.dtype == torch.int64


def test_l2_penalty_counts_weights_not_biases():
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(100.0)
    assert l2_penalty([layer]).item() == pytest.approx(5.0)
