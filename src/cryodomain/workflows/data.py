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
from torch.utils.data import DataLoader, Dataset

from cryodomain.errors import input_error
from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import ParticleImages
from cryodomain.physics.ctf import CTFParameters
from cryodomain.physics.fourier import fourier_crop, shift_filter
from cryodomain.physics.imaging import ImageFrame
from cryodomain.workflows.distributed import Processes, ShardedBatches

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
        # Per-image (min, max) of the raw pixels: NaN/inf and blank images show there at the cost
        # of one pass, here in the loader (a worker process when num_workers > 0).
        low, high = torch.aminmax(images.flatten(start_dim=1), dim=1)
        if self.box is not None and self.box != images.shape[-1]:
            images = fourier_crop(images, self.box)
        return {
            "index": torch.from_numpy(rows),
            "images": images,
            "pixel_range": torch.stack([low, high], dim=1),
            "rotations": torch.from_numpy(self.table.rotations[rows]).float(),
            "shifts_A": torch.from_numpy(self.table.shifts_A[rows]).float(),
        }


def check_pixels(batch: dict[str, torch.Tensor], table: ParticleTable) -> None:
    """Refuse a batch holding an image with NaN or infinite pixels or a blank (constant) image.

    Such an image would silently turn the loss into NaN or train on nothing; the message names the
    particle so that it can be removed.

    Args:
        batch: an item of :class:`ParticleBatches` (uses ``index`` ``(B,)`` and ``pixel_range`` ``(B, 2)``).
        table: the particles, for the image name and the file to fix.

    Raises:
        InputError: naming the first bad particle (1-based row and ``index@stack``) and how many more.
    """
    low, high = batch["pixel_range"].unbind(dim=1)
    not_finite = ~(torch.isfinite(low) & torch.isfinite(high))
    blank = ~not_finite & (low == high)
    for bad, problem in ((not_finite, "has NaN or infinite pixels"), (blank, "is blank (all pixels equal)")):
        if bad.any():
            rows = batch["index"][bad].tolist()
            row = rows[0]
            more = f" (and {len(rows) - 1} more in this batch)" if len(rows) > 1 else ""
            raise input_error(
                table.source,
                f"particle row {row + 1} ({table.image_indices[row] + 1:06d}@{table.image_paths[row]})",
                f"image {problem}{more}",
                "remove these particles from the particle file (or re-extract them)",
            )


def check_pixel_sample(dataset: ParticleBatches, sample_size: int, seed: int = 0, chunk: int = 256) -> None:
    """Preflight: :func:`check_pixels` on a random sample of ``sample_size`` particles (read in chunks)."""
    rows = _sample_rows(len(dataset), sample_size, seed)
    for start in range(0, len(rows), chunk):
        check_pixels(dataset[list(rows[start : start + chunk])], dataset.table)


def _sample_rows(n: int, sample_size: int, seed: int) -> np.ndarray:
    """Sorted random rows, the same for the pixel check and the scale (so the files are read once)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, sample_size), replace=False))


def batch_bounds(n_items: int, batch_size: int) -> np.ndarray:
    """Where the batches of an epoch of ``n_items`` start and end: ``(n_batches + 1,)`` offsets.

    Batches hold ``batch_size`` items, except the last: one smaller than half a batch joins the
    batch before it (5000 images in batches of 128 end with one of 136, not one of 8 stepped at the
    weight of a full batch), so every item is seen each epoch and no step rests on a few images.
    """
    bounds = list(range(0, n_items, batch_size)) + [n_items]
    remainder = n_items % batch_size
    if len(bounds) > 2 and 0 < 2 * remainder < batch_size:
        del bounds[-2]
    return np.asarray(bounds, dtype=np.int64)


def batch_loader(
    dataset: ParticleBatches,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    start_batch: int = 0,
    processes: Processes = Processes(),
) -> DataLoader:
    """Batches of ``dataset`` cut by :func:`batch_bounds` (a last batch smaller than half a batch
    is merged into the one before); shuffled with a generator seeded by (seed, epoch) so a resumed
    run sees the same order as an uninterrupted one. ``start_batch`` skips the first batches of that
    order (counted after the merge) without reading them (a run resumed in the middle of an epoch).
    With several DDP ``processes``, each process reads its contiguous share of every global batch
    (the same merged batches)."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(dataset), generator=generator).tolist()
    else:
        order = list(range(len(dataset)))
    bounds = batch_bounds(len(dataset), batch_size)
    batches: list[list[int]] = [order[start:stop] for start, stop in zip(bounds[start_batch:-1], bounds[start_batch + 1 :])]
    sampler = ShardedBatches(batches, processes) if processes.distributed else batches
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


@dataclass(frozen=True)
class Preprocessor:
    """Turns raw images into encoder inputs and loss targets on one device (constants built once).

    Attributes:
        frame: the detector grid with the run's low-pass and mask (shared with the model's images).
        scale: the dataset-wide Fourier std the images are divided by (:func:`dataset_scale`).
        sign: -1 to invert the contrast of the data, else 1.
        centre_encoder_input: the encoder sees the image translated by its pose shift (as the
            loss does), not as extracted.
    """

    frame: ImageFrame
    scale: float
    sign: float
    centre_encoder_input: bool = False

    def __call__(self, images: torch.Tensor, shifts_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(B, N, N)`` images and shifts ``(B, 2)`` Å -> (encoder input, target), both ``(B, N, N)``.

        The low-pass filter, when set, applies to both: the encoder then sees less noise.
        """
        lowpass, mask = self.frame.lowpass, self.frame.mask
        images = images * (self.sign / self.scale)
        spectrum = torch.fft.rfft2(images)
        size = images.shape[-2:]
        # Translate by +shift: RELION's origin puts the particle at -shift.
        target_filter = shift_filter(shifts_A, self.frame.freqs)
        if lowpass is not None:
            target_filter = target_filter * lowpass
            images = torch.fft.irfft2(spectrum * lowpass, s=size)
        target = torch.fft.irfft2(spectrum * target_filter, s=size)
        if mask is not None:
            images = images * mask
            target = target * mask
        if self.centre_encoder_input:
            return target, target
        return images, target


def dataset_scale(dataset: ParticleBatches, sample_size: int, seed: int = 0) -> float:
    """Std of the Fourier coefficients of a random sample of particles (any dataset size >= 1)."""
    rows = _sample_rows(len(dataset), sample_size, seed)
    images = dataset[list(rows)]["images"].double()
    spectrum = torch.fft.fft2(images, norm="ortho")
    scale = float(spectrum.abs().pow(2).mean().sqrt())
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return scale
