import numpy as np
import pytest
import torch

from cryodomain.errors import InputError
from cryodomain.model.deformation import deform_points, residue_transforms
from cryodomain.model.segmentation import Segmentation, SegmentPart, uniform_centres


def two_part_segmentation() -> Segmentation:
    # 40 residues: part 0 = residues 0..11 with 3 segments, part 1 = residues 20..34 with 5 segments.
    parts = [SegmentPart(np.arange(0, 12), 3), SegmentPart(np.arange(20, 35), 5)]
    return Segmentation(parts, n_residues=40)


def test_memberships_sum_to_one_within_each_part_and_zero_outside():
    torch.manual_seed(0)
    segmentation = two_part_segmentation()
    assert segmentation.n_segments == 8
    memberships = segmentation(6)
    assert memberships.shape == (6, 40, 8)
    torch.testing.assert_close(memberships[:, 0:12, :3].sum(-1), torch.ones(6, 12))
    torch.testing.assert_close(memberships[:, 20:35, 3:].sum(-1), torch.ones(6, 15))
    assert torch.all(memberships[:, 0:12, 3:] == 0)
    assert torch.all(memberships[:, 20:35, :3] == 0)
    outside = torch.cat([torch.arange(12, 20), torch.arange(35, 40)])
    assert torch.all(memberships[:, outside] == 0)


def test_samples_differ_and_means_are_deterministic():
    torch.manual_seed(0)
    segmentation = two_part_segmentation()
    sampled = segmentation(2)
    assert not torch.allclose(sampled[0], sampled[1])
    means = segmentation(3, sample=False)
    torch.testing.assert_close(means[0], means[2])


def test_default_start_splits_each_part_into_even_blocks():
    segmentation = two_part_segmentation()
    segment, probability = segmentation.hard_assignment()
    # Part 0 (12 residues, 3 segments) has centres 2, 6, 10; part 1 (15 residues, 5 segments) 1.5, 4.5, ...
    centres = np.concatenate([[2.0, 6.0, 10.0], 1.5 + 3.0 * np.arange(5)])
    for residue, local_index in [*zip(range(12), range(12)), *zip(range(20, 35), range(15))]:
        part_segments = range(3) if residue < 12 else range(3, 8)
        nearest = min(abs(local_index - centres[k]) for k in part_segments)
        assert abs(local_index - centres[segment[residue]]) == nearest
    assert np.all(segment[12:20] == -1) and np.all(probability[12:20] == 0)
    assert np.all(probability[:12] >= 0.49)


def test_kl_is_zero_at_the_prior_and_positive_away():
    segmentation = two_part_segmentation()
    for value in segmentation.kl_divergence().values():
        assert value.item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        segmentation.centre_mean += 3.0
        segmentation.proportion_std_raw.mul_(0.5)
    kl = segmentation.kl_divergence()
    assert kl["centres"].item() > 0.1 and kl["proportions"].item() > 0.1
    assert kl["widths"].item() == pytest.approx(0.0, abs=1e-5)


def test_custom_start_values_and_prior_are_used():
    part = SegmentPart(
        np.arange(10), 2, init_centres=np.array([1.0, 7.0]), init_widths=np.array([2.0, 3.0]), prior_centres=uniform_centres(10, 2), prior_centre_std=5.0
    )
    segmentation = Segmentation([part], n_residues=10)
    torch.testing.assert_close(segmentation.centre_mean, torch.tensor([1.0, 7.0]))
    torch.testing.assert_close(segmentation.prior_centre_mean, torch.tensor([2.5, 7.5]))
    torch.testing.assert_close(segmentation.prior_centre_std, torch.tensor([5.0, 5.0]))
    torch.testing.assert_close(segmentation.prior_width_mean, torch.tensor([2.0, 3.0]))


def test_invalid_parts_are_reported_as_input_errors():
    with pytest.raises(InputError):
        SegmentPart(np.arange(10), 3, init_centres=np.array([1.0, 2.0]))
    with pytest.raises(InputError):
        Segmentation([SegmentPart(np.arange(0, 10), 2), SegmentPart(np.arange(5, 15), 2)], n_residues=20)
    with pytest.raises(InputError):
        Segmentation([SegmentPart(np.arange(0, 10), 2)], n_residues=8)


def test_many_segments_on_few_residues_stay_finite_under_aggressive_training(one_thread):
    # 20 segments on 30 residues, widths pushed towards collapse: the published code gives NaN here.
    torch.manual_seed(0)
    n_residues, n_segments = 30, 20
    segmentation = Segmentation([SegmentPart(np.arange(n_residues), n_segments)], n_residues=n_residues)
    base = torch.randn(n_residues, 3) * 5
    target = base + torch.randn(n_residues, 3)  # not reachable by rigid segments
    rotvecs = torch.zeros(1, n_segments, 3, requires_grad=True)
    translations = torch.zeros(1, n_segments, 3, requires_grad=True)
    optimiser = torch.optim.Adam([*segmentation.parameters(), rotvecs, translations], lr=0.5)
    for _ in range(200):
        memberships = segmentation(2)
        rotations, shifts = residue_transforms(memberships, rotvecs.expand(2, -1, -1), translations.expand(2, -1, -1))
        deformed = deform_points(base, rotations, shifts)
        loss = (deformed - target).square().mean() + segmentation.width_mean.sum()
        loss = loss + 1e-3 * sum(segmentation.kl_divergence().values())
        optimiser.zero_grad()
        loss.backward()
        for parameter in segmentation.parameters():
            assert torch.all(torch.isfinite(parameter.grad))
        optimiser.step()
        assert torch.isfinite(loss)
    # The widths collapsed far below where v^2 = (ELU + 1)^2 underflows to 0 in float32 (about -52).
    assert segmentation.width_mean.min().item() < -60
    memberships = segmentation(4)
    assert torch.all(torch.isfinite(memberships))
    torch.testing.assert_close(memberships.sum(-1), torch.ones(4, n_residues))
    assert all(torch.isfinite(value) for value in segmentation.kl_divergence().values())
