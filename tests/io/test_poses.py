import numpy as np
import pytest

from cryodomain.io.poses import (
    cryosparc_pose_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_relion_euler,
    relion_euler_to_matrix,
)


def relion_euler_angles2matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix, written out element by element from its definition."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (0, 40, 0), (10, 70, -120), (-150, 123, 45)])
def test_relion_euler_matches_relion_definition(angles):
    np.testing.assert_allclose(relion_euler_to_matrix(np.array(angles)), relion_euler_angles2matrix(*angles), atol=1e-12)


def test_rot_angle_turns_the_view_by_minus_rot_about_z():
    # RELION's A for rot=90 maps the model x axis onto -y of the view.
    matrix = relion_euler_to_matrix(np.array([90.0, 0.0, 0.0]))
    np.testing.assert_allclose(matrix @ np.array([1.0, 0, 0]), [0, -1, 0], atol=1e-12)


def test_relion_euler_round_trip():
    rng = np.random.default_rng(0)
    angles = np.stack([rng.uniform(-180, 180, 50), rng.uniform(1, 179, 50), rng.uniform(-180, 180, 50)], -1)
    matrices = relion_euler_to_matrix(angles)
    np.testing.assert_allclose(relion_euler_to_matrix(matrix_to_relion_euler(matrices)), matrices, atol=1e-9)


def test_cryosparc_pose_is_transposed_rodrigues():
    rotvec = np.array([0.0, 0.0, np.pi / 2])
    # Rodrigues of +90 deg about z maps x to +y; cryoSPARC's A is its transpose, mapping x to -y.
    np.testing.assert_allclose(cryosparc_pose_to_matrix(rotvec) @ np.array([1.0, 0, 0]), [0, -1, 0], atol=1e-12)
    rng = np.random.default_rng(1)
    rotvecs = rng.normal(size=(20, 3))
    rotvecs *= (np.pi * 0.9 / np.linalg.norm(rotvecs, axis=1))[:, None] * rng.uniform(0, 1, (20, 1))
    np.testing.assert_allclose(matrix_to_cryosparc_pose(cryosparc_pose_to_matrix(rotvecs)), rotvecs, atol=1e-9)
