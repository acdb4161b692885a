"""Pose conventions of RELION and cryoSPARC files, stated once.

Conventions used everywhere in cryodomain (and tested in ``tests/io/test_poses.py``):

* Coordinates are column vectors ``(x, y, z)`` in Å. Images are arrays indexed ``[y, x]`` (row = y,
  column = x, as stored in MRC files), pixel ``k`` along an axis sits at ``(k - N // 2) * apix``.
* A particle rotation is RELION's matrix ``A`` (``Euler_angles2matrix``): it takes model
  coordinates to the view frame, ``y = A @ x``, and the image is the projection of the rotated
  model along ``z``. With RELION's angles (rot, tilt, psi) in the ZYZ convention,
  ``A = (Rz(rot) @ Ry(tilt) @ Rz(psi)).T``, i.e. ``A = Rz(-psi) @ Ry(-tilt) @ Rz(-rot)`` with
  ``Rz``, ``Ry`` active right-handed rotations.
* cryoSPARC stores ``alignments3D/pose`` as a rotation vector ``v`` with ``A = exp([v]_x).T``
  (the transpose of the usual Rodrigues matrix, as cryoDRGN and pyem read it).
* A shift is RELION's ``rlnOriginX/YAngst`` (cryoSPARC ``alignments3D/shift`` in pixels has the
  same sign): the particle's centre lies at ``-shift`` from the box centre, so translating the
  image content by ``+shift`` brings it to the model frame.

Angles are degrees in files and radians inside; these functions convert at the boundary.
"""

from __future__ import annotations

import numpy as np
import roma
import torch


def relion_euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrices from RELION Euler angles.

    Args:
        angles_deg: ``(..., 3)`` rlnAngleRot, rlnAngleTilt, rlnAnglePsi in degrees.

    Returns:
        ``(..., 3, 3)`` float64 matrices ``A`` with ``y = A @ x`` (model -> view frame).
    """
    angles = torch.as_tensor(np.asarray(angles_deg, dtype=np.float64))
    # Intrinsic ZYZ (uppercase in roma/scipy) builds Rz(rot) Ry(tilt) Rz(psi); RELION's A is its transpose.
    matrix = roma.euler_to_rotmat("ZYZ", angles, degrees=True)
    return matrix.transpose(-1, -2).numpy()


def matrix_to_relion_euler(matrices: np.ndarray) -> np.ndarray:
    """RELION Euler angles (rot, tilt, psi) in degrees from ``(..., 3, 3)`` matrices ``A``.

    Returns ``(..., 3)`` float64 with tilt in [0, 180] and rot, psi in (-180, 180].
    """
    forward = torch.as_tensor(np.asarray(matrices, dtype=np.float64)).transpose(-1, -2)
    angles = roma.rotmat_to_euler("ZYZ", forward.contiguous(), degrees=True)
    return angles.numpy()


def cryosparc_pose_to_matrix(rotvecs: np.ndarray) -> np.ndarray:
    """Rotation matrices ``A`` (model -> view) from cryoSPARC ``alignments3D/pose`` vectors.

    Args:
        rotvecs: ``(..., 3)`` rotation vectors in radians.

    Returns:
        ``(..., 3, 3)`` float64.
    """
    rotvecs = torch.as_tensor(np.asarray(rotvecs, dtype=np.float64))
    return roma.rotvec_to_rotmat(rotvecs).transpose(-1, -2).numpy()


def matrix_to_cryosparc_pose(matrices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`cryosparc_pose_to_matrix`: ``(..., 3, 3)`` -> ``(..., 3)`` radians."""
    forward = torch.as_tensor(np.asarray(matrices, dtype=np.float64)).transpose(-1, -2)
    return roma.rotmat_to_rotvec(forward.contiguous()).numpy()
