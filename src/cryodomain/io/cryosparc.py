"""cryoSPARC particle ``.cs`` files (numpy structured arrays saved with ``np.save``).

Fields used (as cryoDRGN's ``parse_pose_csparc`` / ``parse_ctf_csparc``, pyem's ``csparc2star`` and
cryosparc-tools read them): ``uid``; ``blob/path`` (bytes, sometimes prefixed with ``>``),
``blob/idx`` (0-based), ``blob/shape`` (``(ny, nx)``), ``blob/psize_A``; CTF ``ctf/accel_kv``,
``ctf/cs_mm``, ``ctf/amp_contrast``, ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``,
``ctf/phase_shift_rad`` and ``ctf/bfactor``; poses from ``alignments3D``, ``alignments_class_N`` or
``alignments3D_multi`` (see :mod:`cryodomain.io.cryosparc_poses`), shifts converted to Å with the
alignment's own ``psize_A`` when the file has it.

A job's output holds only the results it made; the rest (often ``blob`` and ``ctf``) lives in the
job's passthrough file beside it, ``<job>_passthrough_particles<suffix>.cs`` (``J42_005_particles.cs``
-> ``J42_passthrough_particles.cs``; ``particles_selected.cs`` in ``J42/`` ->
``J42_passthrough_particles_selected.cs``; exports ``cryosparc_P3_J42_...``). Result groups missing
from the main file are merged from it by ``uid``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.cryosparc_poses import CsPoses, pose_groups, select_poses
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

# .cs files with many fields have numpy headers above np.load's default safety limit.
_MAX_HEADER_SIZE = 1_000_000


def read_cryosparc(
    path: str | Path,
    datadir: str | Path | None = None,
    *,
    particle_class: int | None = None,
    passthrough: str | Path | None = None,
) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file, with its passthrough file when fields live there.

    Args:
        path: the ``.cs`` file.
        datadir: optional folder holding the image stacks, usually the cryoSPARC project folder
            (see :func:`cryodomain.io.particles.resolve_stack_paths`).
        particle_class: 0-based class whose pose every particle takes (heterogeneous refinement,
            multi-class ab-initio); None: ``alignments3D``, else each particle's most probable class.
        passthrough: the job's passthrough ``.cs`` file; None: looked for beside ``path`` by its usual
            name when the main file lacks fields.

    Returns:
        The :class:`ParticleTable` (``extra`` is None; optics groups are the distinct
        (pixel size, box, voltage, Cs, amplitude contrast) settings; with several classes,
        ``class_rotations`` and ``class_shifts_A`` hold every class's poses).

    Raises:
        InputError: unreadable file, missing fields, uids absent from the passthrough file, a class
            beyond the file's classes, non-square images, missing stacks.
    """
    path = Path(path)
    columns = _columns(_load(path))
    origin = dict.fromkeys(columns, path)
    tried: list[Path] = []
    passthrough_path = None
    if passthrough is not None or _missing(columns):
        passthrough_path = Path(passthrough) if passthrough is not None else _find_passthrough(path, tried)
        if passthrough is not None and not passthrough_path.is_file():
            raise input_error(passthrough_path, "--passthrough", "file not found", "give the job's *_passthrough_particles*.cs file")
        if passthrough_path is not None:
            merged = _merge_passthrough(path, columns, passthrough_path)
            columns.update(merged)
            origin.update(dict.fromkeys(merged, passthrough_path))
    missing = _missing(columns)
    if missing:
        raise _missing_error(path, missing, passthrough_path, tried)
    poses = select_poses(str(path), columns, particle_class)
    logger.info("%s: %s", path, poses.description)
    return _table(path, columns, origin, poses, datadir)


def _missing_error(path: Path, missing: list[str], passthrough: Path | None, tried: list[Path]) -> Exception:
    """The one-line error for required fields absent from the main file (and its passthrough file)."""
    refinement = "use the particles .cs file of a cryoSPARC refinement (it has poses and CTF)"
    if passthrough is not None:
        return input_error(path, ", ".join(missing), f"missing field(s), also in the passthrough file {passthrough}", refinement)
    searched = f"; no passthrough file beside it ({', '.join(candidate.name for candidate in tried)})" if tried else ""
    return input_error(
        path,
        ", ".join(missing),
        f"missing field(s){searched}",
        f"give the job's passthrough file with --passthrough (config data.passthrough), or {refinement}",
    )


def _missing(columns: Mapping[str, np.ndarray]) -> list[str]:
    """Required fields absent from ``columns`` (any 3-D alignment group counts for the poses)."""
    missing = [field for field in REQUIRED_FIELDS if field not in columns]
    if not pose_groups(list(columns)):
        missing += ["alignments3D/pose", "alignments3D/shift"]
    return missing


def _table(path: Path, columns: dict[str, np.ndarray], origin: dict[str, Path], poses: CsPoses, datadir: str | Path | None) -> ParticleTable:
    """The :class:`ParticleTable` of checked ``columns`` (``(N, ...)`` arrays by field name)."""
    n = len(columns["blob/idx"])
    shape = np.asarray(columns["blob/shape"], dtype=np.int64).reshape(n, -1)
    if shape.shape[1] != 2 or (shape[:, 0] != shape[:, 1]).any():
        raise input_error(origin["blob/shape"], "blob/shape", "particle images are not square", "re-extract square particle images")
    pixel_size_A = _float_field(columns, "blob/psize_A")
    if not (np.isfinite(pixel_size_A) & (pixel_size_A > 0)).all():
        raise input_error(origin["blob/psize_A"], "blob/psize_A", "pixel size must be positive", "fix the pixel size in cryoSPARC")
    image_size = shape[:, 0]
    voltage_kv = _float_field(columns, "ctf/accel_kv")
    spherical_aberration_mm = _float_field(columns, "ctf/cs_mm")
    amplitude_contrast = _float_field(columns, "ctf/amp_contrast")
    optics_group, optics_group_names = group_optics(pixel_size_A, image_size, voltage_kv, spherical_aberration_mm, amplitude_contrast)

    # Shifts are in pixels of the alignment (of the images when the file does not say); RELION's Å
    # shifts have the same sign.
    shift_pixel_A = poses.psize_A if poses.psize_A is not None else pixel_size_A
    table = ParticleTable(
        image_paths=resolve_stack_paths(_blob_paths(columns), origin["blob/path"], "blob/path", datadir),
        image_indices=np.asarray(columns["blob/idx"], dtype=np.int64).reshape(n),
        rotations=cryosparc_pose_to_matrix(poses.rotvecs),
        shifts_A=poses.shifts_px * shift_pixel_A[:, None],
        defocus_u_A=_float_field(columns, "ctf/df1_A"),
        defocus_v_A=_float_field(columns, "ctf/df2_A"),
        defocus_angle_rad=_float_field(columns, "ctf/df_angle_rad"),
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_rad=_float_field(columns, "ctf/phase_shift_rad", default=0.0),
        bfactor_A2=_float_field(columns, "ctf/bfactor", default=0.0),
        pixel_size_A=pixel_size_A,
        image_size=image_size,
        optics_group=optics_group,
        optics_group_names=optics_group_names,
        source=str(path),
        extra=None,
        **_class_poses(poses, pixel_size_A),
    )
    fields = {
        "rotations": poses.pose_field,
        "shifts_A": poses.shift_field,
        "defocus_u_A": "ctf/df1_A",
        "defocus_v_A": "ctf/df2_A",
        "defocus_angle_rad": "ctf/df_angle_rad",
        "voltage_kv": "ctf/accel_kv",
        "spherical_aberration_mm": "ctf/cs_mm",
        "amplitude_contrast": "ctf/amp_contrast",
        "phase_shift_rad": "ctf/phase_shift_rad",
        "bfactor_A2": "ctf/bfactor",
    }
    # A bad value merged from the passthrough file is named with that file.
    fields = {attribute: field if origin.get(field, path) == path else f"{field} (in {origin[field]})" for attribute, field in fields.items()}
    check_particle_values(table, fields)
    logger.info("read %d particles from %s (%d optics group(s))", len(table), path, len(optics_group_names))
    return table


def _class_poses(poses: CsPoses, pixel_size_A: np.ndarray) -> dict[str, np.ndarray | None]:
    """``class_rotations`` ``(N, K, 3, 3)`` and ``class_shifts_A`` ``(N, K, 2)`` Å (float32) of a
    file with K > 1 classes, both None otherwise; shifts converted as the chosen class's are."""
    if poses.class_rotvecs is None or poses.class_shifts_px is None:
        return {"class_rotations": None, "class_shifts_A": None}
    psize_A = poses.class_psize_A if poses.class_psize_A is not None else pixel_size_A[:, None]
    # One class at a time: the float64 matrices of all K classes at once would be K times larger.
    rotations = np.stack([cryosparc_pose_to_matrix(poses.class_rotvecs[:, k]).astype(np.float32) for k in range(poses.class_rotvecs.shape[1])], axis=1)
    return {"class_rotations": rotations, "class_shifts_A": (poses.class_shifts_px * psize_A[..., None]).astype(np.float32)}


def _find_passthrough(path: Path, tried: list[Path]) -> Path | None:
    """The passthrough file beside ``path`` by cryoSPARC's names, or None; appends the names tried."""
    stem = path.stem
    if "passthrough" in stem:
        return None
    job_match = re.match(r"^((?:cryosparc_)?(?:P\d+_)?J\d+)_", stem)
    job = job_match.group(1) if job_match else (path.absolute().parent.name if re.fullmatch(r"J\d+", path.absolute().parent.name) else None)
    if job is None:
        return None
    # What follows "particles" in the main name (``_selected``, ``_all_classes``) follows it in the passthrough's.
    suffix = stem.split("particles", 1)[1] if "particles" in stem else ""
    names = [f"{job}_passthrough_particles{suffix}.cs"]
    class_match = re.search(r"class_(\d+)", stem)
    if class_match:
        names.append(f"{job}_passthrough_particles_class_{int(class_match.group(1))}.cs")
    names += [f"{job}_passthrough_particles.cs", f"{job}_passthrough_particles_all_classes.cs"]
    for name in dict.fromkeys(names):
        candidate = path.with_name(name)
        tried.append(candidate)
        if candidate.is_file():
            return candidate
    return None


def _merge_passthrough(path: Path, columns: dict[str, np.ndarray], passthrough: Path) -> dict[str, np.ndarray]:
    """The passthrough's result groups absent from the main file, in the main file's particle order.

    Whole groups are merged (never ``blob/path`` from one file and ``blob/idx`` from the other);
    3-D alignments only when the main file has none, since a passthrough may carry an earlier job's.

    Raises:
        InputError: ``uid`` missing in either file, repeated in the passthrough, or main-file uids
            absent from it.
    """
    extra = _columns(_load(passthrough))
    for source, table in ((path, columns), (passthrough, extra)):
        if "uid" not in table:
            raise input_error(source, "uid", "missing; cannot match particles with the passthrough file", "give the .cs files as cryoSPARC wrote them")
    main_groups = {name.split("/", 1)[0] for name in columns}
    main_has_poses = bool(pose_groups(list(columns)))
    extra_pose_groups = set(pose_groups(list(extra)))
    new = [
        name
        for name in extra
        if name != "uid" and name.split("/", 1)[0] not in main_groups and not (main_has_poses and name.split("/", 1)[0] in extra_pose_groups)
    ]
    if not new:
        logger.info("%s: nothing to merge from %s", path, passthrough)
        return {}
    uids, extra_uids = np.asarray(columns["uid"]), np.asarray(extra["uid"])
    order = np.argsort(extra_uids, kind="stable")
    sorted_uids = extra_uids[order]
    if (sorted_uids[1:] == sorted_uids[:-1]).any():
        raise input_error(passthrough, "uid", "the same uid appears twice", "give the passthrough file as cryoSPARC wrote it")
    found = np.searchsorted(sorted_uids, uids).clip(max=len(sorted_uids) - 1)
    absent = sorted_uids[found] != uids
    if absent.any():
        raise input_error(
            path,
            "uid",
            f"{int(absent.sum())} particle(s) absent from the passthrough file {passthrough} (first uid {int(uids[absent][0])})",
            "give the passthrough file written by the same cryoSPARC job (--passthrough)",
        )
    rows = order[found]
    groups = sorted({name.split("/", 1)[0] for name in new})
    logger.info("%s: %s merged from %s by uid", path, ", ".join(groups), passthrough)
    return {name: extra[name][rows] for name in new}


def _columns(data: np.ndarray) -> dict[str, np.ndarray]:
    """Field name -> ``(N, ...)`` array of a ``.cs`` structured array."""
    return {name: data[name] for name in data.dtype.names}


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


def _float_field(columns: Mapping[str, np.ndarray], field: str, default: float | None = None) -> np.ndarray:
    """A scalar field as ``(N,)`` float64; ``default`` fills an absent optional field."""
    n = len(columns["blob/idx"])
    if field not in columns:
        if default is None:
            raise KeyError(field)  # required fields are checked by the caller
        return np.full(n, default, dtype=np.float64)
    return np.asarray(columns[field], dtype=np.float64).reshape(n)


def _blob_paths(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(N,)`` str stack paths from ``blob/path``, without cryoSPARC's optional leading ``>``."""
    paths = columns["blob/path"]
    if paths.dtype.kind == "S":
        paths = np.char.decode(paths, "utf-8")
    return np.char.lstrip(np.asarray(paths, dtype=str), ">")
