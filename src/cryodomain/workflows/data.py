"""From particle files to training batches: reading, shifting, filtering, masking, scaling.

The experimental image is brought to the model frame by translating it by its pose shift (exact
Fourier phase shift), optionally low-pass filtered and masked, and divided by one dataset-wide
scale (the std of the Fourier coefficients of a sample of particles). The encoder sees the
unshifted, masked, scaled image; the loss compares the model to the shifted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
)

from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import ParticleImages
from cryodomain.physics.ctf import CTFParameters
from cryodomain.physics.fourier import (
    fourier_crop,
    frequency_grid,
    lowpass_filter,
    shift_filter,
)
from cryodomain.physics.masks import circular_mask

log = logging.getLogger(__name__)


def ctf_parameters(table: ParticleTable, rows, dtype: torch.dtype = torch.float32, device=None) -> CTFParameters:
    """CTF parameters of the given rows (slice or index array) of a particle table, tensors ``(B,)``."""

    def column(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values[rows]), dtype=dtype, device=device)

    return CTFParameters(
        defocus_u_A=column(table.defocus_u_A),
        defocus_v_A=column(table.defocus_v_A),
        defocus_angle_rad=column(table.defocus_angle_rad),
        voltage_kv=column(table.voltage_kv),
        spherical_aberration_mm=column(table.spherical_aberration_mm),
        amplitude_contrast=column(table.amplitude_contrast),
        phase_shift_rad=column(table.phase_shift_rad),
        bfactor_A2=column(table.bfactor_A2),
    )


class ParticleBatches(Dataset):
    """Map-style dataset whose items are whole batches: index list -> raw images and metadata.

    Reading a batch at once lets the stack reader group images by file (one memory-map access per
    file instead of one per image).
    """

    def __init__(self, table: ParticleTable, box: int | None = None):
        self.table = table
        self.images = ParticleImages(table.image_paths, table.image_indices)
        self.box = box

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        images = torch.from_numpy(self.images.read(rows))
        if self.box is not None and self.box != images.shape[-1]:
            images = fourier_crop(images, self.box)
        return {
            "index": torch.from_numpy(rows),
            "images": images,
            "rotations": torch.from_numpy(self.table.rotations[rows]).float(),
            "shifts_A": torch.from_numpy(self.table.shifts_A[rows]).float(),
        }


def batch_loader(
    dataset: ParticleBatches, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches of ``dataset``; shuffled with a generator seeded by (seed, epoch) so a resumed run
    sees the same order as an uninterrupted one."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        sampler = RandomSampler(range(len(dataset)), generator=generator)
    else:
        sampler = SequentialSampler(range(len(dataset)))
    return DataLoader(
        dataset,
        sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=False),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


@dataclass
class Preprocessor:
    """Turns raw images into encoder inputs and loss targets on one device (constants built once)."""

    box: int
    pixel_size_A: float
    scale: float
    freqs: torch.Tensor  # (N, N, 2) 1/Å
    mask: torch.Tensor | None  # (N, N)
    lowpass: torch.Tensor | None  # (N, N)
    sign: float  # -1 to invert the contrast of the data

    @classmethod
    def build(
        cls,
        box: int,
        pixel_size_A: float,
        scale: float,
        *,
        lowpass_A: float | None,
        mask_radius_fraction: float | None,
        invert_contrast: bool,
        device: torch.device | str = "cpu",
    ) -> "Preprocessor":
        freqs = frequency_grid(box, pixel_size_A, device=device)
        mask = None
        if mask_radius_fraction is not None:
            mask = circular_mask(box, radius_px=mask_radius_fraction * box / 2, soft_edge_px=3.0, device=device)
        lowpass = lowpass_filter(freqs, lowpass_A) if lowpass_A is not None else None
        return cls(box, pixel_size_A, scale, freqs, mask, lowpass, -1.0 if invert_contrast else 1.0)

    def __call__(self, images: torch.Tensor, shifts_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(B, N, N)`` images and shifts ``(B, 2)`` Å -> (encoder input, target), both ``(B, N, N)``.

        The low-pass filter, when set, applies to both: the encoder then sees less noise.
        """
        images = images * (self.sign / self.scale)
        spectrum = torch.fft.fft2(images)
        # Translate by +shift: RELION's origin puts the particle at -shift.
        target_filter = shift_filter(shifts_A, self.freqs)
        if self.lowpass is not None:
            target_filter = target_filter * self.lowpass
            images = torch.fft.ifft2(spectrum * self.lowpass).real
        target = torch.fft.ifft2(spectrum * target_filter).real
        if self.mask is not None:
            images = images * self.mask
            target = target * self.mask
        return images, target


def dataset_scale(dataset: ParticleBatches, sample_size: int, seed: int = 0) -> float:
    """Std of the Fourier coefficients of a random sample of particles (any dataset size >= 1)."""
    rng = np.random.default_rng(seed)
    n = len(dataset)
    rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
    images = dataset[list(rows)]["images"].double()
    spectrum = torch.fft.fft2(images, norm="ortho")
    scale = float(spectrum.abs().pow(2).mean().sqrt())
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return scale
