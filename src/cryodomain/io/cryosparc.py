"""cryoSPARC particle ``.cs`` files (numpy structured arrays saved with ``np.save``).

Fields used (as cryoDRGN's ``parse_pose_csparc`` / ``parse_ctf_csparc`` and pyem's ``csparc2star``
read them): ``blob/path`` (bytes, sometimes prefixed with ``>``), ``blob/idx`` (0-based),
``blob/shape`` (``(ny, nx)``), ``blob/psize_A``; poses ``alignments3D/pose`` (rotation vector, see
:func:`cryodomain.io.poses.cryosparc_pose_to_matrix`) and ``alignments3D/shift`` (pixels), or
``alignments_class_0/*`` from ab-initio jobs; CTF ``ctf/accel_kv``, ``ctf/cs_mm``,
``ctf/amp_contrast``, ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``, ``ctf/phase_shift_rad``
and ``ctf/bfactor``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.particles import (
    ParticleTable,
    check_particle_values,
    group_optics,
    resolve_stack_paths,
)
from cryodomain.io.poses import cryosparc_pose_to_matrix

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = (
    "blob/path",
    "blob/idx",
    "blob/shape",
    "blob/psize_A",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
)
# Refinements write alignments3D; ab-initio jobs write only the per-class alignments.
POSE_PREFIXES = ("alignments3D", "alignments_class_0")

# .cs files with many fields have numpy headers above np.load's default safety limit.
_MAX_HEADER_SIZE = 1_000_000


def read_cryosparc(path: str | Path, datadir: str | Path | None = None) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file.

    Args:
        path: the ``.cs`` file.
        datadir: optional folder holding the image stacks, usually the cryoSPARC project folder
            (see :func:`cryodomain.io.particles.resolve_stack_paths`).

    Returns:
        The :class:`ParticleTable` (``extra`` is None; optics groups are the distinct
        (pixel size, box, voltage, Cs, amplitude contrast) settings).

    Raises:
        InputError: unreadable file, missing fields, non-square images, missing stacks.
    """
    path = Path(path)
    data = _load(path)
    names = set(data.dtype.names)

    pose_prefix = next((prefix for prefix in POSE_PREFIXES if {f"{prefix}/pose", f"{prefix}/shift"} <= names), None)
    missing = [field for field in REQUIRED_FIELDS if field not in names]
    if pose_prefix is None:
        missing += [f"alignments3D/{field}" for field in ("pose", "shift") if f"alignments3D/{field}" not in names]
    if missing:
        raise input_error(
            path,
            ", ".join(missing),
            "missing field(s)",
            "use the particles .cs file of a cryoSPARC refinement (it has poses and CTF)",
        )
    if pose_prefix != "alignments3D":
        logger.info("%s has no alignments3D; using the ab-initio poses in %s/pose and %s/shift", path, pose_prefix, pose_prefix)

    shape = np.asarray(data["blob/shape"], dtype=np.int64).reshape(len(data), -1)
    if shape.shape[1] != 2 or (shape[:, 0] != shape[:, 1]).any():
        raise input_error(path, "blob/shape", "particle images are not square", "re-extract square particle images")
    pixel_size_A = _float_field(data, "blob/psize_A")
    if not (np.isfinite(pixel_size_A) & (pixel_size_A > 0)).all():
        raise input_error(path, "blob/psize_A", "pixel size must be positive", "fix the pixel size in cryoSPARC")
    image_size = shape[:, 0]
    voltage_kv = _float_field(data, "ctf/accel_kv")
    spherical_aberration_mm = _float_field(data, "ctf/cs_mm")
    amplitude_contrast = _float_field(data, "ctf/amp_contrast")
    optics_group, optics_group_names = group_optics(pixel_size_A, image_size, voltage_kv, spherical_aberration_mm, amplitude_contrast)

    # Shifts are in pixels of the particle images; RELION's Å shifts have the same sign.
    shifts_px = np.asarray(data[f"{pose_prefix}/shift"], dtype=np.float64).reshape(len(data), 2)

    table = ParticleTable(
        image_paths=resolve_stack_paths(_blob_paths(data), path, "blob/path", datadir),
        image_indices=np.asarray(data["blob/idx"], dtype=np.int64),
        rotations=cryosparc_pose_to_matrix(np.asarray(data[f"{pose_prefix}/pose"], dtype=np.float64).reshape(len(data), 3)),
        shifts_A=shifts_px * pixel_size_A[:, None],
        defocus_u_A=_float_field(data, "ctf/df1_A"),
        defocus_v_A=_float_field(data, "ctf/df2_A"),
        defocus_angle_rad=_float_field(data, "ctf/df_angle_rad"),
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_rad=_float_field(data, "ctf/phase_shift_rad", default=0.0),
        bfactor_A2=_float_field(data, "ctf/bfactor", default=0.0),
        pixel_size_A=pixel_size_A,
        image_size=image_size,
        optics_group=optics_group,
        optics_group_names=optics_group_names,
        source=str(path),
        extra=None,
    )
    check_particle_values(
        table,
        {
            "rotations": f"{pose_prefix}/pose",
            "shifts_A": f"{pose_prefix}/shift",
            "defocus_u_A": "ctf/df1_A",
            "defocus_v_A": "ctf/df2_A",
            "defocus_angle_rad": "ctf/df_angle_rad",
            "voltage_kv": "ctf/accel_kv",
            "spherical_aberration_mm": "ctf/cs_mm",
            "amplitude_contrast": "ctf/amp_contrast",
            "phase_shift_rad": "ctf/phase_shift_rad",
            "bfactor_A2": "ctf/bfactor",
        },
    )
    logger.info("read %d particles from %s (%d optics group(s))", len(table), path, len(optics_group_names))
    return table


def _load(path: Path) -> np.ndarray:
    """The ``(N,)`` structured array of a ``.cs`` file."""
    if not path.is_file():
        raise input_error(path, None, "file not found", "check the path to the particle .cs file")
    try:
        data = np.load(path, allow_pickle=False, max_header_size=_MAX_HEADER_SIZE)
    except (OSError, ValueError, EOFError) as error:
        raise input_error(path, None, f"cannot read as a cryoSPARC .cs file ({error})", "give a particles .cs file exported by cryoSPARC") from error
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise input_error(path, None, "not a cryoSPARC .cs file (a 1-D numpy structured array)", "give a particles .cs file exported by cryoSPARC")
    if len(data) == 0:
        raise input_error(path, None, "holds no particles", "give a .cs file with particles")
    return data


def _float_field(data: np.ndarray, field: str, default: float | None = None) -> np.ndarray:
    """A scalar field as ``(N,)`` float64; ``default`` fills an absent optional field."""
    if field not in data.dtype.names:
        if default is None:
            raise KeyError(field)  # required fields are checked by the caller
        return np.full(len(data), default, dtype=np.float64)
    return np.asarray(data[field], dtype=np.float64).reshape(len(data))


def _blob_paths(data: np.ndarray) -> np.ndarray:
    """``(N,)`` str stack paths from ``blob/path``, without cryoSPARC's optional leading ``>``."""
    paths = data["blob/path"]
    if paths.dtype.kind == "S":
        paths = np.char.decode(paths, "utf-8")
    return np.char.lstrip(np.asarray(paths, dtype=str), ">")
