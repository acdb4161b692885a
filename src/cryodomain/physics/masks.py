"""Real-space masks for square images centred at pixel ``N // 2``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def circular_mask(
    box: int,
    radius_px: float | None = None,
    soft_edge_px: float = 0.0,
    *,
    device=None,
    dtype=torch.float32,
) -> Tensor:
    """Circular mask with an optional raised-cosine edge outside the radius.

    Args:
        box: image side N in pixels.
        radius_px: radius in pixels around pixel ``(N // 2, N // 2)``; default ``N / 2``.
        soft_edge_px: width in pixels of the raised-cosine fall-off from 1 at ``radius_px`` to 0 at
            ``radius_px + soft_edge_px``; 0 gives a hard edge.
        device, dtype: of the returned tensor.

    Returns:
        ``(N, N)`` values in [0, 1], indexed ``[y, x]``.
    """
    radius = box / 2 if radius_px is None else float(radius_px)
    if radius <= 0:
        raise ValueError(f"circular_mask: radius_px must be positive, got {radius_px}")
    if soft_edge_px < 0:
        raise ValueError(f"circular_mask: soft_edge_px must be >= 0, got {soft_edge_px}")
    coords = torch.arange(box, device=device, dtype=dtype) - box // 2
    distance = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    inside = (distance <= radius).to(dtype)
    if soft_edge_px == 0:
        return inside
    # Raised cosine over (radius, radius + soft_edge]: 1 -> 0.
    ramp = ((distance - radius) / soft_edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * ramp))
