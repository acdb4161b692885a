"""Deformation of the base structure by soft segments.

Each segment ``k`` carries a rotation vector ``r_k`` (radians, axis times angle) and a translation
``t_k`` (Å). Residue ``i`` with memberships ``w_ik`` gets

* the rotation ``Rot_i = E_{K-1} ... E_1 E_0`` with ``E_k = exp(w_ik * r_k)``: segment 0's rotation is
  applied first to the point, segment ``K-1``'s last (matrices left-multiply column vectors);
* the translation ``T_i = sum_k w_ik t_k``;

and moves to ``x'_i = Rot_i x_i + T_i``: rotations are about the origin of the model frame (the box
centre, where the model is centred). With near one-hot memberships each segment moves as a rigid body.
"""

from __future__ import annotations

import numpy as np
import roma
import torch
from torch import Tensor

# Squared rotation angle below which the angle is taken as 1e-6 rad (its gradient is then 0).
_SQUARED_ANGLE_FLOOR = 1e-12


# Quaternions are XYZW (roma's order). The rotation matrix of a quaternion is a quadratic form:
# a matrix product with the outer product ``q_a q_b`` flattened to 16 entries (index ``4 a + b``).
def _rotation_table() -> np.ndarray:
    """``(16, 9)``: ``R(q)_ij = sum_ab q_a q_b T[4 a + b, 3 i + j]`` for a unit quaternion ``q``.

    The homogeneous (purely quadratic) form of the rotation matrix, as ``roma.unitquat_to_rotmat``.
    """
    x, y, z, w = range(4)
    entries = {  # (i, j): [(coefficient, a, b), ...]
        (0, 0): [(1, x, x), (-1, y, y), (-1, z, z), (1, w, w)],
        (0, 1): [(2, x, y), (-2, z, w)],
        (0, 2): [(2, x, z), (2, y, w)],
        (1, 0): [(2, x, y), (2, z, w)],
        (1, 1): [(-1, x, x), (1, y, y), (-1, z, z), (1, w, w)],
        (1, 2): [(2, y, z), (-2, x, w)],
        (2, 0): [(2, x, z), (-2, y, w)],
        (2, 1): [(2, y, z), (2, x, w)],
        (2, 2): [(-1, x, x), (-1, y, y), (1, z, z), (1, w, w)],
    }
    table = np.zeros((16, 9))
    for (i, j), products in entries.items():
        for coefficient, a, b in products:
            table[4 * a + b, 3 * i + j] = coefficient
    return table


_ROTATION = _rotation_table()


def _outer(p: Tensor, q: Tensor) -> Tensor:
    """``(..., 4)`` x ``(..., 4)`` -> ``(..., 16)`` products ``p_a q_b`` at ``4 a + b``."""
    return (p.unsqueeze(-1) * q.unsqueeze(-2)).flatten(start_dim=-2)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices of unit quaternions (XYZW), as ``roma.unitquat_to_rotmat``.

    Args:
        q: ``(..., 4)`` unit quaternions.

    Returns:
        ``(..., 3, 3)``.
    """
    matrices = _outer(q, q) @ torch.as_tensor(_ROTATION, dtype=q.dtype, device=q.device)
    return matrices.unflatten(-1, (3, 3))


def _hamilton_planes(p: Tensor, q: Tensor, conjugate_p: bool = False, conjugate_q: bool = False) -> Tensor:
    """Hamilton product of quaternions stored as component planes: ``(4, ...)`` XYZW, equal shapes.

    Sixteen multiply-adds on the planes with no temporaries; ``conjugate_*`` negates the vector part
    of that factor first (for the backward pass).
    """
    px, py, pz, pw = p.unbind(0)
    qx, qy, qz, qw = q.unbind(0)
    sp = -1.0 if conjugate_p else 1.0
    sq = -1.0 if conjugate_q else 1.0
    signed_pw = pw * sq if conjugate_q else pw
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    x, y, z, w = out.unbind(0)
    # x = pw qx + px qw + py qz - pz qy, with the conjugation signs folded into the coefficients
    torch.mul(qx, signed_pw, out=x).addcmul_(px, qw, value=sp).addcmul_(py, qz, value=sp * sq).addcmul_(pz, qy, value=-sp * sq)
    torch.mul(qy, signed_pw, out=y).addcmul_(px, qz, value=-sp * sq).addcmul_(py, qw, value=sp).addcmul_(pz, qx, value=sp * sq)
    torch.mul(qz, signed_pw, out=z).addcmul_(px, qy, value=sp * sq).addcmul_(py, qx, value=-sp * sq).addcmul_(pz, qw, value=sp)
    torch.mul(pw, qw, out=w).addcmul_(px, qx, value=-sp * sq).addcmul_(py, qy, value=-sp * sq).addcmul_(pz, qz, value=-sp * sq)
    return out


class _TreeLevel(torch.autograd.Function):
    """One level of the tree: ``(4, K, ...)`` -> ``(4, ceil(K / 2), ...)`` with ``r_j = q_{2j+1} q_{2j}``.

    An odd last quaternion passes through (it is applied last). Backward: the Hamilton product is
    bilinear and its left/right multiplication matrices transpose to those of the conjugate, so
    ``dL/dp = g conj(q)`` and ``dL/dq = conj(p) g`` are one product each, written straight into the
    gradient of the level's input (no per-slice zero fills and sums as autograd would do).
    """

    @staticmethod
    def forward(ctx, planes: Tensor) -> Tensor:  # type: ignore[override]
        n = planes.shape[1]
        pairs = n // 2
        product = _hamilton_planes(planes[:, 1 : 2 * pairs : 2], planes[:, 0 : 2 * pairs : 2])
        ctx.save_for_backward(planes)
        if n % 2 == 0:
            return product
        return torch.cat([product, planes[:, n - 1 :]], dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (planes,) = ctx.saved_tensors
        n = planes.shape[1]
        pairs = n // 2
        later, earlier = planes[:, 1 : 2 * pairs : 2], planes[:, 0 : 2 * pairs : 2]
        grad_pairs = grad[:, :pairs]
        grad_planes = torch.empty_like(planes)
        grad_planes[:, 1 : 2 * pairs : 2] = _hamilton_planes(grad_pairs, earlier, conjugate_q=True)
        grad_planes[:, 0 : 2 * pairs : 2] = _hamilton_planes(later, grad_pairs, conjugate_p=True)
        if n % 2 == 1:
            grad_planes[:, n - 1] = grad[:, pairs]
        return grad_planes


def compose_quaternion_planes_in_order(planes: Tensor) -> Tensor:
    """Product ``q_{K-1} ... q_1 q_0`` of sequences of quaternions stored as component planes.

    Pairwise tree reduction over the sequence axis (``ceil(log2 K)`` levels); each level multiplies
    neighbours ``(2j, 2j+1)`` into ``q_{2j+1} q_{2j}``, which keeps the order.

    Args:
        planes: ``(4, K, ...)`` XYZW components of ``K >= 1`` quaternions per position.

    Returns:
        ``(4, ...)``.
    """
    while planes.shape[1] > 1:
        planes = _TreeLevel.apply(planes)
    return planes[:, 0]


def scaled_rotation_planes(memberships: Tensor, rotvecs: Tensor) -> Tensor:
    """Unit quaternions of ``exp(w_ik r_k)``, the segment rotations scaled by the memberships.

    Memberships are >= 0, so the angle of ``w_ik r_k`` is ``w_ik |r_k|`` and its axis
    ``u_k = r_k / |r_k|``: the quaternion is ``(sin(a) u_k, cos a)`` with ``a = w_ik |r_k| / 2``,
    built from ``(K, B, R)`` planes and one ``(K, B, 3)`` broadcast of the axes.

    Args:
        memberships: ``(B, R, K)`` memberships ``w_ik >= 0``.
        rotvecs: ``(B, K, 3)`` segment rotation vectors ``r_k``, radians.

    Returns:
        ``(4, K, B, R)`` XYZW component planes.
    """
    weights = memberships.permute(2, 0, 1).contiguous()  # (K, B, R)
    # The floor keeps the axis and the gradient finite at a zero rotation: there u_k = 0 and the
    # derivative of sin(a) u_k along r_k is sin(a) / |r_k| = w_ik / 2, as it should be.
    angles = rotvecs.square().sum(dim=-1).clamp_min(_SQUARED_ANGLE_FLOOR).sqrt()  # (B, K)
    axes = (rotvecs / angles.unsqueeze(-1)).permute(2, 1, 0).unsqueeze(-1)  # (3, K, B, 1)
    half_angles = weights * (0.5 * angles).T.unsqueeze(-1)  # (K, B, R)
    return torch.cat([torch.sin(half_angles) * axes, torch.cos(half_angles).unsqueeze(0)], dim=0)


def pivot_translations(memberships: Tensor, rotvecs: Tensor, translations: Tensor, base: Tensor) -> Tensor:
    """Segment translations that make each segment rotate about its own centre, not the origin.

    With ``c_k`` the membership-weighted centroid of segment ``k`` in the base structure and
    ``R_k = exp(r_k)``, the translation ``t_k + c_k - R_k c_k`` turns ``x -> R_k x + ...`` into
    ``x -> R_k (x - c_k) + c_k + t_k``: a rotation step then moves a segment's atoms by its own
    radius times the angle wherever the segment sits, and ``t_k`` is its centre's displacement.

    Args:
        memberships: ``(B, R, K)`` memberships ``w_ik >= 0``.
        rotvecs: ``(B, K, 3)`` segment rotation vectors ``r_k``, radians.
        translations: ``(B, K, 3)`` segment displacements ``t_k``, Å.
        base: ``(R, 3)`` Å base structure.

    Returns:
        ``(B, K, 3)`` Å translations about the origin, for :func:`residue_transforms`.
    """
    # Centroids of the segments: sum_i w_ik x_i / sum_i w_ik (an empty segment's centroid is 0).
    weight = memberships.sum(dim=1).clamp_min(1e-6).unsqueeze(-1)  # (B, K, 1)
    centres = torch.matmul(memberships.transpose(1, 2), base) / weight  # (B, K, 3)
    rotated = (roma.rotvec_to_rotmat(rotvecs) * centres.unsqueeze(-2)).sum(dim=-1)  # R_k c_k
    return translations + centres - rotated


def residue_transforms(memberships: Tensor, rotvecs: Tensor, translations: Tensor) -> tuple[Tensor, Tensor]:
    """Rigid transform of every residue from the segment motions.

    Args:
        memberships: ``(B, R, K)`` soft memberships ``w_ik >= 0`` (rows sum to 1 inside a part, 0 outside).
        rotvecs: ``(B, K, 3)`` rotation vectors of the segments, radians.
        translations: ``(B, K, 3)`` translations of the segments, Å.

    Returns:
        ``(rotations, residue_translations)``: ``(B, R, 3, 3)`` ``Rot_i = E_{K-1} ... E_0`` with
        ``E_k = exp(w_ik r_k)`` (segment 0 applied first) and ``(B, R, 3)`` Å ``T_i = sum_k w_ik t_k``.
    """
    # Composed as quaternions (B x R x K of them): the same product as the matrix product (tests/model/test_deformation.py's reference) of the
    # matrices, several times faster; one conversion to matrices at the end.
    residue_planes = compose_quaternion_planes_in_order(scaled_rotation_planes(memberships, rotvecs))  # (4, B, R)
    rotations = quaternion_to_matrix(residue_planes.permute(1, 2, 0))
    residue_translations = torch.bmm(memberships, translations)
    return rotations, residue_translations


def deform_points(points: Tensor, rotations: Tensor, translations: Tensor) -> Tensor:
    """Apply per-residue rigid transforms about the origin: ``x'_i = Rot_i x_i + T_i``.

    Args:
        points: ``(R, 3)`` Å residue positions of the base structure.
        rotations: ``(B, R, 3, 3)`` per-residue rotations.
        translations: ``(B, R, 3)`` Å per-residue translations.

    Returns:
        ``(B, R, 3)`` Å deformed positions.
    """
    # A multiply and a sum over j: batched 3 x 3 matmuls pay a kernel call per tiny matrix.
    return (rotations * points.unsqueeze(-2)).sum(dim=-1) + translations


def deform_atoms(atom_points: Tensor, atom_residue_index: Tensor, rotations: Tensor, translations: Tensor) -> Tensor:
    """Move every atom with the rigid transform of its residue.

    Args:
        atom_points: ``(A, 3)`` Å atom positions of the base structure.
        atom_residue_index: ``(A,)`` int64 index of each atom's residue in the residue arrays.
        rotations: ``(B, R, 3, 3)`` per-residue rotations.
        translations: ``(B, R, 3)`` Å per-residue translations.

    Returns:
        ``(B, A, 3)`` Å deformed atom positions.
    """
    return deform_points(atom_points, rotations[:, atom_residue_index], translations[:, atom_residue_index])
