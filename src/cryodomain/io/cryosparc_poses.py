"""Which 3-D alignment each particle of a cryoSPARC ``.cs`` file takes its pose from.

cryoSPARC writes a particle's 3-D alignment as result groups of type ``alignments3D`` (``pose``: (3,)
rotation vector, ``shift``: (2,) in pixels of the alignment, ``psize_A``: that pixel size in Å,
``class_posterior``, ``class``, ...), under one of three prefixes (as pyem's ``csparc2star`` and
cryosparc-tools read them):

- ``alignments3D``: homogeneous / non-uniform / local refinement (one pose per particle);
- ``alignments_class_0`` .. ``alignments_class_{K-1}``: ab-initio with K classes and heterogeneous
  refinement, one group per class, each with the particle's ``class_posterior`` for that class;
- ``alignments3D_multi``: heterogeneous refinement of newer versions, one group whose fields hold
  every class: ``pose`` (K, 3), ``shift`` (K, 2), ``class_posterior`` (K,), ``psize_A`` () or (K,).

Without a chosen class a particle takes its pose from its most probable class. Shifts are in pixels
of the alignment: a refinement run on downsampled images has another pixel size than ``blob/psize_A``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cryodomain.errors import input_error

SINGLE = "alignments3D"
MULTI = "alignments3D_multi"
_CLASS_GROUP = re.compile(r"^alignments_class_(\d+)/pose$")

# How a user forces one class, for messages.
CLASS_OPTION = "--class (config data.particle_class)"


@dataclass
class CsPoses:
    """The alignment chosen for each of N particles.

    Attributes:
        rotvecs: ``(N, 3)`` float64 cryoSPARC rotation vectors (radians).
        shifts_px: ``(N, 2)`` float64 shifts in pixels of the alignment.
        psize_A: ``(N,)`` float64 pixel size of those shifts in Å, or None when the file does not
            say (the particle images' ``blob/psize_A`` then applies).
        pose_field, shift_field: the fields they came from, for messages.
        description: one line saying where the poses came from, for the log.
        class_rotvecs: ``(N, K, 3)`` every class's rotation vectors when the file holds K > 1
            classes, else None; ``class_shifts_px``: ``(N, K, 2)``; ``class_psize_A``: ``(N, K)``
            Å or None (as ``psize_A``).
    """

    rotvecs: np.ndarray
    shifts_px: np.ndarray
    psize_A: np.ndarray | None
    pose_field: str
    shift_field: str
    description: str
    class_rotvecs: np.ndarray | None = None
    class_shifts_px: np.ndarray | None = None
    class_psize_A: np.ndarray | None = None


def pose_groups(names: set[str] | list[str]) -> list[str]:
    """The 3-D alignment groups (prefixes) among field names, e.g. ``["alignments_class_0", ...]``."""
    prefixes = {name.split("/", 1)[0] for name in names if name.endswith("/pose")}
    return sorted(prefix for prefix in prefixes if prefix in (SINGLE, MULTI) or prefix.startswith("alignments_class_"))


def select_poses(source: str, columns: Mapping[str, np.ndarray], particle_class: int | None = None) -> CsPoses:
    """Each particle's pose: ``alignments3D``, else its most probable class; or class ``particle_class``.

    Args:
        source: the ``.cs`` file, for messages.
        columns: field name -> ``(N, ...)`` array, as in the file.
        particle_class: 0-based class whose pose every particle takes (None: see above).

    Raises:
        InputError: no 3-D alignment, a class beyond the file's classes, several classes without
            ``class_posterior``, missing class groups, a pixel size that is not positive.
    """
    names = set(columns)
    has_single = {f"{SINGLE}/pose", f"{SINGLE}/shift"} <= names
    has_multi = {f"{MULTI}/pose", f"{MULTI}/shift"} <= names
    classes = _class_numbers(source, names)
    if has_single and (particle_class is None or not (has_multi or classes)):
        if particle_class not in (None, 0):
            raise input_error(
                source, CLASS_OPTION, f"class {particle_class} is not in the file: it holds one class ({SINGLE})", "give class 0 or leave it unset"
            )
        psize = _psize(source, columns, f"{SINGLE}/psize_A")
        poses = CsPoses(_float(columns, f"{SINGLE}/pose", 3), _float(columns, f"{SINGLE}/shift", 2), psize, f"{SINGLE}/pose", f"{SINGLE}/shift", "")
        poses.description = f"poses: {SINGLE}{_shift_units(poses, f'{SINGLE}/psize_A')}"
        return poses
    if has_multi:
        return _choose(source, *_multi(source, columns), MULTI, particle_class)
    if classes:
        return _choose(source, *_per_class(source, columns, classes), "alignments_class_N", particle_class)
    raise input_error(
        source,
        f"{SINGLE}/pose, {SINGLE}/shift",
        "missing field(s): no 3-D alignment (alignments3D, alignments_class_N or alignments3D_multi)",
        "use the particles .cs file of a cryoSPARC refinement (it has poses and CTF)",
    )


def _class_numbers(source: str, names: set[str]) -> list[int]:
    """The K class numbers 0..K-1 of ``alignments_class_N`` groups (each with pose and shift)."""
    numbers = sorted(int(match.group(1)) for name in names if (match := _CLASS_GROUP.match(name)))
    if not numbers:
        return []
    for k in range(numbers[-1] + 1):
        if k not in numbers or f"alignments_class_{k}/shift" not in names:
            field = f"alignments_class_{k}/pose" if k not in numbers else f"alignments_class_{k}/shift"
            raise input_error(source, field, f"missing while classes up to {numbers[-1]} are present", "give the complete particles .cs file of the job")
    return numbers


def _multi(source: str, columns: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """``(N, K, 3)`` rotation vectors, ``(N, K, 2)`` shifts, ``(N, K)`` pixel sizes and posteriors of ``alignments3D_multi``."""
    pose = np.asarray(columns[f"{MULTI}/pose"], dtype=np.float64)
    n = len(pose)
    pose = pose.reshape(n, -1, 3)
    k = pose.shape[1]
    shift = np.asarray(columns[f"{MULTI}/shift"], dtype=np.float64).reshape(n, -1, 2)
    if shift.shape[1] != k:
        raise input_error(
            source, f"{MULTI}/shift", f"holds {shift.shape[1]} classes but {MULTI}/pose holds {k}", "give the particles .cs file as cryoSPARC wrote it"
        )
    psize = _psize(source, columns, f"{MULTI}/psize_A")
    if psize is not None:
        if psize.size not in (n, n * k):
            raise _shape_error(source, f"{MULTI}/psize_A", k)
        psize = np.broadcast_to(psize.reshape(n, -1), (n, k))
    posterior = None
    if f"{MULTI}/class_posterior" in columns:
        posterior = np.asarray(columns[f"{MULTI}/class_posterior"], dtype=np.float64).reshape(n, -1)
        if posterior.shape[1] != k:
            raise _shape_error(source, f"{MULTI}/class_posterior", k)
    return pose, shift, psize, posterior, f"{MULTI}/class_posterior"


def _per_class(source: str, columns: Mapping[str, np.ndarray], classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """The same arrays stacked from the ``alignments_class_N`` groups."""
    pose = np.stack([_float(columns, f"alignments_class_{k}/pose", 3) for k in classes], axis=1)
    shift = np.stack([_float(columns, f"alignments_class_{k}/shift", 2) for k in classes], axis=1)
    psizes = [_psize(source, columns, f"alignments_class_{k}/psize_A") for k in classes]
    if any(p is None for p in psizes) and not all(p is None for p in psizes):
        missing = next(k for k, p in zip(classes, psizes) if p is None)
        raise input_error(
            source, f"alignments_class_{missing}/psize_A", "missing while other classes have it", "give the particles .cs file as cryoSPARC wrote it"
        )
    psize = None if psizes[0] is None else np.stack(psizes, axis=1)
    posteriors = [f"alignments_class_{k}/class_posterior" for k in classes]
    missing = [name for name in posteriors if name not in columns]
    posterior = None if missing else np.stack([_float(columns, name, 1)[:, 0] for name in posteriors], axis=1)
    return pose, shift, psize, posterior, (missing or posteriors)[0]


def _choose(
    source: str,
    pose: np.ndarray,
    shift: np.ndarray,
    psize: np.ndarray | None,
    posterior: np.ndarray | None,
    posterior_field: str,
    group: str,
    particle_class: int | None,
) -> CsPoses:
    """Per particle, the pose of class ``particle_class`` or of its most probable class.

    Args:
        pose: ``(N, K, 3)``; shift: ``(N, K, 2)`` px; psize: ``(N, K)`` Å or None;
        posterior: ``(N, K)`` class probabilities or None (then K must be 1 or a class forced);
        posterior_field: the posterior's field (the first one missing), for messages.
    """
    n, k = pose.shape[:2]
    # The group of one class is named as in the file; that of each particle's own class generically.
    one_class = particle_class if particle_class is not None else 0
    named = group if group == MULTI or (particle_class is None and k > 1) else f"alignments_class_{one_class}"
    fields = (f"{named}/pose", f"{named}/shift")
    if particle_class is not None:
        if particle_class >= k:
            raise input_error(
                source,
                CLASS_OPTION,
                f"class {particle_class} is not in the file: it holds {k} class(es), 0 to {k - 1} ({group})",
                f"give a class from 0 to {k - 1}",
            )
        chosen = np.full(n, particle_class, dtype=np.int64)
        how = f"class {particle_class} of {k} ({named}), forced by {CLASS_OPTION}"
    elif k == 1:
        chosen = np.zeros(n, dtype=np.int64)
        how = f"the only class ({named})"
    elif posterior is None:
        raise input_error(
            source, posterior_field, f"missing: the most probable of the {k} classes is unknown", f"choose the class whose poses to use with {CLASS_OPTION}"
        )
    else:
        if not np.isfinite(posterior).all():
            field = posterior_field if group == MULTI else "alignments_class_N/class_posterior"
            raise input_error(source, field, "not a finite number for some particles", "give the particles .cs file as cryoSPARC wrote it")
        chosen = np.argmax(posterior, axis=1)
        sizes = "/".join(str(count) for count in np.bincount(chosen, minlength=k))
        how = f"most probable of {k} classes ({group}), class sizes {sizes}"
    rows = np.arange(n)
    poses = CsPoses(pose[rows, chosen], shift[rows, chosen], None if psize is None else psize[rows, chosen], *fields, "")
    poses.description = f"poses: {how}{_shift_units(poses, f'{named}/psize_A')}"
    if k > 1:
        # Every class's poses, for the convention check's "poses of another class".
        poses.class_rotvecs, poses.class_shifts_px, poses.class_psize_A = pose, shift, psize
    return poses


def _float(columns: Mapping[str, np.ndarray], field: str, width: int) -> np.ndarray:
    """A field as ``(N, width)`` float64."""
    values = np.asarray(columns[field], dtype=np.float64)
    return values.reshape(len(values), width)


def _psize(source: str, columns: Mapping[str, np.ndarray], field: str) -> np.ndarray | None:
    """An alignment's pixel size in Å, ``(N,)`` or ``(N, K)``; None when absent."""
    if field not in columns:
        return None
    values = np.asarray(columns[field], dtype=np.float64)
    if not (np.isfinite(values) & (values > 0)).all():
        raise input_error(source, field, "pixel size of the alignment must be positive", "give the particles .cs file as cryoSPARC wrote it")
    return values.reshape(len(values)) if values.ndim == 1 else values


def _shape_error(source: str, field: str, k: int) -> Exception:
    return input_error(source, field, f"does not hold one value per class ({k} classes)", "give the particles .cs file as cryoSPARC wrote it")


def _shift_units(poses: CsPoses, psize_field: str) -> str:
    """``"; shifts in pixels of <field> (1.5 Å)"``, or of the particle images when the file does not say."""
    if poses.psize_A is None:
        return "; shifts in pixels of blob/psize_A"
    values = np.unique(poses.psize_A)
    shown = ", ".join(f"{value:g}" for value in values[:3]) + (", ..." if values.size > 3 else "")
    return f"; shifts in pixels of {psize_field} ({shown} Å)"
