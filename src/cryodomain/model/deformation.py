"""Deformation of the base structure by soft segments.

Each segment ``k`` carries a rotation vector ``w_k`` (radians, axis times angle) and a translation
``t_k`` (Å). Residue ``i`` with memberships ``w_ik`` gets

* the rotation ``Rot_i = E_{K-1} ... E_1 E_0`` with ``E_k = exp(w_ik * w_k)``: segment 0's rotation is
  applied first to the point, segment ``K-1``'s last (matrices left-multiply column vectors);
* the translation ``T_i = sum_k w_ik t_k``;

and moves to ``x'_i = Rot_i x_i + T_i``: rotations are about the origin of the model frame (the box
centre, where the model is centred). With near one-hot memberships each segment moves as a rigid body.
"""

from __future__ import annotations

import roma
import torch
from torch import Tensor


def compose_in_order(matrices: Tensor) -> Tensor:
    """Product ``M_{K-1} ... M_1 M_0`` of a sequence of matrices, by pairwise tree reduction.

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


def compose_quaternions_in_order(quaternions: Tensor) -> Tensor:
    """Product ``q_{K-1} ... q_1 q_0`` of a sequence of unit quaternions, by pairwise tree reduction.

    The same rotation as :func:`compose_in_order` of their matrices, at a fraction of the cost:
    a quaternion product is 16 multiply-adds on contiguous components, where a batched 3 x 3
    matmul pays a kernel call per tiny matrix.

    Args:
        quaternions: ``(..., K, 4)`` unit quaternions, XYZW (roma's order), ``K >= 1``.

    Returns:
        ``(..., 4)``.
    """
    while quaternions.shape[-2] > 1:
        if quaternions.shape[-2] % 2 == 1:
            # An identity appended at the end is applied last and changes nothing.
            identity = quaternions.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(*quaternions.shape[:-2], 1, 4)
            quaternions = torch.cat([quaternions, identity], dim=-2)
        quaternions = roma.quat_product(quaternions[..., 1::2, :], quaternions[..., 0::2, :])
    return quaternions[..., 0, :]


def residue_transforms(memberships: Tensor, rotvecs: Tensor, translations: Tensor) -> tuple[Tensor, Tensor]:
    """Rigid transform of every residue from the segment motions.

    Args:
        memberships: ``(B, R, K)`` soft memberships ``w_ik`` (rows sum to 1 inside a part, 0 outside).
        rotvecs: ``(B, K, 3)`` rotation vectors of the segments, radians.
        translations: ``(B, K, 3)`` translations of the segments, Å.

    Returns:
        ``(rotations, residue_translations)``: ``(B, R, 3, 3)`` ``Rot_i = E_{K-1} ... E_0`` with
        ``E_k = exp(w_ik w_k)`` (segment 0 applied first) and ``(B, R, 3)`` Å ``T_i = sum_k w_ik t_k``.
    """
    # Each segment's rotation vector scaled by the residue's membership: (B, R, K, 3).
    scaled_rotvecs = memberships.unsqueeze(-1) * rotvecs.unsqueeze(1)
    # Composed as quaternions (B x R x K of them): the same product as compose_in_order of the
    # matrices, several times faster; one conversion to matrices at the end.
    segment_quaternions = roma.rotvec_to_unitquat(scaled_rotvecs)
    rotations = roma.unitquat_to_rotmat(compose_quaternions_in_order(segment_quaternions))
    residue_translations = torch.einsum("brk,bkc->brc", memberships, translations)
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
    return torch.einsum("brij,rj->bri", rotations, points) + translations


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
    atom_rotations = rotations[:, atom_residue_index]
    atom_translations = translations[:, atom_residue_index]
    return torch.einsum("baij,aj->bai", atom_rotations, atom_points) + atom_translations
