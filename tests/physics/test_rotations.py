import math

import roma
import torch

from cryodomain.physics.rotations import imaginary_quaternion_to_rotvec, random_rotations


def test_random_rotations_are_proper_and_reproducible():
    first = random_rotations(100, torch.Generator().manual_seed(3))
    second = random_rotations(100, torch.Generator().manual_seed(3))
    assert first.shape == (100, 3, 3) and first.dtype == torch.float64
    assert torch.equal(first, second)
    assert not torch.equal(first, random_rotations(100, torch.Generator().manual_seed(4)))
    torch.testing.assert_close(torch.linalg.det(first), torch.ones(100, dtype=torch.float64))
    identity = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    torch.testing.assert_close(first @ first.transpose(-1, -2), identity)


def test_random_rotations_are_haar_uniform():
    rotations = random_rotations(20000, torch.Generator().manual_seed(5))
    # Haar measure: E[R] = 0 (each entry has std 1/sqrt(3); the mean's std is 0.004).
    assert rotations.mean(dim=0).abs().max() < 0.03
    # The view direction (third row) is uniform on the sphere: its z component is uniform on [-1, 1].
    histogram = torch.histc(rotations[:, 2, 2], bins=10, min=-1, max=1) / 20000
    assert (histogram - 0.1).abs().max() < 0.015
    # Rotation angles have density (1 - cos t) / pi: P(angle < pi/2) = (pi/2 - 1) / pi.
    angles = roma.rotmat_to_rotvec(rotations).norm(dim=-1)
    assert abs((angles < math.pi / 2).double().mean().item() - (math.pi / 2 - 1) / math.pi) < 0.01


def test_rotvec_is_zero_at_zero():
    rotvec = imaginary_quaternion_to_rotvec(torch.zeros(4, 3))
    assert torch.equal(rotvec, torch.zeros(4, 3))


def test_rotvec_angle_and_axis():
    o = torch.tensor([[0.0, 0.0, 1.0], [2.0, -1.0, 0.5], [1e-3, 0.0, 0.0], [100.0, 0.0, 0.0]], dtype=torch.float64)
    rotvec = imaginary_quaternion_to_rotvec(o)
    norms = o.norm(dim=-1)
    torch.testing.assert_close(rotvec.norm(dim=-1), 2 * torch.atan(norms))
    torch.testing.assert_close(rotvec / rotvec.norm(dim=-1, keepdim=True), o / norms[:, None])
    assert torch.all(rotvec.norm(dim=-1) < math.pi)


def test_rotvec_matches_roma_on_normalised_quaternion():
    o = torch.randn(500, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2
    o[:5] *= 1e-4  # exercise the series branch too
    quaternion_xyzw = torch.cat([o, torch.ones(500, 1, dtype=torch.float64)], dim=-1)
    quaternion_xyzw = quaternion_xyzw / quaternion_xyzw.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(imaginary_quaternion_to_rotvec(o), roma.unitquat_to_rotvec(quaternion_xyzw))
    # Batch dims are kept.
    assert imaginary_quaternion_to_rotvec(o.reshape(5, 100, 3)).shape == (5, 100, 3)


def test_rotvec_gradient_is_finite_at_zero():
    o = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(imaginary_quaternion_to_rotvec, o)
    torch.testing.assert_close(jacobian, 2 * torch.eye(3, dtype=torch.float64))
    o32 = torch.zeros(2, 3, requires_grad=True)
    imaginary_quaternion_to_rotvec(o32).sum().backward()
    assert torch.isfinite(o32.grad).all()


def test_rotvec_is_continuous_across_series_threshold():
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
    radii = torch.tensor([0.0099999, 0.01, 0.0100001], dtype=torch.float64)
    o = radii[:, None] * direction
    angles = imaginary_quaternion_to_rotvec(o).norm(dim=-1)
    torch.testing.assert_close(angles, 2 * torch.atan(radii), atol=1e-14, rtol=0)
