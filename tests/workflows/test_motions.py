"""Segment motions and flexibility read from a decoder whose output is set by hand."""

import math

import numpy as np
import pytest
import roma
import torch

from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.segmentation import SegmentPart
from cryodomain.workflows.motions import SegmentMotions, motion_arrays, residue_rmsf, segment_motions

N_RESIDUES, K = 30, 3


def model_with_motion(axis, angle_deg, translation, rotate_about="origin", n_segments=K):
    """A model whose decoder gives every segment the same rotation and translation at any latent."""
    base = np.random.default_rng(0).normal(size=(N_RESIDUES, 3)) * 10 + np.array([5.0, -3.0, 2.0])
    model = CryoSphere(base, np.ones(N_RESIDUES), [SegmentPart(np.arange(N_RESIDUES), n_segments)], box=16, n_images=4, latent_dim=2, rotate_about=rotate_about)
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    # The decoder's rotation output is the imaginary part o of the quaternion (1, o): |o| = tan(angle / 2).
    per_segment = np.concatenate([axis * math.tan(math.radians(angle_deg) / 2), translation])
    with torch.no_grad():
        last = model.decoder.network[-1]
        last.weight.zero_()
        last.bias.copy_(torch.as_tensor(np.tile(per_segment, n_segments), dtype=torch.float32))
    return model, base


def test_the_angle_axis_and_translation_are_the_decoders():
    model, base = model_with_motion([1.0, 2.0, 2.0], 30.0, [0.0, 0.0, 0.0])
    motions = segment_motions(model, np.zeros((5, 2), dtype=np.float32))
    assert motions.angle_deg.shape == (5, K) and motions.axis.shape == (5, K, 3)
    np.testing.assert_allclose(motions.angle_deg, 30.0, atol=1e-3)
    np.testing.assert_allclose(motions.axis, np.broadcast_to([1 / 3, 2 / 3, 2 / 3], (5, K, 3)), atol=1e-5)
    # Every residue rotates by the same rotation about the origin: each membership-weighted centre
    # c moves to R c, and the rigid motion about c is a translation of R c - c.
    rotation = roma.rotvec_to_rotmat(torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3 * math.radians(30.0)).numpy()
    memberships = model.segmentation(1, sample=False)[0].detach().double().numpy()  # (R, K)
    centres = memberships.T @ base / memberships.sum(axis=0)[:, None]
    expected = centres @ rotation.T - centres
    np.testing.assert_allclose(motions.translation_A[0], expected, atol=2e-3)
    np.testing.assert_allclose(motions.displacement_A[0], np.linalg.norm(expected, axis=1), atol=2e-3)


def test_a_pure_translation_moves_every_centre_by_it_whatever_the_pivot():
    for about in ("origin", "segment"):
        model, _ = model_with_motion([0.0, 0.0, 1.0], 0.0, [3.0, -4.0, 0.0], rotate_about=about)
        motions = segment_motions(model, np.zeros((2, 2), dtype=np.float32))
        np.testing.assert_allclose(motions.angle_deg, 0.0, atol=1e-4)
        np.testing.assert_allclose(motions.displacement_A, 5.0, atol=1e-4)
        np.testing.assert_allclose(motions.translation_A, np.broadcast_to([3.0, -4.0, 0.0], (2, K, 3)), atol=1e-4)


def test_one_hot_segments_by_hand_about_either_pivot():
    # Two rigid segments of two residues each; segment 1 turns 90 degrees about z and shifts.
    base = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [10.0, 0.0, 0.0], [10.0, 2.0, 0.0]], dtype=torch.float64)
    memberships = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)[None]
    rotvecs = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.pi / 2]]], dtype=torch.float64)
    shift = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    centre = torch.tensor([10.0, 1.0, 0.0], dtype=torch.float64)
    turn = roma.rotvec_to_rotmat(rotvecs[0, 1])
    moved = base.clone()
    moved[2:] = (base[2:] - centre) @ turn.T + centre + shift
    # As the segment-pivot model writes it (t about the centre) and as the origin model does.
    for about_segment, translation in ((True, shift), (False, shift + centre - turn @ centre)):
        translations = torch.stack([torch.zeros(3, dtype=torch.float64), translation])[None]
        arrays = motion_arrays(memberships, rotvecs, translations, base, moved[None], about_segment=about_segment)
        np.testing.assert_allclose(arrays["angle_deg"][0].numpy(), [0.0, 90.0], atol=1e-9)
        np.testing.assert_allclose(arrays["axis"][0, 1].numpy(), [0.0, 0.0, 1.0], atol=1e-12)
        np.testing.assert_allclose(arrays["axis"][0, 0].numpy(), [0.0, 0.0, 0.0])  # no rotation, no axis
        np.testing.assert_allclose(arrays["translation_A"][0, 1].numpy(), [0.0, 0.0, 1.0], atol=1e-9)
        np.testing.assert_allclose(arrays["displacement_A"][0].numpy(), [0.0, 1.0], atol=1e-9)


def test_a_rotation_vector_longer_than_pi_is_read_as_the_shorter_turn():
    rotvecs = torch.tensor([[[0.0, 0.0, 1.5 * math.pi]]], dtype=torch.float64)
    base = torch.zeros(1, 3, dtype=torch.float64)
    arrays = motion_arrays(torch.ones(1, 1, 1, dtype=torch.float64), rotvecs, torch.zeros(1, 1, 3, dtype=torch.float64), base, base[None], about_segment=True)
    assert arrays["angle_deg"].item() == pytest.approx(90.0)
    np.testing.assert_allclose(arrays["axis"][0, 0].numpy(), [0.0, 0.0, -1.0])


def test_the_table_has_one_row_per_particle_and_segment():
    n = 4
    motions = SegmentMotions(np.arange(n * K, dtype=float).reshape(n, K), np.zeros((n, K, 3)), np.ones((n, K, 3)), np.full((n, K), 2.0))
    table = motions.table(particles=np.array([7, 3, 9, 1]))
    assert len(table) == n * K
    assert list(table.columns) == [
        "particle", "segment", "angle_deg", "axis_x", "axis_y", "axis_z", "translation_x_A", "translation_y_A", "translation_z_A", "displacement_A",
    ]  # fmt: skip
    assert table["particle"].tolist()[:4] == [7, 7, 7, 3] and table["segment"].tolist()[:4] == [0, 1, 2, 0]
    assert table["angle_deg"].tolist() == list(range(n * K))
    assert motions.subset(np.array([2])).angle_deg.tolist() == [[6.0, 7.0, 8.0]]


def test_rmsf_of_a_known_ensemble_by_hand():
    # A pure translation along x decoded at latent z: +d for one half of the latents, -d for the other.
    model, _ = model_with_motion([0.0, 0.0, 1.0], 0.0, [0.0, 0.0, 0.0])
    # The decoder's network gives 6 numbers per segment: make each segment's x translation equal z.
    model.decoder.network = torch.nn.Linear(1, 6 * K)
    with torch.no_grad():
        model.decoder.network.weight.zero_()
        model.decoder.network.bias.zero_()
        for k in range(K):
            model.decoder.network.weight[6 * k + 3, 0] = 1.0  # translation x = z
    z = np.array([[2.0], [-2.0], [2.0], [-2.0], [1.0]], dtype=np.float32)
    rmsf = residue_rmsf(model, z, batch_size=2)
    # x offsets 2, -2, 2, -2, 1: mean 0.2, mean square 17 / 5: RMSF = sqrt(3.4 - 0.04).
    np.testing.assert_allclose(rmsf, np.sqrt(3.4 - 0.04), rtol=1e-5)
    assert rmsf.shape == (N_RESIDUES,)
    # A single structure does not fluctuate.
    np.testing.assert_allclose(residue_rmsf(model, z[:1]), 0.0, atol=1e-6)


def test_a_shared_residue_pulls_the_centre_displacement_below_the_rigid_translation():
    # Residue 0 belongs to segment 0, residue 1 half to each; segment 0 shifts 2 Å along x, segment 1 not.
    base = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]], dtype=torch.float64)
    memberships = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]], dtype=torch.float64)
    translations = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    moved = base + torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)  # T_i = sum_k w_ik t_k
    arrays = motion_arrays(memberships, torch.zeros(1, 2, 3, dtype=torch.float64), translations, base, moved[None], about_segment=True)
    np.testing.assert_allclose(arrays["translation_A"][0, 0].numpy(), [2.0, 0.0, 0.0])
    # Centre of segment 0 moves by (1 * 2 + 0.5 * 1) / 1.5; that of segment 1 by (0.5 * 1) / 0.5.
    np.testing.assert_allclose(arrays["displacement_A"][0].numpy(), [5.0 / 3.0, 1.0], atol=1e-12)
