"""Encoder, latent table and decoder networks.

* :class:`Encoder`: amortised ``q(z | Y) = N(mean, diag std^2)`` from an MLP on the flattened image.
* :class:`LatentTable`: the non-amortised alternative, one free mean per image, std fixed to 1.
* :class:`Decoder`: MLP from ``z`` to a rotation vector and a translation per segment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cryodomain.physics.rotations import imaginary_quaternion_to_rotvec

# Scale applied to the decoder's default last-layer weights (see Decoder).
DECODER_OUTPUT_SCALE = 1e-2


def _mlp(n_inputs: int, hidden: Sequence[int], n_outputs: int) -> nn.Sequential:
    """Linear layers of sizes ``n_inputs -> hidden... -> n_outputs``, LeakyReLU between them."""
    layers: list[nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LeakyReLU()]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def sample_latent(mean: Tensor, std: Tensor, noise: Tensor | None = None) -> Tensor:
    """Reparameterised sample ``z = mean + std * e``, ``e ~ N(0, I)``.

    Args:
        mean: ``(B, D)`` latent means.
        std: ``(B, D)`` latent standard deviations.
        noise: ``(B, D)`` standard normal draws ``e``; drawn here when None.

    Returns:
        ``(B, D)`` samples, differentiable in ``mean`` and ``std``.
    """
    if noise is None:
        noise = torch.randn_like(mean)
    return mean + std * noise


class Encoder(nn.Module):
    """Amortised posterior ``q(z | Y)``: MLP on the flattened image (and, optionally, the pose).

    Args:
        n_pixels: ``P = N * N``, the length of a flattened image.
        latent_dim: ``D``.
        hidden: sizes of the hidden layers (LeakyReLU after each).
        n_extra: inputs appended to the image (9 for a flattened pose matrix; 0 for none).
        std_scale: the std is ``std_scale * (ELU(.) + 1)``: 1 in the published model; smaller
            starts the decoder on less latent noise.
    """

    def __init__(self, n_pixels: int, latent_dim: int = 8, hidden: Sequence[int] = (512, 256, 64, 64), *, n_extra: int = 0, std_scale: float = 1.0) -> None:
        super().__init__()
        self.n_pixels = int(n_pixels)
        self.latent_dim = int(latent_dim)
        self.n_extra = int(n_extra)
        self.std_scale = float(std_scale)
        self.network = _mlp(self.n_pixels + self.n_extra, hidden, 2 * self.latent_dim)

    def forward(self, images: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior parameters of a batch of images.

        Args:
            images: ``(B, N, N)`` or ``(B, P)`` images (scaled, masked).
            extra: ``(B, n_extra)`` more inputs (the pose), when the encoder takes them.

        Returns:
            ``(mean, std)``: ``(B, D)`` each; ``std = std_scale * (ELU(.) + 1) > 0``.
        """
        inputs = images.reshape(images.shape[0], -1)
        if self.n_extra:
            inputs = torch.cat([inputs, extra.reshape(images.shape[0], -1).to(inputs.dtype)], dim=1)
        output = self.network(inputs)
        mean, std_argument = output.split(self.latent_dim, dim=-1)
        std = F.elu(std_argument) + 1.0
        return mean, std if self.std_scale == 1.0 else self.std_scale * std


class LatentTable(nn.Module):
    """Non-amortised posterior: a free mean per image (starting at the prior mean 0), a fixed std.

    Args:
        n_images: number of particles in the dataset.
        latent_dim: ``D``.
        std_scale: the fixed std (1 in the published model).
    """

    def __init__(self, n_images: int, latent_dim: int = 8, *, std_scale: float = 1.0) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.std_scale = float(std_scale)
        self.means = nn.Parameter(torch.zeros(int(n_images), self.latent_dim))

    def forward(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters of the images ``indices``.

        Args:
            indices: ``(B,)`` int64 particle indices into the dataset.

        Returns:
            ``(mean, std)``: ``(B, D)`` each; ``std`` is all ones.
        """
        mean = self.means[indices]
        return mean, torch.full_like(mean, self.std_scale)


class Decoder(nn.Module):
    """Motion of every segment from a latent variable.

    The MLP outputs 6 numbers per segment: ``o_k`` (3), the imaginary part of the quaternion
    ``(1, o_k)`` (normalised on use, so the angle ``2 atan(|o_k|)`` stays below pi), and the
    translation ``t_k`` (3, Å).

    The last layer's default weights are scaled by :data:`DECODER_OUTPUT_SCALE` and its bias set to
    0, so that training starts from motions close to zero, i.e. from the base structure that was
    fitted into the consensus map. With the default initialisation the first motions would be
    random rotations of tens of degrees and translations of Å, tearing the chain apart so that
    the continuity and clash terms dominate the first steps.

    Args:
        latent_dim: ``D``.
        n_segments: ``K`` (all parts together).
        hidden: sizes of the hidden layers (LeakyReLU after each).
    """

    def __init__(self, latent_dim: int, n_segments: int, hidden: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        self.n_segments = int(n_segments)
        self.network = _mlp(int(latent_dim), hidden, 6 * self.n_segments)
        last = self.network[-1]
        with torch.no_grad():
            last.weight.mul_(DECODER_OUTPUT_SCALE)
            last.bias.zero_()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Segment motions for a batch of latent variables.

        Args:
            z: ``(B, D)`` latent variables.

        Returns:
            ``(rotvecs, translations)``: ``(B, K, 3)`` rotation vectors (radians, axis times angle)
            and ``(B, K, 3)`` translations (Å).
        """
        output = self.network(z).reshape(z.shape[0], self.n_segments, 6)
        quaternion_imaginary, translations = output.split(3, dim=-1)
        return imaginary_quaternion_to_rotvec(quaternion_imaginary), translations
