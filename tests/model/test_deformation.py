import roma
import torch

from cryodomain.model.deformation import (
    compose_quaternion_planes_in_order,
    deform_atoms,
    deform_points,
    pivot_translations,
    quaternion_to_matrix,
    residue_transforms,
    scaled_rotation_planes,
)


def compose_in_order(matrices: torch.Tensor) -> torch.Tensor:
    """Reference: product ``M_{K-1} ... M_1 M_0`` of a sequence of matrices, by pairwise tree reduction.

    ``ceil(log2 K)`` rounds of batched matmuls instead of ``K`` sequential ones; each round
    multiplies neighbours ``(2j, 2j+1)`` into ``M_{2j+1} M_{2j}``, which keeps the order.

    Args:
        matrices: ``(..., K, d, d)`` with ``K >= 1``.

    Returns:
        ``(..., d, d)``.
    """
    while matrices.shape[-3] > 1:
        if matrices.shape[-3] % 2 == 1:
            # An identity appended at the end is applied last and changes nothing.
            identity = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
            identity = identity.expand(*matrices.shape[:-3], 1, *matrices.shape[-2:])
            matrices = torch.cat([matrices, identity], dim=-3)
        matrices = matrices[..., 1::2, :, :] @ matrices[..., 0::2, :, :]
    return matrices[..., 0, :, :]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_hot_memberships(segment_of_residue: torch.Tensor, n_segments: int, batch: int) -> torch.Tensor:
    memberships = torch.nn.functional.one_hot(segment_of_residue, n_segments).to(torch.float64)
    return memberships[None].repeat(batch, 1, 1)


def test_zero_motion_gives_back_the_base_structure():
    base = torch.randn(30, 3, generator=generator(), dtype=torch.float64) * 10
    memberships = torch.softmax(torch.randn(2, 30, 4, generator=generator(1), dtype=torch.float64), dim=-1)
    rotations, translations = residue_transforms(memberships, torch.zeros(2, 4, 3, dtype=torch.float64), torch.zeros(2, 4, 3, dtype=torch.float64))
    deformed = deform_points(base, rotations, translations)
    torch.testing.assert_close(deformed, base[None].expand(2, -1, -1))


def test_one_hot_segmentation_moves_each_segment_rigidly():
    base = torch.randn(12, 3, generator=generator(), dtype=torch.float64) * 10
    segment_of_residue = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    rotvecs = torch.randn(2, 3, 3, generator=generator(2), dtype=torch.float64)
    shifts = torch.randn(2, 3, 3, generator=generator(3), dtype=torch.float64) * 5
    rotations, translations = residue_transforms(one_hot_memberships(segment_of_residue, 3, 2), rotvecs, shifts)
    deformed = deform_points(base, rotations, translations)
    segment_rotations = roma.rotvec_to_rotmat(rotvecs)  # (B, K, 3, 3)
    for k in range(3):
        points = base[segment_of_residue == k]
        expected = torch.einsum("bij,rj->bri", segment_rotations[:, k], points) + shifts[:, k, None, :]
        torch.testing.assert_close(deformed[:, segment_of_residue == k], expected)


def test_pivot_translations_rotate_each_segment_about_its_own_centroid():
    base = torch.randn(12, 3, generator=generator(), dtype=torch.float64) * 10 + 30.0
    segment_of_residue = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    memberships = one_hot_memberships(segment_of_residue, 3, 2)
    rotvecs = torch.randn(2, 3, 3, generator=generator(2), dtype=torch.float64)
    shifts = torch.randn(2, 3, 3, generator=generator(3), dtype=torch.float64) * 5
    rotations, translations = residue_transforms(memberships, rotvecs, pivot_translations(memberships, rotvecs, shifts, base))
    deformed = deform_points(base, rotations, translations)
    segment_rotations = roma.rotvec_to_rotmat(rotvecs)
    for k in range(3):
        points = base[segment_of_residue == k]
        centre = points.mean(dim=0)
        # x -> R (x - c) + c + t: the centroid moves by t exactly, whatever the rotation.
        expected = torch.einsum("bij,rj->bri", segment_rotations[:, k], points - centre) + centre + shifts[:, k, None, :]
        torch.testing.assert_close(deformed[:, segment_of_residue == k], expected)
        torch.testing.assert_close(deformed[:, segment_of_residue == k].mean(dim=1), centre + shifts[:, k])


def test_tree_product_equals_sequential_product_for_every_segment_count():
    for n_segments in range(1, 10):
        matrices = roma.rotvec_to_rotmat(torch.randn(2, 5, n_segments, 3, generator=generator(n_segments), dtype=torch.float64))
        sequential = matrices[..., 0, :, :]
        for k in range(1, n_segments):
            sequential = matrices[..., k, :, :] @ sequential  # segment 0 applied first
        torch.testing.assert_close(compose_in_order(matrices), sequential)


def test_rotation_composes_scaled_segment_rotations_in_segment_order():
    # A residue shared between two segments gets exp(w1 r1) exp(w0 r0): segment 0 first.
    rotvecs = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.8, 0.0]]], dtype=torch.float64)
    memberships = torch.tensor([[[0.3, 0.7]]], dtype=torch.float64)
    rotations, translations = residue_transforms(memberships, rotvecs, torch.ones(1, 2, 3, dtype=torch.float64))
    expected = roma.rotvec_to_rotmat(0.7 * rotvecs[0, 1]) @ roma.rotvec_to_rotmat(0.3 * rotvecs[0, 0])
    torch.testing.assert_close(rotations[0, 0], expected)
    torch.testing.assert_close(translations[0, 0], torch.ones(3, dtype=torch.float64))


def test_atoms_move_with_their_residue():
    n_residues, atoms_per_residue = 8, 4
    residue_points = torch.randn(n_residues, 3, generator=generator(), dtype=torch.float64) * 10
    atom_residue_index = torch.arange(n_residues).repeat_interleave(atoms_per_residue)
    atom_points = residue_points[atom_residue_index] + torch.randn(n_residues * atoms_per_residue, 3, generator=generator(5), dtype=torch.float64)
    # Make the first atom of each residue the representative one (CA).
    representative = torch.arange(n_residues) * atoms_per_residue
    atom_points[representative] = residue_points
    memberships = torch.softmax(torch.randn(3, n_residues, 3, generator=generator(6), dtype=torch.float64), dim=-1)
    rotations, translations = residue_transforms(
        memberships, torch.randn(3, 3, 3, generator=generator(7), dtype=torch.float64), torch.randn(3, 3, 3, generator=generator(8), dtype=torch.float64)
    )
    atoms = deform_atoms(atom_points, atom_residue_index, rotations, translations)
    residues = deform_points(residue_points, rotations, translations)
    assert atoms.shape == (3, n_residues * atoms_per_residue, 3)
    torch.testing.assert_close(atoms[:, representative], residues)
    # Distances inside a residue are preserved: each residue moves rigidly.
    torch.testing.assert_close(torch.linalg.norm(atoms[:, 1] - atoms[:, 0], dim=-1), torch.linalg.norm(atom_points[1] - atom_points[0]).expand(3))


def test_residues_with_zero_membership_do_not_move():
    base = torch.randn(4, 3, generator=generator(), dtype=torch.float64)
    memberships = torch.zeros(1, 4, 2, dtype=torch.float64)
    memberships[0, :2, 0] = 1.0
    rotvecs = torch.randn(1, 2, 3, generator=generator(9), dtype=torch.float64)
    rotations, translations = residue_transforms(memberships, rotvecs, torch.ones(1, 2, 3, dtype=torch.float64))
    torch.testing.assert_close(deform_points(base, rotations, translations)[0, 2:], base[2:])


def test_quaternion_tables_agree_with_roma():
    p = roma.random_unitquat(50, dtype=torch.float64)
    q = roma.random_unitquat(50, dtype=torch.float64)
    # The tree's product of the sequence (q, p) is p q: q applied first.
    planes = torch.stack([q, p]).permute(2, 0, 1)  # (4, K=2, 50)
    torch.testing.assert_close(compose_quaternion_planes_in_order(planes).T, roma.quat_product(p, q))
    torch.testing.assert_close(quaternion_to_matrix(p), roma.unitquat_to_rotmat(p))


def test_scaled_quaternions_equal_the_quaternions_of_the_scaled_rotation_vectors():
    memberships = torch.softmax(torch.randn(2, 7, 3, generator=generator(1), dtype=torch.float64), dim=-1)
    rotvecs = torch.randn(2, 3, 3, generator=generator(2), dtype=torch.float64) * 2.0
    rotvecs[1, 2] = 0.0  # a segment that does not turn
    expected = roma.rotvec_to_unitquat(memberships[..., None] * rotvecs[:, None])
    torch.testing.assert_close(scaled_rotation_planes(memberships, rotvecs).permute(2, 3, 1, 0), expected)


def test_gradients_are_finite_when_a_segment_does_not_turn():
    memberships = torch.softmax(torch.randn(1, 5, 2, generator=generator(3)), dim=-1).requires_grad_()
    rotvecs = torch.zeros(1, 2, 3, requires_grad=True)
    rotations, _ = residue_transforms(memberships, rotvecs, torch.zeros(1, 2, 3))
    (rotations * torch.randn(rotations.shape, generator=generator(4))).sum().backward()
    assert torch.isfinite(memberships.grad).all() and torch.isfinite(rotvecs.grad).all()
    # At zero rotation the derivative of the rotation along r_k is the membership times r_k's generator.
    assert rotvecs.grad.abs().sum() > 0


def test_composition_gradients_match_finite_differences():
    # The tree's product has a hand-written backward (conjugate products): check it numerically.
    memberships = torch.softmax(torch.randn(2, 4, 5, generator=generator(9), dtype=torch.float64), dim=-1)
    rotvecs = torch.randn(2, 5, 3, generator=generator(10), dtype=torch.float64)

    def rotations(memberships, rotvecs):
        return residue_transforms(memberships, rotvecs, torch.zeros(2, 5, 3, dtype=torch.float64))[0]

    assert torch.autograd.gradcheck(rotations, (memberships.requires_grad_(), rotvecs.requires_grad_()))
