"""Rotation helpers: uniform random rotations and the decoder's quaternion parameterisation.

roma quaternions are in XYZW order (imaginary part first, real part last).
"""

from __future__ import annotations

import roma
import torch
from torch import Tensor

# Below this |o|^2 the rotation vector uses the Taylor series of 2 atan(r) / r (relative error < 1e-12).
_SERIES_THRESHOLD = 1e-4


def random_rotations(n: int, generator: torch.Generator, *, dtype=torch.float64) -> Tensor:
    """Rotation matrices drawn uniformly (Haar measure) on SO(3).

    Normalised 4-D Gaussian vectors are uniform on the unit quaternion sphere, whose image in
    SO(3) is Haar-distributed.

    Args:
        n: number of rotations.
        generator: random generator; its device is the output's device, same seed -> same output.
        dtype: floating dtype of the output.

    Returns:
        ``(n, 3, 3)`` rotation matrices.
    """
    quaternions = torch.randn(n, 4, generator=generator, dtype=dtype, device=generator.device)
    quaternions = quaternions / quaternions.norm(dim=-1, keepdim=True)
    return roma.unitquat_to_rotmat(quaternions)


def imaginary_quaternion_to_rotvec(o: Tensor) -> Tensor:
    """Rotation vector of the quaternion with real part 1 and imaginary part ``o``, normalised.

    The rotation has axis ``o / |o|`` and angle ``2 atan(|o|)``, always below pi, so the result is
    ``2 atan(|o|) / |o| * o``. It is exactly zero at ``o = 0``, with Jacobian ``2 I`` there.

    Args:
        o: ``(..., 3)`` imaginary parts (dimensionless).

    Returns:
        ``(..., 3)`` rotation vectors (axis times angle in radians).
    """
    norm_sq = (o * o).sum(dim=-1, keepdim=True)
    small = norm_sq < _SERIES_THRESHOLD
    # Keep the sqrt away from 0 in the branch not taken, so its gradient never becomes NaN.
    safe_norm = torch.sqrt(torch.where(small, torch.ones_like(norm_sq), norm_sq))
    exact_scale = 2.0 * torch.atan(safe_norm) / safe_norm
    # 2 atan(r) / r = 2 (1 - r^2/3 + r^4/5 - ...).
    series_scale = 2.0 * (1.0 - norm_sq / 3.0 + norm_sq * norm_sq / 5.0)
    return torch.where(small, series_scale, exact_scale) * o
