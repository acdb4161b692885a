"""Preflight self-test of the pose, shift and contrast conventions of the particles.

A convention read wrongly (inverted contrast, rotations of another Euler convention, shifts of the
other sign, the poses of the wrong class of a multi-class cryoSPARC file) trains for hours and
learns nothing. Before training, the base atomic model is rendered
at the poses, shifts and CTF of a sample of particles, through the training's own forward model
(:func:`~cryodomain.physics.imaging.form_images`) and preprocessing
(:class:`~cryodomain.workflows.data.Preprocessor`), and each image's correlation with its
low-passed particle is compared under the inputs as read and under every plausible alternative.

An alternative is a named transform of the sample's inputs (rotations, shifts, contrast sign), so
a new one is one more entry of :func:`alternatives`. It is "clearly better" when it beats the
inputs as read on at least ``WIN_FRACTION`` of the sampled images and its median correlation is
higher by ``MEDIAN_MARGIN``; then training stops with an input error naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from cryodomain.errors import input_error
from cryodomain.io.particles import ParticleTable
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.imaging import ImageFrame, form_images
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.data import Preprocessor, ctf_parameters
from cryodomain.workflows.inputs import TrainingData, residue_gaussians

log = logging.getLogger(__name__)

# Particles sampled (deterministic by the run's seed); below MIN_SAMPLE the test says too little.
SAMPLE_SIZE = 256
MIN_SAMPLE = 32
# An alternative wins on at least this fraction of the images, by at least this median gain.
# Measured on the example at 32-64 px: with correct data at SNR 0.01 an alternative wins on at
# most 16% of the images, with one convention wrong the right alternative on 84% or more.
WIN_FRACTION = 0.75
MEDIAN_MARGIN = 0.02
# The check's low-pass when the run has none: per-image correlations need the noise averaged.
DEFAULT_CHECK_LOWPASS_A = 10.0
# Images rendered at once (bounds the (B, R, N) Gaussian profiles of a large model).
RENDER_CHUNK = 32


@dataclass(frozen=True)
class SampleInputs:
    """What the check renders and preprocesses B sampled particles with.

    Attributes:
        rotations: ``(B, 3, 3)`` pose matrices ``A`` (model -> view).
        shifts_A: ``(B, 2)`` RELION origins (x, y), Å.
        sign: the factor on the particle images' contrast (-1 inverts it).
        rows: ``(B,)`` the particles' rows in the table, for an alternative that reads other
            per-particle columns (e.g. another class's poses).
    """

    rotations: Tensor
    shifts_A: Tensor
    sign: float
    rows: np.ndarray


@dataclass(frozen=True)
class Alternative:
    """A plausible other reading of the inputs.

    Attributes:
        name: what it is, as the message and the preflight block say it.
        fix: what the user does when the images fit it clearly better.
        transform: the sample's inputs as read -> the inputs under this reading.
    """

    name: str
    fix: str
    transform: Callable[[SampleInputs], SampleInputs]


def alternatives(config: RunConfig, table: ParticleTable) -> tuple[Alternative, ...]:
    """The readings the check tries besides the inputs as read, with fixes in ``table``'s file terms.

    Each is a transform of the sample's :class:`SampleInputs`; a multi-class cryoSPARC file adds
    one per class (:func:`class_alternatives`).
    """
    if config.data.invert_contrast:
        contrast_fix = "remove --invert-contrast (data.invert_contrast: false)"
    else:
        contrast_fix = "add --invert-contrast (data.invert_contrast: true)"
    if str(table.source).endswith(".cs"):
        rotation_fix = "negate alignments3D/pose (the inverse rotations)"
        shift_fix = "negate alignments3D/shift"
    else:
        # A^T = Rz(rot) Ry(tilt) Rz(psi): the RELION angles of the inverse are (-psi, -tilt, -rot).
        rotation_fix = "the angles are another Euler convention's: rewrite (rot, tilt, psi) as (-psi, -tilt, -rot)"
        shift_fix = "negate rlnOriginXAngst and rlnOriginYAngst (rlnOriginX/Y in older files)"
    return (
        Alternative("inverted contrast", contrast_fix, lambda inputs: dataclasses.replace(inputs, sign=-inputs.sign)),
        Alternative("transposed rotations", rotation_fix, lambda inputs: dataclasses.replace(inputs, rotations=inputs.rotations.transpose(-1, -2))),
        Alternative("negated shifts", shift_fix, lambda inputs: dataclasses.replace(inputs, shifts_A=-inputs.shifts_A)),
        *class_alternatives(config, table),
    )


def class_alternatives(config: RunConfig, table: ParticleTable) -> tuple[Alternative, ...]:
    """One alternative per class ``k`` of a multi-class cryoSPARC file (none for other files): every
    sampled particle's rotation and shift from class ``k`` (``table.class_rotations`` and
    ``class_shifts_A`` at ``inputs.rows``), fixed by ``--class k``.

    The class forced by ``data.particle_class`` is the inputs as read and is not tried again; with
    each particle's most probable class, every class is tried.
    """
    if table.class_rotations is None or table.class_shifts_A is None:
        return ()
    forced = config.data.particle_class
    instead = f" instead of --class {forced}" if forced is not None else ""
    return tuple(
        Alternative(
            f"poses of class {k}",
            f"take every particle's poses from class {k}: --class {k}{instead} (data.particle_class: {k})",
            _from_class(table.class_rotations[:, k], table.class_shifts_A[:, k]),
        )
        for k in range(table.class_rotations.shape[1])
        if k != forced
    )


def _from_class(rotations: np.ndarray, shifts_A: np.ndarray) -> Callable[[SampleInputs], SampleInputs]:
    """The transform that sets the sample's rotations and shifts to one class's: ``(N, 3, 3)``, ``(N, 2)`` Å."""

    def transform(inputs: SampleInputs) -> SampleInputs:
        return dataclasses.replace(
            inputs, rotations=torch.as_tensor(rotations[inputs.rows], dtype=torch.float32), shifts_A=torch.as_tensor(shifts_A[inputs.rows], dtype=torch.float32)
        )

    return transform


@dataclass(frozen=True)
class ConventionReport:
    """Per-image correlations of a sample under the inputs as read and under each alternative.

    Attributes:
        as_read: ``(B,)`` correlations with the inputs as read.
        tried: each alternative with its ``(B,)`` correlations.
    """

    as_read: np.ndarray
    tried: tuple[tuple[Alternative, np.ndarray], ...]

    def wins(self, correlations: np.ndarray) -> float:
        """Fraction of the images on which ``correlations`` beat the inputs as read."""
        return float(np.mean(correlations > self.as_read))

    def clearly_better(self) -> list[tuple[Alternative, np.ndarray]]:
        """The alternatives that fit clearly better than the inputs as read, best median first."""
        base = float(np.nanmedian(self.as_read))
        better = [
            (alternative, values)
            for alternative, values in self.tried
            if self.wins(values) >= WIN_FRACTION and float(np.nanmedian(values)) - base >= MEDIAN_MARGIN
        ]
        return sorted(better, key=lambda item: -float(np.nanmedian(item[1])))

    def lines(self) -> list[str]:
        """The preflight block: the median correlation as read, then one line per alternative."""
        lines = [f"{'as read':<22} {np.nanmedian(self.as_read):+.3f}"]
        for alternative, values in self.tried:
            lines.append(f"{alternative.name:<22} {np.nanmedian(values):+.3f}, better on {100 * self.wins(values):.0f}% of the images")
        return lines


def check_frame(data: TrainingData, config: RunConfig) -> ImageFrame:
    """The frame of the first epochs: the run's starting low-pass (or the check's own) and mask."""
    lowpass = config.data.lowpass_A if config.data.lowpass_A is not None else DEFAULT_CHECK_LOWPASS_A
    return ImageFrame.build(data.box, data.pixel_size_A, lowpass_A=lowpass, mask_radius_fraction=config.data.mask_radius_fraction)


def sample_rows(n: int, seed: int, size: int = SAMPLE_SIZE) -> np.ndarray:
    """``(min(n, size),)`` sorted rows sampled without replacement, the same for the same seed."""
    rng = np.random.default_rng([seed, 0xC0DE])
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def image_correlations(predicted: Tensor, observed: Tensor) -> Tensor:
    """Pearson correlation of each pair of images: ``(B, N, N)``, ``(B, N, N)`` -> ``(B,)``."""
    predicted = predicted.flatten(start_dim=1)
    observed = observed.flatten(start_dim=1)
    predicted = predicted - predicted.mean(dim=1, keepdim=True)
    observed = observed - observed.mean(dim=1, keepdim=True)
    norms = predicted.norm(dim=1) * observed.norm(dim=1)
    return (predicted * observed).sum(dim=1) / norms.clamp_min(1e-30)


class SampleCorrelations:
    """Per-image correlations of B sampled particles with the base model, under any inputs.

    Model images depend only on the rotations and targets only on the shifts and sign: each is
    made once per distinct tensor (an alternative that keeps a field keeps its tensor object), so
    the as-read inputs and three alternatives cost two renders (and each class of a multi-class
    file one more).

    Args:
        images: ``(B, N, N)`` raw particle images.
        ctf: ``(B, N, N // 2 + 1)`` their CTF on the frame's half grid.
        points: ``(R, 3)`` the base model's Gaussians, Å; ``amplitudes``: ``(R,)``.
        sigma_A: Gaussian width, Å.
        preprocess: the training preprocessing (its frame's low-pass and mask apply to both sides).
    """

    def __init__(self, images: Tensor, ctf: Tensor, points: Tensor, amplitudes: Tensor, sigma_A: float | Tensor, preprocess: Preprocessor):
        self.images, self.ctf, self.points, self.amplitudes = images, ctf, points, amplitudes
        self.sigma_A, self.preprocess = sigma_A, preprocess
        self._rendered: list[tuple[Tensor, Tensor]] = []
        self._targets: list[tuple[Tensor, float, Tensor]] = []

    def __call__(self, inputs: SampleInputs) -> np.ndarray:
        """``(B,)`` Pearson correlations of the model images with the loss targets under ``inputs``."""
        with torch.no_grad():
            return image_correlations(self._render(inputs.rotations), self._target(inputs.shifts_A, inputs.sign)).numpy()

    def _render(self, rotations: Tensor) -> Tensor:
        for known, images in self._rendered:
            if known is rotations:
                return images
        frame = self.preprocess.frame
        chunks = [
            form_images(self.points, self.amplitudes, rotations[start : start + RENDER_CHUNK], self.sigma_A, frame, self.ctf[start : start + RENDER_CHUNK])
            for start in range(0, len(rotations), RENDER_CHUNK)
        ]
        self._rendered.append((rotations, torch.cat(chunks)))
        return self._rendered[-1][1]

    def _target(self, shifts_A: Tensor, sign: float) -> Tensor:
        for known, known_sign, target in self._targets:
            if known is shifts_A and known_sign == sign:
                return target
        # The contrast is the preprocessing's sign; its scale does not change a correlation.
        _, target = dataclasses.replace(self.preprocess, sign=sign)(self.images, shifts_A)
        self._targets.append((shifts_A, sign, target))
        return target


def convention_report(data: TrainingData, config: RunConfig) -> ConventionReport | None:
    """Correlations of a sample of ``data`` as read and under each alternative (None: too few particles)."""
    rows = sample_rows(len(data.table), config.optim.seed)
    if len(rows) < MIN_SAMPLE:
        return None
    # The images at the run's box (downsampled as training reads them).
    batch = data.dataset[rows.tolist()]
    frame = check_frame(data, config)
    preprocess = Preprocessor(frame, scale=1.0, sign=-1.0 if config.data.invert_contrast else 1.0)
    gaussians = residue_gaussians(data.structure, config)
    correlate = SampleCorrelations(
        batch["images"],
        compute_ctf(frame.freqs, ctf_parameters(data.table, rows)),
        torch.as_tensor(gaussians.positions, dtype=torch.float32),
        torch.as_tensor(gaussians.amplitudes, dtype=torch.float32),
        gaussians.widths if isinstance(gaussians.widths, float) else torch.as_tensor(gaussians.widths, dtype=torch.float32),
        preprocess,
    )
    as_read = SampleInputs(batch["rotations"], batch["shifts_A"], preprocess.sign, rows)
    tried = tuple((alternative, correlate(alternative.transform(as_read))) for alternative in alternatives(config, data.table))
    return ConventionReport(correlate(as_read), tried)


def check_conventions(data: TrainingData, config: RunConfig, source: str | None = None) -> ConventionReport | None:
    """Preflight: log the correlations, and refuse inputs that fit an alternative clearly better.

    Args:
        data: the run's inputs, checked (:func:`~cryodomain.workflows.inputs.load_training_data`).
        config: the run's configuration (contrast, low-pass, mask, Gaussian width, seed).
        source: the particle file, for the message (default: the table's source).

    Raises:
        InputError: naming the best alternative, both median correlations, and the fix.
    """
    if not config.data.convention_check:
        log.info("preflight: conventions not checked (data.convention_check: false)")
        return None
    report = convention_report(data, config)
    if report is None:
        log.info("preflight: conventions not checked: %d particles (the check needs %d)", len(data.table), MIN_SAMPLE)
        return None
    header = f"preflight: conventions (median correlation of {len(report.as_read)} particles with the base model)"
    log.info(header + "\n  " + "\n  ".join(report.lines()))
    better = report.clearly_better()
    if better:
        alternative, values = better[0]
        raise input_error(
            source or data.table.source,
            "conventions",
            f"images correlate better with {alternative.name} ({np.nanmedian(values):+.2f} vs {np.nanmedian(report.as_read):+.2f} as read, "
            f"better on {100 * report.wins(values):.0f}% of {len(values)} particles)",
            f"{alternative.fix}; or skip this check with --no-convention-check (data.convention_check: false)",
        )
    return report
