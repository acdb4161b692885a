"""The per-particle metadata table (images, poses, CTF, optics) and helpers shared by its readers.

The readers live in :mod:`cryodomain.io.star` and :mod:`cryodomain.io.cryosparc`;
:func:`cryodomain.io.metadata.read_particles` picks one by file type. This module imports none.

Everything is stored in cryodomain's conventions (see :mod:`cryodomain.io.poses`): rotation
matrices ``A`` (model -> view), shifts in Å with RELION's ``rlnOriginX/YAngst`` sign, angles in
radians, 0-based image indices and absolute stack paths.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cryodomain.errors import input_error

logger = logging.getLogger(__name__)


@dataclass
class ParticleTable:
    """Per-particle metadata in cryodomain's conventions (io/poses.py). N particles. Radians inside.

    Attributes:
        image_paths: ``(N,)`` str, absolute path of the stack file holding each image.
        image_indices: ``(N,)`` int64, 0-based index of the image in its stack.
        rotations: ``(N, 3, 3)`` float64, matrix ``A`` (model -> view).
        shifts_A: ``(N, 2)`` float64, ``(x, y)`` in Å, RELION ``rlnOriginX/YAngst`` sign.
        defocus_u_A: ``(N,)`` float64 Å.
        defocus_v_A: ``(N,)`` float64 Å.
        defocus_angle_rad: ``(N,)`` float64 radians.
        voltage_kv: ``(N,)`` float64 kV.
        spherical_aberration_mm: ``(N,)`` float64 mm.
        amplitude_contrast: ``(N,)`` float64, fraction.
        phase_shift_rad: ``(N,)`` float64 radians.
        bfactor_A2: ``(N,)`` float64 CTF B-factor in Å², 0 when absent.
        pixel_size_A: ``(N,)`` float64 Å.
        image_size: ``(N,)`` int64 box in pixels.
        optics_group: ``(N,)`` int64, 1-based as in RELION.
        optics_group_names: optics group number -> name.
        source: the file it came from, for messages.
        extra: the original particle rows, all columns, index ``0..N-1`` (kept to write subsets
            with the user's columns), or None.
        class_rotations: ``(N, K, 3, 3)`` float32, each particle's matrix ``A`` in every one of the
            K classes of a multi-class cryoSPARC file (None otherwise): what the convention check
            tries besides the class each particle took.
        class_shifts_A: ``(N, K, 2)`` float32 Å, the same classes' shifts (RELION sign).
    """

    image_paths: np.ndarray
    image_indices: np.ndarray
    rotations: np.ndarray
    shifts_A: np.ndarray
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_rad: np.ndarray
    voltage_kv: np.ndarray
    spherical_aberration_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_rad: np.ndarray
    bfactor_A2: np.ndarray
    pixel_size_A: np.ndarray
    image_size: np.ndarray
    optics_group: np.ndarray
    optics_group_names: dict[int, str]
    source: str
    extra: pd.DataFrame | None = None
    # float32: K poses per particle of a million-particle file, read only by the convention check.
    class_rotations: np.ndarray | None = None
    class_shifts_A: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.image_paths)
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray) and len(value) != n:
                raise ValueError(f"ParticleTable.{field.name} has {len(value)} rows, expected {n}")
        if self.extra is not None and len(self.extra) != n:
            raise ValueError(f"ParticleTable.extra has {len(self.extra)} rows, expected {n}")
        if (self.class_rotations is None) != (self.class_shifts_A is None):
            raise ValueError("ParticleTable.class_rotations and class_shifts_A come together")

    def __len__(self) -> int:
        return len(self.image_paths)

    def subset(self, indices: np.ndarray) -> ParticleTable:
        """The particles at ``indices`` (``(M,)`` int positions, or an ``(N,)`` bool mask), in that order."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64, copy=False)
        changes: dict[str, object] = {
            field.name: getattr(self, field.name)[indices] for field in fields(self) if isinstance(getattr(self, field.name), np.ndarray)
        }
        changes["optics_group_names"] = dict(self.optics_group_names)
        if self.extra is not None:
            changes["extra"] = self.extra.iloc[indices].reset_index(drop=True)
        return replace(self, **changes)


# Plausible ranges of the optics, for catching unit mistakes (V for kV, µm for Å) and empty values.
VOLTAGE_RANGE_KV = (30.0, 1000.0)


def check_particle_values(table: ParticleTable, columns: dict[str, str]) -> None:
    """Refuse poses and CTF values that cannot be right: not finite, negative defocus, voltage
    outside 30-1000 kV, amplitude contrast outside [0, 1), negative Cs.

    Args:
        table: the particles as read.
        columns: attribute name -> the field's name in the user's file (e.g. ``"defocus_u_A":
            "rlnDefocusU"``), so that the message names what the user sees.

    Raises:
        InputError: naming the file, the field, the first bad particle (1-based row) and its value.
    """

    def refuse(attribute: str, bad: np.ndarray, problem: str, fix: str) -> None:
        rows = np.flatnonzero(bad.reshape(len(table), -1).any(axis=1))
        if rows.size == 0:
            return
        row = int(rows[0])
        value = getattr(table, attribute)[row]
        # Vector values (rotations, shifts) come from several columns: name the row only.
        shown = "" if np.ndim(value) else f": {float(value):g}"
        more = f" (and {rows.size - 1} more)" if rows.size > 1 else ""
        raise input_error(table.source, columns.get(attribute, attribute), f"{problem}{shown} in particle row {row + 1}{more}", fix)

    for attribute in ("rotations", "shifts_A", "defocus_angle_rad", "phase_shift_rad", "bfactor_A2", "spherical_aberration_mm"):
        refuse(attribute, ~np.isfinite(getattr(table, attribute)), "not a finite number", "fix or remove these particles")
    for attribute in ("defocus_u_A", "defocus_v_A"):
        values = getattr(table, attribute)
        refuse(
            attribute,
            ~np.isfinite(values) | (values < 0),
            "defocus must be a finite value >= 0 Å (underfocus positive)",
            "fix the CTF values (re-run CTF estimation) or remove these particles",
        )
    low, high = VOLTAGE_RANGE_KV
    voltage = table.voltage_kv
    refuse(
        "voltage_kv",
        ~np.isfinite(voltage) | (voltage < low) | (voltage > high),
        f"voltage must be between {low:g} and {high:g} kV",
        "give the acceleration voltage in kV (e.g. 300)",
    )
    contrast = table.amplitude_contrast
    refuse("amplitude_contrast", ~np.isfinite(contrast) | (contrast < 0) | (contrast >= 1), "amplitude contrast must be a fraction in [0, 1)", "use e.g. 0.1")
    refuse("spherical_aberration_mm", table.spherical_aberration_mm < 0, "spherical aberration must be >= 0 mm", "give Cs in mm (e.g. 2.7)")


def resolve_stack_paths(
    paths: np.ndarray,
    metadata_path: str | Path,
    field: str,
    datadir: str | Path | None = None,
) -> np.ndarray:
    """Absolute paths of the image stacks named in a metadata file.

    For each path the first existing candidate wins: with ``datadir``, ``datadir/path`` then
    ``datadir/basename(path)`` (cryoDRGN's ``--datadir``); then the path itself if absolute, else
    relative to the metadata file's folder; then relative to the working directory (a RELION project
    folder, whose paths RELION writes).

    Args:
        paths: ``(N,)`` str, stack paths as written in the file.
        metadata_path: the ``.star`` / ``.cs`` file, for resolving and for messages.
        field: the column the paths come from, for messages.
        datadir: optional folder holding the stacks.

    Returns:
        ``(N,)`` str absolute paths.

    Raises:
        InputError: a stack exists under none of the candidates.
    """
    if datadir is not None and not Path(datadir).is_dir():
        raise input_error(datadir, "--datadir", "not a folder", "give the folder that holds the particle stacks")
    paths = np.asarray(paths, dtype=str)
    metadata_dir = Path(metadata_path).absolute().parent
    unique_paths, inverse = np.unique(paths, return_inverse=True)
    resolved = []
    for written in unique_paths:
        candidates = []
        if datadir is not None:
            candidates += [Path(datadir) / written, Path(datadir) / os.path.basename(written)]
        if os.path.isabs(written):
            candidates.append(Path(written))
        else:
            candidates += [metadata_dir / written, Path.cwd() / written]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            tried = ", ".join(dict.fromkeys(str(candidate) for candidate in candidates))
            raise input_error(
                metadata_path,
                field,
                f"image stack {str(written)!r} not found (tried {tried})",
                "pass --datadir with the folder that holds the stacks",
            )
        resolved.append(os.path.abspath(found))
    return np.asarray(resolved, dtype=str)[inverse]


def group_optics(
    pixel_size_A: np.ndarray,
    image_size: np.ndarray,
    voltage_kv: np.ndarray,
    spherical_aberration_mm: np.ndarray,
    amplitude_contrast: np.ndarray,
) -> tuple[np.ndarray, dict[int, str]]:
    """Number the distinct optics settings, for files that store optics per particle.

    Args:
        pixel_size_A, image_size, voltage_kv, spherical_aberration_mm, amplitude_contrast: ``(N,)``.

    Returns:
        ``(N,)`` int64 1-based group numbers in order of first appearance, and their names
        ``opticsGroup<k>`` (RELION's default naming).
    """
    settings = pd.DataFrame(
        {
            "pixel_size": pixel_size_A,
            "box": image_size,
            "voltage": voltage_kv,
            "cs": spherical_aberration_mm,
            "amplitude_contrast": amplitude_contrast,
        }
    )
    codes = settings.groupby(list(settings.columns), sort=False).ngroup().to_numpy(dtype=np.int64) + 1
    names = {int(group): f"opticsGroup{int(group)}" for group in np.unique(codes)}
    return codes, names
