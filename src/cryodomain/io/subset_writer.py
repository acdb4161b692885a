"""Particle subsets written back for RELION (``.star``) and cryoSPARC (``.cs`` + ``.csg``).

A subset keeps what the user's software knows about each particle:

* RELION 3.1 layout (``data_optics`` + ``data_particles``, read by RELION 3.1 to 5). From a 3.1+
  star the rows are the input rows with all their columns and the optics table is the input's;
  from a 3.0 star the per-particle optics columns move to an optics table and pixel shifts become
  ``rlnOriginX/YAngst``; from a ``.cs`` every column is built from the particle table. Image paths
  are written relative to the output folder, so the star file works from wherever it lies.
* cryoSPARC: from a ``.cs`` the input rows with every field (particles keep their ``uid``); from a
  star a refinement-like array (``uid``, ``blob/*``, ``ctf/*``, ``alignments3D/*``) with fresh
  random uids (as cryosparc-tools makes them) and absolute ``blob/path`` (there is no cryoSPARC
  project to be relative to). Beside it the ``.csg`` result group that cryoSPARC's "Import Result
  Group" job reads: one result per field prefix, each pointing at the ``.cs`` (``'>'``: relative to
  the ``.csg``).

Poses and shifts are converted with :mod:`cryodomain.io.poses`. Building (``*_subset``) is apart
from writing, so that a caller can check every output before writing any. Writes are atomic.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import yaml

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.io.particles import ParticleTable
from cryodomain.io.poses import matrix_to_cryosparc_pose
from cryodomain.io.star import particle_columns

logger = logging.getLogger(__name__)

# Per-particle columns of a RELION 3.0 star that RELION 3.1 keeps in the optics table, or that the
# 3.1 shifts in Å replace.
_RELION30_OPTICS_COLUMNS = frozenset(
    {
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnMagnification",
        "rlnDetectorPixelSize",
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",
        "rlnOpticsGroupName",
        "rlnOriginX",
        "rlnOriginY",
    }
)
# Text columns that must stay text when the optics table is read again.
_STRING_COLUMNS = ["rlnImageName", "rlnOpticsGroupName", "rlnMicrographName"]
# .cs files with many fields have numpy headers above np.load's default limit.
_MAX_HEADER_SIZE = 1_000_000

# Fields of a refinement's particles (.cs) built from a star file, after uid and blob/path:
# name -> (dtype, shape). Fields without a value in a star file get neutral values (see _cs_values).
_CS_FIELDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "blob/idx": ("<u4", ()),
    "blob/shape": ("<u4", (2,)),
    "blob/psize_A": ("<f4", ()),
    "blob/sign": ("<f4", ()),
    "blob/import_sig": ("<u8", ()),
    "ctf/type": ("S8", ()),
    "ctf/exp_group_id": ("<u4", ()),
    "ctf/accel_kv": ("<f4", ()),
    "ctf/cs_mm": ("<f4", ()),
    "ctf/amp_contrast": ("<f4", ()),
    "ctf/df1_A": ("<f4", ()),
    "ctf/df2_A": ("<f4", ()),
    "ctf/df_angle_rad": ("<f4", ()),
    "ctf/phase_shift_rad": ("<f4", ()),
    "ctf/scale": ("<f4", ()),
    "ctf/scale_const": ("<f4", ()),
    "ctf/shift_A": ("<f4", (2,)),
    "ctf/tilt_A": ("<f4", (2,)),
    "ctf/trefoil_A": ("<f4", (2,)),
    "ctf/tetra_A": ("<f4", (4,)),
    "ctf/anisomag": ("<f4", (4,)),
    "ctf/bfactor": ("<f4", ()),
    "alignments3D/split": ("<u4", ()),
    "alignments3D/shift": ("<f4", (2,)),
    "alignments3D/pose": ("<f4", (3,)),
    "alignments3D/psize_A": ("<f4", ()),
    "alignments3D/error": ("<f4", ()),
    "alignments3D/error_min": ("<f4", ()),
    "alignments3D/resid_pow": ("<f4", ()),
    "alignments3D/slice_pow": ("<f4", ()),
    "alignments3D/image_pow": ("<f4", ()),
    "alignments3D/cross_cor": ("<f4", ()),
    "alignments3D/alpha": ("<f4", ()),
    "alignments3D/alpha_min": ("<f4", ()),
    "alignments3D/weight": ("<f4", ()),
    "alignments3D/pose_ess": ("<f4", ()),
    "alignments3D/shift_ess": ("<f4", ()),
    "alignments3D/class_posterior": ("<f4", ()),
    "alignments3D/class": ("<u4", ()),
    "alignments3D/class_ess": ("<f4", ()),
}
# Neutral values of the fields a star file has nothing for (per-particle scale 1, one class).
_CS_ONES = ("ctf/scale", "alignments3D/alpha", "alignments3D/alpha_min", "alignments3D/weight", "alignments3D/class_posterior", "alignments3D/class_ess")


# ---------------------------------------------------------------------------------------------
# RELION
# ---------------------------------------------------------------------------------------------


def star_subset(table: ParticleTable, rows: np.ndarray, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The RELION 3.1 blocks (``optics``, ``particles``) of the particles at ``rows``.

    Args:
        table: the particles as read (``table.source`` is the ``.star`` or ``.cs`` it came from).
        rows: ``(M,)`` int 0-based particle rows, in output order.
        out_dir: the folder the star file will be written in (image paths are made relative to it).

    Returns:
        ``{"optics": (G, ...), "particles": (M, ...)}`` data frames for :func:`write_star_blocks`.

    Raises:
        InputError: the source star file no longer has the optics table it was read with.
    """
    rows = np.asarray(rows, dtype=np.int64)
    subset = table.subset(rows)
    image_names = _image_names(subset, out_dir)
    if table.extra is None:
        return _star_from_table(subset, image_names)
    particles = subset.extra.copy()
    particles["rlnImageName"] = image_names
    optics = _source_optics(Path(table.source))
    if optics is None:
        return _star_from_relion30(subset, particles)
    used = set(np.unique(subset.optics_group).tolist())
    known = set(pd.to_numeric(optics["rlnOpticsGroup"], errors="coerce").dropna().astype(np.int64).tolist())
    if not used <= known:
        raise input_error(
            table.source, "data_optics", f"optics group(s) {sorted(used - known)} of the selected particles are gone", "train again with the current file"
        )
    return {"optics": optics, "particles": particles}


def write_star_blocks(path: str | Path, blocks: dict[str, pd.DataFrame]) -> None:
    """Write :func:`star_subset`'s blocks as a star file, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        starfile.write(blocks, tmp)
        # starfile stamps the writing time; the same subset gives the same bytes without it.
        text = tmp.read_text()
        first, _, rest = text.partition("\n")
        if first.startswith("# Created by the starfile"):
            tmp.write_text("# Written by cryodomain (RELION 3.1 format)\n" + rest)
    logger.info("wrote %d particles (%d optics group(s)) to %s", len(blocks["particles"]), len(blocks["optics"]), path)


def _image_names(table: ParticleTable, out_dir: str | Path) -> list[str]:
    """``rlnImageName`` values ``NNNNNN@stack`` with the stack path relative to ``out_dir``.

    Both ends are resolved through symbolic links: the file system walks ``..`` from the real folder.
    """
    base = os.path.realpath(out_dir)
    stacks, inverse = np.unique(np.asarray(table.image_paths, dtype=str), return_inverse=True)
    relative = np.asarray([os.path.relpath(os.path.realpath(stack), base) for stack in stacks], dtype=object)[inverse]
    return [f"{index + 1:06d}@{stack}" for index, stack in zip(table.image_indices.tolist(), relative)]


def _source_optics(path: Path) -> pd.DataFrame | None:
    """The ``data_optics`` block of a star file as written (None for RELION 3.0)."""
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=_STRING_COLUMNS)
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as error:
        raise input_error(path, None, f"cannot read the particle file again ({error})", "restore the file the run was trained on") from error
    optics = blocks.get("optics")
    if optics is None:
        return None
    return optics if isinstance(optics, pd.DataFrame) else pd.DataFrame([optics])


def _optics_table(table: ParticleTable) -> pd.DataFrame:
    """One RELION 3.1 optics row per optics group of ``table``, from its first particle."""
    groups, first = np.unique(np.asarray(table.optics_group, dtype=np.int64), return_index=True)
    return pd.DataFrame(
        {
            "rlnOpticsGroup": groups,
            "rlnOpticsGroupName": [table.optics_group_names.get(int(group), f"opticsGroup{int(group)}") for group in groups],
            "rlnImagePixelSize": table.pixel_size_A[first],
            "rlnImageSize": np.asarray(table.image_size, dtype=np.int64)[first],
            "rlnImageDimensionality": 2,
            "rlnVoltage": table.voltage_kv[first],
            "rlnSphericalAberration": table.spherical_aberration_mm[first],
            "rlnAmplitudeContrast": table.amplitude_contrast[first],
        }
    )


def _star_from_relion30(table: ParticleTable, particles: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """RELION 3.0 rows in the 3.1 layout: optics columns to an optics table, shifts in Å."""
    kept = particles[[column for column in particles.columns if column not in _RELION30_OPTICS_COLUMNS]].copy()
    kept["rlnOriginXAngst"] = table.shifts_A[:, 0]
    kept["rlnOriginYAngst"] = table.shifts_A[:, 1]
    kept["rlnOpticsGroup"] = np.asarray(table.optics_group, dtype=np.int64)
    return {"optics": _optics_table(table), "particles": kept}


def _star_from_table(table: ParticleTable, image_names: list[str]) -> dict[str, pd.DataFrame]:
    """Every column built from the particle table (particles read from a ``.cs``)."""
    particles = particle_columns(table, image_names, np.asarray(table.optics_group, dtype=np.int64))
    return {"optics": _optics_table(table), "particles": particles}


# ---------------------------------------------------------------------------------------------
# cryoSPARC
# ---------------------------------------------------------------------------------------------


def cryosparc_subset(table: ParticleTable, rows: np.ndarray, data_sign: float = 1.0, seed: int | None = None) -> np.ndarray:
    """The cryoSPARC particle array (``.cs`` rows) of the particles at ``rows``.

    Args:
        table: the particles as read (``table.source`` is the ``.star`` or ``.cs`` it came from).
        rows: ``(M,)`` int 0-based particle rows, in output order.
        data_sign: ``blob/sign`` of particles built from a star file: +1 for protein white (as
            RELION extracts), -1 for dark protein. A ``.cs`` input keeps its own.
        seed: seed of the fresh uids (None: random, as cryoSPARC makes them).

    Returns:
        ``(M,)`` structured array: the input rows for a ``.cs`` input, else the fields of a
        refinement's particles.

    Raises:
        InputError: the source ``.cs`` no longer holds the particles it was read with.
    """
    rows = np.asarray(rows, dtype=np.int64)
    source = Path(table.source)
    if source.suffix.lower() == ".cs":
        data = _load_cs(source)
        if len(data) != len(table):
            raise input_error(source, None, f"holds {len(data)} particles, the run was trained on {len(table)}", "restore the file the run was trained on")
        return data[rows]
    return _cs_from_table(table.subset(rows), data_sign, seed, import_signature=_signature(source))


def write_cryosparc(cs_path: str | Path, data: np.ndarray, title: str = "cryodomain selection") -> Path:
    """Write ``data`` as ``cs_path`` and the result group ``cs_path`` with ``.csg``, atomically.

    Returns:
        The ``.csg`` path.
    """
    cs_path = Path(cs_path)
    csg_path = cs_path.with_suffix(".csg")
    with atomic_output(cs_path) as tmp:
        # A file handle: np.save given a name would append ".npy".
        with open(tmp, "wb") as handle:
            np.save(handle, data, allow_pickle=False)
    with atomic_output(csg_path) as tmp:
        tmp.write_text(yaml.safe_dump(result_group(cs_path.name, data, title), sort_keys=False))
    logger.info("wrote %d particles to %s and %s", len(data), cs_path, csg_path)
    return csg_path


def result_group(cs_name: str, data: np.ndarray, title: str) -> dict:
    """The ``.csg`` content for ``data`` saved as ``cs_name`` beside it.

    One result per field prefix (``blob``, ``ctf``, ``alignments3D``, ...) of type
    ``particle.<prefix>``; ab-initio's ``alignments_class_K`` are of type ``particle.alignments3D``.
    """
    prefixes = list(dict.fromkeys(name.split("/", 1)[0] for name in data.dtype.names if "/" in name))
    results = {
        prefix: {
            "metafile": f">{cs_name}",
            "num_items": int(len(data)),
            "type": "particle.alignments3D" if re.fullmatch(r"alignments_class_\d+", prefix) else f"particle.{prefix}",
        }
        for prefix in prefixes
    }
    return {
        "created": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
        "group": {"description": "particles selected by cryodomain select", "name": "particles", "title": title, "type": "particle"},
        "results": results,
    }


def _load_cs(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, max_header_size=_MAX_HEADER_SIZE)
    except (OSError, ValueError, EOFError) as error:
        raise input_error(path, None, f"cannot read the particle file again ({error})", "restore the file the run was trained on") from error


def _signature(source: Path) -> int:
    """A stable 64-bit ``blob/import_sig`` naming the file the particles came from."""
    return int.from_bytes(hashlib.sha256(os.path.abspath(source).encode()).digest()[:8], "little")


def _cs_from_table(table: ParticleTable, data_sign: float, seed: int | None, import_signature: int) -> np.ndarray:
    """A refinement-like cryoSPARC array from the particle table (a star file's particles)."""
    n = len(table)
    paths = [os.path.abspath(path).encode() for path in table.image_paths.tolist()]
    width = max((len(path) for path in paths), default=1)
    dtype = np.dtype([("uid", "<u8"), ("blob/path", f"S{width}")] + [(name, kind, shape) for name, (kind, shape) in _CS_FIELDS.items()])
    data = np.zeros(n, dtype=dtype)
    # Fresh random 64-bit uids, as cryosparc-tools' generate_uids.
    data["uid"] = np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)
    data["blob/path"] = paths
    data["blob/idx"] = table.image_indices
    data["blob/shape"] = np.repeat(np.asarray(table.image_size)[:, None], 2, axis=1)
    data["blob/psize_A"] = table.pixel_size_A
    data["blob/sign"] = data_sign
    data["blob/import_sig"] = import_signature
    data["ctf/type"] = b"imported"
    data["ctf/exp_group_id"] = table.optics_group
    data["ctf/accel_kv"] = table.voltage_kv
    data["ctf/cs_mm"] = table.spherical_aberration_mm
    data["ctf/amp_contrast"] = table.amplitude_contrast
    data["ctf/df1_A"] = table.defocus_u_A
    data["ctf/df2_A"] = table.defocus_v_A
    data["ctf/df_angle_rad"] = table.defocus_angle_rad
    data["ctf/phase_shift_rad"] = table.phase_shift_rad
    data["ctf/bfactor"] = table.bfactor_A2
    # cryoSPARC shifts are pixels of the particle image, with RELION's sign (io/poses.py).
    data["alignments3D/shift"] = table.shifts_A / table.pixel_size_A[:, None]
    data["alignments3D/pose"] = matrix_to_cryosparc_pose(table.rotations)
    data["alignments3D/psize_A"] = table.pixel_size_A
    data["alignments3D/split"] = _half_sets(table)
    for name in _CS_ONES:
        data[name] = 1.0
    return data


def _half_sets(table: ParticleTable) -> np.ndarray:
    """``(N,)`` 0/1 half set: RELION's ``rlnRandomSubset`` (1/2) when present, else alternating."""
    if table.extra is not None and "rlnRandomSubset" in table.extra.columns:
        subset = pd.to_numeric(table.extra["rlnRandomSubset"], errors="coerce").to_numpy()
        if np.isin(subset, (1, 2)).all():
            return (subset - 1).astype(np.uint32)
    return (np.arange(len(table)) % 2).astype(np.uint32)
