"""Simulate particle images of one or more conformations, as RELION would have extracted them.

Image formation (:func:`cryodomain.physics.imaging.form_images`, the forward model of training):
rotate by the pose -> project Gaussians along z -> multiply by the CTF (RELION sign: protein is
white, as in particles extracted with contrast inversion) -> translate the particle to ``-shift``
(RELION's rlnOriginX/YAngst convention) -> add white Gaussian noise at the requested SNR.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import write_stack
from cryodomain.io.star import write_star
from cryodomain.io.structure import AtomicModel, read_all_models
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.imaging import ImageFrame, form_images
from cryodomain.physics.rotations import random_rotations
from cryodomain.plots import particle_grid
from cryodomain.progress import progress_bar
from cryodomain.workflows.data import ctf_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate, checked when made. Lengths in Å, angles in degrees, voltage in kV, Cs in mm.

    Raises:
        InputError: a value out of range, named by the flag of ``cryodomain simulate`` that sets it.
    """

    n_images: int = 1000
    box: int = 64
    pixel_size_A: float = 2.0
    snr: float = 0.1
    defocus_min_A: float = 10000.0
    defocus_max_A: float = 25000.0
    max_astigmatism_A: float = 500.0
    max_shift_A: float = 4.0
    sigma_A: float = 2.0
    atoms: Literal["residue", "all"] = "residue"
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.1
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        # Each rule once, for library calls and the command alike; named by the command's flag.
        checks = {
            "--n-images": self.n_images > 0,
            "--box": self.box >= 8,
            "--apix": self.pixel_size_A > 0,
            "--snr": self.snr > 0,
            "--sigma": self.sigma_A > 0,
            "--defocus-min": 0 < self.defocus_min_A <= self.defocus_max_A,
            "--max-astigmatism": self.max_astigmatism_A >= 0,
            "--voltage": self.voltage_kv > 0,
            "--cs": self.spherical_aberration_mm >= 0,
            "--max-shift": self.max_shift_A >= 0,
            "--amplitude-contrast": 0 <= self.amplitude_contrast < 1,
            "--atoms": self.atoms in ("residue", "all"),
            "batch_size": self.batch_size > 0,
        }
        for flag, ok in checks.items():
            if not ok:
                value = getattr(self, _FIELD_OF_FLAG.get(flag, flag))
                raise input_error(None, flag, f"invalid value {value}", "see cryodomain simulate --help")


_FIELD_OF_FLAG = {
    "--n-images": "n_images",
    "--box": "box",
    "--apix": "pixel_size_A",
    "--snr": "snr",
    "--sigma": "sigma_A",
    "--defocus-min": "defocus_min_A",
    "--max-astigmatism": "max_astigmatism_A",
    "--voltage": "voltage_kv",
    "--cs": "spherical_aberration_mm",
    "--max-shift": "max_shift_A",
    "--amplitude-contrast": "amplitude_contrast",
    "--atoms": "atoms",
}


def load_conformations(paths: Sequence[str | Path]) -> list[AtomicModel]:
    """All models of all files, checked to share the same residues in the same order."""
    conformations = [model for path in paths for model in read_all_models(path)]
    reference = conformations[0]
    for model in conformations[1:]:
        same = (
            model.n_residues == reference.n_residues
            and np.array_equal(model.chain_ids, reference.chain_ids)
            and np.array_equal(model.residue_numbers, reference.residue_numbers)
            and np.array_equal(model.residue_names, reference.residue_names)
        )
        if not same:
            raise input_error(
                model.source,
                "residues",
                f"has {model.n_residues} residues that differ from the {reference.n_residues} of {reference.source}",
                "all conformations must list the same residues in the same order",
            )
    return conformations


def _render_points(model: AtomicModel, atoms: str) -> tuple[np.ndarray, np.ndarray]:
    if atoms == "all":
        return model.atom_coords, model.atom_electrons
    return model.coords, model.amplitudes


def simulate(paths: Sequence[str | Path], out_dir: str | Path, settings: SimulationSettings) -> dict[str, Path]:
    """Simulate a particle stack with poses, CTF and ground truth; returns the written paths.

    Writes ``particles.mrcs``, ``particles.star`` (RELION 3.1), ``truth.npz`` and ``particles.png``
    in ``out_dir``. The same settings (seed included) give the same bytes.
    """
    out_dir = Path(out_dir)
    conformations = load_conformations(paths)
    n, box, apix = settings.n_images, settings.box, settings.pixel_size_A
    half_extent = max(np.abs(model.coords).max() for model in conformations) + 2 * settings.sigma_A
    if half_extent > box // 2 * apix:
        log.warning(
            "the structure reaches %.0f Å from the origin but the box half-width is %.0f Å: parts of it fall outside",
            half_extent,
            box // 2 * apix,
        )

    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    conformation = np.arange(n) % len(conformations)
    rotations = random_rotations(n, generator, dtype=torch.float64).numpy()
    shifts_A = rng.uniform(-settings.max_shift_A, settings.max_shift_A, size=(n, 2))
    defocus = rng.uniform(settings.defocus_min_A, settings.defocus_max_A, size=n)
    astigmatism = rng.uniform(0.0, settings.max_astigmatism_A, size=n)
    table = ParticleTable(
        image_paths=np.full(n, str((out_dir / "particles.mrcs").resolve())),
        image_indices=np.arange(n, dtype=np.int64),
        rotations=rotations,
        shifts_A=shifts_A,
        defocus_u_A=defocus + astigmatism / 2,
        defocus_v_A=defocus - astigmatism / 2,
        defocus_angle_rad=rng.uniform(0.0, math.pi, size=n),
        voltage_kv=np.full(n, settings.voltage_kv),
        spherical_aberration_mm=np.full(n, settings.spherical_aberration_mm),
        amplitude_contrast=np.full(n, settings.amplitude_contrast),
        phase_shift_rad=np.zeros(n),
        bfactor_A2=np.zeros(n),
        pixel_size_A=np.full(n, apix),
        image_size=np.full(n, box, dtype=np.int64),
        optics_group=np.ones(n, dtype=np.int64),
        optics_group_names={1: "opticsGroup1"},
        source=str(out_dir / "particles.star"),
    )

    images = render_particles(conformations, conformation, table, settings)
    signal_variance = float(images.var(dtype=np.float64))
    if math.isfinite(settings.snr):
        noise_std = math.sqrt(signal_variance / settings.snr)
        noise = torch.randn(images.shape, generator=generator, dtype=torch.float32).numpy()
        images = images + noise_std * noise
        log.info("noise std %.4g for SNR %g (signal variance %.4g)", noise_std, settings.snr, signal_variance)

    written = {
        "particles": out_dir / "particles.mrcs",
        "star": out_dir / "particles.star",
        "truth": out_dir / "truth.npz",
        "picture": out_dir / "particles.png",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_stack(written["particles"], images.astype(np.float32), apix)
    write_star(written["star"], table)
    with atomic_output(written["truth"]) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                conformation=conformation,
                coords=np.stack([model.coords for model in conformations]).astype(np.float32),
                rotations=rotations,
                shifts_A=shifts_A,
                defocus_u_A=table.defocus_u_A,
                defocus_v_A=table.defocus_v_A,
                defocus_angle_rad=table.defocus_angle_rad,
                voltage_kv=table.voltage_kv,
                spherical_aberration_mm=table.spherical_aberration_mm,
                amplitude_contrast=table.amplitude_contrast,
                pixel_size_A=np.float64(apix),
                snr=np.float64(settings.snr),
                sigma_A=np.float64(settings.sigma_A),
            )
    shown = min(n, 8)
    particle_grid(
        written["picture"],
        images[:shown],
        titles=[f"#{i} conf {conformation[i]}" for i in range(shown)],
        suptitle=f"{n} simulated particles, SNR {settings.snr:g}, {box} px at {apix:g} Å",
    )
    return written


def render_particles(conformations: Sequence[AtomicModel], conformation: np.ndarray, table: ParticleTable, settings: SimulationSettings) -> np.ndarray:
    """Noise-free particle images ``(N, box, box)`` float32 for the poses and CTFs of ``table``."""
    frame = ImageFrame.build(settings.box, settings.pixel_size_A, dtype=torch.float64)
    points = [torch.as_tensor(_render_points(model, settings.atoms)[0]) for model in conformations]
    amplitudes = [torch.as_tensor(_render_points(model, settings.atoms)[1]) for model in conformations]
    n = len(table)
    images = np.empty((n, settings.box, settings.box), dtype=np.float32)
    for start in progress_bar(range(0, n, settings.batch_size), "simulate"):
        stop = min(start + settings.batch_size, n)
        rotations = torch.as_tensor(table.rotations[start:stop])
        ctf = compute_ctf(frame.freqs, ctf_parameters(table, slice(start, stop), dtype=torch.float64))
        # The particle centre sits at -shift (RELION origin convention): translate by -shift.
        shifts = -torch.as_tensor(table.shifts_A[start:stop])
        for c in np.unique(conformation[start:stop]):
            rows = np.flatnonzero(conformation[start:stop] == c)
            formed = form_images(points[c], amplitudes[c], rotations[rows], settings.sigma_A, frame, ctf[rows], shifts[rows])
            images[start + rows] = formed.numpy()
    return images
