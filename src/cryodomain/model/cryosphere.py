"""The cryoSPHERE model: encoder, decoder and segmentation around a base structure.

``CryoSphere`` holds the learnable pieces and the base structure; image formation (pose, projection,
CTF) stays in :mod:`cryodomain.physics.imaging` and the loss terms in :mod:`cryodomain.model.losses`,
composed by :mod:`cryodomain.workflows.objective`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cryodomain.model.deformation import deform_points, pivot_translations, residue_transforms
from cryodomain.model.networks import Decoder, Encoder, LatentTable, sample_latent
from cryodomain.model.segmentation import Segmentation, SegmentPart


@dataclass(frozen=True)
class Deformation:
    """The result of decoding a batch of latents. B images, R residues, K segments."""

    coords: Tensor  # (B, R, 3) deformed residue coordinates (CA / C1'), Å
    render_coords: Tensor  # (B, G, 3) deformed positions of the Gaussians, Å (coords unless set apart)
    rotations: Tensor  # (B, R, 3, 3) per-residue rotation about the origin
    translations: Tensor  # (B, R, 3) per-residue translation, Å
    memberships: Tensor  # (B, R, K)
    segment_rotvecs: Tensor  # (B, K, 3)
    segment_translations: Tensor  # (B, K, 3)


class CryoSphere(nn.Module):
    """Encoder (amortised or a latent table), decoder and segmentation over a base structure.

    Args:
        base_coords: ``(R, 3)`` residue coordinates of the base model in the box-centred frame, Å.
        amplitudes: ``(R,)`` (or ``(G,)``) electrons per Gaussian.
        parts: the segmented residue ranges.
        box: image side in pixels (encoder input size).
        n_images: dataset size (used by the non-amortised latent table).
        latent_dim, encoder_hidden, decoder_hidden, tau, amortized: see docs/method.md, section 6.
        rotate_about: ``"origin"``: segment rotations are about the box centre (the published
            model); ``"segment"``: about each segment's centroid, with ``t_k`` its displacement
            (:func:`~cryodomain.model.deformation.pivot_translations`).
        encoder_pose: the encoder also sees the pose matrix (9 numbers) of each image.
        latent_std_scale: scale of the latent posterior's std (1 in the published model).
        gaussian_coords: ``(G, 3)`` Å where the Gaussians sit in the base model (each moves with
            the rigid transform of its residue, as the CA does); None: one per residue at ``base_coords``.
        gaussian_residue: ``(G,)`` the residue of each Gaussian when there are not exactly one per
            residue in residue order; ``amplitudes`` are then ``(G,)``.
    """

    def __init__(
        self,
        base_coords: np.ndarray,
        amplitudes: np.ndarray,
        parts: Sequence[SegmentPart],
        box: int,
        n_images: int,
        *,
        latent_dim: int = 8,
        encoder_hidden: Sequence[int] = (512, 256, 64, 64),
        decoder_hidden: Sequence[int] = (512, 512),
        tau: float = 0.05,
        amortized: bool = True,
        rotate_about: str = "origin",
        encoder_pose: bool = False,
        latent_std_scale: float = 1.0,
        gaussian_coords: np.ndarray | None = None,
        gaussian_residue: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        # Where each residue's Gaussian sits (e.g. its electron centroid); None: at base_coords.
        self.separate_gaussians = gaussian_coords is not None
        if gaussian_coords is not None:
            self.register_buffer("gaussian_coords", torch.as_tensor(gaussian_coords, dtype=torch.float32))
        self.has_gaussian_residue = gaussian_residue is not None
        if gaussian_residue is not None:
            if gaussian_coords is None or len(gaussian_residue) != len(gaussian_coords):
                raise ValueError("gaussian_residue needs gaussian_coords of the same length")
            self.register_buffer("gaussian_residue", torch.as_tensor(gaussian_residue, dtype=torch.long))
        if rotate_about not in ("origin", "segment"):
            raise ValueError(f"rotate_about must be 'origin' or 'segment', got {rotate_about!r}")
        self.rotate_about = rotate_about
        self.register_buffer("base_coords", torch.as_tensor(base_coords, dtype=torch.float32))
        self.register_buffer("amplitudes", torch.as_tensor(amplitudes, dtype=torch.float32))
        self.amortized = amortized
        self.encoder_pose = encoder_pose
        self.encoder: nn.Module = (
            Encoder(box * box, latent_dim, encoder_hidden, n_extra=9 if encoder_pose else 0, std_scale=latent_std_scale)
            if amortized
            else LatentTable(n_images, latent_dim, std_scale=latent_std_scale)
        )
        self.segmentation = Segmentation(parts, len(base_coords), tau)
        self.decoder = Decoder(latent_dim, self.segmentation.n_segments, decoder_hidden)

    @property
    def base_gaussians(self) -> Tensor:
        """``(R, 3)`` Å where the residue Gaussians sit in the base model (the CA unless set apart)."""
        return self.gaussian_coords if self.separate_gaussians else self.base_coords

    def encode(self, images: Tensor, indices: Tensor, poses: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent mean and std ``(B, D)`` from encoder input images ``(B, N, N)`` (and poses
        ``(B, 3, 3)`` when the encoder takes them), or from image indices ``(B,)``."""
        if self.amortized:
            return self.encoder(images, poses if self.encoder_pose else None)
        return self.encoder(indices)

    def decode(self, z: Tensor, *, sample_segmentation: bool = True, segmentation_noise: Tensor | None = None, autocast: bool = False) -> Deformation:
        """Deformed structures for latents ``z`` ``(B, D)``.

        With ``sample_segmentation`` a fresh segmentation is drawn per image (training); without,
        the variational means are used (analysis). ``autocast`` runs the decoder MLP in bfloat16 on
        CUDA; the motions are converted back to float32 before they move any coordinate.
        ``segmentation_noise`` ``(3, B, K)`` fixes the segmentation's random draws.
        """
        memberships = self.segmentation(z.shape[0], sample=sample_segmentation, noise=segmentation_noise)
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=autocast):
            rotvecs, translations = self.decoder(z)
        rotvecs, translations = rotvecs.float(), translations.float()
        about_origin = translations
        if self.rotate_about == "segment":
            about_origin = pivot_translations(memberships, rotvecs, translations, self.base_coords)
        residue_rotations, residue_translations = residue_transforms(memberships, rotvecs, about_origin)
        coords, render = self.place(residue_rotations, residue_translations)
        return Deformation(coords, render, residue_rotations, residue_translations, memberships, rotvecs, translations)

    def place(self, rotations: Tensor, translations: Tensor) -> tuple[Tensor, Tensor]:
        """Residues and Gaussians moved by per-residue transforms ``(B, R, 3, 3)``, ``(B, R, 3)`` Å:
        ``(coords (B, R, 3), render_coords (B, G, 3))`` Å. Linear in the transforms, so a weighted
        mean of transforms places the weighted mean of the structures."""
        coords = deform_points(self.base_coords, rotations, translations)
        if self.has_gaussian_residue:
            index = self.gaussian_residue
            return coords, deform_points(self.gaussian_coords, rotations[:, index], translations[:, index])
        if self.separate_gaussians:
            return coords, deform_points(self.gaussian_coords, rotations, translations)
        return coords, coords

    def forward(
        self,
        encoder_input: Tensor,
        indices: Tensor,
        latent_noise: Tensor | None = None,
        segmentation_noise: Tensor | None = None,
        autocast: bool = False,
        *,
        sample: bool = True,
        poses: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Deformation]:
        """One pass: encode, sample the latent and the segmentation (unless not ``sample``), decode.

        The single entry point of training, so that DistributedDataParallel sees every parameter
        used in one forward call.

        Args:
            encoder_input: ``(B, N, N)`` preprocessed images (amortised mode).
            indices: ``(B,)`` particle indices (non-amortised mode).
            latent_noise: ``(B, D)`` standard normal draws for the latent sample (drawn if None).
            segmentation_noise: ``(3, B, K)`` standard normal draws for the segmentation.
            autocast: bfloat16 for the encoder and decoder MLPs on CUDA.
            sample: draw the latent and the segmentation (training); else decode the latent mean
                with the segmentation means (analysis).
            poses: ``(B, 3, 3)`` pose matrices, for an encoder that takes them.

        Returns:
            latent mean ``(B, D)``, latent std ``(B, D)`` and the deformation.
        """
        with torch.autocast(encoder_input.device.type, dtype=torch.bfloat16, enabled=autocast):
            mean, std = self.encode(encoder_input, indices, poses)
        mean, std = mean.float(), std.float()
        if not sample:
            return mean, std, self.decode(mean, sample_segmentation=False, autocast=autocast)
        z = sample_latent(mean, std, latent_noise)
        return mean, std, self.decode(z, segmentation_noise=segmentation_noise, autocast=autocast)

    def network_modules(self) -> list[nn.Module]:
        """Encoder and decoder: the modules under the L2 penalty and the main learning rate."""
        return [self.encoder, self.decoder]
