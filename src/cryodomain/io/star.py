"""RELION particle ``.star`` files: read 3.0 and 3.1+ (optics groups), write 3.1.

Conversions at the boundary (see :mod:`cryodomain.io.poses`): angles in degrees in the file and
radians inside, 1-based image numbers in ``rlnImageName`` and 0-based indices inside, shifts in Å
(``rlnOriginX/YAngst``; RELION 3.0 pixel shifts ``rlnOriginX/Y`` are converted).

Only 2-D single-particle images are read: tomography particle files (any ``rlnTomo*`` label, RELION
4/5), subtomograms (``rlnImageDimensionality`` 3) and CTF-premultiplied images
(``rlnCtfDataAreCtfPremultiplied`` 1) are refused. Aberrations that the CTF model leaves out
(``rlnOddZernike`` / ``rlnEvenZernike`` lists, ``rlnMagMat00``..``11``, ``rlnBeamTiltX/Y``) are read
past with a warning when they are not zero (identity for the magnification matrix).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.io.particles import (
    ParticleTable,
    check_particle_values,
    group_optics,
    resolve_stack_paths,
)
from cryodomain.io.poses import matrix_to_relion_euler, relion_euler_to_matrix
from cryodomain.io.stack import read_stack_header
from cryodomain.io.star_checks import refuse_unsupported, warn_unmodelled_aberrations

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)

# Per-particle columns that belong in the optics table (or are superseded by what write_star
# writes); copying them from `extra` would leave stale or duplicated values in the particle table.
_OPTICS_OR_SUPERSEDED_COLUMNS = frozenset(
    {
        "rlnOriginX",
        "rlnOriginY",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",
        "rlnDetectorPixelSize",
        "rlnMagnification",
        "rlnOpticsGroupName",
    }
)

# ParticleTable attribute -> the star column it comes from, for messages about bad values.
_FILE_COLUMNS = {
    "rotations": "rlnAngleRot/rlnAngleTilt/rlnAnglePsi",
    "shifts_A": "rlnOriginXAngst/rlnOriginYAngst",
    "defocus_u_A": "rlnDefocusU",
    "defocus_v_A": "rlnDefocusV",
    "defocus_angle_rad": "rlnDefocusAngle",
    "voltage_kv": "rlnVoltage",
    "spherical_aberration_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "phase_shift_rad": "rlnPhaseShift",
    "bfactor_A2": "rlnCtfBfactor",
}

# Text columns that must not be coerced to numbers (a group named "1" stays a name).
_STRING_COLUMNS = ["rlnImageName", "rlnOpticsGroupName", "rlnMicrographName"]


def read_star(path: str | Path, datadir: str | Path | None = None) -> ParticleTable:
    """Read a RELION particle ``.star`` file (3.0 single table, or 3.1+ with ``data_optics``).

    Args:
        path: the ``.star`` file.
        datadir: optional folder holding the image stacks (see
            :func:`cryodomain.io.particles.resolve_stack_paths`).

    Returns:
        The :class:`ParticleTable`, with the original particle rows in ``extra``.

    Raises:
        InputError: unreadable file, no particle table, missing or malformed columns, missing stacks.
    """
    path = Path(path)
    particles, optics = _read_blocks(path)
    merged = _join_optics(path, particles, optics)

    missing = [column for column in REQUIRED_COLUMNS if column not in merged.columns]
    if missing:
        raise input_error(
            path,
            ", ".join(missing),
            "missing column(s) in the particle table",
            "use the particles .star file of a RELION refinement (it has poses and CTF)",
        )

    written_paths, image_indices = _parse_image_names(path, merged["rlnImageName"])
    image_paths = resolve_stack_paths(written_paths, path, "rlnImageName", datadir)

    pixel_size_A = _pixel_size(path, merged)
    shifts_A = _shifts_A(path, merged, pixel_size_A)
    angles_deg = np.stack([_numeric(path, merged, column) for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], axis=-1)
    voltage_kv = _numeric(path, merged, "rlnVoltage")
    spherical_aberration_mm = _numeric(path, merged, "rlnSphericalAberration")
    amplitude_contrast = _numeric(path, merged, "rlnAmplitudeContrast")

    if optics is not None:
        optics_group = merged["rlnOpticsGroup"].to_numpy(dtype=np.int64)
        image_size = _image_size(path, merged, image_paths, optics_group)
        names = _optics_names(optics)
        optics_group_names = {int(group): names[int(group)] for group in np.unique(optics_group)}
    else:
        image_size = _image_size(path, merged, image_paths, np.ones(len(merged), dtype=np.int64))
        optics_group, optics_group_names = group_optics(pixel_size_A, image_size, voltage_kv, spherical_aberration_mm, amplitude_contrast)

    table = ParticleTable(
        image_paths=image_paths,
        image_indices=image_indices,
        rotations=relion_euler_to_matrix(angles_deg),
        shifts_A=shifts_A,
        defocus_u_A=_numeric(path, merged, "rlnDefocusU"),
        defocus_v_A=_numeric(path, merged, "rlnDefocusV"),
        defocus_angle_rad=np.deg2rad(_numeric(path, merged, "rlnDefocusAngle")),
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_rad=np.deg2rad(_numeric(path, merged, "rlnPhaseShift", default=0.0)),
        bfactor_A2=_numeric(path, merged, "rlnCtfBfactor", default=0.0),
        pixel_size_A=pixel_size_A,
        image_size=image_size,
        optics_group=optics_group,
        optics_group_names=optics_group_names,
        source=str(path),
        extra=particles,
    )
    check_particle_values(table, _FILE_COLUMNS)
    warn_unmodelled_aberrations(path, merged)
    logger.info(
        "read %d particles from %s (RELION %s, %d optics group(s))",
        len(table),
        path,
        "3.1+" if optics is not None else "3.0",
        len(optics_group_names),
    )
    return table


def write_star(path: str | Path, table: ParticleTable) -> None:
    """Write particles as a RELION 3.1 ``.star`` file (``data_optics`` + ``data_particles``), atomically.

    Image paths are written relative to the star file's folder when the stack lies under it, else
    absolute. Columns of ``table.extra`` that this function does not write itself (e.g.
    ``rlnMicrographName``, ``rlnCoordinateX``) are kept; per-particle optics columns are not.

    Args:
        path: output ``.star`` file.
        table: the particles to write.
    """
    path = Path(path)
    star_dir = path.absolute().parent
    optics_group, optics = _optics_table(table)

    unique_paths, inverse = np.unique(np.asarray(table.image_paths, dtype=str), return_inverse=True)
    written_paths = np.asarray([_path_for_star(stack, star_dir) for stack in unique_paths], dtype=object)[inverse]
    image_names = [f"{index + 1:06d}@{stack}" for index, stack in zip(table.image_indices.tolist(), written_paths)]

    particles = particle_columns(table, image_names, optics_group)
    if table.extra is not None:
        kept = [c for c in table.extra.columns if c not in particles.columns and c not in _OPTICS_OR_SUPERSEDED_COLUMNS]
        particles = pd.concat([particles, table.extra[kept].reset_index(drop=True)], axis=1)

    with atomic_output(path) as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp)
        _replace_timestamp_comment(tmp)
    logger.info("wrote %d particles (%d optics group(s)) to %s", len(particles), len(optics), path)


def particle_columns(table: ParticleTable, image_names: list[str], optics_group: np.ndarray) -> pd.DataFrame:
    """The RELION 3.1 particle columns of ``table``: image names, Euler angles (degrees), origins (Å),
    CTF values (angles in degrees) and each particle's optics group number."""
    angles_deg = matrix_to_relion_euler(table.rotations)
    return pd.DataFrame(
        {
            "rlnImageName": image_names,
            "rlnAngleRot": angles_deg[:, 0],
            "rlnAngleTilt": angles_deg[:, 1],
            "rlnAnglePsi": angles_deg[:, 2],
            "rlnOriginXAngst": table.shifts_A[:, 0],
            "rlnOriginYAngst": table.shifts_A[:, 1],
            "rlnDefocusU": table.defocus_u_A,
            "rlnDefocusV": table.defocus_v_A,
            "rlnDefocusAngle": np.rad2deg(table.defocus_angle_rad),
            "rlnPhaseShift": np.rad2deg(table.phase_shift_rad),
            "rlnCtfBfactor": table.bfactor_A2,
            "rlnOpticsGroup": optics_group,
        }
    )


def _replace_timestamp_comment(path: Path) -> None:
    """starfile stamps the writing time in a comment; drop it so the same table gives the same bytes."""
    text = path.read_text()
    first, _, rest = text.partition("\n")
    if first.startswith("# Created by the starfile"):
        path.write_text("# Written by cryodomain (RELION 3.1 format)\n" + rest)


def _read_blocks(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The particle table (index ``0..N-1``) and the optics table (None for RELION 3.0) of a star file."""
    if not path.is_file():
        raise input_error(path, None, "file not found", "check the path to the particle .star file")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=_STRING_COLUMNS)
    except OSError as error:
        raise input_error(path, None, f"cannot read ({error.strerror or error})", "check the file's permissions") from error
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as error:
        raise input_error(path, None, f"cannot parse as a STAR file ({error})", "give a RELION particle .star file") from error
    # A single-row table may be written as key/value pairs instead of a loop.
    tables = {name: block if isinstance(block, pd.DataFrame) else pd.DataFrame([block]) for name, block in blocks.items()}
    refuse_unsupported(path, tables)

    if "particles" in tables:
        particles = tables["particles"]
    else:
        with_images = [table for table in tables.values() if "rlnImageName" in table.columns]
        if not with_images:
            raise input_error(
                path,
                "rlnImageName",
                "no particle table (data_particles with rlnImageName) found",
                "give the particles .star file of a RELION refinement",
            )
        particles = with_images[0]
    if len(particles) == 0:
        raise input_error(path, "data_particles", "the particle table is empty", "give a .star file with particles")
    optics = tables.get("optics")
    return particles.reset_index(drop=True), optics


def _join_optics(path: Path, particles: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """Particle rows with each optics column added through ``rlnOpticsGroup`` (particle values win)."""
    if optics is None:
        return particles
    if "rlnOpticsGroup" not in optics.columns:
        raise input_error(path, "rlnOpticsGroup", "missing in data_optics", "re-export the .star file from RELION 3.1 or later")
    optics_groups = pd.to_numeric(optics["rlnOpticsGroup"], errors="coerce")
    if optics_groups.isna().any() or optics_groups.duplicated().any():
        raise input_error(path, "rlnOpticsGroup", "data_optics needs one row per integer optics group", "fix the optics table")
    merged = particles.copy()
    if "rlnOpticsGroup" not in merged.columns:
        if len(optics) != 1:
            raise input_error(path, "rlnOpticsGroup", "missing in data_particles with several optics groups", "add rlnOpticsGroup to the particles")
        merged["rlnOpticsGroup"] = int(optics_groups.iloc[0])
    particle_groups = pd.to_numeric(merged["rlnOpticsGroup"], errors="coerce")
    if particle_groups.isna().any():
        raise input_error(path, "rlnOpticsGroup", "not an integer in some particle rows", "fix rlnOpticsGroup in data_particles")
    unknown = sorted(set(particle_groups.astype(int)) - set(optics_groups.astype(int)))
    if unknown:
        raise input_error(
            path,
            "rlnOpticsGroup",
            f"particles refer to optics group(s) {unknown} absent from data_optics",
            "fix rlnOpticsGroup or the optics table",
        )
    merged["rlnOpticsGroup"] = particle_groups.astype(np.int64)
    by_group = optics.assign(rlnOpticsGroup=optics_groups.astype(np.int64)).set_index("rlnOpticsGroup")
    for column in by_group.columns:
        if column not in merged.columns:
            merged[column] = merged["rlnOpticsGroup"].map(by_group[column]).to_numpy()
    return merged


def _optics_names(optics: pd.DataFrame) -> dict[int, str]:
    """Optics group number -> ``rlnOpticsGroupName`` (RELION's ``opticsGroup<k>`` when absent)."""
    groups = pd.to_numeric(optics["rlnOpticsGroup"]).astype(np.int64).tolist()
    if "rlnOpticsGroupName" in optics.columns:
        return {group: str(name) for group, name in zip(groups, optics["rlnOpticsGroupName"])}
    return {group: f"opticsGroup{group}" for group in groups}


def _numeric(path: Path, table: pd.DataFrame, column: str, default: float | None = None) -> np.ndarray:
    """Column as ``(N,)`` float64; ``default`` fills an absent optional column."""
    if column not in table.columns:
        if default is None:
            raise input_error(path, column, "missing column", "add it to the .star file")
        return np.full(len(table), default, dtype=np.float64)
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row = int(np.flatnonzero(np.isnan(values))[0])
        raise input_error(path, column, f"value {table[column].iloc[row]!r} in particle row {row + 1} is not a number", "fix the .star file")
    return values


def _parse_image_names(path: Path, image_names: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index@stack`` names into ``(N,)`` stack paths and ``(N,)`` int64 0-based indices.

    A name without ``@`` is a single-image file (index 0).
    """
    parts = image_names.astype(str).str.partition("@")
    has_index = parts[1] == "@"
    numbers = pd.to_numeric(parts[0].where(has_index, "1"), errors="coerce")
    stacks = parts[2].where(has_index, parts[0])
    bad = numbers.isna() | (numbers < 1) | (numbers != numbers.round()) | (stacks.str.len() == 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise input_error(
            path,
            "rlnImageName",
            f"{image_names.iloc[row]!r} in particle row {row + 1} is not of the form <image number from 1>@<stack>",
            "fix the image names",
        )
    return stacks.to_numpy(dtype=str), numbers.to_numpy(dtype=np.int64) - 1


def _pixel_size(path: Path, table: pd.DataFrame) -> np.ndarray:
    """``(N,)`` pixel size in Å: rlnImagePixelSize, or rlnDetectorPixelSize (µm) * 1e4 / rlnMagnification."""
    if "rlnImagePixelSize" in table.columns:
        pixel_size_A = _numeric(path, table, "rlnImagePixelSize")
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
        pixel_size_A = _numeric(path, table, "rlnDetectorPixelSize") * 1e4 / _numeric(path, table, "rlnMagnification")
    else:
        raise input_error(
            path,
            "rlnImagePixelSize",
            "pixel size not found",
            "add rlnImagePixelSize (Å), or rlnDetectorPixelSize (µm) and rlnMagnification",
        )
    if not (np.isfinite(pixel_size_A) & (pixel_size_A > 0)).all():
        raise input_error(path, "rlnImagePixelSize", "pixel size must be positive", "fix the pixel size columns")
    return pixel_size_A


def _shifts_A(path: Path, table: pd.DataFrame, pixel_size_A: np.ndarray) -> np.ndarray:
    """``(N, 2)`` shifts in Å from rlnOriginX/YAngst, or rlnOriginX/Y (pixels) times the pixel size; 0 if absent."""
    for x_column, y_column, scale in (
        ("rlnOriginXAngst", "rlnOriginYAngst", None),
        ("rlnOriginX", "rlnOriginY", pixel_size_A),
    ):
        present = [column in table.columns for column in (x_column, y_column)]
        if all(present):
            shifts = np.stack([_numeric(path, table, x_column), _numeric(path, table, y_column)], axis=-1)
            return shifts if scale is None else shifts * scale[:, None]
        if any(present):
            missing = y_column if present[0] else x_column
            raise input_error(path, missing, f"missing while {x_column if present[0] else y_column} is present", f"add {missing}")
    return np.zeros((len(table), 2), dtype=np.float64)


def _image_size(path: Path, table: pd.DataFrame, image_paths: np.ndarray, optics_group: np.ndarray) -> np.ndarray:
    """``(N,)`` int64 box: rlnImageSize, else the header of the first stack of each optics group."""
    if "rlnImageSize" in table.columns:
        return _numeric(path, table, "rlnImageSize").astype(np.int64)
    image_size = np.empty(len(table), dtype=np.int64)
    for group in np.unique(optics_group):
        in_group = optics_group == group
        stack = image_paths[np.flatnonzero(in_group)[0]]
        header = read_stack_header(stack)
        if header.height != header.width:
            raise input_error(stack, None, f"images are {header.height}x{header.width}, not square", "re-extract square particle images")
        image_size[in_group] = header.height
    logger.info("%s has no rlnImageSize; box size taken from the stack headers", path)
    return image_size


def _optics_table(table: ParticleTable) -> tuple[np.ndarray, pd.DataFrame]:
    """``(N,)`` optics group per particle and the RELION 3.1 optics table (one row per group).

    Groups are kept as they are unless particles of one group disagree on their optics, in which
    case every distinct setting becomes its own group.
    """
    settings = pd.DataFrame(
        {
            "rlnOpticsGroup": np.asarray(table.optics_group, dtype=np.int64),
            "rlnImagePixelSize": table.pixel_size_A,
            "rlnImageSize": np.asarray(table.image_size, dtype=np.int64),
            "rlnVoltage": table.voltage_kv,
            "rlnSphericalAberration": table.spherical_aberration_mm,
            "rlnAmplitudeContrast": table.amplitude_contrast,
        }
    )
    names = dict(table.optics_group_names)
    distinct = settings.drop_duplicates()
    if distinct["rlnOpticsGroup"].duplicated().any():
        logger.warning("%s: particles of one optics group have different optics; writing one group per distinct setting", table.source)
        optics_columns = list(settings.columns[1:])
        settings["rlnOpticsGroup"], names = group_optics(*(settings[column].to_numpy() for column in optics_columns))
        distinct = settings.drop_duplicates()
    optics = distinct.sort_values("rlnOpticsGroup").reset_index(drop=True)
    optics.insert(1, "rlnOpticsGroupName", [names.get(int(group), f"opticsGroup{int(group)}") for group in optics["rlnOpticsGroup"]])
    optics.insert(4, "rlnImageDimensionality", 2)
    return settings["rlnOpticsGroup"].to_numpy(), optics


def _path_for_star(stack: str, star_dir: Path) -> str:
    """A stack path as written in a star file: relative to ``star_dir`` when under it, else absolute."""
    stack_path = Path(os.path.abspath(stack))
    if stack_path.is_relative_to(star_dir):
        return stack_path.relative_to(star_dir).as_posix()
    return str(stack_path)
