import numpy as np
import pytest
import torch

from cryodomain.model.deformation import deform_points, residue_transforms
from cryodomain.model.losses import continuity_loss, latent_kl
from cryodomain.model.networks import Decoder, Encoder, LatentTable, sample_latent
from cryodomain.model.segmentation import Segmentation, SegmentPart


def test_encoder_accepts_square_or_flat_images_and_gives_positive_std():
    torch.manual_seed(0)
    encoder = Encoder(n_pixels=64, latent_dim=4, hidden=(32, 16))
    images = torch.randn(5, 8, 8)
    mean, std = encoder(images)
    assert mean.shape == std.shape == (5, 4)
    assert torch.all(std > 0)
    flat_mean, flat_std = encoder(images.reshape(5, 64))
    torch.testing.assert_close(flat_mean, mean)
    torch.testing.assert_close(flat_std, std)


def test_encoder_default_architecture():
    encoder = Encoder(n_pixels=100)
    sizes = [layer.out_features for layer in encoder.network if isinstance(layer, torch.nn.Linear)]
    assert sizes == [512, 256, 64, 64, 16]


def test_latent_table_gives_one_mean_per_image_and_unit_std():
    table = LatentTable(n_images=10, latent_dim=3)
    with torch.no_grad():
        table.means[7] = torch.tensor([1.0, 2.0, 3.0])
    mean, std = table(torch.tensor([7, 0]))
    torch.testing.assert_close(mean, torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(std, torch.ones(2, 3))


def test_sample_latent_has_the_requested_distribution():
    torch.manual_seed(0)
    mean = torch.tensor([[1.0, -2.0]]).expand(20000, 2)
    std = torch.tensor([[0.5, 2.0]]).expand(20000, 2)
    samples = sample_latent(mean, std)
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -2.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.tensor([0.5, 2.0]), atol=0.05, rtol=0)


def test_decoder_starts_with_small_motions():
    torch.manual_seed(0)
    decoder = Decoder(latent_dim=8, n_segments=20)
    rotvecs, translations = decoder(torch.randn(16, 8) * 3)
    assert rotvecs.shape == translations.shape == (16, 20, 3)
    assert torch.linalg.norm(rotvecs, dim=-1).max() < np.deg2rad(2.0)
    assert translations.abs().max() < 0.5  # Å


def test_decoder_rotation_angles_stay_below_pi():
    decoder = Decoder(latent_dim=2, n_segments=3, hidden=(8,))
    with torch.no_grad():
        decoder.network[-1].bias.fill_(1e4)  # huge quaternion imaginary parts
    rotvecs, _ = decoder(torch.zeros(1, 2))
    angles = torch.linalg.norm(rotvecs, dim=-1)
    assert torch.all(angles < np.pi) and torch.all(angles > 3.0)


def test_gradients_reach_every_parameter_of_encoder_decoder_and_segmentation():
    torch.manual_seed(0)
    n_residues, batch = 24, 4
    base = torch.randn(n_residues, 3) * 5
    encoder = Encoder(n_pixels=36, latent_dim=4, hidden=(16, 8))
    decoder = Decoder(latent_dim=4, n_segments=5, hidden=(16,))
    segmentation = Segmentation([SegmentPart(np.arange(0, 10), 2), SegmentPart(np.arange(12, 24), 3)], n_residues=n_residues)
    mean, std = encoder(torch.randn(batch, 6, 6))
    rotvecs, translations = decoder(sample_latent(mean, std))
    rotations, shifts = residue_transforms(segmentation(batch), rotvecs, translations)
    deformed = deform_points(base, rotations, shifts)
    pairs = torch.stack([torch.arange(n_residues - 1), torch.arange(1, n_residues)], dim=1)
    target = base + torch.randn(n_residues, 3)
    loss = (deformed - target).square().mean() + continuity_loss(deformed, base, pairs) + latent_kl(mean, std) + sum(segmentation.kl_divergence().values())
    loss.backward()
    for module in (encoder, decoder, segmentation):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None, name
            assert torch.all(torch.isfinite(parameter.grad)), name
            assert parameter.grad.abs().sum() > 0, f"{type(module).__name__}.{name} gets no gradient"


@pytest.mark.parametrize("module_factory", [lambda: Encoder(16, 2, (4,)), lambda: Decoder(2, 3, (4,))])
def test_networks_follow_the_input_dtype(module_factory):
    module = module_factory().to(torch.float64)
    inputs = torch.randn(2, 16 if isinstance(module, Encoder) else 2, dtype=torch.float64)
    outputs = module(inputs)
    assert all(output.dtype == torch.float64 for output in outputs)
